"""The proxy's own upstream login (scram, md5, trust), its secrecy, and upstream failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from steward_testing.postgres import LocalPostgres, free_port

from conftest import (
    MIXED_SCHEMA,
    Proxy,
    ProxyFactory,
    error_fields,
    first_error,
    query_message,
    raw_connect,
    raw_login,
    read_until_closed,
    recv_messages,
    startup_packet,
)

pytestmark = pytest.mark.timeout(90)

AUTH_CASES = [
    pytest.param(LocalPostgres.SCRAM_USER, "env", id="scram-password-from-env"),
    pytest.param(LocalPostgres.SCRAM_USER, "file", id="scram-password-from-file"),
    pytest.param(LocalPostgres.SCRAM_USER, "dsn", id="scram-password-in-dsn"),
    pytest.param(LocalPostgres.MD5_USER, "env", id="md5-password-from-env"),
    pytest.param(LocalPostgres.MD5_USER, "file", id="md5-password-from-file"),
    pytest.param(LocalPostgres.TRUST_USER, "env", id="trust-no-password"),
]


@pytest.mark.parametrize(("upstream_user", "password_via"), AUTH_CASES)
def test_upstream_login_methods(
    start_proxy: ProxyFactory, upstream_user: str, password_via: str
) -> None:
    proxy = start_proxy(upstream_user=upstream_user, password_via=password_via)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (upstream_user,)
        assert conn.execute("SELECT count(*) FROM mixed").fetchone() == (64,)


@pytest.mark.parametrize(
    "upstream_user", [LocalPostgres.SCRAM_USER, LocalPostgres.MD5_USER], ids=["scram", "md5"]
)
def test_client_never_needs_or_learns_the_upstream_password(
    start_proxy: ProxyFactory, upstream_user: str
) -> None:
    proxy = start_proxy(upstream_user=upstream_user, password_via="env")
    secret = proxy.upstream_password.encode()
    assert secret
    sock, received = raw_login(proxy)  # no password message is ever sent
    with sock:
        sock.sendall(query_message("SELECT current_user; SHOW ALL"))
        received += b"".join(kind + payload for kind, payload in recv_messages(sock))
    assert secret not in received
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT %s::text", ("a parameter",)).fetchone()
    assert proxy.terminate() == 0
    assert secret not in proxy.log_path.read_bytes()
    assert proxy.audit_log is not None and proxy.audit_log.exists()
    assert secret not in proxy.audit_log.read_bytes()


def test_wrong_upstream_password_gives_client_an_error_not_the_password(
    start_proxy: ProxyFactory, pg: LocalPostgres
) -> None:
    wrong = "definitely-wrong-Pw-31337"
    upstream = pg.dsn(LocalPostgres.SCRAM_USER, password=wrong)
    proxy = start_proxy(upstream=upstream)
    with raw_connect(proxy) as sock:
        sock.sendall(startup_packet("alice", proxy.dbname))
        reply = read_until_closed(sock)
    fields = first_error(reply)
    assert fields is not None, reply[:200]
    assert fields["C"][:2] in {"08", "28"}, fields
    assert fields["M"] == "the proxy could not sign in upstream", fields
    assert "password authentication failed" in proxy.log()  # the operator learns why
    assert wrong.encode() not in reply
    assert proxy.alive()
    assert "Traceback" not in proxy.log()
    assert wrong not in proxy.log()


def test_upstream_down_gives_08_error_and_proxy_keeps_running(
    start_proxy: ProxyFactory, pg: LocalPostgres
) -> None:
    closed_port = free_port()
    upstream = f"postgresql://{LocalPostgres.TRUST_USER}@127.0.0.1:{closed_port}/{pg.dbname}"
    proxy = start_proxy(upstream=upstream)
    for _ in range(2):
        with raw_connect(proxy) as sock:
            sock.sendall(startup_packet("alice", proxy.dbname))
            reply = read_until_closed(sock)
        fields = first_error(reply)
        assert fields is not None, f"expected an ErrorResponse, got {reply[:200]!r}"
        assert fields["C"].startswith("08"), fields
        assert fields["M"] == "upstream database unavailable", fields
        assert str(closed_port) not in fields["M"]
        assert proxy.alive()
    assert f"127.0.0.1:{closed_port}" in proxy.log()  # the operator learns where

    async def via_asyncpg() -> None:
        await asyncpg.connect(**proxy.asyncpg_args())

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(via_asyncpg())
    assert info.value.sqlstate.startswith("08")
    assert proxy.http_get("/healthz")[0] == 200
    assert proxy.http_get("/readyz")[0] != 200
    assert "Traceback" not in proxy.log()


@pytest.fixture
def own_pg() -> Iterator[LocalPostgres]:
    """A PostgreSQL of its own, for tests that restart it."""
    with LocalPostgres(fast=True) as server:
        server.execute(MIXED_SCHEMA)
        yield server


def test_upstream_restart_breaks_old_sessions_and_new_ones_work(
    start_proxy: ProxyFactory, own_pg: LocalPostgres
) -> None:
    proxy = start_proxy(pg=own_pg)
    old = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        assert old.execute("SELECT 1").fetchone() == (1,)
        own_pg.restart()
        with pytest.raises(psycopg.OperationalError):
            old.execute("SELECT 1")
    finally:
        old.close()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM mixed").fetchone() == (64,)
    assert proxy.alive()
    assert proxy.http_get("/readyz")[0] == 200
    assert "Traceback" not in proxy.log()


def test_upstream_shutdown_reaches_a_raw_session_as_postgresqls_own_fatal_alone(
    start_proxy: ProxyFactory, own_pg: LocalPostgres
) -> None:
    proxy = start_proxy(pg=own_pg)
    sock, _ = raw_login(proxy)
    with sock:
        own_pg.restart()
        messages = recv_messages(sock, until=b"")  # everything up to the close
    # A fast shutdown ends each backend with FATAL 57P01; the proxy adds nothing.
    errors = [error_fields(payload) for kind, payload in messages if kind == b"E"]
    assert [(e["S"], e["C"]) for e in errors] == [("FATAL", "57P01")], messages
    assert messages[-1][0] == b"E", messages
    assert proxy.alive()


def test_proxy_started_before_upstream_is_up(start_proxy: ProxyFactory) -> None:
    server = LocalPostgres(fast=True)
    try:
        server.start()
        server.stop_server()
        proxy: Proxy = start_proxy(pg=server)
        with raw_connect(proxy) as sock:
            sock.sendall(startup_packet("alice", proxy.dbname))
            fields = first_error(read_until_closed(sock))
        assert fields is not None and fields["C"].startswith("08"), fields
        server.start()
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        start_proxy.close()
        server.stop()
