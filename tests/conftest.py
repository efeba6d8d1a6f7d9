"""Shared fixtures: a real PostgreSQL (``pg``), seeded data, and ``steward proxy`` processes.

``pg`` is one ``LocalPostgres`` for the whole session with two seeded tables:
``mixed`` (one column per common type, NULLs and awkward values) and ``big``
(``BIG_ROWS`` rows). ``start_proxy`` starts ``python -m steward_proxy proxy`` as a
subprocess in front of it and stops it with SIGTERM at teardown, asserting a clean
exit. The raw-protocol helpers at the bottom speak just enough of the PostgreSQL
v3 protocol to send malformed input and read ErrorResponses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from steward_testing.certs import CertificateAuthority
from steward_testing.postgres import LocalPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
BIG_ROWS = 120_000
DEFAULT_USER = "alice"
# The role the proxy logs in upstream with unless a test picks one; override with
# STEWARD_TEST_UPSTREAM_USER=steward_md5|steward_trust to isolate an auth problem.
DEFAULT_UPSTREAM_USER = os.environ.get("STEWARD_TEST_UPSTREAM_USER", LocalPostgres.SCRAM_USER)
SSN = "123-45-6789"

ALLOW_ALL_POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata:
  name: test-allow-all
spec:
  subjects:
    - {kind: User, name: alice}
    - {kind: User, name: bob}
  defaultAction: allow
"""

MIXED_SCHEMA = """
CREATE TABLE mixed (
    id      int PRIMARY KEY,
    t       text,
    i       int,
    b       bigint,
    n       numeric,
    by      bytea,
    ts      timestamptz,
    j       jsonb,
    ia      int[],
    ta      text[],
    flag    boolean,
    u       uuid,
    f       float8
);
INSERT INTO mixed
SELECT g,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g || ' ' || repeat('x', g % 13) END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE (g * 7919) % 100000 - 50000 END,
       CASE WHEN g % 6 = 0 THEN NULL ELSE g::bigint * 100000000000 END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE (g::numeric / 7)::numeric(30, 12) END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
       CASE WHEN g % 8 = 0 THEN NULL
            ELSE timestamptz '2024-02-29 12:34:56.789012+00' + g * interval '1 day 1 sec' END,
       CASE WHEN g % 9 = 0 THEN NULL
            ELSE jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g), 'ok', g % 2 = 0) END,
       CASE WHEN g % 10 = 0 THEN NULL WHEN g % 10 = 1 THEN '{}'::int[]
            ELSE ARRAY[g, NULL, -g] END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE ARRAY['a,b', 'quote"d', NULL, 'ü ' || g] END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE g % 2 = 0 END,
       CASE WHEN g % 12 = 0 THEN NULL ELSE md5('u' || g)::uuid END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g * 1.25e-3 END
FROM generate_series(1, 60) AS g;
INSERT INTO mixed VALUES
    (1000, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (1001, E'tab\\there\\nnewline ''quote'' \\\\ backslash \u00e9\u4e2d', 2147483647,
     9223372036854775807, 12345678901234567890.123456789, '\\x00ff00'::bytea,
     '9999-12-31 23:59:59.999999+00', '{"nested": {"a": [1, 2, null]}, "s": "\\u00e9"}',
     ARRAY[-2147483648],
     ARRAY['', ' '], true, '00000000-0000-0000-0000-000000000000', 'NaN'),
    (1002, '', -2147483648, -9223372036854775808, 'NaN', '', '0001-01-01 00:00:00+00', 'null',
     '{}', '{}', false, 'ffffffff-ffff-ffff-ffff-ffffffffffff', '-Infinity'),
    (1003, '123-45-6789', 0, 0, 0, '\\x'::bytea, '1999-12-31 23:59:59+00', '[]',
     ARRAY[0], ARRAY['x'], true, NULL, 1e308);
"""

BIG_SCHEMA = f"""
CREATE TABLE big AS
SELECT g AS id, md5(g::text) AS payload, g * 0.5 AS half, (g % 1000)::int AS bucket
FROM generate_series(1, {BIG_ROWS}) AS g;
ALTER TABLE big ADD PRIMARY KEY (id);
ANALYZE big;
"""


# --------------------------------------------------------------------------- pg


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """One seeded PostgreSQL for the whole test session."""
    with LocalPostgres(fast=True) as server:
        server.execute(MIXED_SCHEMA)
        server.execute(BIG_SCHEMA)
        yield server


def wait_for(
    predicate: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.02
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def active_upstream_queries(pg: LocalPostgres, needle: str) -> int:
    """Number of upstream backends currently running a query containing ``needle``."""
    needle_sql = needle.replace("'", "''")
    out = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        f"AND state = 'active' AND strpos(query, '{needle_sql}') > 0"
    )
    return int(out.strip())


