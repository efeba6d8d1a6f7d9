"""The ground the proxy tests stand on: ``LocalPostgres`` and the seeded data, used directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import BIG_ROWS

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("user", "method"),
    [
        (LocalPostgres.SCRAM_USER, "SCRAM-SHA-256$"),
        (LocalPostgres.MD5_USER, "md5"),
        (LocalPostgres.TRUST_USER, None),
        (LocalPostgres.SUPERUSER, "SCRAM-SHA-256$"),
    ],
)
def test_roles_log_in_with_their_method(pg: LocalPostgres, user: str, method: str | None) -> None:
    with psycopg.connect(pg.dsn(user)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    stored = pg.execute(f"SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{user}'")
    if method is None:
        assert stored.strip() == ""
    else:
        assert stored.startswith(method)


@pytest.mark.parametrize("user", [LocalPostgres.SCRAM_USER, LocalPostgres.MD5_USER])
def test_password_roles_refuse_a_wrong_password(pg: LocalPostgres, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(user, password="wrong"))


def test_seeded_tables(pg: LocalPostgres) -> None:
    with psycopg.connect(pg.dsn(LocalPostgres.SCRAM_USER)) as conn:
        assert conn.execute("SELECT count(*) FROM mixed").fetchone() == (64,)
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (BIG_ROWS,)
        nulls = conn.execute("SELECT count(*) FROM mixed WHERE t IS NULL").fetchone()
        assert nulls is not None and nulls[0] > 0


def test_server_listens_on_loopback_only(pg: LocalPostgres) -> None:
    assert pg.execute("SHOW listen_addresses").strip() == "127.0.0.1"
    assert pg.dsn().startswith("postgresql://postgres:")
    assert "@127.0.0.1:" in pg.dsn()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def _postmaster_pid(server: LocalPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_restart_keeps_data_and_port_stop_removes_everything() -> None:
    server = LocalPostgres(dbname="scratch").start()
    try:
        server.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7);")
        port, pid = server.port, _postmaster_pid(server)
        server.restart()
        assert server.port == port
        assert _postmaster_pid(server) != pid
        assert server.execute("SELECT v FROM kept").strip() == "7"
        base, pid = server.base_dir, _postmaster_pid(server)
    finally:
        server.stop()
    assert base is not None and not base.exists()
    assert process_gone(pid)


def test_context_manager_cleans_up_after_an_exception() -> None:
    with pytest.raises(RuntimeError, match="psql failed"), LocalPostgres() as server:
        base, pid = server.base_dir, _postmaster_pid(server)
        server.execute("SELECT no_such_column FROM nowhere")
    assert base is not None and not base.exists()
    assert process_gone(pid)


def test_atexit_backstop_stops_a_forgotten_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = (
        "from steward_testing.postgres import LocalPostgres\n"
        "s = LocalPostgres().start()\n"
        "print(s.data_dir, open(s.data_dir / 'postmaster.pid').readline().strip(), flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    data_dir, pid = out[0], int(out[1])
    assert not os.path.exists(data_dir)
    assert process_gone(pid)
