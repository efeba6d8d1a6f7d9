"""Approvals end to end: a live proxy, real PostgreSQL, psycopg, and ``steward review``.

A guardrail with ``action: review`` holds ``INSERT INTO appr_log``: the client
is refused (42501) with a review id, an approver approves it with ``steward
review approve``, the same statement shape then runs exactly once, and the
next attempt is refused again. The approver is never the requester; the TTL
ends a pending review and an unused approval; a restarted proxy keeps its
reviews (SQLite next to the audit trail, here ``--review-store``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from steward_proxy.audit import verify
from steward_testing.postgres import LocalPostgres

from conftest import Proxy, ProxyFactory, wait_for

pytestmark = pytest.mark.timeout(120)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: shop, namespace: prod}
spec:
  subjects: [{kind: User, name: alice}, {kind: User, name: bob}]
  defaultAction: allow
  guardrails:
    - name: log-writes-need-review
      match: {statements: [INSERT], tables: [appr_log]}
      action: review
      message: writes to the log need an approver
  approval:
    approvers: [{kind: Group, name: dba}, {kind: User, name: bob}]
    ttl: TTL
"""
INSERT = "INSERT INTO appr_log VALUES (1)"
TOKEN = "s3cret-admin-token"
REVIEW_ID = re.compile(r"review ([0-9a-f]{12}) is (pending|approved)")


@pytest.fixture
def appr_log(pg: LocalPostgres) -> None:
    pg.execute("DROP TABLE IF EXISTS appr_log; CREATE TABLE appr_log (n int)")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def start(
    start_proxy: ProxyFactory, token_file: Path | None, store: Path, ttl: str = "15m"
) -> Proxy:
    args = ["--review-store", str(store)]
    if token_file is not None:
        args += ["--admin-token-file", str(token_file)]
    return start_proxy(POLICY.replace("TTL", ttl), *args)


