"""OIDC through the live proxy: ID tokens as passwords over TLS, checked against a
JWKS served on loopback with keys made in the test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from authkit import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    claims,
    hmac_with_public_key,
    tampered,
    unsigned_token,
)
from conftest import ALLOW_ALL_POLICY, Proxy, ProxyFactory, server_certificate, wait_for

pytestmark = pytest.mark.timeout(120)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: analysts}
spec:
  subjects: [{kind: Group, name: analysts}]
  defaultAction: allow
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: alice}
spec:
  subjects: [{kind: User, name: alice@example.com}]
  defaultAction: allow
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[JwksServer]:
    with JwksServer([SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1")]).serving() as server:
        yield server


def oidc_proxy(
    start_proxy: ProxyFactory, provider: JwksServer, tmp_path: Path, *extra: str
) -> Proxy:
    cert, key = server_certificate(tmp_path)
    return start_proxy(
        POLICY,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--oidc-issuer",
        ISSUER,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-jwks",
        provider.url,
        *extra,
    )


@pytest.fixture
def proxy(start_proxy: ProxyFactory, provider: JwksServer, tmp_path: Path) -> Proxy:
    return oidc_proxy(start_proxy, provider, tmp_path, "--oidc-jwks-refresh", "0")


def connect(proxy: Proxy, token: str, sslmode: str = "require") -> psycopg.Connection:
    return psycopg.connect(
        proxy.dsn("ignored") + f"?sslmode={sslmode}", password=token, autocommit=True
    )


def refusal(proxy: Proxy, token: str, *, tls: bool = True) -> tuple[str, str]:
    """(SQLSTATE, message) of a sign-in that must fail (asyncpg reports both)."""

    async def sign_in() -> None:
        conn = await asyncpg.connect(
            **proxy.asyncpg_args("ignored"), password=token, ssl="require" if tls else False
        )
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as failure:
        asyncio.run(sign_in())
    return failure.value.sqlstate, str(failure.value)


def test_valid_token_signs_in_with_its_groups(proxy: Proxy, provider: JwksServer) -> None:
    for key in provider.keys:  # RS256 and ES256
        token = key.sign(claims("carol@example.com", ["analysts"]))
        with connect(proxy, token) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    starts = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert [(r["identity"], r["groups"], r["command"], r["decision"]) for r in starts] == [
        ("user:carol@example.com", ["analysts"], "oidc", "allow")
    ] * 2


def bad_tokens(provider: JwksServer) -> dict[str, str]:
    key = provider.keys[0]
    return {
        "expired": key.sign(claims(lifetime=-3600)),
        "not yet valid": key.sign(claims(not_before=claims()["iat"] + 3600)),
        "wrong audience": key.sign(claims(audience="another-app")),
        "wrong issuer": key.sign(claims(issuer="https://evil.example.test")),
        "alg none": unsigned_token(claims()),
        "HS256 signed with the public key": hmac_with_public_key(key, claims()),
        "tampered payload": tampered(
            key.sign(claims("bob@example.com")), email="alice@example.com"
        ),
        "unknown key": SigningKey.rsa("never-published").sign(claims()),
    }


def test_bad_tokens_are_refused_and_never_logged(proxy: Proxy, provider: JwksServer) -> None:
    tokens = bad_tokens(provider)
    for case, token in tokens.items():
        sqlstate, message = refusal(proxy, token)
        assert sqlstate == "28000", (case, message)
        assert message.startswith("OIDC authentication failed: "), (case, message)
    # A valid token still works after all those.
    with connect(proxy, provider.keys[0].sign(claims())) as conn:
        assert conn.execute("SELECT current_user").fetchone() is not None
    assert proxy.terminate() == 0
    log = proxy.log_path.read_bytes()
    audit = proxy.audit_log.read_bytes()  # type: ignore[union-attr]
    for token in tokens.values():
        signature = token.rsplit(".", 1)[-1] or token.split(".")[1]
        assert signature.encode() not in log
        assert signature.encode() not in audit
    refused = [r for r in proxy.audit_records() if r["decision"] == "deny"]
    assert len(refused) == len(tokens)
    assert all(r["command"] == "oidc" and str(r["error"]).startswith("28000") for r in refused)


def test_rotated_key_is_picked_up(proxy: Proxy, provider: JwksServer) -> None:
    rotated = SigningKey.rsa("rotated-2")
    token = rotated.sign(claims())
    old = list(provider.keys)
    provider.keys.append(rotated)
    try:
        with connect(proxy, token) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        provider.keys[:] = old


def test_unknown_keys_fetch_at_most_once_per_interval(
    start_proxy: ProxyFactory, provider: JwksServer, tmp_path: Path
) -> None:
    before = provider.fetches
    proxy = oidc_proxy(start_proxy, provider, tmp_path, "--oidc-jwks-refresh", "3600")
    assert provider.fetches == before + 1  # at start
    stranger = SigningKey.rsa("stranger")
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError, match="unknown key"):
            connect(proxy, stranger.sign(claims()))
    assert provider.fetches == before + 1


def test_without_tls_the_oidc_listener_refuses(proxy: Proxy, provider: JwksServer) -> None:
    token = provider.keys[0].sign(claims())
    sqlstate, message = refusal(proxy, token, tls=False)
    assert (sqlstate, message) == ("28000", "OIDC sign-in needs TLS: connect with sslmode=require")
    with pytest.raises(psycopg.OperationalError, match="needs TLS"):
        connect(proxy, token, sslmode="disable")


def test_oidc_needs_tls_to_start(start_proxy: ProxyFactory, provider: JwksServer) -> None:
    proxy = start_proxy(
        ALLOW_ALL_POLICY,
        "--oidc-issuer",
        ISSUER,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-jwks",
        provider.url,
        wait_ready=False,
    )
    assert proxy.process.wait(timeout=60) == 2
    assert "--oidc-issuer needs TLS toward clients" in proxy.log()
    start_proxy.proxies.remove(proxy)


def test_sign_in_failures_are_counted_by_reason(proxy: Proxy, provider: JwksServer) -> None:
    with pytest.raises(psycopg.OperationalError):
        connect(proxy, provider.keys[0].sign(claims(lifetime=-3600)))
    metrics = proxy.http_get("/metrics")[1]  # counted before the client was told
    assert 'steward_sign_in_failures_total{reason="expired"} 1.0' in metrics
    assert "process_resident_memory_bytes" in metrics


def test_unreachable_key_set_keeps_the_proxy_unready(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "no-jwks.json"
    cert, key = server_certificate(tmp_path)
    proxy = start_proxy(
        POLICY,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--oidc-issuer",
        ISSUER,
        "--oidc-audience",
        AUDIENCE,
        "--oidc-jwks",
        str(missing),
        "--readiness-interval",
        "0.2",
    )
    status, body = proxy.http_get("/readyz")
    assert status == 503 and "OIDC key set has not been fetched" in body
    assert "OIDC key set not fetched" in proxy.log()
    signer = SigningKey.ec("late")
    sqlstate, message = refusal(proxy, signer.sign(claims()))
    assert sqlstate == "28000" and "keys are not available" in message
    missing.write_bytes(JwksServer([signer]).document())  # the key set appears
    wait_for(lambda: proxy.http_get("/readyz")[0] == 200, "the keys to be fetched", interval=0.2)
    with connect(proxy, signer.sign(claims())) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
