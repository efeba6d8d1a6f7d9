"""The extended query protocol through the proxy, with real clients.

psycopg 3 pipeline mode, asyncpg prepared statements and pg8000 meet guardrails
(a denied DELETE, UPDATE without WHERE, a denied function) and must get a 42501
that names the policy, while the other statements of the pipeline give their
results and the connection stays usable. psql's ``\\lo_import``/``\\lo_export``
exercise the FunctionCall message. The audit trail holds one record per
Execute, with the statement's normalized text and never a bound value.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from pathlib import Path

import asyncpg
import pg8000.dbapi
import psycopg
import pytest
from psycopg import errors as pgerr

from conftest import (
    SSN,
    Proxy,
    ProxyFactory,
    error_fields,
    message,
    query_message,
    raw_login,
    recv_messages,
    run_psql,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: extended-guardrails}
spec:
  subjects: [{kind: User, name: dave}]
  defaultAction: allow
  guardrails:
    - {name: no-delete, match: {statements: [DELETE]}, action: deny}
    - name: no-unbounded-updates
      match: {statements: [UPDATE], withoutWhere: true}
      action: deny
      message: UPDATE needs a WHERE clause
    - {name: no-file-access, match: {functions: [pg_read_file, pg_read_binary_file]}, action: deny}
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: extended-allow-all}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""


@pytest.fixture(scope="module")
def guarded(module_proxy_factory: ProxyFactory) -> Proxy:
    return module_proxy_factory(POLICY)


def unique_table() -> str:
    return f"ext_{uuid.uuid4().hex[:10]}"


def statement_records(proxy: Proxy, needle: str) -> list[dict[str, object]]:
    return [
        r
        for r in proxy.audit_records()
        if r["type"] == "statement" and needle in str(r.get("statement") or "")
    ]


# ------------------------------------------------------------ psycopg pipeline


def test_psycopg_pipeline_with_a_denied_statement(guarded: Proxy) -> None:
    table = unique_table()
    with psycopg.connect(guarded.dsn("dave"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        with conn.pipeline() as pipeline:
            inserted = conn.execute(
                f"INSERT INTO {table} VALUES (%s, %s), (%s, %s) RETURNING id", (1, "a", 2, "b")
            )
            counted = conn.execute(f"SELECT count(*) FROM {table}")
            pipeline.sync()
            assert sorted(r[0] for r in inserted.fetchall()) == [1, 2]
            assert counted.fetchone() == (2,)

            updated = conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("z", 1))
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (2,))
            after = conn.execute("SELECT 42")
            with pytest.raises(pgerr.InsufficientPrivilege) as info:
                pipeline.sync()
            assert info.value.sqlstate == "42501"
            assert "extended-guardrails" in str(info.value)
            assert "no-delete" in str(info.value)
            assert updated.rowcount == 1
            # As from PostgreSQL itself: nothing after the error in that batch ran.
            with pytest.raises(psycopg.Error):
                after.fetchone()

            again = conn.execute(f"SELECT id FROM {table} ORDER BY id")
            pipeline.sync()
            assert again.fetchall() == [(1,), (2,)]
        # Outside the pipeline the connection works as usual.
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
        conn.execute(f"DROP TABLE {table}")


def test_psycopg_pipeline_fetch_before_sync_gets_results_of_statements_before_a_refusal(
    guarded: Proxy,
) -> None:
    with psycopg.connect(guarded.dsn("dave"), autocommit=True) as conn:
        with pytest.raises(pgerr.InsufficientPrivilege), conn.pipeline():
            first = conn.execute("SELECT %s::int + 1", (41,))
            conn.execute("DELETE FROM mixed WHERE id = %s", (-1,))
            # Fetching before the pipeline is synced makes psycopg send a Flush;
            # as with PostgreSQL itself, the fetch then reports the batch's error.
            first.fetchone()
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


# ---------------------------------------------------------------- asyncpg


def test_asyncpg_prepare_of_a_denied_statement_and_the_connection_stays_usable(
    guarded: Proxy,
) -> None:
    async def scenario() -> tuple[object, object]:
        conn = await asyncpg.connect(**guarded.asyncpg_args("dave"))
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as info:
                await conn.prepare("DELETE FROM mixed WHERE id = $1")
            assert "no-delete" in str(info.value)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as info:
                await conn.prepare("UPDATE mixed SET t = $1")
            assert "UPDATE needs a WHERE clause" in str(info.value)
            stmt = await conn.prepare("SELECT t FROM mixed WHERE id = $1")
            value = await stmt.fetchval(1003)
            async with conn.transaction():
                status = await conn.execute("UPDATE mixed SET t = t WHERE id = $1", 1003)
            return value, status
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == (SSN, "UPDATE 1")


def test_asyncpg_prepared_statement_is_audited_once_per_execute_without_values(
    guarded: Proxy,
) -> None:
    marker = f"m{uuid.uuid4().hex[:8]}"
    sql = f"SELECT id, '{marker}' AS m FROM mixed WHERE t = $1 OR t = $2"

    async def scenario() -> list[object]:
        conn = await asyncpg.connect(**guarded.asyncpg_args("dave"))
        try:
            stmt = await conn.prepare(sql)
            return [await stmt.fetchval(SSN, f"x{i}") for i in range(3)]
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == [1003, 1003, 1003]
    # The marker is a literal, so the recorded text has it replaced (numbered after
    # the statement's own parameters): find the records by shape.
    records = wait_for(
        lambda: [
            r
            for r in statement_records(guarded, "WHERE t = $")
            if "AS m FROM mixed" in str(r["statement"]) and r["rows"] == 1
        ],
        "audit records of the prepared statement",
    )
    assert isinstance(records, list)
    assert len(records) == 3
    assert {r["statement"] for r in records} == {
        "SELECT id, $3 AS m FROM mixed WHERE t = $1 OR t = $2"
    }
    assert len({r["fingerprint"] for r in records}) == 1
    text = guarded.audit_log.read_text()  # type: ignore[union-attr]
    assert SSN not in text
    assert marker not in text


# ----------------------------------------------------------------- pg8000


def test_pg8000_denied_statement_then_allowed_ones(guarded: Proxy) -> None:
    conn = pg8000.dbapi.connect(**guarded.pg8000_args("dave"))
    try:
        cur = conn.cursor()
        with pytest.raises(pg8000.dbapi.DatabaseError) as info:
            cur.execute("DELETE FROM mixed WHERE id = %s", (-1,))
        fields = info.value.args[0]
        assert fields["C"] == "42501"
        assert "no-delete" in fields["M"]
        conn.rollback()
        cur.execute("SELECT id FROM mixed WHERE t = %s", (SSN,))
        assert [list(r) for r in cur.fetchall()] == [[1003]]
        cur.execute("SELECT %s::int * 2", (21,))
        assert list(cur.fetchone()) == [42]
    finally:
        conn.close()


# ---------------------------------------------------------------- guardrails


@pytest.mark.parametrize(
    ("sql", "params", "rule"),
    [
        pytest.param(
            "UPDATE {table} SET v = %s", ("x",), "no-unbounded-updates", id="UPDATE without WHERE"
        ),
        pytest.param(
            "WITH u AS (UPDATE {table} SET v = %s RETURNING 1) SELECT count(*) FROM u",
            ("x",),
            "no-unbounded-updates",
            id="UPDATE without WHERE inside WITH",
        ),
        pytest.param(
            "SELECT pg_read_file(%s)", ("/etc/hostname",), "no-file-access", id="pg_read_file"
        ),
        pytest.param(
            "SELECT length(pg_catalog.pg_read_binary_file(%s)) FROM {table}",
            ("/etc/hostname",),
            "no-file-access",
            id="a qualified pg_read_binary_file inside an expression",
        ),
    ],
)
def test_guardrail_denies_in_the_extended_protocol(
    guarded: Proxy, sql: str, params: tuple[object, ...], rule: str
) -> None:
    table = unique_table()
    with psycopg.connect(guarded.dsn("dave"), autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE {table} (id int, v text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
        with pytest.raises(pgerr.InsufficientPrivilege) as info:
            conn.execute(sql.format(table=table), params)
        assert rule in str(info.value)
        assert "extended-guardrails" in str(info.value)
        # The same kind of statement with a WHERE clause goes through.
        cur = conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("y", 1))
        assert cur.rowcount == 1
        assert conn.execute(f"SELECT v FROM {table} ORDER BY id").fetchall() == [("y",), ("b",)]


# ------------------------------------------------------------ FunctionCall


def test_psql_large_object_import_and_export_use_function_calls(
    guarded: Proxy, tmp_path: Path
) -> None:
    source = tmp_path / "in.bin"
    payload = bytes(range(256)) * 64 + SSN.encode()
    source.write_bytes(payload)
    target = tmp_path / "out.bin"
    imported = run_psql(guarded.dsn("alice"), "-c", f"\\lo_import {source}")
    assert imported.returncode == 0, imported.stderr
    oid = int(imported.stdout.split()[-1])
    exported = run_psql(guarded.dsn("alice"), "-c", f"\\lo_export {oid} {target}")
    assert exported.returncode == 0, exported.stderr
    assert target.read_bytes() == payload
    unlinked = run_psql(guarded.dsn("alice"), "-c", f"\\lo_unlink {oid}")
    assert unlinked.returncode == 0, unlinked.stderr

    calls = wait_for(
        lambda: [r for r in guarded.audit_records() if r.get("command") == "FUNCTION CALL"],
        "FunctionCall audit records",
    )
    assert isinstance(calls, list)
    assert all(r["identity"] == "user:alice" and r["decision"] == "allow" for r in calls)
    assert all(r["error"] is None for r in calls)
    assert SSN not in guarded.audit_log.read_text()  # type: ignore[union-attr]


PG_READ_FILE_OID = 3826  # pg_read_file(text) in PostgreSQL's catalog


def test_function_call_by_oid_cannot_bypass_a_functions_guardrail(guarded: Proxy) -> None:
    path = b"/etc/hostname"
    body = struct.pack("!IHhHi", PG_READ_FILE_OID, 1, 0, 1, len(path)) + path
    body += struct.pack("!h", 0)
    sock, _ = raw_login(guarded, "dave")
    with sock:
        sock.sendall(message(b"F", body))
        answer = recv_messages(sock)
        assert [kind for kind, _ in answer] == [b"E", b"Z"]
        fields = error_fields(answer[0][1])
        assert fields["C"] == "42501"
        assert "no-file-access" in fields["M"]
        sock.sendall(query_message("SELECT 'after'"))
        assert [kind for kind, _ in recv_messages(sock)] == [b"T", b"D", b"C", b"Z"]