def held(proxy: Proxy, user: str = "alice", sql: str = INSERT) -> str:
    """Run ``sql``, which must be held for review; return the review id."""
    with (
        psycopg.connect(proxy.dsn(user), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(sql)
    message = refused.value.diag.message_primary or ""
    assert " by policy prod/shop rule log-writes-need-review" in message
    found = REVIEW_ID.search(message)
    assert found is not None and found.group(2) == "pending", message
    return found.group(1)


def runs(proxy: Proxy, user: str = "alice", sql: str = INSERT) -> None:
    with psycopg.connect(proxy.dsn(user), autocommit=True) as conn:
        conn.execute(sql)


def rows(pg: LocalPostgres) -> int:
    return int(pg.execute("SELECT count(*) FROM appr_log").strip())


def review_cli(proxy: Proxy, token_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``steward review ARGS --admin URL --token-file F``."""
    where = ["--admin", proxy.admin_url, "--token-file", str(token_file)]
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", "review", *args, *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin(
    proxy: Proxy, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        proxy.admin_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_held_statement_runs_once_after_an_approver_approves_it(
    start_proxy: ProxyFactory, token_file: Path, tmp_path: Path, pg: LocalPostgres, appr_log: None
) -> None:
    proxy = start(start_proxy, token_file, tmp_path / "reviews.sqlite3")
    review = held(proxy)
    assert held(proxy) == review  # asking again is the same review
    listed = review_cli(proxy, token_file, "list", "--state", "pending")
    assert listed.returncode == 0, listed.stderr
    assert review in listed.stdout and "user:alice" in listed.stdout
    approved = review_cli(
        proxy, token_file, "approve", review, "--as", "user:dave", "--group", "dba"
    )
    assert approved.returncode == 0, approved.stderr
    assert f"review {review} approved" in approved.stdout
    assert rows(pg) == 0
    runs(proxy, sql="insert into APPR_LOG values (2)")  # the same shape, any literal
    assert rows(pg) == 1
    second = held(proxy)
    assert second != review
    assert rows(pg) == 1
    status, shown = admin(proxy, "GET", f"/reviews/{review}")
    assert status == 200
    assert (shown["state"], shown["subject"], shown["approver"], shown["statement"]) == (
        "used",
        "user:alice",
        "user:dave",
        "INSERT INTO appr_log VALUES ($1)",
    )
    for key in ("id", "policy", "rule", "requested", "expires", "used"):
        assert shown[key], key
    records = proxy.audit_records()
    types = [r["type"] for r in records]
    assert types.count("review.requested") == 2
    (decided,) = [r for r in records if r["type"] == "review.decided"]
    assert (decided["identity"], decided["groups"], decided["decision"]) == (
        "user:dave",
        ["dba"],
        "allow",
    )
    assert review in decided["error"] and "user:alice" in decided["error"]
    ran = [r for r in records if r["type"] == "statement" and r["decision"] == "review"]
    assert [(r["statement"], r["rows"], r["rule"]) for r in ran] == [
        ("insert into APPR_LOG values ($1)", 1, "log-writes-need-review")
    ]
    assert verify([str(proxy.audit_log)]).ok


@pytest.mark.parametrize(
    ("approver", "reason"),
    [
        (["--as", "user:alice", "--group", "dba"], "cannot decide it"),
        (["--as", "user:mallory", "--group", "devs"], "is not an approver of policy prod/shop"),
    ],
    ids=["the requester, even in the dba group", "someone the policy does not name"],
)
def test_who_may_not_approve_is_refused(
    start_proxy: ProxyFactory,
    token_file: Path,
    tmp_path: Path,
    pg: LocalPostgres,
    appr_log: None,
    approver: list[str],
    reason: str,
) -> None:
    proxy = start(start_proxy, token_file, tmp_path / "reviews.sqlite3")
    review = held(proxy)
    for verb in ("approve", "deny"):
        refused = review_cli(proxy, token_file, verb, review, *approver)
        assert refused.returncode == 1, refused
        assert reason in refused.stderr
    assert admin(proxy, "GET", f"/reviews/{review}")[1]["state"] == "pending"
    held(proxy)
    assert rows(pg) == 0


def test_a_denied_review_stays_refused(
    start_proxy: ProxyFactory, token_file: Path, tmp_path: Path, pg: LocalPostgres, appr_log: None
) -> None:
    proxy = start(start_proxy, token_file, tmp_path / "reviews.sqlite3")
    review = held(proxy)
    denied = review_cli(proxy, token_file, "deny", review, "--as", "user:bob", "--reason", "no")
    assert denied.returncode == 0, denied.stderr
    again = review_cli(proxy, token_file, "approve", review, "--as", "user:bob")
    assert again.returncode == 1 and "is denied, not pending" in again.stderr
    assert held(proxy) != review
    assert rows(pg) == 0


def test_the_ttl_ends_a_pending_review_and_an_unused_approval(
    start_proxy: ProxyFactory, token_file: Path, tmp_path: Path, pg: LocalPostgres, appr_log: None
) -> None:
    proxy = start(start_proxy, token_file, tmp_path / "reviews.sqlite3", ttl="2s")

    def state(review: str) -> str:
        return str(admin(proxy, "GET", f"/reviews/{review}")[1]["state"])

    late = held(proxy)
    wait_for(lambda: state(late) == "expired", "the pending review to expire")
    refused = review_cli(proxy, token_file, "approve", late, "--as", "user:bob")
    assert refused.returncode == 1 and "expired" in refused.stderr
    unused = held(proxy)
    assert unused != late
    # Straight to the admin API: the CLI's start-up can outlast the TTL on a busy machine.
    decision = {"subject": "user:bob", "groups": []}
    assert admin(proxy, "POST", f"/reviews/{unused}/approve", decision)[0] == 200
    wait_for(lambda: state(unused) == "expired", "the approval to expire")
    assert held(proxy) not in (late, unused)
    assert rows(pg) == 0


def test_a_restarted_proxy_keeps_pending_and_approved_reviews(
    start_proxy: ProxyFactory, token_file: Path, tmp_path: Path, pg: LocalPostgres, appr_log: None
) -> None:
    store = tmp_path / "reviews.sqlite3"
    first = start(start_proxy, token_file, store)
    approved = held(first)
    pending = held(first, sql="INSERT INTO appr_log VALUES (1), (2)")
    assert review_cli(first, token_file, "approve", approved, "--as", "user:bob").returncode == 0
    assert first.terminate() == 0
    second = start(start_proxy, token_file, store)
    status, listed = admin(second, "GET", "/reviews")
    assert status == 200
    assert {(r["id"], r["state"]) for r in listed} == {(approved, "approved"), (pending, "pending")}
    runs(second)
    assert rows(pg) == 1
    assert review_cli(second, token_file, "approve", pending, "--as", "user:bob").returncode == 0
    runs(second, sql="INSERT INTO appr_log VALUES (3), (4)")
    assert rows(pg) == 3
    assert {r["state"] for r in admin(second, "GET", "/reviews")[1]} == {"used"}


def test_the_review_endpoints_need_the_admin_token(
    start_proxy: ProxyFactory, token_file: Path, tmp_path: Path, appr_log: None
) -> None:
    proxy = start(start_proxy, token_file, tmp_path / "reviews.sqlite3")
    review = held(proxy)
    decision = {"subject": "user:bob", "groups": []}
    for token in (None, "wrong", TOKEN + "x"):
        assert admin(proxy, "GET", "/reviews", token=token)[0] == 401
        assert admin(proxy, "POST", f"/reviews/{review}/approve", decision, token=token)[0] == 401
    bad = tmp_path / "bad-token"
    bad.write_text("wrong\n")
    listed = review_cli(proxy, bad, "list")
    assert listed.returncode == 2 and "HTTP 401" in listed.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "review", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "STEWARD_ADMIN_URL": f"127.0.0.1:{proxy.admin_port}",
            "STEWARD_ADMIN_TOKEN_FILE": str(token_file),
        },
    )
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [review]
    assert admin(proxy, "POST", "/reviews/nope/approve", decision)[0] == 404
    assert admin(proxy, "POST", f"/reviews/{review}/approve", {"subject": "bob"})[0] == 400
    assert admin(proxy, "GET", "/reviews?state=maybe")[0] == 400
    assert admin(proxy, "GET", f"/reviews/{review}")[1]["state"] == "pending"


def test_without_a_token_file_the_review_endpoints_answer_401(
    start_proxy: ProxyFactory, tmp_path: Path, appr_log: None
) -> None:
    proxy = start(start_proxy, None, tmp_path / "reviews.sqlite3")
    review = held(proxy)
    assert admin(proxy, "GET", "/reviews")[0] == 401
    decision = {"subject": "user:bob", "groups": []}
    assert admin(proxy, "POST", f"/reviews/{review}/approve", decision)[0] == 401
    assert proxy.http_get("/healthz")[0] == 200
