"""TLS on both legs: clients to the proxy (``--tls-cert``/``--tls-key``) and the
proxy to PostgreSQL (``sslmode`` in the upstream URL)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import ALLOW_ALL_POLICY, ProxyFactory, server_certificate


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[LocalPostgres]:
    """A PostgreSQL that offers TLS (its key must belong to the server's OS user)."""
    directory = Path(tempfile.mkdtemp(prefix="steward-tls-"))
    directory.chmod(0o755)
    try:
        cert, key = server_certificate(directory)
        if os.geteuid() == 0:
            shutil.chown(key, "postgres", "postgres")
            shutil.chown(cert, "postgres", "postgres")
        server = LocalPostgres(
            extra_conf=["ssl = on", f"ssl_cert_file = '{cert}'", f"ssl_key_file = '{key}'"]
        )
        with server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_client_tls_is_offered_and_used(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    cert, key = server_certificate(tmp_path)
    proxy = start_proxy(ALLOW_ALL_POLICY, "--tls-cert", str(cert), "--tls-key", str(key))
    with psycopg.connect(proxy.dsn() + "?sslmode=require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    with psycopg.connect(proxy.dsn() + "?sslmode=disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_client_tls_is_refused_without_a_certificate(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY)
    with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl|tls"):
        psycopg.connect(proxy.dsn() + "?sslmode=require")
    with psycopg.connect(proxy.dsn() + "?sslmode=prefer") as conn:
        assert not conn.pgconn.ssl_in_use


@pytest.mark.parametrize("sslmode", ["require", "prefer"])
def test_upstream_tls_by_sslmode(
    start_proxy: ProxyFactory, tls_pg: LocalPostgres, sslmode: str
) -> None:
    user = LocalPostgres.SCRAM_USER
    upstream = tls_pg.dsn(user) + f"?sslmode={sslmode}"
    proxy = start_proxy(ALLOW_ALL_POLICY, upstream=upstream, pg=tls_pg)
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    assert row == (True,)


def test_upstream_sslmode_disable_stays_plain(
    start_proxy: ProxyFactory, tls_pg: LocalPostgres
) -> None:
    upstream = tls_pg.dsn(LocalPostgres.SCRAM_USER) + "?sslmode=disable"
    proxy = start_proxy(ALLOW_ALL_POLICY, upstream=upstream, pg=tls_pg)
    with psycopg.connect(proxy.dsn()) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    assert row == (False,)


def test_upstream_without_tls_fails_when_required(
    start_proxy: ProxyFactory, pg: LocalPostgres
) -> None:
    upstream = pg.dsn(LocalPostgres.SCRAM_USER) + "?sslmode=require"
    proxy = start_proxy(ALLOW_ALL_POLICY, upstream=upstream)
    with pytest.raises(psycopg.OperationalError) as failure:
        psycopg.connect(proxy.dsn())
    assert "upstream database unavailable" in str(failure.value)
    assert "upstream does not support TLS" in proxy.log()  # the detail is the operator's
    # The proxy keeps serving: a proxy on a plain upstream still works.
    plain = start_proxy(ALLOW_ALL_POLICY)
    with psycopg.connect(plain.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
