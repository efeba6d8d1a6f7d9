"""The extended query protocol through the proxy, with real clients.

psycopg 3 pipeline mode, asyncpg prepared statements and pg8000 meet guardrails
(a denied DELETE, UPDATE without WHERE, a denied function) and must get a 42501
that names the policy, while the statements before it in the pipeline give their
results and the connection stays usable. A refusal fails like any failing
statement in PostgreSQL: the rest of its batch is skipped and the batch rolled
back, and inside an explicit transaction the transaction is failed until
ROLLBACK. psql's ``\\lo_import``/``\\lo_export`` exercise the FunctionCall
message. The audit trail holds one record per Execute, with the statement's
normalized text and never a bound value.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pg8000.dbapi
import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.pq import TransactionStatus

from steward_testing.postgres import LocalPostgres

from conftest import (
    SSN,
    Proxy,
    ProxyFactory,
    direct_dsn,
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

            # psycopg raises the batch's error at whichever call first sees it.
            with pytest.raises(pgerr.InsufficientPrivilege) as info:
                updated = conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", ("z", 1))
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (2,))
                conn.execute("SELECT 42")
                pipeline.sync()
            assert info.value.sqlstate == "42501"
            assert "extended-guardrails" in str(info.value)
            assert "no-delete" in str(info.value)
            assert updated.rowcount == 1
        # As from PostgreSQL itself: the UPDATE before the error was rolled back
        # with its batch, and the connection works as usual.
        again = conn.execute(f"SELECT id, v FROM {table} ORDER BY id")
        assert again.fetchall() == [(1, "a"), (2, "b")]
        conn.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize(
    ("through_proxy", "failing", "error"),
    [
        pytest.param(
            True,
            "DELETE FROM {table} WHERE id = %s",
            pgerr.InsufficientPrivilege,
            id="a denied DELETE through the proxy",
        ),
        pytest.param(
            False,
            "SELECT 1 / (%s - 1)",
            pgerr.DivisionByZero,
            id="for comparison, a failing statement sent straight to PostgreSQL",
        ),
    ],
)
def test_psycopg_pipeline_error_rolls_back_the_statements_before_it_in_its_batch(
    guarded: Proxy, pg: LocalPostgres, through_proxy: bool, failing: str, error: type[Exception]
) -> None:
    table = unique_table()
    dsn = guarded.dsn("dave") if through_proxy else direct_dsn(pg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        try:
            # In pipeline mode psycopg raises the batch's error at whichever call
            # first sees it: a later execute() or the sync(), depending on timing.
            with pytest.raises(error), conn.pipeline() as pipeline:
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                conn.execute(failing.format(table=table), (1,))
                conn.execute("SELECT 42")
                pipeline.sync()
            # The batch ran in one implicit transaction, which the error rolled back.
            assert pg.execute(f"SELECT count(*) FROM {table}").strip() == "0"
            assert conn.info.transaction_status == TransactionStatus.IDLE
            assert conn.execute("SELECT 'usable'").fetchone() == ("usable",)
            conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
            assert pg.execute(f"SELECT id FROM {table}").strip() == "2"
        finally:
            conn.execute(f"DROP TABLE {table}")
    if through_proxy:
        denied = wait_for(
            lambda: [
                r
                for r in statement_records(guarded, f"DELETE FROM {table}")
                if r["decision"] == "deny"
            ],
            "the audit record of the refusal",
        )
        assert isinstance(denied, list) and len(denied) == 1


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


# ------------------------------------------------------------ transactions


@pytest.fixture
def table(pg: LocalPostgres) -> Iterator[str]:
    """An empty table the upstream role owns, dropped afterwards."""
    name = unique_table()
    pg.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY); "
        f"ALTER TABLE {name} OWNER TO {LocalPostgres.SCRAM_USER}"
    )
    yield name
    pg.execute(f"DROP TABLE {name}")


def test_denied_statement_fails_an_explicit_transaction_until_rollback(
    guarded: Proxy, pg: LocalPostgres, table: str
) -> None:
    with psycopg.connect(guarded.dsn("dave")) as conn:  # autocommit off: psycopg sends BEGIN
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        with pytest.raises(pgerr.InsufficientPrivilege) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (1,))
        assert "no-delete" in str(info.value)
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(pgerr.InFailedSqlTransaction) as failed:
            conn.execute("SELECT 1")
        assert failed.value.sqlstate == "25P02"
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert pg.execute(f"SELECT count(*) FROM {table}").strip() == "0"
        # The session is usable afterwards, in a new transaction.
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
        assert conn.execute(f"SELECT id FROM {table}").fetchall() == [(2,)]
        conn.commit()
    assert pg.execute(f"SELECT id FROM {table}").strip() == "2"


def test_denied_statement_in_a_psql_transaction_block_fails_the_block(
    guarded: Proxy, pg: LocalPostgres, table: str
) -> None:
    script = (
        "BEGIN;\n"
        f"INSERT INTO {table} VALUES (1);\n"
        f"DELETE FROM {table};\n"
        "SELECT 'ignored';\n"
        "ROLLBACK;\n"
        f"INSERT INTO {table} VALUES (2);\n"
        "SELECT 'usable';\n"
    )
    result = run_psql(guarded.dsn("dave"), "-v", "ON_ERROR_STOP=0", "-At", input=script)
    errors = [line for line in result.stderr.splitlines() if "ERROR:" in line]
    assert len(errors) == 2, result.stderr
    assert "no-delete" in errors[0]
    assert "current transaction is aborted" in errors[1]
    assert "ignored" not in result.stdout
    assert result.stdout.splitlines()[-1] == "usable"
    assert pg.execute(f"SELECT id FROM {table}").strip() == "2"


@pytest.mark.parametrize(
    ("in_transaction", "statuses"),
    [
        pytest.param(False, "IIII", id="outside a transaction the session stays idle"),
        pytest.param(True, "TEEI", id="inside one the transaction is failed until ROLLBACK"),
    ],
)
def test_ready_for_query_after_a_refusal_is_what_postgresql_reports(
    guarded: Proxy, in_transaction: bool, statuses: str
) -> None:
    sock, _ = raw_login(guarded, "dave")
    with sock:
        got = []
        first = "BEGIN" if in_transaction else "SELECT 1"
        for sql, kinds in [
            (first, None),
            ("DELETE FROM mixed WHERE id = -1", [b"E", b"Z"]),
            ("SELECT 'next'", [b"E", b"Z"] if in_transaction else [b"T", b"D", b"C", b"Z"]),
            ("ROLLBACK" if in_transaction else "SELECT 2", None),
        ]:
            sock.sendall(query_message(sql))
            answer = recv_messages(sock)
            if kinds is not None:
                assert [kind for kind, _ in answer] == kinds, sql
            if answer[0][0] == b"E":
                state = error_fields(answer[0][1])["C"]
                assert state == ("42501" if sql.startswith("DELETE") else "25P02")
            got.append(answer[-1][1].decode())
        assert "".join(got) == statuses
        sock.sendall(query_message("SELECT 'after'"))
        assert [kind for kind, _ in recv_messages(sock)] == [b"T", b"D", b"C", b"Z"]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param((-1,), id="a bound parameter"),
        pytest.param(None, id="no parameters"),
    ],
)
def test_denied_statement_outside_a_transaction_leaves_the_session_usable(
    guarded: Proxy, pg: LocalPostgres, table: str, params: tuple[int, ...] | None
) -> None:
    with psycopg.connect(guarded.dsn("dave"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        sql = f"DELETE FROM {table} WHERE id = " + ("%s" if params else "1")
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute(sql, params)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute(f"SELECT id FROM {table}").fetchall() == [(1,)]
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
    assert pg.execute(f"SELECT id FROM {table} ORDER BY id").split() == ["1", "2"]


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


# ------------------------------------------------------------ COPY FROM STDIN


def test_libpq_copy_from_stdin_through_the_extended_protocol_leaves_the_session_usable(
    guarded: Proxy,
) -> None:
    """libpq sends Sync after the Execute of a COPY ... FROM STDIN, and another
    after CopyDone; PostgreSQL ignores the first (it comes in COPY mode), so it
    answers one ReadyForQuery for both."""
    from psycopg import pq

    conn = pq.PGconn.connect(guarded.dsn("alice").encode())
    try:
        assert conn.status == pq.ConnStatus.OK
        table = unique_table()
        conn.exec_(f"CREATE TEMP TABLE {table} (x text)".encode())
        conn.send_query_params(f"COPY {table} FROM STDIN".encode(), None)
        result = conn.get_result()
        assert result is not None and result.status == pq.ExecStatus.COPY_IN
        assert conn.put_copy_data(b"a\\\\b\n") == 1
        assert conn.put_copy_end() == 1
        copied = conn.get_result()
        assert copied is not None and copied.status == pq.ExecStatus.COMMAND_OK, (
            copied and copied.error_message
        )
        assert conn.get_result() is None
        # Text with a backslash waits until the server settled what ran before:
        # that must come.
        rows = conn.exec_(f"SELECT x || '\\' FROM {table}".encode())
        assert rows.status == pq.ExecStatus.TUPLES_OK, rows.error_message
        assert rows.get_value(0, 0) == b"a\\b\\"
        again = conn.exec_params(b"SELECT $1::int + 1", [b"41"])
        assert again.get_value(0, 0) == b"42"
    finally:
        conn.finish()
