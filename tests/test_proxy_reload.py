"""Live reload of ``--policy`` files: a change, SIGHUP, and ``PUT /policy`` with the admin token.

A session open across a change judges its next statement under the new
policy; policy that does not load leaves the running one in force; a policy
that makes a subject read-only ends its sessions that signed in read-write;
and ``EXECUTE`` of a statement prepared under the old policy is judged by the
new one. Each change is awaited through its ``policy.loaded`` audit record.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import Proxy, ProxyFactory, wait_for

pytestmark = pytest.mark.timeout(120)

ALLOW = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: app}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""
NO_DELETE = (
    ALLOW
    + """\
  guardrails:
    - name: no-delete
      match: {statements: [DELETE]}
      action: deny
"""
)
READ_ONLY = ALLOW + "  readOnly: true\n"
TOKEN = "reload-token"


@pytest.fixture
def rl_t(pg: LocalPostgres) -> None:
    pg.execute("DROP TABLE IF EXISTS rl_t; CREATE TABLE rl_t (id int); INSERT INTO rl_t VALUES (1)")


def policy_file(proxy: Proxy) -> Path:
    return Path(proxy.argv[proxy.argv.index("--policy") + 1])


def write(path: Path, text: str) -> None:
    """Replace ``path`` as an editor or a ConfigMap does: a complete file renamed over it."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(text)
    os.replace(fresh, path)


def loads(proxy: Proxy) -> int:
    return sum(1 for r in proxy.audit_records() if r["type"] == "policy.loaded")


def reloaded(proxy: Proxy, before: int) -> None:
    wait_for(lambda: loads(proxy) > before, "a policy.loaded record for the new policy")


def deletes(conn: psycopg.Connection[Any]) -> bool:
    """Whether a DELETE is allowed (it runs) or refused (42501) in this session."""
    try:
        conn.execute("DELETE FROM rl_t WHERE id = -1")
    except psycopg.errors.InsufficientPrivilege as exc:
        assert "rule no-delete" in str(exc)
        return False
    return True


