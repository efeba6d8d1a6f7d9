"""Throwaway PostgreSQL servers, and the proxy in front of one, for tests, demo, bench.

``LocalPostgres`` runs ``initdb`` in a fresh temporary directory, writes a
configuration that listens on 127.0.0.1 at a free port (Unix socket inside the
temporary directory), starts the server with ``pg_ctl`` and creates one role per
upstream authentication method the proxy must handle:

=================  ==================  =======================================
role               pg_hba method       password
=================  ==================  =======================================
``steward_scram``  ``scram-sha-256``   stored as a SCRAM verifier
``steward_md5``    ``md5``             stored as an MD5 hash
``steward_trust``  ``trust``           none
``postgres``       ``scram-sha-256``   superuser, stored as a SCRAM verifier
=================  ==================  =======================================

The three application roles may read and write all data (``pg_read_all_data``,
``pg_write_all_data``) and create objects in ``public``. Administration goes
through ``psql`` over the Unix socket (trust). PostgreSQL refuses to run as root,
so when the current user is root the server binaries run as ``postgres`` via
``runuser`` and the temporary directory belongs to that user.

The server binaries come from ``$STEWARD_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin``, else ``PATH``. ``stop()`` shuts the server down
(fast mode) and removes the directory; an ``atexit`` hook does the same for any
instance still running when the interpreter exits, so no ``postgres`` process is
left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["LocalPostgres", "PostgresNotFound", "find_pg_bin", "free_port", "wait_for_port"]

_LIVE: weakref.WeakSet[LocalPostgres] = weakref.WeakSet()
_PG_OS_USER = "postgres"


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) were found."""


