"""Running the proxy as a gateway: trust only on loopback, readiness that means the
proxy can sign in upstream, and errors that keep the upstream's details to the log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import ALLOW_ALL_POLICY, ProxyFactory, wait_for

pytestmark = pytest.mark.timeout(120)


def run_proxy(tmp_path: Path, pg: LocalPostgres, *args: str) -> subprocess.CompletedProcess[str]:
    """``steward proxy`` run to its exit (for flags it must refuse before listening)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_ALL_POLICY)
    argv = [sys.executable, "-m", "steward_proxy", "proxy", "--upstream", pg.dsn()]
    argv += ["--policy", str(policy), "--audit-log", str(tmp_path / "audit.log"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("listen", ["0.0.0.0:6432", "[::]:6432", "db.example.com:6432"])
def test_trust_on_an_open_address_refuses_to_start(
    tmp_path: Path, pg: LocalPostgres, listen: str
) -> None:
    done = run_proxy(tmp_path, pg, "--listen", listen)
    assert done.returncode == 2
    message = done.stderr
    assert "no client authentication is configured" in message
    for flag in ("--oidc-issuer", "--tls-client-ca", "--users-file", "--insecure-trust"):
        assert flag in message
    assert "refusing to start" in message
    assert not (tmp_path / "audit.log").exists()


def test_trust_on_loopback_believes_the_user_name_and_warns(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "WARNING steward.proxy: no client authentication" in proxy.log()
    (start,) = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert (start["identity"], start["command"]) == ("user:bob", "trust")


def test_fixed_identity_is_recorded_as_such(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--identity", "user:alice")
    with psycopg.connect(proxy.dsn("anyone"), autocommit=True) as conn:
        conn.execute("SELECT 1")
    (start,) = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert (start["identity"], start["command"]) == ("user:alice", "identity")


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """A PostgreSQL of its own: the test changes a role's password."""
    with LocalPostgres(fast=True) as server:
        yield server


def test_readyz_follows_the_upstream_sign_in(
    start_proxy: ProxyFactory, own_pg: LocalPostgres
) -> None:
    role = LocalPostgres.SCRAM_USER
    wrong = "not-the-password-4711"
    proxy = start_proxy(
        ALLOW_ALL_POLICY,
        "--readiness-interval",
        "0.1",
        upstream=own_pg.dsn(role, password=wrong),
        pg=own_pg,
    )
    status, body = proxy.http_get("/readyz")  # checked before the proxy listened
    assert status == 503, body
    assert "the proxy could not sign in upstream" in body
    assert "upstream sign-in fails" in proxy.log()
    assert "password authentication failed" in proxy.log()  # PostgreSQL's words, for the operator

    async def sign_in() -> None:
        await asyncpg.connect(**proxy.asyncpg_args())

    with pytest.raises(asyncpg.PostgresError) as failure:
        asyncio.run(sign_in())
    assert failure.value.sqlstate.startswith("08")
    assert role not in str(failure.value) and "password" not in str(failure.value)

    own_pg.execute(f"ALTER ROLE {role} PASSWORD '{wrong}'")  # the operator fixes it
    wait_for(lambda: proxy.http_get("/readyz")[0] == 200, "/readyz to turn ready")
    assert "upstream sign-in works again" in proxy.log()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert wrong not in proxy.log()
