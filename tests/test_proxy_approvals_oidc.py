"""Approving with an ID token: on a proxy that signs people in with OIDC, the
approver is who a verified token says, not a claimed subject.

Alice signs in with her ID token and is held for review; ``steward review
approve --id-token-file`` with Dana's token (group ``dba``) approves it; Alice's
own token, a token for another audience and a forged one are refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from authkit import AUDIENCE, ISSUER, JwksServer, SigningKey, claims
from conftest import Proxy, ProxyFactory, server_certificate

pytestmark = pytest.mark.timeout(120)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: shop}
spec:
  subjects: [{kind: Group, name: analysts}]
  defaultAction: allow
  guardrails:
    - name: log-writes-need-review
      match: {statements: [INSERT], tables: [appr_oidc]}
      action: review
  approval:
    approvers: [{kind: Group, name: dba}]
"""
REVIEW_ID = re.compile(r"review ([0-9a-f]{12}) is pending")


@pytest.fixture(scope="module")
def provider() -> Iterator[JwksServer]:
    with JwksServer([SigningKey.rsa("rsa-1")]).serving() as server:
        yield server


@pytest.fixture
def proxy(
    start_proxy: ProxyFactory, provider: JwksServer, tmp_path: Path, pg: LocalPostgres
) -> Proxy:
    pg.execute("DROP TABLE IF EXISTS appr_oidc; CREATE TABLE appr_oidc (n int)")
    cert, key = server_certificate(tmp_path)
    token = tmp_path / "admin-token"
    token.write_text("admin-token\n")
    return start_proxy(
        POLICY,
        "--tls-cert", str(cert), "--tls-key", str(key),
        "--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks", provider.url,
        "--admin-token-file", str(token),
        "--review-store", str(tmp_path / "reviews.sqlite"),
    )  # fmt: skip


def sign_in(proxy: Proxy, token: str) -> psycopg.Connection:
    return psycopg.connect(
        proxy.dsn("ignored") + "?sslmode=require", password=token, autocommit=True
    )


def approve(
    proxy: Proxy, review: str, token: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "approver.jwt"
    token_file.write_text(token)
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", "review", "approve", review,
         "--id-token-file", str(token_file), "--admin", proxy.admin_url,
         "--token-file", str(tmp_path / "admin-token")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_an_approver_proven_by_an_id_token_approves(
    proxy: Proxy, provider: JwksServer, pg: LocalPostgres, tmp_path: Path
) -> None:
    key = provider.keys[0]
    alice = key.sign(claims("alice@example.com", ["analysts"]))
    with sign_in(proxy, alice) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as held:
        conn.execute("INSERT INTO appr_oidc VALUES (1)")
    found = REVIEW_ID.search(held.value.diag.message_primary or "")
    assert found is not None
    review = found.group(1)

    refused = {
        "her own token": alice,
        "another audience": key.sign(claims("dana@example.com", ["dba"], audience="other")),
        "a key nobody published": SigningKey.rsa("forged").sign(
            claims("dana@example.com", ["dba"])
        ),
        "a valid token of someone not an approver": key.sign(
            claims("erin@example.com", ["analysts"])
        ),
    }
    for case, token in refused.items():
        result = approve(proxy, review, token, tmp_path)
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        assert token not in result.stdout + result.stderr + proxy.log()

    dana = key.sign(claims("dana@example.com", ["dba"]))
    result = approve(proxy, review, dana, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with sign_in(proxy, alice) as conn:
        conn.execute("INSERT INTO appr_oidc VALUES (1)")
    assert int(pg.execute("SELECT count(*) FROM appr_oidc").strip()) == 1
    decided = [r for r in proxy.audit_records() if r["type"] == "review.decided"]
    assert decided[-1]["identity"] == "user:dana@example.com"
    assert decided[-1]["groups"] == ["dba"]
    assert dana not in proxy.audit_log.read_text()  # type: ignore[union-attr]
