"""Real clients through ``steward proxy`` get what they get from PostgreSQL directly.

psql, psycopg 3 (simple protocol for text, extended for binary and parameters),
asyncpg (extended protocol, binary, prepared statements, COPY) and pg8000; plus
multi-statement strings, failed transactions, LISTEN/NOTIFY, cancellation and
COPY in both directions including failures mid-COPY.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import uuid

import asyncpg
import pg8000.dbapi
import psycopg
import pytest
from psycopg import errors as pgerr

from steward_testing.postgres import LocalPostgres

from conftest import (
    BIG_ROWS,
    Proxy,
    active_upstream_queries,
    direct_dsn,
    psql_both,
    run_psql,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

MIXED_QUERY = "SELECT * FROM mixed ORDER BY id"
BIG_QUERY = "SELECT * FROM big ORDER BY id"


def digest(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def asyncpg_direct_args(pg: LocalPostgres) -> dict[str, object]:
    user = LocalPostgres.SCRAM_USER
    return {
        "host": pg.host,
        "port": pg.port,
        "user": user,
        "password": pg.passwords[user],
        "database": pg.dbname,
    }


# ------------------------------------------------------------ same results


def test_psql_mixed_types_equal(pg: LocalPostgres, proxy: Proxy) -> None:
    direct, proxied = psql_both(pg, proxy, "-A", "-c", MIXED_QUERY)
    assert "(64 rows)" in direct
    assert proxied == direct


def test_psql_large_result_equal(pg: LocalPostgres, proxy: Proxy) -> None:
    direct, proxied = psql_both(pg, proxy, "-A", "-t", "-c", BIG_QUERY)
    assert direct.count("\n") == BIG_ROWS
    assert (
        hashlib.sha256(proxied.encode()).hexdigest() == hashlib.sha256(direct.encode()).hexdigest()
    )


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_mixed_types_equal(pg: LocalPostgres, proxy: Proxy, binary: bool) -> None:
    with psycopg.connect(direct_dsn(pg)) as conn:
        direct = conn.cursor(binary=binary).execute(MIXED_QUERY).fetchall()
    with psycopg.connect(proxy.dsn()) as conn:
        proxied = conn.cursor(binary=binary).execute(MIXED_QUERY).fetchall()
    assert len(direct) == 64
    assert repr(proxied) == repr(direct)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_parameters_equal(pg: LocalPostgres, proxy: Proxy, binary: bool) -> None:
    query = "SELECT * FROM mixed WHERE id = ANY(%s) AND (t IS NULL OR t <> %s) ORDER BY id"
    params = ([1, 2, 3, 7, 1001, 1002, 1000], "nothing")
    with psycopg.connect(direct_dsn(pg)) as conn:
        direct = conn.cursor(binary=binary).execute(query, params).fetchall()
    with psycopg.connect(proxy.dsn()) as conn:
        proxied = conn.cursor(binary=binary).execute(query, params).fetchall()
    assert len(direct) == 7
    assert repr(proxied) == repr(direct)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_large_result_equal(pg: LocalPostgres, proxy: Proxy, binary: bool) -> None:
    with psycopg.connect(direct_dsn(pg)) as conn:
        direct = conn.cursor(binary=binary).execute(BIG_QUERY).fetchall()
    with psycopg.connect(proxy.dsn()) as conn:
        proxied = conn.cursor(binary=binary).execute(BIG_QUERY).fetchall()
    assert len(direct) == BIG_ROWS
    assert len(proxied) == BIG_ROWS
    assert digest(proxied) == digest(direct)


def test_psycopg_server_side_cursor_streams_all_rows(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn()) as conn, conn.cursor(name="big_cursor") as cur:
        cur.itersize = 5000
        cur.execute(BIG_QUERY)
        count = sum(1 for _ in cur)
    assert count == BIG_ROWS


def test_asyncpg_mixed_types_and_prepared_statements_equal(pg: LocalPostgres, proxy: Proxy) -> None:
    async def fetch(args: dict[str, object]) -> tuple[list[tuple], list[tuple], list[object]]:
        conn = await asyncpg.connect(**args)
        try:
            rows = [tuple(r) for r in await conn.fetch(MIXED_QUERY)]
            stmt = await conn.prepare("SELECT * FROM mixed WHERE id = $1")
            by_id = [tuple(await stmt.fetchrow(i)) for i in (1, 2, 1001, 1002, 1003)]
            scalars = [
                await conn.fetchval("SELECT $1::numeric * 2", 21),
                await conn.fetchval("SELECT $1::text || $2::text", "a", "b"),
                await conn.fetchval("SELECT $1::int[]", [1, None, 3]),
            ]
            return rows, by_id, scalars
        finally:
            await conn.close()

    direct = asyncio.run(fetch(asyncpg_direct_args(pg)))
    proxied = asyncio.run(fetch(proxy.asyncpg_args()))
    assert len(direct[0]) == 64
    assert repr(proxied) == repr(direct)


def test_asyncpg_large_result_equal(pg: LocalPostgres, proxy: Proxy) -> None:
    async def fetch(args: dict[str, object]) -> list[tuple]:
        conn = await asyncpg.connect(**args)
        try:
            return [tuple(r) for r in await conn.fetch(BIG_QUERY)]
        finally:
            await conn.close()

    direct = asyncio.run(fetch(asyncpg_direct_args(pg)))
    proxied = asyncio.run(fetch(proxy.asyncpg_args()))
    assert len(proxied) == BIG_ROWS
    assert digest(proxied) == digest(direct)


def test_pg8000_mixed_types_equal(pg: LocalPostgres, proxy: Proxy) -> None:
    user = LocalPostgres.SCRAM_USER
    direct_conn = pg8000.dbapi.connect(
        user=user, password=pg.passwords[user], host=pg.host, port=pg.port, database=pg.dbname
    )
    try:
        cur = direct_conn.cursor()
        cur.execute(MIXED_QUERY)
        direct = cur.fetchall()
        cur.execute("SELECT t, i FROM mixed WHERE id = %s OR i = %s ORDER BY id", (3, 0))
        direct_params = cur.fetchall()
    finally:
        direct_conn.close()
    conn = pg8000.dbapi.connect(**proxy.pg8000_args())
    try:
        cur = conn.cursor()
        cur.execute(MIXED_QUERY)
        proxied = cur.fetchall()
        cur.execute("SELECT t, i FROM mixed WHERE id = %s OR i = %s ORDER BY id", (3, 0))
        proxied_params = cur.fetchall()
    finally:
        conn.close()
    assert len(direct) == 64
    assert repr(proxied) == repr(direct)
    assert len(direct_params) == 2
    assert repr(proxied_params) == repr(direct_params)


# --------------------------------------------------------- multi-statement


def test_psql_multi_statement_string(pg: LocalPostgres, proxy: Proxy) -> None:
    direct, proxied = psql_both(pg, proxy, "-A", "-t", "-c", "select 1; select 2")
    assert proxied == direct
    assert proxied.split() == ["1", "2"]


def test_psycopg_multi_statement_string(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        cur = conn.execute("SELECT 1; SELECT 2")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [(2,)]
        assert not cur.nextset()


def test_multi_statement_with_error_in_the_middle(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(pgerr.DivisionByZero):
            conn.execute("SELECT 1; SELECT 1/0; SELECT 3")
        assert conn.execute("SELECT 4").fetchone() == (4,)


# ------------------------------------------------------------ transactions


def test_error_inside_transaction_then_rollback(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(pgerr.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(pgerr.InFailedSqlTransaction):
            conn.execute("SELECT 2")
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
        conn.commit()


def test_psql_error_then_rollback_keeps_session(proxy: Proxy) -> None:
    script = "BEGIN;\nSELECT 1/0;\nROLLBACK;\nSELECT 'still here';\n"
    result = run_psql(proxy.dsn(), "-A", "-t", "-v", "ON_ERROR_STOP=0", "-f", "-", input=script)
    assert "division by zero" in result.stderr
    assert "still here" in result.stdout


def test_asyncpg_transaction_error_then_usable(proxy: Proxy) -> None:
    async def scenario() -> object:
        conn = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("CREATE TEMP TABLE uniq (k int PRIMARY KEY)")
                    await conn.execute("INSERT INTO uniq VALUES ($1)", 1)
                    await conn.execute("INSERT INTO uniq VALUES ($1)", 1)
            return await conn.fetchval("SELECT to_regclass('pg_temp.uniq') IS NULL")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) is True


# ----------------------------------------------------------- LISTEN/NOTIFY


def test_listen_notify_between_two_proxied_sessions_psycopg(proxy: Proxy) -> None:
    channel = "chan_" + uuid.uuid4().hex[:8]
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as listener,
        psycopg.connect(proxy.dsn("bob"), autocommit=True) as sender,
    ):
        listener.execute(f"LISTEN {channel}")
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "hello through steward"))
        notes = list(listener.notifies(timeout=15, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [(channel, "hello through steward")]


def test_listen_notify_asyncpg(proxy: Proxy) -> None:
    async def scenario() -> str:
        received: asyncio.Queue[str] = asyncio.Queue()
        listener = await asyncpg.connect(**proxy.asyncpg_args())
        sender = await asyncpg.connect(**proxy.asyncpg_args("bob"))
        try:
            await listener.add_listener("steward_events", lambda *a: received.put_nowait(a[3]))
            await sender.execute("NOTIFY steward_events, 'payload-42'")
            return await asyncio.wait_for(received.get(), 15)
        finally:
            await listener.close()
            await sender.close()

    assert asyncio.run(scenario()) == "payload-42"


# ------------------------------------------------------------------ cancel


@pytest.mark.timeout(25)
def test_cancel_during_pg_sleep_psycopg(pg: LocalPostgres, proxy: Proxy) -> None:
    marker = "cancel_" + uuid.uuid4().hex[:8]
    with psycopg.connect(proxy.dsn()) as conn:

        def cancel_when_running() -> None:
            wait_for(lambda: active_upstream_queries(pg, marker), "the sleep to start upstream")
            conn.cancel_safe()

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        try:
            with pytest.raises(pgerr.QueryCanceled) as info:
                conn.execute(f"SELECT pg_sleep(30) AS {marker}")
        finally:
            canceller.join()
        assert info.value.sqlstate == "57014"
        conn.rollback()
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


@pytest.mark.timeout(25)
def test_cancel_during_pg_sleep_asyncpg(pg: LocalPostgres, proxy: Proxy) -> None:
    marker = "cancel_" + uuid.uuid4().hex[:8]

    async def scenario() -> object:
        conn = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            task = asyncio.ensure_future(conn.fetchval(f"SELECT pg_sleep(30) AS {marker}"))
            while not active_upstream_queries(pg, marker):
                await asyncio.sleep(0.02)
            task.cancel()  # asyncpg sends a CancelRequest and waits for ReadyForQuery
            with pytest.raises(asyncio.CancelledError):
                await task
            return await conn.fetchval("SELECT 7")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == 7
    assert active_upstream_queries(pg, marker) == 0


# -------------------------------------------------------------------- COPY


def test_copy_both_directions_psycopg(proxy: Proxy) -> None:
    rows = [(i, f"name {i}", None if i % 3 == 0 else i * 1.5) for i in range(5000)]
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute("CREATE TEMP TABLE copy_in (id int, name text, score float8)")
        with conn.cursor().copy("COPY copy_in FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert conn.execute("SELECT count(*) FROM copy_in").fetchone() == (5000,)
        out = []
        with conn.cursor().copy("COPY (SELECT * FROM copy_in ORDER BY id) TO STDOUT") as copy:
            out.extend(copy.rows())
    assert [(int(a), b, None if c is None else float(c)) for a, b, c in out] == rows


def test_copy_out_large_table_psycopg(pg: LocalPostgres, proxy: Proxy) -> None:
    def copy_all(dsn: str) -> bytes:
        buf = io.BytesIO()
        with (
            psycopg.connect(dsn) as conn,
            conn.cursor().copy("COPY (SELECT * FROM big ORDER BY id) TO STDOUT") as copy,
        ):
            for block in copy:
                buf.write(block)
        return buf.getvalue()

    direct = copy_all(direct_dsn(pg))
    proxied = copy_all(proxy.dsn())
    assert direct.count(b"\n") == BIG_ROWS
    assert hashlib.sha256(proxied).digest() == hashlib.sha256(direct).digest()


def test_copy_fail_from_client_leaves_session_usable(proxy: Proxy) -> None:
    class Abort(Exception):
        pass

    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE copy_fail (id int)")
        with (
            pytest.raises((Abort, pgerr.QueryCanceled)),
            conn.cursor().copy("COPY copy_fail FROM STDIN") as copy,
        ):
            copy.write_row((1,))
            raise Abort("client gives up mid-COPY")  # psycopg sends CopyFail
        assert conn.execute("SELECT count(*) FROM copy_fail").fetchone() == (0,)


def test_copy_with_bad_row_mid_way_leaves_session_usable(proxy: Proxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE copy_bad (id int)")
        with (
            pytest.raises(pgerr.InvalidTextRepresentation),
            conn.cursor().copy("COPY copy_bad FROM STDIN") as copy,
        ):
            for i in range(2000):
                copy.write(f"{i}\n".encode())
            copy.write(b"not-a-number\n")
            for i in range(2000):
                copy.write(f"{i}\n".encode())
        assert conn.execute("SELECT count(*) FROM copy_bad").fetchone() == (0,)
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)


def test_psql_backslash_copy_both_directions(proxy: Proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "in.csv"
    source.write_text("".join(f"{i},item {i}\n" for i in range(1000)))
    target = tmp_path / "out.csv"
    script = (
        "CREATE TEMP TABLE psql_copy (id int, label text);\n"
        f"\\copy psql_copy FROM '{source}' WITH (FORMAT csv)\n"
        f"\\copy (SELECT * FROM psql_copy ORDER BY id) TO '{target}' WITH (FORMAT csv)\n"
        "SELECT count(*) FROM psql_copy;\n"
    )
    result = run_psql(proxy.dsn(), "-A", "-t", "-f", "-", input=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1000"
    assert target.read_text() == source.read_text()


def test_asyncpg_copy_records_and_copy_from_query(proxy: Proxy) -> None:
    records = [(i, f"r{i}", i % 2 == 0) for i in range(3000)]

    async def scenario() -> tuple[int, bytes]:
        conn = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            await conn.execute("CREATE TEMP TABLE acopy (id int, label text, even bool)")
            await conn.copy_records_to_table("acopy", records=records)
            count = await conn.fetchval("SELECT count(*) FROM acopy")
            out = io.BytesIO()
            await conn.copy_from_query(
                "SELECT id, label, even FROM acopy WHERE id < $1 ORDER BY id",
                3,
                output=out,
                format="csv",
            )
            return count, out.getvalue()
        finally:
            await conn.close()

    count, csv = asyncio.run(scenario())
    assert count == 3000
    assert csv == b"0,r0,t\n1,r1,f\n2,r2,t\n"


def test_asyncpg_copy_records_with_bad_type_leaves_session_usable(proxy: Proxy) -> None:
    async def scenario() -> object:
        conn = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            await conn.execute("CREATE TEMP TABLE acopy_bad (id int NOT NULL)")
            with pytest.raises(asyncpg.exceptions.NotNullViolationError):
                await conn.copy_records_to_table("acopy_bad", records=[(1,), (2,), (None,), (4,)])
            return await conn.fetchval("SELECT count(*) FROM acopy_bad")
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == 0
