"""The admin HTTP endpoint: health, readiness and Prometheus metrics."""

from __future__ import annotations

import psycopg
import pytest

from conftest import Proxy, ProxyFactory

pytestmark = pytest.mark.timeout(60)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} for ``steward_`` samples."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.startswith("steward_"):
            samples[key] = float(value)
    return samples


def counter_total(samples: dict[str, float], *words: str) -> float:
    """Sum of counter samples whose name mentions any of ``words``."""
    total = 0.0
    for key, value in samples.items():
        name = key.split("{", 1)[0]
        if name.endswith(("_total", "_count")) and any(w in name for w in words):
            total += value
    return total


@pytest.fixture(scope="module")
def admin_proxy(module_proxy_factory: ProxyFactory) -> Proxy:
    return module_proxy_factory()


def test_healthz_and_readyz(admin_proxy: Proxy) -> None:
    assert admin_proxy.http_get("/healthz")[0] == 200
    assert admin_proxy.http_get("/readyz")[0] == 200


def test_unknown_admin_path_is_404(admin_proxy: Proxy) -> None:
    assert admin_proxy.http_get("/no-such-thing")[0] == 404


def test_metrics_are_prometheus_text_with_steward_prefix(admin_proxy: Proxy) -> None:
    status, text = admin_proxy.http_get("/metrics")
    assert status == 200
    samples = parse_metrics(text)
    assert samples, "no steward_ metrics:\n" + text[:2000]
    assert "# TYPE steward_" in text


def test_statement_and_session_counters_rise(admin_proxy: Proxy) -> None:
    before = parse_metrics(admin_proxy.http_get("/metrics")[1])
    with psycopg.connect(admin_proxy.dsn(), autocommit=True) as conn:
        for i in range(5):
            conn.execute("SELECT %s::int", (i,))
    after_text = admin_proxy.http_get("/metrics")[1]
    after = parse_metrics(after_text)
    names = sorted({key.split("{", 1)[0] for key in after})
    statements = counter_total(after, "statement", "quer") - counter_total(
        before, "statement", "quer"
    )
    assert statements >= 5, f"statement counters rose by {statements}; metrics: {names}"
    sessions = counter_total(after, "session", "connection") - counter_total(
        before, "session", "connection"
    )
    assert sessions >= 1, f"session counters rose by {sessions}; metrics: {names}"


def test_denied_statements_are_counted(start_proxy: ProxyFactory) -> None:
    policy = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: metrics-deny}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: deny
"""
    proxy = start_proxy(policy)
    before = parse_metrics(proxy.http_get("/metrics")[1])
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(3):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT 1")
    after = parse_metrics(proxy.http_get("/metrics")[1])
    rose = {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if ("deny" in key or "denied" in key) and after[key] - before.get(key, 0.0) >= 3
    }
    assert rose, f"no metric sample mentioning deny rose by 3: {sorted(after)}"
