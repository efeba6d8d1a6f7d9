"""The asyncio shell under stress: back-pressure, sign-in races, shutdown and cleanup.

Each test drives the real proxy through raw sockets or real clients, then checks
what must hold afterwards: bounded memory, no upstream backend left behind, one
``session.end`` per ``session.start``, metrics that add up, and no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from steward_proxy.audit import AuditWriteError
from steward_proxy.commands.proxy import _sync_audit
from steward_proxy.policy import load_policy_set
from steward_proxy.server import ProxyServer, ProxySettings
from steward_proxy.upstream import UpstreamTarget
from steward_testing.postgres import LocalPostgres

from conftest import (
    ALLOW_ALL_POLICY,
    DEFAULT_UPSTREAM_USER,
    DEFAULT_USER,
    SSL_REQUEST,
    Proxy,
    ProxyFactory,
    error_fields,
    first_error,
    message,
    query_message,
    raw_connect,
    raw_login,
    read_until_closed,
    server_certificate,
    startup_packet,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

RESULT_ROWS = 200_000
ROW_BYTES = 1000  # about 200 MB of DataRows in all
RSS_BOUND_KIB = 80 * 1024


def drain_socket(sock: socket.socket) -> int:
    """Read until the connection is idle after a ReadyForQuery; return the bytes read."""
    total = 0
    tail = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return total
        total += len(chunk)
        tail = (tail + chunk)[-6:]
        if tail == b"Z\x00\x00\x00\x05I":
            return total


def parse_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while len(data) >= 5:
        (length,) = struct.unpack("!I", data[1:5])
        out.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    return out


def metric(proxy: Proxy, name: str) -> float:
    status, body = proxy.http_get("/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --------------------------------------------------------------- back-pressure


def test_a_client_that_stops_reading_a_huge_result_does_not_grow_the_proxy(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy()
    sock, _ = raw_login(proxy)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        baseline = proxy.rss_kib()
        sock.sendall(
            query_message(f"SELECT repeat('x', {ROW_BYTES}) FROM generate_series(1, {RESULT_ROWS})")
        )
        peak = baseline
        deadline = time.monotonic() + 3  # the scenario: do not read for a few seconds
        while time.monotonic() < deadline:
            peak = max(peak, proxy.rss_kib())
            time.sleep(0.1)
        assert peak - baseline < RSS_BOUND_KIB, (baseline, peak)
        total = drain_socket(sock)
        assert total > RESULT_ROWS * ROW_BYTES
    print(f"proxy RSS baseline {baseline} KiB, peak while the client did not read {peak} KiB")


# ------------------------------------------------------------- fake upstreams


class FakeUpstream:
    """A PostgreSQL stand-in on a thread: reads the startup packet, then ``behaviour``.

    ``hang`` never answers; ``ready_then_close`` signs the proxy in and closes at once.
    """

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.closed_by_proxy = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self) -> str:
        return f"postgresql://steward@127.0.0.1:{self.port}/db?sslmode=disable"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            (length,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
            conn.recv(length - 4, socket.MSG_WAITALL)
            if self.behaviour == "ready_then_close":
                conn.sendall(
                    message(b"R", struct.pack("!I", 0))
                    + message(b"S", b"client_encoding\0UTF8\0")
                    + message(b"S", b"standard_conforming_strings\0on\0")
                    + message(b"K", struct.pack("!II", 4242, 4343))
                    + message(b"Z", b"I")
                )
                conn.close()
                return
            if not conn.recv(1):
                self.closed_by_proxy.set()

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def fake_upstream() -> Iterator[Callable[[str], FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(behaviour: str) -> FakeUpstream:
        made.append(FakeUpstream(behaviour))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def sign_in_through(proxy: Proxy, database: str = "db") -> socket.socket:
    sock = raw_connect(proxy)
    sock.sendall(startup_packet(DEFAULT_USER, database))
    return sock


# ------------------------------------------------------------------ sign-in


def test_an_upstream_that_closes_right_after_sign_in_ends_the_session_with_08006(
    start_proxy: ProxyFactory, fake_upstream: Callable[[str], FakeUpstream]
) -> None:
    upstream = fake_upstream("ready_then_close")
    proxy = start_proxy(ALLOW_ALL_POLICY, upstream=upstream.url())
    with raw_connect(proxy) as sock:
        sock.sendall(startup_packet(DEFAULT_USER, "db") + query_message("SELECT 1"))
        received = read_until_closed(sock)
    messages = parse_messages(received)
    assert (b"Z", b"I") in messages, messages
    errors = [error_fields(p) for k, p in messages if k == b"E"]
    assert [e["C"] for e in errors] == ["08006"], messages
    assert "Traceback" not in proxy.log()


def test_sigterm_ends_a_sign_in_waiting_on_the_upstream_at_once(
    start_proxy: ProxyFactory, fake_upstream: Callable[[str], FakeUpstream]
) -> None:
    upstream = fake_upstream("hang")
    proxy = start_proxy(
        ALLOW_ALL_POLICY,
        "--connect-timeout",
        "120",
        "--shutdown-timeout",
        "120",
        "--readiness-interval",
        "0",  # the upstream hangs: only the client's sign-in may reach it
        upstream=upstream.url(),
    )
    with sign_in_through(proxy) as sock:
        wait_for(lambda: upstream.accepted, "the proxy to connect upstream")
        proxy.process.send_signal(signal.SIGTERM)
        sock.settimeout(30)
        received = read_until_closed(sock)
    fields = first_error(received)
    assert fields is not None and fields["C"] == "57P01", received
    assert proxy.terminate(timeout=30) == 0
    assert upstream.closed_by_proxy.wait(10)
    assert "Traceback" not in proxy.log()


# ------------------------------------------------------------------ idle timeout


def test_the_idle_clock_starts_when_a_long_statement_ends(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--idle-timeout", "2")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(2.5)")
        time.sleep(1)  # the scenario: idle for half the timeout
        assert conn.execute("SELECT 'kept'").fetchone() == ("kept",)


# --------------------------------------------------------------- audit sync


def test_a_failing_periodic_audit_sync_fails_closed() -> None:
    class Unsyncable:
        def sync(self) -> None:
            raise AuditWriteError("cannot sync audit trail: I/O error")

    failures: list[Exception] = []
    asyncio.run(asyncio.wait_for(_sync_audit(Unsyncable(), failures.append, interval=0.01), 10))
    assert [str(f) for f in failures] == ["cannot sync audit trail: I/O error"]


# -------------------------------------------------------------- in-process proxy


class RecordingAudit:
    """An audit sink in memory that fails every write of the types in ``failing``."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.failing: set[str] = set()

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        if type in self.failing:
            raise AuditWriteError(f"cannot write {type}: No space left on device")
        record = {"type": type, **fields}
        self.records.append(record)
        return record

    def of_type(self, type: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == type]