def test_a_session_open_across_a_change_sees_the_new_rule_at_its_next_statement(
    start_proxy: ProxyFactory, rl_t: None
) -> None:
    proxy = start_proxy(ALLOW, "--policy-poll", "0.1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert deletes(conn)
        before = loads(proxy)
        write(policy_file(proxy), NO_DELETE)
        reloaded(proxy, before)
        assert not deletes(conn)
        assert conn.execute("SELECT count(*) FROM rl_t").fetchone() == (1,)
        before = loads(proxy)
        write(policy_file(proxy), ALLOW)
        reloaded(proxy, before)
        assert deletes(conn)
    record = [r for r in proxy.audit_records() if r["type"] == "policy.loaded"][-1]
    assert record["policy"] == "default/app"
    assert "a policy file changed" in record["client"]
    status, text = proxy.http_get("/policy")
    assert status == 200 and json.loads(text)["compiledHash"] == record["fingerprint"]


@pytest.mark.parametrize(
    "broken",
    [
        "spec: [not: valid",
        ALLOW.replace("defaultAction: allow", "defaultAction: maybe"),
        "",
    ],
    ids=["not YAML", "not a valid policy", "empty"],
)
def test_a_broken_policy_file_leaves_the_old_policy_in_force(
    start_proxy: ProxyFactory, rl_t: None, broken: str
) -> None:
    proxy = start_proxy(NO_DELETE, "--policy-poll", "0.1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        before = loads(proxy)
        write(policy_file(proxy), broken)
        wait_for(
            lambda: "refused; the running policy stays" in proxy.log(),
            "the proxy to refuse the broken file",
        )
        assert not deletes(conn)
        assert loads(proxy) == before
        write(policy_file(proxy), ALLOW)
        reloaded(proxy, before)
        assert deletes(conn)
    assert proxy.alive()


def test_sighup_reloads_the_files(start_proxy: ProxyFactory, rl_t: None) -> None:
    proxy = start_proxy(ALLOW, "--policy-poll", "0")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        before = loads(proxy)
        write(policy_file(proxy), NO_DELETE)
        proxy.process.send_signal(signal.SIGHUP)
        reloaded(proxy, before)
        assert not deletes(conn)
    assert (
        "(SIGHUP)"
        in [r for r in proxy.audit_records() if r["type"] == "policy.loaded"][-1]["client"]
    )


def test_a_new_file_in_a_policy_directory_is_loaded(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "alice.yaml").write_text(ALLOW)
    proxy = start_proxy(None, "--policy", str(directory), "--policy-poll", "0.1")
    with pytest.raises(psycopg.OperationalError, match="no Steward policy covers subject user:bob"):
        psycopg.connect(proxy.dsn("bob"))
    before = loads(proxy)
    write(directory / "bob.yaml", ALLOW.replace("alice", "bob").replace("name: app", "name: b"))
    reloaded(proxy, before)
    with psycopg.connect(proxy.dsn("bob")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_policy_that_makes_a_subject_read_only_ends_its_read_write_sessions(
    start_proxy: ProxyFactory, rl_t: None
) -> None:
    proxy = start_proxy(ALLOW, "--policy-poll", "0.1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        before = loads(proxy)
        write(policy_file(proxy), READ_ONLY)
        reloaded(proxy, before)
        with pytest.raises(psycopg.Error, match="now makes this subject read-only") as ended:
            conn.execute("SELECT 1")
        assert ended.value.sqlstate == "42501"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rule readOnly"):
            conn.execute("DELETE FROM rl_t WHERE id = 1")


def test_prepare_cannot_hide_a_statement_the_policy_denies(
    start_proxy: ProxyFactory, pg: LocalPostgres, rl_t: None
) -> None:
    proxy = start_proxy(NO_DELETE, "--policy-poll", "0.1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rule no-delete"):
            conn.execute("PREPARE hidden AS DELETE FROM rl_t")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="has not seen prepared"):
            conn.execute("EXECUTE hidden")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="rule no-delete"):
            conn.execute("PREPARE p AS SELECT 1; EXECUTE p; PREPARE q AS DELETE FROM rl_t")
        conn.execute("PREPARE reads AS SELECT count(*) FROM rl_t WHERE id > $1")
        assert conn.execute("EXECUTE reads(0)").fetchone() == (1,)
    assert pg.execute("SELECT count(*) FROM rl_t").strip() == "1"


@pytest.mark.parametrize("how", ["SQL PREPARE", "protocol Parse"])
def test_a_session_holding_a_statement_prepared_under_the_old_policy_ends(
    start_proxy: ProxyFactory, pg: LocalPostgres, rl_t: None, how: str
) -> None:
    proxy = start_proxy(ALLOW, "--policy-poll", "0.1")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        if how == "SQL PREPARE":
            conn.execute("PREPARE harmless AS DELETE FROM rl_t WHERE id = $1")
            conn.execute("EXECUTE harmless(-1)")
            again = "EXECUTE harmless(1)"
        else:
            conn.execute("DELETE FROM rl_t WHERE id = %s", (-1,), prepare=True)
            again = "DELETE FROM rl_t WHERE id = %s"
        before = loads(proxy)
        write(policy_file(proxy), NO_DELETE)
        reloaded(proxy, before)
        with pytest.raises(psycopg.Error, match="now refuses statement") as ended:
            conn.execute(again, (1,) if "%s" in again else None, prepare=True)
        assert ended.value.sqlstate == "42501"
    assert pg.execute("SELECT count(*) FROM rl_t").strip() == "1"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert not deletes(conn)


def put_policy(proxy: Proxy, body: bytes, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Content-Type": "application/yaml"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        proxy.admin_url + "/policy", data=body, method="PUT", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_put_policy_with_the_admin_token_runs_pushed_yaml(
    start_proxy: ProxyFactory, tmp_path: Path, rl_t: None
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proxy = start_proxy(ALLOW, "--admin-token-file", str(token_file), "--policy-poll", "0")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert put_policy(proxy, NO_DELETE.encode(), token=None)[0] == 401
        assert put_policy(proxy, NO_DELETE.encode(), token="wrong")[0] == 401
        assert deletes(conn)
        status, answer = put_policy(proxy, b"kind: [broken")
        assert status == 422 and "not valid YAML" in answer["errors"][0]
        status, answer = put_policy(proxy, NO_DELETE.replace("deny", "block").encode())
        assert status == 422 and "'block' is not one of" in answer["errors"][0]
        assert deletes(conn)
        status, answer = put_policy(proxy, NO_DELETE.encode())
        assert status == 200 and answer["result"] == "loaded", answer
        assert answer["policies"] == ["default/app"]
        assert not deletes(conn)
        assert put_policy(proxy, NO_DELETE.encode())[1]["result"] == "unchanged"
    record = [r for r in proxy.audit_records() if r["type"] == "policy.loaded"][-1]
    assert record["client"] == "push from 127.0.0.1"
    assert record["fingerprint"] == answer["compiledHash"]