def find_pg_bin() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    env = os.environ.get("STEWARD_PG_BIN")
    if env:
        path = Path(env)
        if not (path / "initdb").exists():
            raise PostgresNotFound(f"STEWARD_PG_BIN={env} has no initdb")
        return path

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if candidates:
        return max(candidates, key=version_key)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresNotFound(
        "PostgreSQL server binaries not found: install the postgresql package "
        "(scripts/ensure-system-deps.sh) or set STEWARD_PG_BIN"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    *,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 30.0,
) -> None:
    """Poll until ``host:port`` accepts TCP; raise if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class LocalPostgres:
    """A PostgreSQL cluster in a temporary directory, for one process's lifetime."""

    SUPERUSER = "postgres"
    SCRAM_USER = "steward_scram"
    MD5_USER = "steward_md5"
    TRUST_USER = "steward_trust"

    def __init__(
        self,
        *,
        dbname: str = "steward",
        fast: bool = True,
        max_connections: int = 100,
        bin_dir: Path | str | None = None,
        extra_conf: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) a cluster.

        ``fast`` turns off ``fsync``, ``synchronous_commit`` and
        ``full_page_writes``: fine for tests, never for data you want to keep.
        """
        self.bin_dir = Path(bin_dir) if bin_dir else find_pg_bin()
        self.dbname = dbname
        self.fast = fast
        self.max_connections = max_connections
        self.extra_conf = list(extra_conf)
        self.host = "127.0.0.1"
        self.port = 0
        self.base_dir: Path | None = None
        self.passwords: dict[str, str] = {
            self.SUPERUSER: "su-" + secrets.token_hex(12),
            self.SCRAM_USER: "scram-" + secrets.token_hex(12),
            self.MD5_USER: "md5-" + secrets.token_hex(12),
            self.TRUST_USER: "",
        }
        self._running = False

    # -- paths --------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base

    @property
    def log_file(self) -> Path:
        return self._base / "postgres.log"

    @property
    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("LocalPostgres has not been started")
        return self.base_dir

    def bin(self, name: str) -> str:
        """Path of a PostgreSQL program (``psql``, ``pgbench``, ...)."""
        path = self.bin_dir / name
        if path.exists():
            return str(path)
        found = shutil.which(name)
        if not found:
            raise PostgresNotFound(f"{name} not found in {self.bin_dir} or PATH")
        return found

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> LocalPostgres:
        """Create the cluster (first call only), start it and wait until it accepts."""
        if self._running:
            return self
        _LIVE.add(self)
        try:
            if self.base_dir is None:
                self._initdb()
                self._start_server()
                self._bootstrap()
            else:
                self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        try:
            self.stop_server()
        finally:
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
            _LIVE.discard(self)

    def stop_server(self) -> None:
        """Stop the server but keep its data; ``start()`` brings it back."""
        if self.base_dir is None or not (self.data_dir / "postmaster.pid").exists():
            self._running = False
            return
        result = self._pg_ctl("stop", "-m", "fast", check=False)
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate", check=False)
        self._running = False

    def restart(self) -> None:
        """Restart the server on the same port (fast shutdown ends all sessions)."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file))
        self._running = True

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- connecting ---------------------------------------------------------

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
    ) -> str:
        """A ``postgresql://`` URL for 127.0.0.1.

        ``password=None`` uses the role's known password; ``""`` leaves it out.
        """
        user = user or self.SUPERUSER
        if password is None:
            password = self.passwords.get(user, "")
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname or self.dbname)}"

    def execute(self, sql: str, dbname: str | None = None, user: str | None = None) -> str:
        """Run SQL with ``psql`` over the Unix socket; return unaligned, tuples-only output."""
        result = subprocess.run(
            [
                self.bin("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                user or self.SUPERUSER,
                "-d",
                dbname or self.dbname,
                "-f",
                "-",
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=self._client_env(),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    # -- internals ----------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        if _as_root():
            argv = ["runuser", "-u", _PG_OS_USER, "--", *argv]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=self._client_env(),
            cwd="/",
            check=False,
        )
        if check and result.returncode != 0:
            log = ""
            if self.base_dir is not None and self.log_file.exists():
                log = self.log_file.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(
            [self.bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", *args], check=check
        )

    def _initdb(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="steward-pg-"))
        if _as_root():
            import pwd

            entry = pwd.getpwnam(_PG_OS_USER)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                self.bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        hba = [
            "# written by steward_testing.postgres",
            "local all all trust",
            f"host all {self.TRUST_USER} 127.0.0.1/32 trust",
            f"host all {self.MD5_USER} 127.0.0.1/32 md5",
            "host all all 127.0.0.1/32 scram-sha-256",
        ]
        self._write_as_owner(self.data_dir / "pg_hba.conf", "\n".join(hba) + "\n")

    def _write_conf(self) -> None:
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            f"max_connections = {self.max_connections}",
            "password_encryption = 'scram-sha-256'",
            "timezone = 'UTC'",
            "log_timezone = 'UTC'",
            "logging_collector = off",
            "log_min_messages = warning",
        ]
        if self.fast:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf += self.extra_conf
        self._write_as_owner(self.data_dir / "postgresql.auto.conf", "\n".join(conf) + "\n")

    def _write_as_owner(self, path: Path, text: str) -> None:
        path.write_text(text)
        if _as_root():
            import pwd

            entry = pwd.getpwnam(_PG_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start_server(self) -> None:
        attempts = 1 if self.port else 5
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            self._write_conf()
            result = self._pg_ctl("start", "-l", str(self.log_file), check=False)
            if result.returncode == 0:
                self._running = True
                return
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            if "could not bind" not in log and "in use" not in log:
                break
        raise RuntimeError(
            f"PostgreSQL did not start: {result.stdout}{result.stderr}\n"
            + (self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else "")
        )

    def _bootstrap(self) -> None:
        def lit(value: str) -> str:
            return "'" + value.replace("'", "''") + "'"

        su, scram, md5, trust = self.SUPERUSER, self.SCRAM_USER, self.MD5_USER, self.TRUST_USER
        self.execute(
            f"""
            SET password_encryption = 'scram-sha-256';
            ALTER ROLE {su} PASSWORD {lit(self.passwords[su])};
            CREATE ROLE {scram} LOGIN PASSWORD {lit(self.passwords[scram])};
            SET password_encryption = 'md5';
            CREATE ROLE {md5} LOGIN PASSWORD {lit(self.passwords[md5])};
            RESET password_encryption;
            CREATE ROLE {trust} LOGIN;
            GRANT pg_read_all_data, pg_write_all_data TO {scram}, {md5}, {trust};
            CREATE DATABASE {self.dbname};
            """,
            dbname="postgres",
        )
        self.execute(
            f"GRANT ALL ON SCHEMA public TO {scram}, {md5}, {trust};\n"
            f"GRANT ALL ON DATABASE {self.dbname} TO {scram}, {md5}, {trust};\n"
        )


@atexit.register
def _stop_all() -> None:
    for instance in list(_LIVE):
        with contextlib.suppress(Exception):
            instance.stop()


class LocalProxy:
    """``steward proxy`` as a child process in front of a :class:`LocalPostgres`.

    The demo and the benchmarks run the proxy exactly as a user would, from its
    command line; this is the one place that starts it that way. It signs in
    upstream as ``upstream_user`` (password through ``STEWARD_UPSTREAM_PASSWORD``)
    and writes its log to ``log_path``.
    """

    def __init__(
        self,
        pg: LocalPostgres,
        *,
        policy: Path,
        audit_log: Path,
        log_path: Path,
        upstream_user: str = LocalPostgres.SCRAM_USER,
        extra_args: Sequence[str] = (),
        own_session: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.pg = pg
        self.extra_env = dict(env or {})
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = log_path
        self.audit_log = audit_log
        self.upstream_user = upstream_user
        self.argv = [
            sys.executable, "-m", "steward_proxy", "proxy",
            "--listen", f"{self.host}:{self.port}",
            "--upstream", pg.dsn(upstream_user, password=""),
            "--policy", str(policy),
            "--audit-log", str(audit_log),
            *extra_args,
        ]  # fmt: skip
        self._own_session = own_session  # True: a terminal's Ctrl-C reaches only the caller
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalProxy:
        """Start the proxy and wait until it listens; RuntimeError with its log if it fails."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STEWARD_"))}
        env.update(self.extra_env)
        if self.pg.passwords.get(self.upstream_user):
            env["STEWARD_UPSTREAM_PASSWORD"] = self.pg.passwords[self.upstream_user]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self._own_session,
            )
        try:
            wait_for_port(self.host, self.port, process=self.process)
        except (RuntimeError, TimeoutError) as err:
            self.stop()
            raise RuntimeError(f"steward proxy did not start: {err}\n{self.log()}") from None
        return self

    def dsn(self, user: str) -> str:
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{self.pg.dbname}"

    def log(self) -> str:
        """The tail of the proxy's log."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown), then kill after ``timeout``; the exit code."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def __enter__(self) -> LocalProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
