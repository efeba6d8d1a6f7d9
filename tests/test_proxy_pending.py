"""Connections that have not sent a startup packet are bounded (``--max-pending-connections``).

Beyond the bound the proxy closes the oldest silent connection (or one still
in its TLS handshake), never one whose startup packet arrived, so a flood of
silent sockets neither exhausts the proxy's file descriptors nor locks out a
client that signs in promptly. Evictions are counted in ``/metrics`` and
logged a line at a time, not per socket. At start the proxy raises its open
file limit to the hard limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from steward_proxy.server import ProxySettings, raise_open_file_limit
from steward_proxy.upstream import UpstreamTarget

from conftest import (
    ALLOW_ALL_POLICY,
    SSL_REQUEST,
    Proxy,
    ProxyFactory,
    first_error,
    raw_connect,
    read_until_closed,
    server_certificate,
    startup_packet,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

DEFAULT_BOUND = 256
FLOOD = 2_000
MORE = 100


def metric(proxy: Proxy, name: str) -> int:
    status, text = proxy.http_get("/metrics")
    assert status == 200, text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return int(float(found.group(1)))


def pending(proxy: Proxy) -> int:
    return metric(proxy, "steward_pending_connections")


def evicted(proxy: Proxy) -> int:
    return metric(proxy, "steward_pending_connections_evicted_total")


def wait_evicted(proxy: Proxy, count: int) -> None:
    """Wait until the proxy has accepted every socket opened so far and evicted ``count``."""
    wait_for(lambda: evicted(proxy) >= count, f"{count} evictions", timeout=60)
    assert evicted(proxy) == count


def open_fds(proxy: Proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.pid}/fd"))


def still_open(sock: socket.socket) -> bool:
    """True while the proxy has neither written to nor closed ``sock`` (does not wait)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


@pytest.fixture
def silent() -> Iterator[list[socket.socket]]:
    """Sockets a test opens; closed at teardown. Raises this process's descriptor limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLOOD + MORE + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def open_silent(proxy: Proxy, sockets: list[socket.socket], count: int) -> None:
    for _ in range(count):
        sockets.append(raw_connect(proxy))


# ----------------------------------------------------------------- the flood


def test_a_flood_of_silent_sockets_does_not_lock_out_a_prompt_client(
    start_proxy: ProxyFactory, silent: list[socket.socket]
) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY)
    fds_before, rss_before = open_fds(proxy), proxy.rss_kib()

    open_silent(proxy, silent, FLOOD)
    wait_evicted(proxy, FLOOD - DEFAULT_BOUND)
    assert pending(proxy) == DEFAULT_BOUND
    with psycopg.connect(proxy.dsn(), autocommit=True, connect_timeout=30) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

        open_silent(proxy, silent, MORE)
        wait_evicted(proxy, FLOOD + MORE - DEFAULT_BOUND)
        assert pending(proxy) == DEFAULT_BOUND
        fds_after, rss_after = open_fds(proxy), proxy.rss_kib()
        assert conn.execute("SELECT 2").fetchone() == (2,)

    # The oldest were closed by the proxy, with 53300; the newest are untouched.
    oldest, newest = silent[:-DEFAULT_BOUND], silent[-DEFAULT_BOUND:]
    for sock in oldest:
        error = first_error(read_until_closed(sock))
        assert error is not None and error["C"] == "53300", error
    assert all(still_open(sock) for sock in newest)
    # The proxy holds the bound, not the flood: a descriptor per pending socket.
    assert fds_after <= fds_before + DEFAULT_BOUND + 8, (fds_before, fds_after)

    log = proxy.log()
    lines = re.findall(r"closed (\d+) connection\(s\) that had not sent a startup packet", log)
    assert lines, log[-2000:]
    assert len(lines) < 50, "evictions must be logged a line at a time, not per socket"
    # One line at most, for the probe that waited for the proxy to listen.
    assert log.count("disconnected before sign-in") <= 1
    assert "Traceback" not in log
    print(
        f"proxy with {FLOOD + MORE} silent sockets: fds {fds_before} -> {fds_after}, "
        f"RSS {rss_before} -> {rss_after} KiB"
    )


# ----------------------------------------------------------- who is evicted


def test_a_connection_signing_in_is_never_evicted_by_silent_ones(
    start_proxy: ProxyFactory, silent: list[socket.socket]
) -> None:
    # An upstream that takes the connection and never answers: the sign-in waits.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        url = f"postgresql://steward@127.0.0.1:{hung.getsockname()[1]}/db?sslmode=disable"
        proxy = start_proxy(
            ALLOW_ALL_POLICY,
            "--max-pending-connections",
            "4",
            "--connect-timeout",
            "120",
            "--readiness-interval",
            "0",  # the upstream hangs: only the client's sign-in may reach it
            upstream=url,
        )
        hung.settimeout(30)
        with raw_connect(proxy) as signing_in:
            signing_in.sendall(startup_packet("alice", "db"))
            upstream, _ = hung.accept()  # the sign-in is under way
            with upstream:
                open_silent(proxy, silent, 10)
                wait_evicted(proxy, 6)
                assert pending(proxy) == 4
                assert still_open(signing_in)
                assert [still_open(sock) for sock in silent] == [False] * 6 + [True] * 4


def test_connections_in_their_tls_handshake_are_evicted_like_silent_ones(
    start_proxy: ProxyFactory, silent: list[socket.socket], tmp_path: Path
) -> None:
    cert, key = server_certificate(tmp_path)
    proxy = start_proxy(
        ALLOW_ALL_POLICY,
        "--max-pending-connections",
        "4",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    handshaking = []
    for _ in range(4):
        sock = raw_connect(proxy)
        sock.sendall(struct.pack("!ii", 8, SSL_REQUEST))
        assert sock.recv(1) == b"S"
        handshaking.append(sock)  # and never sends its ClientHello
    silent.extend(handshaking)
    open_silent(proxy, silent, 4)
    wait_evicted(proxy, 4)
    for sock in handshaking:
        assert read_until_closed(sock) == b"", "nothing may be written inside a handshake"
    with psycopg.connect(proxy.dsn() + "?sslmode=require", autocommit=True) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Its connection made room by closing the oldest silent socket.
    assert (pending(proxy), evicted(proxy)) == (3, 5)
    assert "Traceback" not in proxy.log()


def test_the_bound_must_be_positive(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--max-pending-connections", "0", wait_ready=False)
    assert proxy.process.wait(30) == 2
    assert "--max-pending-connections: expected a positive integer" in proxy.log()
    start_proxy.proxies.remove(proxy)


# ---------------------------------------------------------- open file limit


@pytest.fixture
def restore_nofile() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def settings(max_connections: int = 100, max_pending: int = 256) -> ProxySettings:
    return ProxySettings(
        listen_host="127.0.0.1",
        listen_port=0,
        upstream=UpstreamTarget("127.0.0.1", 5432, "steward", "db"),
        max_connections=max_connections,
        max_pending_connections=max_pending,
    )


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(
    restore_nofile: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = restore_nofile
    if hard == resource.RLIM_INFINITY or hard < 600:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    with caplog.at_level(logging.INFO, logger="steward.proxy"):
        assert raise_open_file_limit(settings()) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert f"open file limit raised from 512 to {hard}" in caplog.text


def test_a_limit_below_what_the_bounds_need_is_warned_about(
    restore_nofile: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = restore_nofile
    too_many = hard if hard != resource.RLIM_INFINITY else 1 << 30
    with caplog.at_level(logging.INFO, logger="steward.proxy"):
        raise_open_file_limit(settings(max_connections=too_many))
    assert "new clients may be closed unanswered" in caplog.text
