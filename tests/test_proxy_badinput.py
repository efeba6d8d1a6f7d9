"""Malformed and hostile input on raw sockets: the proxy answers or closes, and survives.

After every event a real client session through the same proxy must still work,
the proxy log must have gained a line (not a traceback), and oversized declared
lengths must not be allocated (the proxy's resident memory stays flat).
"""

from __future__ import annotations

import random
import re
import struct
import uuid

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import (
    ALLOW_ALL_POLICY,
    PROTOCOL_3,
    Proxy,
    ProxyFactory,
    error_fields,
    first_error,
    message,
    query_message,
    raw_connect,
    raw_login,
    read_until_closed,
    recv_messages,
    startup_packet,
    upstream_backends,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

RSS_SLACK_KIB = 64 * 1024  # far below the 2 GiB a naive reader would allocate


@pytest.fixture(scope="module")
def bad_proxy(module_proxy_factory: ProxyFactory) -> Proxy:
    return module_proxy_factory()


class LogWatch:
    """Finds the proxy log lines about one client connection, written after creation.

    A line is about the client when it names the client's address (``:PORT``) or
    the session id that a line naming the address introduced.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.start = len(proxy.log().splitlines())

    def lines_about(self, client_port: int) -> list[str]:
        lines = self.proxy.log().splitlines()[self.start :]
        address = f":{client_port}"
        sessions = {
            m.group(1)
            for line in lines
            if address in line
            for m in [re.search(r"session ([0-9a-f]{8,})", line)]
            if m
        }
        return [
            line
            for line in lines
            if re.search(rf"{address}\b", line) or any(s in line for s in sessions)
        ]

    def expect_event_logged(self, client_port: int) -> list[str]:
        def event_lines() -> list[str]:
            return [line for line in self.lines_about(client_port) if "signed in" not in line]

        lines = wait_for(event_lines, f"a log line about client port {client_port}", timeout=10)
        assert isinstance(lines, list)
        new = "\n".join(self.proxy.log().splitlines()[self.start :])
        assert "Traceback" not in new, new
        assert len(lines) <= 3, "expected about one line per event:\n" + "\n".join(lines)
        return lines


def assert_still_serving(proxy: Proxy) -> None:
    assert proxy.alive(), proxy.log()[-3000:]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'still serving'").fetchone() == ("still serving",)
    assert "Traceback" not in proxy.log()


GARBAGE = {
    "http-request": b"GET / HTTP/1.1\r\nHost: steward\r\n\r\n",
    "random-bytes": random.Random(7).randbytes(200),
    "small-length-unknown-code": struct.pack("!I", 16) + b"\xde\xad\xbe\xef" + b"garbage!",
    "length-below-minimum": struct.pack("!I", 2) + b"\x00\x03\x00\x00",
    "tls-client-hello-without-sslrequest": bytes.fromhex("160301020001") + b"\x00" * 64,
}


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_bytes_get_error_or_close(bad_proxy: Proxy, payload: bytes) -> None:
    watch = LogWatch(bad_proxy)
    with raw_connect(bad_proxy) as sock:
        port = sock.getsockname()[1]
        sock.sendall(payload)
        sock.shutdown(1)  # nothing more will come: the proxy must decide now
        reply = read_until_closed(sock)
    assert reply == b"" or reply.startswith(b"E"), reply[:100]
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_truncated_startup_then_close(bad_proxy: Proxy) -> None:
    watch = LogWatch(bad_proxy)
    packet = startup_packet("alice", bad_proxy.dbname)
    with raw_connect(bad_proxy) as sock:
        port = sock.getsockname()[1]
        sock.sendall(packet[: len(packet) // 2])
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_connect_and_close_without_a_byte(bad_proxy: Proxy) -> None:
    with raw_connect(bad_proxy):
        pass
    assert_still_serving(bad_proxy)


def test_oversize_startup_length_is_refused_without_allocating(bad_proxy: Proxy) -> None:
    rss_before = bad_proxy.rss_kib()
    watch = LogWatch(bad_proxy)
    with raw_connect(bad_proxy) as sock:
        port = sock.getsockname()[1]
        sock.sendall(struct.pack("!II", 0x7FFFFFFF, PROTOCOL_3) + b"user\0alice\0" * 100)
        reply = read_until_closed(sock)
    assert reply == b"" or reply.startswith(b"E"), reply[:100]
    assert bad_proxy.rss_kib() - rss_before < RSS_SLACK_KIB
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_oversize_message_after_login_is_refused_without_allocating(bad_proxy: Proxy) -> None:
    watch = LogWatch(bad_proxy)
    sock, _ = raw_login(bad_proxy)
    port = sock.getsockname()[1]
    rss_before = bad_proxy.rss_kib()
    with sock:
        sock.sendall(b"Q" + struct.pack("!I", 0x7FFFFFFF) + b"SELECT " * 1000)
        reply = read_until_closed(sock)
    assert reply == b"" or reply.startswith(b"E"), reply[:100]
    if reply:
        fields = first_error(reply)
        assert fields is not None and fields.get("C", "")[:2] in {"08", "54"}, fields
    assert bad_proxy.rss_kib() - rss_before < RSS_SLACK_KIB
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_max_message_size_option_is_enforced(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--max-message-size", "65536")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT length(%s)", ("x" * 1000,)).fetchone() == (1000,)
    with pytest.raises(psycopg.Error), psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT length(%s)", ("x" * 200_000,))
    assert_still_serving(proxy)


def test_protocol_version_2_is_refused(bad_proxy: Proxy) -> None:
    watch = LogWatch(bad_proxy)
    with raw_connect(bad_proxy) as sock:
        port = sock.getsockname()[1]
        sock.sendall(startup_packet("alice", bad_proxy.dbname, version=2 << 16))
        reply = read_until_closed(sock)
    fields = first_error(reply)
    assert fields is not None, reply[:100]
    assert fields.get("C") in {"0A000", "08P01", "08004"}, fields
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_unknown_message_type_after_login(bad_proxy: Proxy) -> None:
    sock, _ = raw_login(bad_proxy)
    with sock:
        sock.sendall(message(b"\x01", b"junk"))
        reply = read_until_closed(sock)
    assert reply == b"" or first_error(reply) is not None, reply[:100]
    assert_still_serving(bad_proxy)


def test_cancel_request_with_unknown_key_is_ignored(bad_proxy: Proxy) -> None:
    watch = LogWatch(bad_proxy)
    with raw_connect(bad_proxy) as sock:
        port = sock.getsockname()[1]
        sock.sendall(struct.pack("!IIII", 16, 80877102, 12345, 67890))
        assert read_until_closed(sock) == b""
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_client_disconnects_mid_query(pg: LocalPostgres, bad_proxy: Proxy) -> None:
    marker = "gone_" + uuid.uuid4().hex[:8]
    watch = LogWatch(bad_proxy)
    sock, _ = raw_login(bad_proxy)
    port = sock.getsockname()[1]
    with sock:
        sock.sendall(query_message(f"SELECT pg_sleep(2) AS {marker}"))
        wait_for(lambda: upstream_backends(pg, marker), "the query to reach PostgreSQL")
    # The upstream session must not leak: once the sleep ends it goes away.
    wait_for(lambda: upstream_backends(pg, marker) == 0, "the upstream backend to end")
    watch.expect_event_logged(port)
    assert_still_serving(bad_proxy)


def test_error_response_fields_are_well_formed(bad_proxy: Proxy) -> None:
    sock, _ = raw_login(bad_proxy)
    with sock:
        sock.sendall(query_message("SELECT 1/0"))
        messages = recv_messages(sock)
        sock.sendall(message(b"X"))
    kinds = [kind for kind, _ in messages]
    assert kinds[-1] == b"Z"
    errors = [error_fields(payload) for kind, payload in messages if kind == b"E"]
    assert errors and errors[0]["C"] == "22012"