def upstream_backends(pg: LocalPostgres, needle: str) -> int:
    """Number of upstream backends (any state) whose last query contains ``needle``."""
    needle_sql = needle.replace("'", "''")
    out = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        f"AND strpos(query, '{needle_sql}') > 0"
    )
    return int(out.strip())


# ------------------------------------------------------------------------ proxy


@dataclass
class Proxy:
    """A running ``steward proxy`` subprocess."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    dbname: str
    log_path: Path
    audit_log: Path | None
    admin_port: int | None
    argv: list[str]
    upstream_password: str = ""
    _exit_code: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def admin_url(self) -> str:
        if self.admin_port is None:
            raise RuntimeError("proxy was started without --admin")
        return f"http://127.0.0.1:{self.admin_port}"

    def dsn(self, user: str = DEFAULT_USER, dbname: str | None = None) -> str:
        """A libpq URL for a client of the proxy (no password: local dev mode)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname or self.dbname}"

    def asyncpg_args(self, user: str = DEFAULT_USER) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "user": user, "database": self.dbname}

    def pg8000_args(self, user: str = DEFAULT_USER) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "user": user, "database": self.dbname}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_records(self) -> list[dict[str, object]]:
        assert self.audit_log is not None
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("VmRSS not found")

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit code (idempotent)."""
        if self._exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self._exit_code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"proxy did not exit within {timeout}s of SIGTERM; log:\n{self.log()[-4000:]}"
                ) from None
        return self._exit_code


class ProxyFactory:
    """Starts proxies in front of ``pg``; ``close()`` stops them all."""

    def __init__(self, pg: LocalPostgres, tmp: Path) -> None:
        self.pg = pg
        self.tmp = tmp
        self.proxies: list[Proxy] = []
        self._n = 0

    def __call__(
        self,
        policy_yaml: str | None = ALLOW_ALL_POLICY,
        *extra_args: str,
        upstream_user: str | None = None,
        password_via: str = "env",
        upstream: str | None = None,
        audit: bool = True,
        admin: bool = True,
        pg: LocalPostgres | None = None,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
    ) -> Proxy:
        """Start ``steward proxy``; ``password_via`` is ``env``, ``dsn`` or ``file``.

        ``env`` adds environment variables (the proxy gets no ``PG*`` or
        ``STEWARD_*`` variable of the test's own).
        """
        server = pg or self.pg
        upstream_user = upstream_user or DEFAULT_UPSTREAM_USER
        self._n += 1
        workdir = self.tmp / f"proxy{self._n}"
        workdir.mkdir(parents=True)
        port = free_port()
        admin_port = free_port() if admin else None
        password = server.passwords.get(upstream_user, "")
        extra_env = env
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STEWARD_"))}
        argv = [sys.executable, "-m", "steward_proxy", "proxy", "--listen", f"127.0.0.1:{port}"]
        if upstream is None:
            upstream = server.dsn(upstream_user, password=password if password_via == "dsn" else "")
            if password and password_via == "env":
                env["STEWARD_UPSTREAM_PASSWORD"] = password
            elif password and password_via == "file":
                pw_file = workdir / "upstream-password"
                pw_file.write_text(password + "\n")
                pw_file.chmod(0o600)
                argv += ["--upstream-password-file", str(pw_file)]
        argv += ["--upstream", upstream]
        if policy_yaml is not None:
            policy_path = workdir / "policy.yaml"
            policy_path.write_text(policy_yaml)
            argv += ["--policy", str(policy_path)]
        audit_log = workdir / "audit.jsonl" if audit else None
        if audit_log is not None:
            argv += ["--audit-log", str(audit_log)]
        if admin_port is not None:
            argv += ["--admin", f"127.0.0.1:{admin_port}"]
        argv += list(extra_args)
        env.update(extra_env or {})
        log_path = workdir / "proxy.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        proxy = Proxy(
            process=process,
            host="127.0.0.1",
            port=port,
            dbname=server.dbname,
            log_path=log_path,
            audit_log=audit_log,
            admin_port=admin_port,
            argv=argv,
            upstream_password=password,
        )
        self.proxies.append(proxy)
        if wait_ready:
            self._wait_listening(proxy)
        return proxy

    @staticmethod
    def _wait_listening(proxy: Proxy, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proxy.process.poll() is not None:
                pytest.fail(
                    f"proxy exited with {proxy.process.returncode} before listening:\n"
                    f"{' '.join(proxy.argv)}\n{proxy.log()[-6000:]}"
                )
            try:
                with socket.create_connection((proxy.host, proxy.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"proxy not listening after {timeout}s:\n{proxy.log()[-6000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        """SIGTERM every proxy; assert each exited with code 0."""
        failures = []
        for proxy in self.proxies:
            try:
                code = proxy.terminate()
            except AssertionError as err:
                failures.append(str(err))
                continue
            if code != 0:
                failures.append(
                    f"proxy {proxy.port} exited with {code} after SIGTERM; log tail:\n"
                    f"{proxy.log()[-3000:]}"
                )
        self.proxies.clear()
        assert not failures, "\n\n".join(failures)


@pytest.fixture
def start_proxy(pg: LocalPostgres, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Factory: ``start_proxy(policy_yaml, *extra_args, upstream_user=...)`` -> ``Proxy``."""
    factory = ProxyFactory(pg, tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_proxy_factory(
    pg: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(pg, tmp_path_factory.mktemp("proxies"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def proxy(module_proxy_factory: ProxyFactory) -> Proxy:
    """One allow-all proxy (users alice and bob) shared by a test module."""
    return module_proxy_factory()


# ------------------------------------------------------------ direct vs proxied


def direct_dsn(pg: LocalPostgres) -> str:
    """The DSN the default proxy uses upstream, for a direct comparison."""
    return pg.dsn(LocalPostgres.SCRAM_USER)


def run_psql(
    dsn: str, *args: str, input: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """psql without the caller's PG* environment; ``env`` adds variables (PGOPTIONS, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | dict(env or {})
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def psql_both(pg: LocalPostgres, proxy: Proxy, *args: str) -> tuple[str, str]:
    """Run psql with the same arguments directly and through the proxy; return both outputs."""
    direct = run_psql(direct_dsn(pg), *args)
    assert direct.returncode == 0, direct.stderr
    proxied = run_psql(proxy.dsn(), *args)
    assert proxied.returncode == 0, f"psql through proxy failed: {proxied.stderr}"
    return direct.stdout, proxied.stdout


# ----------------------------------------------------------------- raw protocol

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103


def startup_packet(
    user: str | bytes,
    database: str | bytes,
    version: int = PROTOCOL_3,
    extra: Mapping[str, str | bytes] | None = None,
) -> bytes:
    """A StartupMessage; ``bytes`` values go out as they are (e.g. invalid UTF-8)."""
    body = struct.pack("!I", version)
    for key, value in (("user", user), ("database", database), *(extra or {}).items()):
        raw = value if isinstance(value, bytes) else value.encode()
        body += key.encode() + b"\0" + raw + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def recv_messages(
    sock: socket.socket, until: bytes = b"Z", count: int = 1
) -> list[tuple[bytes, bytes]]:
    """Read backend messages until ``count`` of type ``until`` arrived or the peer closes.

    Bytes after the last one are not kept: ask for every answer the requests
    sent owe (``count`` ReadyForQuery for two Syncs) in one call.
    """
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    while True:
        while len(buf) >= 5:
            kind = buf[:1]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            out.append((kind, buf[5 : 1 + length]))
            buf = buf[1 + length :]
            if kind == until:
                count -= 1
                if not count:
                    return out
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                out.append((b"?", buf))
            return out
        buf += chunk


def read_until_closed(sock: socket.socket) -> bytes:
    """All bytes the peer sends until it closes (socket timeout applies)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body keyed by field code (C, M, S, ...)."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


def first_error(data: bytes) -> dict[str, str] | None:
    """The fields of the first ErrorResponse in a raw backend byte stream, if any."""
    pos = 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        (length,) = struct.unpack("!I", data[pos + 1 : pos + 5])
        if kind == b"E":
            return error_fields(data[pos + 5 : pos + 1 + length])
        pos += 1 + length
    return None


def raw_connect(proxy: Proxy, timeout: float = 15.0) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def raw_login(proxy: Proxy, user: str = DEFAULT_USER) -> tuple[socket.socket, bytes]:
    """Open a session with a raw socket; return it and every byte received up to ReadyForQuery."""
    sock = raw_connect(proxy)
    sock.sendall(startup_packet(user, proxy.dbname))
    messages = recv_messages(sock)
    if not messages or messages[-1][0] != b"Z":
        errors = [error_fields(p) for k, p in messages if k == b"E"]
        sock.close()
        raise AssertionError(f"raw login as {user} failed: {errors or messages}")
    raw = b"".join(k + struct.pack("!I", len(p) + 4) + p for k, p in messages)
    return sock, raw


def server_certificate(directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost from a throwaway CA, and its key."""
    cert, key = CertificateAuthority.create().issue_server_cert(
        "localhost", ["localhost"], ["127.0.0.1"]
    )
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    return cert_path, key_path
