"""Masking in worker processes (``--mask-workers``) against a real PostgreSQL.

The same policy and hash key through a proxy that masks in its own process
and through one that hands long runs of rows to workers: every byte the
client receives must be the same, in the same order, and a worker that dies
must end its session without a row getting out unmasked.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest

from steward_proxy import wire
from steward_proxy.masking.rows import MaskJob
from steward_proxy.maskworkers import MaskPool
from tests.conftest import (
    LocalPostgres,
    Proxy,
    ProxyFactory,
    active_upstream_queries,
    error_fields,
    query_message,
    raw_login,
    read_until_closed,
    recv_messages,
    wait_for,
)
from tests.sessionkit import enc

ROWS = 20_000

SCHEMA = f"""
CREATE SCHEMA wk;
CREATE TABLE wk.people AS
SELECT g AS id,
       'Person ' || g AS name,
       'user' || g || '@example.org' AS email,
       lpad((100 + g % 800)::text, 3, '0') || '-55-' || lpad(g::text, 4, '0') AS ssn,
       (g * 7919)::bigint AS account,
       'note ' || g AS notes
FROM generate_series(1, {ROWS}) g;
ANALYZE wk.people;
"""

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: wk-readers}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  masking: {rules: [wk-pii]}
---
apiVersion: steward.dev/v1alpha1
kind: MaskingRule
metadata: {name: wk-pii}
spec:
  rules:
    - {columns: [wk.people.email], strategy: email}
    - {columns: [wk.people.ssn], strategy: redact}
    - {columns: [wk.people.name, wk.people.account], strategy: hash}
"""

SELECT = "SELECT id, name, email, ssn, account, notes FROM wk.people ORDER BY id"


