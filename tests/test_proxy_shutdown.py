"""SIGTERM: stop accepting, let running statements finish, exit 0."""

from __future__ import annotations

import signal
import socket
import threading
import uuid

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import ProxyFactory, active_upstream_queries, wait_for

pytestmark = pytest.mark.timeout(60)


def test_sigterm_lets_running_statement_finish(
    start_proxy: ProxyFactory, pg: LocalPostgres
) -> None:
    proxy = start_proxy()
    marker = "term_" + uuid.uuid4().hex[:8]
    results: list[object] = []

    def client() -> None:
        try:
            with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
                results.append(conn.execute(f"SELECT pg_sleep(1), 42 AS {marker}").fetchone())
        except Exception as err:
            results.append(err)

    thread = threading.Thread(target=client)
    thread.start()
    wait_for(lambda: active_upstream_queries(pg, marker), "the statement to run upstream")
    proxy.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert results and results[0] == ("", 42), results
    assert proxy.terminate() == 0
    assert "Traceback" not in proxy.log()


def test_sigterm_stops_accepting_new_connections(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    proxy.process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection((proxy.host, proxy.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, "the listener to close")
    assert proxy.terminate() == 0


def test_sigterm_with_idle_session_exits_0(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    conn = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        conn.execute("SELECT 1")
        assert proxy.terminate() == 0  # an idle session does not hold the proxy open
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
