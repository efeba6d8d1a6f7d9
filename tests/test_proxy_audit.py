"""The audit trail written by the proxy: content, secrecy and tamper evidence.

One workload runs through a proxy (psql, psycopg, asyncpg, pg8000; literals and
bound parameters carrying a fake SSN; an allowed and a denied user), the proxy is
stopped so the trail is complete, and the file is checked directly and with
``steward audit verify`` on intact and tampered copies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pg8000.dbapi
import psycopg
import pytest

from conftest import SSN, Proxy, ProxyFactory, run_psql

pytestmark = pytest.mark.timeout(90)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: audit-allow}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: audit-deny}
spec:
  subjects: [{kind: User, name: carol}]
  defaultAction: deny
"""

KEY_ORDER = [
    "seq", "time", "type", "session", "identity", "groups", "database", "client",
    "application", "backend_pid", "command", "statement", "fingerprint", "decision", "policy",
    "rule", "masked", "rows", "duration_ms", "error", "prev", "hash",
]  # fmt: skip


@dataclass
class Trail:
    path: Path
    lines: list[str]
    records: list[dict[str, object]]
    proxy: Proxy


def run_workload(proxy: Proxy) -> None:
    query = "SELECT id FROM mixed WHERE t = "
    result = run_psql(proxy.dsn(), "-c", f"{query}'{SSN}'")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(f"{query}'{SSN}'").fetchall() == [(1003,)]
        assert conn.execute(f"{query}%s", (SSN,)).fetchall() == [(1003,)]
        assert conn.cursor(binary=True).execute(f"{query}%s", (SSN,)).fetchall() == [(1003,)]
        conn.execute("SELECT 1; SELECT 2")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")

    async def via_asyncpg() -> None:
        conn = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            assert await conn.fetchval(f"{query}$1", SSN) == 1003
            stmt = await conn.prepare(f"SELECT count(*) FROM mixed WHERE t = $1 OR t = '{SSN}'")
            assert await stmt.fetchval(SSN) == 1
        finally:
            await conn.close()

    asyncio.run(via_asyncpg())
    conn8 = pg8000.dbapi.connect(**proxy.pg8000_args())
    try:
        cur = conn8.cursor()
        cur.execute(f"{query}%s", (SSN,))
        assert [tuple(row) for row in cur.fetchall()] == [(1003,)]
    finally:
        conn8.close()
    with (
        psycopg.connect(proxy.dsn("carol"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"{query}'{SSN}'")


@pytest.fixture(scope="module")
def trail(module_proxy_factory: ProxyFactory) -> Trail:
    proxy = module_proxy_factory(POLICY)
    run_workload(proxy)
    assert proxy.terminate() == 0, proxy.log()[-3000:]
    assert proxy.audit_log is not None
    text = proxy.audit_log.read_text()
    lines = text.splitlines()
    return Trail(proxy.audit_log, lines, [json.loads(line) for line in lines], proxy)


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def names_seq(output: str, *seqs: int) -> bool:
    return any(re.search(rf"seq\D{{0,4}}{n}\b", output, re.IGNORECASE) for n in seqs)


def test_intact_trail_verifies(trail: Trail) -> None:
    result = verify(trail.path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fake_ssn_appears_nowhere_in_the_audit_file(trail: Trail) -> None:
    raw = trail.path.read_bytes()
    assert SSN.encode() not in raw
    assert b"123456789" not in raw
    statements = [str(r.get("statement") or "") for r in trail.records]
    placeholders = [s for s in statements if "FROM mixed WHERE t =" in s]
    assert placeholders, statements
    assert all(("$" in s or "?" in s) for s in placeholders), placeholders


def test_fake_ssn_not_in_proxy_log(trail: Trail) -> None:
    assert SSN not in trail.proxy.log()


def test_records_have_design_keys_in_order_and_consecutive_seq(trail: Trail) -> None:
    assert [r["seq"] for r in trail.records] == list(range(1, len(trail.records) + 1))
    for record in trail.records:
        assert list(record) == KEY_ORDER, list(record)


def test_hash_chain_matches_design(trail: Trail) -> None:
    prev = "0" * 64
    for record in trail.records:
        body = {k: v for k, v in record.items() if k != "hash"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert record["prev"] == prev, record["seq"]
        assert record["hash"] == hashlib.sha256(canonical.encode()).hexdigest(), record["seq"]
        prev = str(record["hash"])


def test_session_and_statement_records_with_identity(trail: Trail) -> None:
    types = {str(r["type"]) for r in trail.records}
    assert {"session.start", "statement", "session.end"} <= types
    alice = [r for r in trail.records if r["identity"] == "user:alice"]
    assert {str(r["type"]) for r in alice} >= {"session.start", "statement", "session.end"}
    starts = sum(r["type"] == "session.start" for r in alice)
    ends = sum(r["type"] == "session.end" for r in alice)
    assert starts == ends == 4  # psql, psycopg, asyncpg, pg8000
    errors = [r for r in alice if r["type"] == "statement" and r.get("error")]
    assert errors, "the division by zero should be recorded with its error"


def test_every_record_of_a_session_names_its_backend_pid_and_application(trail: Trail) -> None:
    starts = {r["session"]: r for r in trail.records if r["type"] == "session.start"}
    assert len({r["backend_pid"] for r in starts.values()}) == len(starts) == 5
    for record in trail.records:
        if record["session"] is None:
            continue
        start = starts[record["session"]]
        assert isinstance(start["backend_pid"], int) and start["backend_pid"] > 0, start
        assert (record["backend_pid"], record["application"]) == (
            start["backend_pid"],
            start["application"],
        ), record
    assert [r["application"] for r in starts.values()].count("psql") == 1


def test_denied_statement_recorded_with_policy(trail: Trail) -> None:
    denied = [
        r for r in trail.records if r["type"] == "statement" and r["identity"] == "user:carol"
    ]
    assert denied, [r["identity"] for r in trail.records]
    assert all(r["decision"] == "deny" for r in denied), denied
    # the policy is named as NAME or NAMESPACE/NAME
    assert all(str(r["policy"]).split("/")[-1] == "audit-deny" for r in denied), denied


def _tampered(trail: Trail, tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_one_changed_byte_is_found(trail: Trail, tmp_path: Path) -> None:
    k = len(trail.lines) // 2
    line = trail.lines[k - 1]
    pos = line.index('"time":"') + len('"time":"')
    digit = line[pos]
    changed = line[:pos] + ("3" if digit != "3" else "4") + line[pos + 1 :]
    lines = list(trail.lines)
    lines[k - 1] = changed
    result = verify(_tampered(trail, tmp_path, "changed.jsonl", lines))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert names_seq(output, k), output


def test_deleted_line_is_found(trail: Trail, tmp_path: Path) -> None:
    k = len(trail.lines) // 2
    lines = trail.lines[: k - 1] + trail.lines[k:]
    result = verify(_tampered(trail, tmp_path, "deleted.jsonl", lines))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert names_seq(output, k, k + 1), output


def test_swapped_lines_are_found(trail: Trail, tmp_path: Path) -> None:
    k = len(trail.lines) // 2
    lines = list(trail.lines)
    lines[k - 1], lines[k] = lines[k], lines[k - 1]
    result = verify(_tampered(trail, tmp_path, "swapped.jsonl", lines))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert names_seq(output, k, k + 1), output


def test_truncated_last_line_is_found(trail: Trail, tmp_path: Path) -> None:
    lines = list(trail.lines)
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    result = verify(_tampered(trail, tmp_path, "truncated.jsonl", lines))
    assert result.returncode != 0, result.stdout + result.stderr


def test_server_error_text_with_literal_does_not_leak(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(POLICY)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            conn.execute(f"SELECT '{SSN}'::int")
        assert SSN in str(info.value)  # the client itself does see its own value
    assert proxy.terminate() == 0
    assert proxy.audit_log is not None
    assert SSN.encode() not in proxy.audit_log.read_bytes()