@pytest.fixture(scope="module")
def seeded(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    pg.execute(SCHEMA)
    yield pg
    pg.execute("DROP SCHEMA wk CASCADE")


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "hash.key"
    path.write_text("workers-test-key-0123456789abcdef\n")
    return path


@pytest.fixture(scope="module")
def in_process(seeded: LocalPostgres, module_proxy_factory: ProxyFactory, key_file: Path) -> Proxy:
    return module_proxy_factory(POLICY, "--hash-key-file", str(key_file))


@pytest.fixture
def pooled(seeded: LocalPostgres, start_proxy: ProxyFactory, key_file: Path) -> Proxy:
    return start_proxy(POLICY, "--hash-key-file", str(key_file), "--mask-workers", "2")


def every_byte(proxy: Proxy, sql: str, user: str = "alice") -> bytes:
    """Every byte the client receives for ``sql``, up to the connection's end or its
    ReadyForQuery."""
    sock, _ = raw_login(proxy, user)
    try:
        sock.sendall(query_message(sql))
        return read_answers(sock)
    finally:
        sock.close()


def read_answers(sock: socket.socket) -> bytes:
    data = b""
    while True:
        pos = 0
        while len(data) - pos >= 5:
            kind = data[pos : pos + 1]
            (length,) = struct.unpack_from("!i", data, pos + 1)
            if len(data) < pos + 1 + length:
                break
            if kind == b"Z":
                return data
            pos += 1 + length
        chunk = sock.recv(1 << 16)
        if not chunk:
            return data
        data += chunk


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def counter(proxy: Proxy, sample: str) -> int:
    """The value of one sample of the proxy's metrics, by its name and labels."""
    status, text = proxy.http_get("/metrics")
    assert status == 200
    line = next(x for x in text.splitlines() if x.startswith(sample + " "))
    return int(float(line.split()[1]))


def mask_jobs(proxy: Proxy) -> int:
    return counter(proxy, "steward_mask_jobs_total")


def workers_of(proxy: Proxy) -> list[int]:
    return children_running(proxy.pid)


def children_running(parent_pid: int) -> list[int]:
    """The masking workers the process ``parent_pid`` started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if parent == parent_pid and b"steward_proxy.maskworkers" in command:
            found.append(int(entry))
    return found


def test_workers_send_every_byte_the_session_would_in_the_same_order(
    in_process: Proxy, pooled: Proxy
) -> None:
    # Several results, masked and not, in one string: runs at workers and bytes
    # between them must reach the client in the server's order.
    sql = (
        f"{SELECT}; SELECT 1 AS one; SELECT email, id FROM wk.people ORDER BY id DESC; "
        "SELECT count(*) FROM wk.people"
    )
    before = mask_jobs(pooled)
    expected = every_byte(in_process, sql)
    got = every_byte(pooled, sql)
    assert got == expected
    kinds = [k for k, _ in messages(got)]
    assert kinds.count(b"D") == 2 * ROWS + 2 and kinds[-1] == b"Z"
    assert mask_jobs(pooled) > before, "no run of rows went to a worker"
    assert b"user17@example.org" not in got and b"Person 17" not in got


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_gets_the_same_masked_rows_from_workers(
    in_process: Proxy, pooled: Proxy, binary: bool
) -> None:
    def fetch(proxy: Proxy) -> list[tuple[object, ...]]:
        with psycopg.connect(proxy.dsn("alice")) as conn, conn.cursor(binary=binary) as cur:
            cur.execute(SELECT)
            return cur.fetchall()

    expected = fetch(in_process)
    got = fetch(pooled)
    assert got == expected
    assert got[16][:4] == (17, got[16][1], "u***@example.org", "****")
    assert str(got[16][1]).startswith("h_") and got[16][4] != 17 * 7919
    assert mask_jobs(pooled) > 0


def test_audit_records_say_what_workers_masked(pooled: Proxy) -> None:
    with psycopg.connect(pooled.dsn("alice")) as conn:
        conn.execute(SELECT).fetchall()
    records = [r for r in pooled.audit_records() if r.get("command") == "SELECT"]
    assert mask_jobs(pooled) > 0
    assert set(records[-1]["masked"]) == {  # type: ignore[arg-type]
        "wk.people.account:hash",
        "wk.people.email:email",
        "wk.people.name:hash",
        "wk.people.ssn:redact",
    }


def test_a_worker_that_dies_ends_its_session_with_no_row_unmasked(pooled: Proxy) -> None:
    with psycopg.connect(pooled.dsn("alice")) as conn:
        conn.execute(SELECT).fetchall()  # the workers are running
    workers = workers_of(pooled)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # each gets a run, and holds it
    sock, _ = raw_login(pooled, "alice")
    try:
        jobs = mask_jobs(pooled)
        sock.sendall(query_message(SELECT))
        wait_for(lambda: mask_jobs(pooled) >= jobs + 4, "runs at the workers")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        data = read_answers(sock)
    finally:
        sock.close()
    errors = [error_fields(p) for k, p in messages(data) if k == b"E"]
    assert errors and errors[-1]["S"] == "FATAL" and errors[-1]["C"] == "XX000"
    assert "masking" in errors[-1]["M"], pooled.log()
    assert b"@example.org" not in data.replace(b"u***@example.org", b"")
    assert b"Person " not in data
    assert [k for k, _ in messages(data)].count(b"D") < ROWS
    # Fresh workers serve the next session; the proxy went on.
    with psycopg.connect(pooled.dsn("alice")) as conn:
        rows = conn.execute(SELECT).fetchall()
    assert len(rows) == ROWS and rows[0][2] == "u***@example.org"
    wait_for(lambda: len(workers_of(pooled)) == 2, what="fresh masking workers")
    assert not set(workers_of(pooled)) & set(workers)
    assert "masking worker" in pooled.log()


def test_a_worker_that_died_between_runs_ends_no_session(pooled: Proxy) -> None:
    with psycopg.connect(pooled.dsn("alice")) as conn:
        conn.execute(SELECT).fetchall()  # the workers are running
    workers = workers_of(pooled)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    # Gone from /proc once the proxy has reaped it (and so knows).
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), "reaping")
    with psycopg.connect(pooled.dsn("alice")) as conn:
        rows = conn.execute(SELECT).fetchall()
    assert len(rows) == ROWS and rows[16][2] == "u***@example.org"
    assert len(workers_of(pooled)) == 2 and not set(workers_of(pooled)) & set(workers)


@pytest.mark.parametrize("rows", [ROWS, 400])
def test_rows_at_workers_reach_the_client_before_the_upstream_ends_the_session(
    in_process: Proxy, pooled: Proxy, rows: int
) -> None:
    # The server sends the rows, then a FATAL and closes: the rows still at
    # workers go first, then the FATAL. (400 rows come in one read with the
    # FATAL, and the close is seen while they are at a worker.)
    sql = f"{SELECT} LIMIT {rows}; SELECT pg_terminate_backend(pg_backend_pid())"
    got = every_byte(pooled, sql)
    kinds = [k for k, _ in messages(got)]
    assert kinds.count(b"D") == rows + 1  # and pg_terminate_backend's own row
    fatal = error_fields(messages(got)[-1][1])
    assert messages(got)[-1][0] == b"E" and fatal["C"] == "57P01"
    assert got == every_byte(in_process, sql)


def test_a_drain_sends_the_rows_still_at_workers_before_it_closes(
    pooled: Proxy, seeded: LocalPostgres
) -> None:
    marker = "drain_" + uuid.uuid4().hex[:8]
    sock, _ = raw_login(pooled, "alice")
    try:
        # SIGTERM comes while the server sleeps; then the rows, masked by workers,
        # and the ReadyForQuery after them, on which the drain would close.
        sock.sendall(query_message(f"SELECT pg_sleep(0.5) AS {marker}; {SELECT}"))
        wait_for(lambda: active_upstream_queries(seeded, marker), "the statement to run upstream")
        pooled.process.send_signal(signal.SIGTERM)
        data = read_answers(sock)
        data += read_until_closed(sock)
    finally:
        sock.close()
    got = messages(data)
    assert [k for k, _ in got].count(b"D") == ROWS + 1
    assert b"Z" in [k for k, _ in got]
    assert got[-1][0] == b"E" and error_fields(got[-1][1])["C"] == "57P01"
    # Waited for, not signalled again: a second SIGTERM after the event loop
    # has closed (and its handlers with it) would end the process by the signal.
    assert pooled.process.wait(timeout=30) == 0
    assert mask_jobs_logged_nothing_lost(pooled)


def mask_jobs_logged_nothing_lost(proxy: Proxy) -> bool:
    return "Traceback" not in proxy.log() and "masking worker" not in proxy.log()


@pytest.fixture
def one_worker(seeded: LocalPostgres, start_proxy: ProxyFactory, key_file: Path) -> Proxy:
    return start_proxy(POLICY, "--hash-key-file", str(key_file), "--mask-workers", "1")


def relayed_from_upstream(proxy: Proxy) -> int:
    return counter(proxy, 'steward_bytes_total{direction="upstream_to_client"}')


def backend_of(pg: LocalPostgres, needle: str) -> tuple[str, str]:
    """(state, wait_event) of the upstream backend whose last query holds ``needle``."""
    out = pg.execute(
        "SELECT state || '|' || coalesce(wait_event, '') FROM pg_stat_activity "
        f"WHERE pid <> pg_backend_pid() AND strpos(query, '{needle}') > 0"
    ).strip()
    state, _, wait = out.partition("|")
    return state, wait


def test_bytes_behind_a_run_at_a_stalled_worker_stop_the_reading_from_the_server(
    one_worker: Proxy, seeded: LocalPostgres
) -> None:
    # A run of rows waits at a worker (stopped here; busy with other sessions'
    # runs in life) and the server goes on with 20 MB of rows nobody masks:
    # they wait behind the run, and the proxy stops reading at a bound.
    (worker,) = wait_for(lambda: workers_of(one_worker), "the masking worker")  # type: ignore[misc]
    marker = "behind_" + uuid.uuid4().hex[:8]
    sock, _ = raw_login(one_worker, "alice")
    os.kill(worker, signal.SIGSTOP)
    try:
        sock.sendall(
            query_message(
                f"{SELECT} LIMIT 2000; "
                f"SELECT g, repeat('x', 200) AS {marker} FROM generate_series(1, 100000) g"
            )
        )
        seen = [-1]

        def stalled() -> bool:
            state, wait = backend_of(seeded, marker)
            relayed, seen[0] = seen[0], relayed_from_upstream(one_worker)
            return state == "idle" or (wait == "ClientWrite" and relayed == seen[0])

        wait_for(stalled, "the server to finish or to wait for the proxy", interval=0.1)
        assert backend_of(seeded, marker)[0] == "active", "the proxy read the whole result"
        assert seen[0] < 4 << 20
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        got = messages(read_answers(sock))
    finally:
        sock.close()
    kinds = [k for k, _ in got]
    assert kinds.count(b"D") == 2000 + 100_000 and kinds[-1] == b"Z"
    assert b"Person 17" not in b"".join(p for _, p in got[:2100])


def redact_job(value: bytes) -> MaskJob:
    """A job of one text row of ``value``, redacted."""
    row = b"D" + struct.pack("!iHi", 10 + len(value), 1, len(value)) + value
    return MaskJob((b"k" * 32, (("redact", 4, 25, False, True),)), row)


def test_a_job_cancelled_at_its_worker_is_finished_there_and_the_worker_serves_the_next() -> None:
    async def run() -> tuple[bytes, int, list[int], list[int]]:
        pool = MaskPool(1)
        await pool.start()
        workers = children_running(os.getpid())
        os.kill(workers[0], signal.SIGSTOP)
        try:
            at_worker = asyncio.ensure_future(pool.mask(redact_job(b"x" * 100_000)))
            waiting = asyncio.ensure_future(pool.mask(redact_job(b"y")))
            while not pool._free.empty():  # the first takes the worker
                await asyncio.sleep(0)
            at_worker.cancel()
            waiting.cancel()
        finally:
            os.kill(workers[0], signal.SIGCONT)
        try:
            rows = await pool.mask(redact_job(b"secret"))
            return rows, pool.failed, workers, children_running(os.getpid())
        finally:
            await pool.close()

    rows, failed, before, after = asyncio.run(run())
    assert rows == redact_job(b"****").rows
    assert failed == 0 and after == before


def worker_reads(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("rchar:"))


def mask_job_bytes(proxy: Proxy) -> int:
    return counter(proxy, "steward_mask_job_bytes_total")


def test_the_runs_of_a_session_that_ended_never_reach_a_worker(one_worker: Proxy) -> None:
    with psycopg.connect(one_worker.dsn("alice")) as conn:
        conn.execute(SELECT).fetchall()  # the worker has masked this shape
    (worker,) = workers_of(one_worker)
    os.kill(worker, signal.SIGSTOP)
    try:
        sock, _ = raw_login(one_worker, "alice")
        jobs, sent = mask_jobs(one_worker), mask_job_bytes(one_worker)
        sock.sendall(query_message(SELECT))
        wait_for(lambda: mask_jobs(one_worker) >= jobs + 4, "runs waiting for the worker")
        closed = one_worker.log().count("closed (client disconnected)")
        sock.close()
        wait_for(
            lambda: one_worker.log().count("closed (client disconnected)") > closed,
            "the proxy to see the client go",
        )
        ended = mask_job_bytes(one_worker) - sent  # the runs of the session that ended
        read = worker_reads(worker)
    finally:
        os.kill(worker, signal.SIGCONT)
    sent = mask_job_bytes(one_worker)
    with psycopg.connect(one_worker.dsn("alice")) as conn:
        rows = conn.execute(f"{SELECT} LIMIT 5000").fetchall()
    assert rows[16][2] == "u***@example.org"
    after = mask_job_bytes(one_worker) - sent
    assert after > 0, "the next session's rows went to no worker"
    # Its rows came back, so the worker read what was queued before them: the
    # run it held when the client went, not every run that session had sent.
    assert worker_reads(worker) - read < ended + after


def test_a_session_whose_rows_are_at_a_worker_is_not_idle(
    seeded: LocalPostgres, start_proxy: ProxyFactory, key_file: Path
) -> None:
    proxy = start_proxy(
        POLICY, "--hash-key-file", str(key_file), "--mask-workers", "1", "--idle-timeout", "1"
    )
    (worker,) = wait_for(lambda: workers_of(proxy), "the masking worker")  # type: ignore[misc]
    marker = "idle_" + uuid.uuid4().hex[:8]
    sock, _ = raw_login(proxy, "alice")
    os.kill(worker, signal.SIGSTOP)
    try:
        jobs = mask_jobs(proxy)
        sock.sendall(query_message(f"SELECT {marker}.* FROM ({SELECT} LIMIT 2000) {marker}"))
        # The server has answered in full; the rows wait at the stopped worker.
        wait_for(lambda: backend_of(seeded, marker)[0] == "idle", "the server to answer")
        assert mask_jobs(proxy) > jobs
        # A session signed in after that one's last byte from the server,
        # ended as idle: the first one has been idle as long.
        clock, _ = raw_login(proxy, "alice")
        try:
            ended = messages(read_until_closed(clock))
        finally:
            clock.close()
        assert error_fields(ended[-1][1])["C"] == "57P05"
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        got = messages(read_answers(sock))
    finally:
        sock.close()
    kinds = [k for k, _ in got]
    assert kinds.count(b"D") == 2000 and kinds[-1] == b"Z", got[-1]


def test_a_pipeline_of_portals_cursors_errors_and_notices_gets_the_same_bytes(
    in_process: Proxy, pooled: Proxy
) -> None:
    # Runs at workers and inline, binary and text, suspended portals, cursors,
    # a reported setting, a notice, an error and a refusal, all sent before any answer.
    pipeline = enc(
        wire.Parse("s1", SELECT),
        wire.Bind("p1", "s1", result_formats=(1,)),
        wire.Describe("P", "p1"),
        wire.Execute("p1", 7000),
        wire.Execute("p1", 0),
        wire.Parse("", "SELECT set_config('application_name', 'wk', false)"),
        wire.Bind("", ""),
        wire.Execute(""),
        wire.Sync(),
        wire.Bind("p2", "s1", result_formats=(0, 1, 0, 0, 1, 0)),
        wire.Execute("p2", 100),
        wire.Parse("", "SELECT 1 / (id - id) FROM wk.people"),
        wire.Bind("", ""),
        wire.Execute(""),
        wire.Sync(),
        wire.Bind("p3", "s1"),
        wire.Describe("P", "p3"),
        wire.Execute("p3"),
        wire.Sync(),
        wire.Query(
            "BEGIN; DECLARE c CURSOR FOR " + SELECT + "; FETCH 5000 FROM c; "
            "DECLARE b BINARY CURSOR FOR " + SELECT + "; FETCH ALL FROM b; FETCH ALL FROM c; "
            "DROP TABLE IF EXISTS wk.none; COMMIT"
        ),
        wire.Query(f"{SELECT}; DO $$BEGIN RAISE NOTICE 'refused'; END$$"),
    )

    def answers(proxy: Proxy) -> list[tuple[bytes, bytes]]:
        sock, _ = raw_login(proxy, "alice")
        try:
            sock.sendall(pipeline)
            return recv_messages(sock, count=5)
        finally:
            sock.close()

    before = mask_jobs(pooled)
    expected = answers(in_process)
    got = answers(pooled)
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert got == expected
    kinds = [k for k, _ in got]
    assert kinds.count(b"D") == 4 * ROWS + 101 and kinds.count(b"Z") == 5
    errors = [error_fields(p)["C"] for k, p in got if k == b"E"]
    assert errors == ["22012", "42501"]
    assert b"N" in kinds and b"E" in kinds and b"S" in kinds and b"s" in kinds
    assert mask_jobs(pooled) >= before + 8
    assert not any(b"Person 17\0" in p or b"user17@" in p for _, p in got)


def test_asyncpg_prepared_binary_rows_and_a_cursor_are_the_same_from_workers(
    in_process: Proxy, pooled: Proxy
) -> None:
    async def fetch(proxy: Proxy) -> list[list[tuple[object, ...]]]:
        conn = await asyncpg.connect(**proxy.asyncpg_args("alice"))
        try:
            stmt = await conn.prepare(f"SELECT * FROM ({SELECT}) t WHERE id > $1")
            results = [[tuple(r) for r in await stmt.fetch(n)] for n in (0, 5000, 0)]
            async with conn.transaction():
                cursor = await stmt.cursor(100)
                results.append([tuple(r) for r in await cursor.fetch(15_000)])
            return results
        finally:
            await conn.close()

    before = mask_jobs(pooled)
    expected = asyncio.run(fetch(in_process))
    got = asyncio.run(fetch(pooled))
    assert got == expected
    assert [len(r) for r in got] == [ROWS, ROWS - 5000, ROWS, 15_000]
    assert got[0][16][2] == "u***@example.org" and got[0][16][3] == "****"
    assert mask_jobs(pooled) > before