class InProcessProxy:
    """A :class:`ProxyServer` on its own event loop thread, with an inspectable audit."""

    def __init__(self, pg: LocalPostgres, tmp_path: Path) -> None:
        policy = tmp_path / "policy.yaml"
        policy.write_text(ALLOW_ALL_POLICY)
        upstream = UpstreamTarget.from_url(pg.dsn(DEFAULT_UPSTREAM_USER, password=None))
        settings = ProxySettings(listen_host="127.0.0.1", listen_port=0, upstream=upstream)
        self.audit = RecordingAudit()
        self.server = ProxyServer(settings, load_policy_set([policy]), self.audit)
        self.dbname = pg.dbname
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._thread.start()
        assert self._started.wait(20), "in-process proxy did not start"

    async def _run(self) -> None:
        await self.server.start()
        self._started.set()
        await self.server.serve(self._stop)

    def dsn(self) -> str:
        port = self.server.settings.listen_port
        return f"postgresql://{DEFAULT_USER}@127.0.0.1:{port}/{self.dbname}"

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture
def in_process(pg: LocalPostgres, tmp_path: Path) -> Iterator[InProcessProxy]:
    proxy = InProcessProxy(pg, tmp_path)
    yield proxy
    proxy.close()


def test_a_session_start_that_cannot_be_audited_leaves_no_session_behind(
    in_process: InProcessProxy,
) -> None:
    in_process.audit.failing.add("session.start")
    with pytest.raises(psycopg.OperationalError, match="audit trail cannot be written"):
        psycopg.connect(in_process.dsn())
    wait_for(lambda: not in_process.server.clients, "the refused client to be closed")
    assert in_process.server.metrics.sessions_active == 0
    assert in_process.audit.of_type("session.end") == []
    assert in_process.server.cancel_keys == {}


