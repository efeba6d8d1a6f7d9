"""A client of ``steward proxy`` sees the process id of the upstream backend serving it.

The proxy hands each client the upstream backend's own pid in BackendKeyData,
with a cancel secret of its own. So, with psycopg, asyncpg and pg8000: the pid
a client was given is ``pg_backend_pid()``, its own NOTIFY arrives with that
pid, ``pg_terminate_backend(pid)`` ends exactly that session with PostgreSQL's
own FATAL 57P01 (and no second error of the proxy's), a cancel request reaches
the right backend and only it, one with a wrong secret does nothing, and the
audit trail records the pid (``backend_pid``) and ``application`` on every
record of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import uuid
from collections.abc import Callable

import asyncpg
import pg8000.dbapi
import psycopg
import pytest
from psycopg import errors as pgerr

from steward_testing.postgres import LocalPostgres

from conftest import (
    Proxy,
    active_upstream_queries,
    error_fields,
    query_message,
    raw_connect,
    raw_login,
    read_until_closed,
    recv_messages,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

CANCEL_REQUEST_CODE = 80877102


def backend_key(raw: bytes) -> tuple[int, int]:
    """(pid, secret) of the BackendKeyData in a raw sign-in answer."""
    pos = 0
    while pos < len(raw):
        (length,) = struct.unpack("!I", raw[pos + 1 : pos + 5])
        if raw[pos : pos + 1] == b"K":
            pid, secret = struct.unpack("!ii", raw[pos + 5 : pos + 1 + length])
            return pid, secret
        pos += 1 + length
    raise AssertionError("no BackendKeyData in the sign-in answer")


def send_cancel(proxy: Proxy, pid: int, secret: int) -> None:
    """A CancelRequest as libpq sends it; the proxy answers by closing the socket."""
    with raw_connect(proxy) as sock:
        sock.sendall(struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, secret))
        assert read_until_closed(sock) == b""


def pg8000_pid(conn: pg8000.dbapi.Connection) -> int:
    """The pid pg8000 was given at sign-in (it keeps BackendKeyData as bytes)."""
    pid: int = struct.unpack("!ii", conn._backend_key_data)[0]
    return pid


def session_records(client: Driver) -> list[dict[str, object]]:
    """The audit records of ``client``'s session (its application name is unique)."""
    return [
        r
        for r in client.proxy.audit_records()
        if (r["backend_pid"], r["application"]) == (client.pid, client.application)
    ]


def session_ended(client: Driver) -> dict[str, object] | None:
    ends = [r for r in session_records(client) if r["type"] == "session.end"]
    return ends[0] if ends else None


def backend_alive(pg: LocalPostgres, pid: int) -> bool:
    return pg.execute(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}").strip() == "1"


# ------------------------------------------------------------- clients per driver


class Driver:
    """The few things each test does, in each driver's own terms."""

    name: str
    pid: int  # as given at sign-in, kept for after the connection closes

    def __init__(self, proxy: Proxy, application: str) -> None:
        self.proxy = proxy
        self.application = application

    def given_pid(self) -> int:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple[object, ...]]:
        raise NotImplementedError

    def own_notification_pid(self, channel: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def assert_admin_shutdown(self, action: Callable[[], object]) -> None:
        """``action`` fails as this driver reports a FATAL 57P01 from PostgreSQL."""
        raise NotImplementedError


class Psycopg(Driver):
    name = "psycopg"

    def __init__(self, proxy: Proxy, application: str) -> None:
        super().__init__(proxy, application)
        self.conn = psycopg.connect(proxy.dsn(), autocommit=True, application_name=application)
        self.pid = self.given_pid()

    def given_pid(self) -> int:
        return self.conn.info.backend_pid

    def query(self, sql: str) -> list[tuple[object, ...]]:
        return self.conn.execute(sql).fetchall()

    def own_notification_pid(self, channel: str) -> int:
        self.conn.execute(f"LISTEN {channel}")
        self.conn.execute(f"NOTIFY {channel}, 'mine'")
        (note,) = list(self.conn.notifies(timeout=15, stop_after=1))
        assert (note.channel, note.payload) == (channel, "mine")
        return note.pid

    def close(self) -> None:
        self.conn.close()

    def assert_admin_shutdown(self, action: Callable[[], object]) -> None:
        with pytest.raises(pgerr.AdminShutdown) as info:
            action()
        assert info.value.sqlstate == "57P01"
        assert self.conn.closed


class Asyncpg(Driver):
    name = "asyncpg"

    def __init__(self, proxy: Proxy, application: str) -> None:
        super().__init__(proxy, application)
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(
            asyncpg.connect(
                **proxy.asyncpg_args(), server_settings={"application_name": application}
            )
        )
        self.pid = self.given_pid()

    def given_pid(self) -> int:
        return self.conn.get_server_pid()

    def query(self, sql: str) -> list[tuple[object, ...]]:
        return [tuple(r) for r in self.loop.run_until_complete(self.conn.fetch(sql))]

    def own_notification_pid(self, channel: str) -> int:
        async def scenario() -> int:
            received: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
            await self.conn.add_listener(
                channel, lambda _c, pid, _ch, payload: received.put_nowait((pid, payload))
            )
            await self.conn.execute(f"NOTIFY {channel}, 'mine'")
            pid, payload = await asyncio.wait_for(received.get(), 15)
            assert payload == "mine"
            return pid

        return self.loop.run_until_complete(scenario())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.run_until_complete(self.conn.close(timeout=10))
        finally:
            self.loop.close()

    def assert_admin_shutdown(self, action: Callable[[], object]) -> None:
        # asyncpg reports a lost connection whose cause is PostgreSQL's FATAL.
        with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as info:
            action()
        cause = info.value.__cause__
        assert isinstance(cause, asyncpg.exceptions.AdminShutdownError), repr(cause)
        assert cause.sqlstate == "57P01"
        assert self.conn.is_closed()


class Pg8000(Driver):
    name = "pg8000"

    def __init__(self, proxy: Proxy, application: str) -> None:
        super().__init__(proxy, application)
        self.conn = pg8000.dbapi.connect(**proxy.pg8000_args(), application_name=application)
        self.conn.autocommit = True
        self.pid = self.given_pid()

    def given_pid(self) -> int:
        return pg8000_pid(self.conn)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        cursor = self.conn.cursor()
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def own_notification_pid(self, channel: str) -> int:
        self.query(f"LISTEN {channel}")
        self.query(f"NOTIFY {channel}, 'mine'")
        pid, got_channel, payload = self.conn.notifications.popleft()
        assert (got_channel, payload) == (channel, "mine")
        return int(pid)

    def close(self) -> None:
        with contextlib.suppress(pg8000.dbapi.InterfaceError):  # closed by the server
            self.conn.close()

    def assert_admin_shutdown(self, action: Callable[[], object]) -> None:
        # pg8000 keeps reading after the FATAL and reports the close that follows,
        # exactly as it does directly against PostgreSQL; the wire-level tests
        # below check the FATAL itself.
        with pytest.raises(pg8000.dbapi.InterfaceError, match="network error"):
            action()


DRIVERS = [Psycopg, Asyncpg, Pg8000]


@pytest.fixture(params=DRIVERS, ids=[d.name for d in DRIVERS])
def client(request: pytest.FixtureRequest, proxy: Proxy) -> Driver:
    driver: Driver = request.param(proxy, f"pid-test-{uuid.uuid4().hex[:8]}")
    request.addfinalizer(driver.close)
    return driver


# ------------------------------------------------------------------------ the pid


def test_the_pid_a_client_is_given_is_its_upstream_backend(client: Driver) -> None:
    pid = client.given_pid()
    assert client.query("SELECT pg_backend_pid()") == [(pid,)]
    assert client.query(f"SELECT application_name FROM pg_stat_activity WHERE pid = {pid}") == [
        (client.application,)
    ]


def test_a_notify_from_the_same_connection_carries_its_pid(client: Driver) -> None:
    channel = "own_" + uuid.uuid4().hex[:8]
    assert client.own_notification_pid(channel) == client.given_pid()


def test_the_audit_trail_names_the_backend_pid_and_application(client: Driver) -> None:
    client.query("SELECT 1")
    client.close()
    wait_for(lambda: session_ended(client), "the session.end record")
    records = session_records(client)
    assert records[0]["type"] == "session.start"
    assert "statement" in [r["type"] for r in records]
    assert {r["application"] for r in records} == {client.application}
    assert len({r["session"] for r in records}) == 1


# ------------------------------------------------------------- pg_terminate_backend


def test_terminating_ones_own_backend_raises_admin_shutdown(
    pg: LocalPostgres, client: Driver
) -> None:
    pid = client.given_pid()
    client.assert_admin_shutdown(lambda: client.query(f"SELECT pg_terminate_backend({pid})"))
    end = wait_for(lambda: session_ended(client), "the session.end record")
    assert end["error"] == "the upstream ended the session (SQLSTATE 57P01)"  # type: ignore[index]
    assert not backend_alive(pg, pid)


def test_terminating_a_backend_from_another_connection_ends_that_session_only(
    pg: LocalPostgres, proxy: Proxy, client: Driver
) -> None:
    pid = client.given_pid()
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as other:
        bystander = other.info.backend_pid
        assert other.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        wait_for(lambda: session_ended(client), "the proxy to end the session")
        client.assert_admin_shutdown(lambda: client.query("SELECT 1"))
        assert other.execute("SELECT pg_backend_pid()").fetchone() == (bystander,)


@pytest.mark.parametrize("who", ["itself", "another connection"])
def test_the_client_gets_postgresqls_fatal_and_no_other(proxy: Proxy, who: str) -> None:
    sock, raw = raw_login(proxy)
    pid, _ = backend_key(raw)
    with sock:
        if who == "itself":
            sock.sendall(query_message(f"SELECT pg_terminate_backend({pid})"))
        else:
            with psycopg.connect(proxy.dsn("bob"), autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        messages = recv_messages(sock, until=b"")  # everything up to the close
    errors = [error_fields(payload) for kind, payload in messages if kind == b"E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")], messages
    assert errors[0]["M"] == "terminating connection due to administrator command"
    assert messages[-1][0] == b"E", "nothing may follow PostgreSQL's FATAL"


# ------------------------------------------------------------------------- cancel


def sleep_in_thread(run: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``run`` in a thread; the list receives what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def markers() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"sleep_a_{tag}", f"sleep_b_{tag}"


def both_running(pg: LocalPostgres, *names: str) -> None:
    for name in names:
        wait_for(lambda n=name: active_upstream_queries(pg, n), f"{name} to run upstream")


def test_a_psycopg_cancel_reaches_the_right_backend_and_only_it(
    pg: LocalPostgres, proxy: Proxy
) -> None:
    a_marker, b_marker = markers()
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as a,
        psycopg.connect(proxy.dsn(), autocommit=True) as b,
    ):
        a_thread, a_errors = sleep_in_thread(lambda: a.execute(f"SELECT pg_sleep(60) {a_marker}"))
        b_thread, b_errors = sleep_in_thread(lambda: b.execute(f"SELECT pg_sleep(60) {b_marker}"))
        both_running(pg, a_marker, b_marker)
        a.cancel_safe()
        a_thread.join(30)
        assert [type(e) for e in a_errors] == [pgerr.QueryCanceled]
        assert active_upstream_queries(pg, b_marker) == 1, "the other session was cancelled"
        b.cancel_safe()
        b_thread.join(30)
        assert [type(e) for e in b_errors] == [pgerr.QueryCanceled]
        assert a.execute("SELECT 'a'").fetchone() == ("a",)


def test_an_asyncpg_cancel_reaches_the_right_backend_and_only_it(
    pg: LocalPostgres, proxy: Proxy
) -> None:
    a_marker, b_marker = markers()

    async def scenario() -> None:
        a = await asyncpg.connect(**proxy.asyncpg_args())
        b = await asyncpg.connect(**proxy.asyncpg_args())
        try:
            a_sleep = asyncio.ensure_future(a.fetchval(f"SELECT pg_sleep(60) {a_marker}"))
            b_sleep = asyncio.ensure_future(b.fetchval(f"SELECT pg_sleep(60) {b_marker}"))
            while not (
                active_upstream_queries(pg, a_marker) and active_upstream_queries(pg, b_marker)
            ):
                await asyncio.sleep(0.02)
            a_sleep.cancel()  # asyncpg sends a CancelRequest with the key it was given
            with pytest.raises(asyncio.CancelledError):
                await a_sleep
            assert await a.fetchval("SELECT 'a'") == "a"  # the sleep has ended upstream
            assert active_upstream_queries(pg, a_marker) == 0
            assert active_upstream_queries(pg, b_marker) == 1, "the other session was cancelled"
            b_sleep.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b_sleep
            assert await b.fetchval("SELECT 'b'") == "b"
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_a_cancel_with_pg8000s_key_reaches_the_right_backend_and_only_it(
    pg: LocalPostgres, proxy: Proxy
) -> None:
    # pg8000 has no cancel call: an application sends the CancelRequest itself,
    # with the pid and secret pg8000 was given.
    a_marker, b_marker = markers()
    a = pg8000.dbapi.connect(**proxy.pg8000_args())
    b = pg8000.dbapi.connect(**proxy.pg8000_args())
    try:
        a_thread, a_errors = sleep_in_thread(
            lambda: a.cursor().execute(f"SELECT pg_sleep(60) {a_marker}")
        )
        b_thread, b_errors = sleep_in_thread(
            lambda: b.cursor().execute(f"SELECT pg_sleep(60) {b_marker}")
        )
        both_running(pg, a_marker, b_marker)
        send_cancel(proxy, *struct.unpack("!ii", a._backend_key_data))
        a_thread.join(30)
        assert [e.args[0]["C"] for e in a_errors] == ["57014"]  # type: ignore[index]
        assert active_upstream_queries(pg, b_marker) == 1, "the other session was cancelled"
        send_cancel(proxy, *struct.unpack("!ii", b._backend_key_data))
        b_thread.join(30)
        assert [e.args[0]["C"] for e in b_errors] == ["57014"]  # type: ignore[index]
    finally:
        a.close()
        b.close()


def test_a_cancel_with_the_right_pid_and_a_wrong_secret_does_nothing(
    pg: LocalPostgres, proxy: Proxy
) -> None:
    marker = "sleep_" + uuid.uuid4().hex[:8]
    ignored = "cancel request for an unknown session ignored"
    sock, raw = raw_login(proxy)
    pid, secret = backend_key(raw)
    with sock:
        sock.sendall(query_message(f"SELECT pg_sleep(60) {marker}"))
        wait_for(lambda: active_upstream_queries(pg, marker), "the sleep to run upstream")
        for wrong in (secret ^ 1, secret ^ -(1 << 31)):
            before = proxy.log().count(ignored)
            send_cancel(proxy, pid, wrong)
            wait_for(lambda b=before: proxy.log().count(ignored) > b, "the proxy to ignore it")
            assert active_upstream_queries(pg, marker) == 1, f"secret {wrong} cancelled it"
        send_cancel(proxy, pid, secret)
        messages = recv_messages(sock)
    errors = [error_fields(payload)["C"] for kind, payload in messages if kind == b"E"]
    assert errors == ["57014"], messages