# ------------------------------------------------------------------ command line


def test_an_admin_port_in_use_is_reported_without_a_traceback(start_proxy: ProxyFactory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin = f"127.0.0.1:{taken.getsockname()[1]}"
        proxy = start_proxy(ALLOW_ALL_POLICY, "--admin", admin, admin=False, wait_ready=False)
        start_proxy.proxies.remove(proxy)
        assert proxy.process.wait(30) == 2
    assert f"cannot listen on {admin}" in proxy.log()
    assert "Traceback" not in proxy.log()


def test_sigterm_ends_a_stalled_tls_handshake_at_once(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cert, key = server_certificate(tmp_path)
    proxy = start_proxy(
        ALLOW_ALL_POLICY,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--shutdown-timeout",
        "120",
    )
    with raw_connect(proxy) as sock:
        sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
        assert sock.recv(1) == b"S"
        proxy.process.send_signal(signal.SIGTERM)
        sock.settimeout(30)
        assert read_until_closed(sock) == b""  # no plaintext inside a TLS handshake
    assert proxy.terminate(timeout=30) == 0
    assert "Traceback" not in proxy.log()


def test_a_client_that_never_signs_in_is_closed_after_the_startup_timeout(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--startup-timeout", "1")
    with raw_connect(proxy) as sock:
        sock.settimeout(30)
        error = first_error(read_until_closed(sock))
    assert error is not None and error["C"] == "08006", error
    assert "sign-in" in error["M"]
    # Signed-in sessions are not subject to it.
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_second_ssl_request_inside_tls_is_refused(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cert, key = server_certificate(tmp_path)
    proxy = start_proxy(ALLOW_ALL_POLICY, "--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with raw_connect(proxy) as sock:
        sock.sendall(struct.pack("!II", 8, SSL_REQUEST))
        assert sock.recv(1) == b"S"
        with context.wrap_socket(sock) as tls:
            tls.sendall(struct.pack("!II", 8, SSL_REQUEST))
            tls.settimeout(30)
            error = first_error(read_until_closed(tls))
    assert error is not None and error["C"] == "08P01", error
    with psycopg.connect(proxy.dsn() + "?sslmode=require") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_cancel_request_logs_no_disconnect_before_sign_in(proxy: Proxy) -> None:
    with raw_connect(proxy) as sock:
        sock.sendall(struct.pack("!IIII", 16, 80877102, 1, 2))
        assert read_until_closed(sock) == b""
    wait_for(
        lambda: "cancel request for an unknown session ignored" in proxy.log(),
        "the cancel request in the log",
    )
    assert "disconnected before sign-in" not in proxy.log().split("cancel request")[-1]


def test_a_sign_in_the_client_abandons_is_audited(start_proxy: ProxyFactory) -> None:
    # An upstream that accepts TCP but never answers holds the sign-in open.
    held: list[socket.socket] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        port = silent.getsockname()[1]
        proxy = start_proxy(
            ALLOW_ALL_POLICY,
            "--connect-timeout",
            "120",
            "--readiness-interval",
            "0",  # the upstream hangs: only the client's sign-in may reach it
            upstream=f"postgresql://nobody@127.0.0.1:{port}/steward",
        )
        with raw_connect(proxy) as sock:
            sock.sendall(startup_packet(DEFAULT_USER, "steward"))
            held.append(silent.accept()[0])  # the proxy reached the upstream and waits

        def abandoned() -> list[dict[str, object]]:
            return [
                r
                for r in proxy.audit_records()
                if r["type"] == "session.start" and "abandoned" in str(r["error"])
            ]

        try:
            records = wait_for(abandoned, "a session.start record for the abandoned sign-in")
        finally:
            for conn in held:
                conn.close()
    assert records[0]["identity"] == f"user:{DEFAULT_USER}"
    assert records[0]["decision"] is None
