"""Sign-in through the live proxy: startup parameters, names and refusal messages.

A client may not choose how the server reads its statements: client_encoding
other than UTF8, standard_conforming_strings off, and any setting outside the
allow-list (``role`` above all) are refused with 08004, however they are given
(a parameter, ``options -c``, ``options --name=``, PGOPTIONS or PGCLIENTENCODING
for psql), and the refusal is audited. Real drivers with their own startup
parameters still sign in. Names that are not valid UTF-8 get 08P01 at once;
names with control characters reach the log and the audit escaped.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import asyncpg
import pg8000.native
import psycopg
import pytest

from steward_testing.postgres import LocalPostgres, free_port

from conftest import (
    Proxy,
    ProxyFactory,
    first_error,
    message,
    query_message,
    raw_connect,
    read_until_closed,
    recv_messages,
    run_psql,
    startup_packet,
)

pytestmark = pytest.mark.timeout(120)

ENCODINGS = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"]
JAPANESE_USER = "ユーザー"
EMOJI_USER = "👩\u200d💻dev"
COMBINING_USER = "e\u0301mile"

POLICY = f"""\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata:
  name: startup-test
spec:
  subjects:
    - {{kind: User, name: alice}}
    - {{kind: User, name: {json.dumps(JAPANESE_USER, ensure_ascii=False)}}}
    - {{kind: User, name: {json.dumps(EMOJI_USER, ensure_ascii=False)}}}
    - {{kind: User, name: {json.dumps(COMBINING_USER, ensure_ascii=False)}}}
  defaultAction: allow
  guardrails:
    - name: no-deletes
      match: {{statements: [DELETE]}}
      action: deny
"""

VICTIM_ROWS = 3
# One SELECT of a string in UTF-8; in SJIS 0x81 0x5c is one character, the
# backslash vanishes, the quote ends the string and the DELETE runs.
SJIS_EXPLOIT = b"SELECT E'\xc2\x81\x5c'; DELETE FROM startup_victim; -- '"
# One SELECT with standard_conforming_strings on; two with it off.
SCS_EXPLOIT = b"SELECT 'a\\' , ' ; DELETE FROM startup_victim; -- '"


@pytest.fixture(scope="module")
def startup_proxy(module_proxy_factory: ProxyFactory) -> Proxy:
    return module_proxy_factory(POLICY)


@pytest.fixture(scope="module")
def victim(pg: LocalPostgres) -> Iterator[None]:
    pg.execute(
        "CREATE TABLE startup_victim AS SELECT g AS id FROM generate_series(1, 3) AS g;\n"
        f"GRANT ALL ON startup_victim TO {LocalPostgres.SCRAM_USER};"
    )
    yield
    pg.execute("DROP TABLE startup_victim")


def victim_rows(pg: LocalPostgres) -> int:
    return int(pg.execute("SELECT count(*) FROM startup_victim").strip())


def audit_record(proxy: Proxy, client: str) -> dict[str, object]:
    """The last session.start record of the connection from ``client`` (host:port)."""
    records = [
        r for r in proxy.audit_records() if r["type"] == "session.start" and r["client"] == client
    ]
    assert records, f"no session.start record for {client}"
    return records[-1]


def refusals_naming(proxy: Proxy, named: str) -> int:
    return sum(
        1
        for r in proxy.audit_records()
        if r["type"] == "session.start" and r["decision"] == "deny" and named in str(r["error"])
    )


def refused_raw(
    proxy: Proxy,
    extra: Mapping[str, str | bytes],
    user: str | bytes = "alice",
    database: str | bytes | None = None,
    then: bytes = b"",
) -> tuple[dict[str, str], bytes, str]:
    """Sign in from a raw socket, sending ``then`` right behind.

    Returns the ErrorResponse's fields, every byte received, and the client's
    address as the audit trail names it.
    """
    packet = startup_packet(user, proxy.dbname if database is None else database, extra=extra)
    with raw_connect(proxy) as sock:
        client = "{}:{}".format(*sock.getsockname())
        sock.sendall(packet + then)
        reply = read_until_closed(sock)
    fields = first_error(reply)
    assert fields is not None, f"expected an ErrorResponse, got {reply[:200]!r}"
    return fields, reply, client


def assert_refused_and_audited(
    proxy: Proxy, fields: Mapping[str, str], client: str, named: str, code: str = "08004"
) -> None:
    assert fields["C"] == code, fields
    assert fields["S"] == "FATAL", fields
    assert named in fields["M"], fields
    record = audit_record(proxy, client)
    assert record["decision"] == "deny"
    assert isinstance(record["error"], str) and record["error"].startswith(code), record
    assert named in record["error"], record


def _raw_ways(name: str, value: str) -> dict[str, dict[str, str]]:
    return {
        "as a startup parameter": {name: value},
        "in options -c": {"options": f"-c {name}={value}"},
        "in options -cname": {"options": f"-c{name}={value}"},
        "in options --name": {"options": f"--{name.replace('_', '-')}={value}"},
    }


RAW_CASES = (
    [
        pytest.param(params, f'client_encoding "{enc}"', id=f"client_encoding {enc} {way}")
        for enc in ENCODINGS
        for way, params in _raw_ways("client_encoding", enc).items()
    ]
    + [
        pytest.param(params, 'standard_conforming_strings "off"', id=f"scs off {way}")
        for way, params in _raw_ways("standard_conforming_strings", "off").items()
    ]
    + [
        pytest.param(params, '"role"', id=f"role {way}")
        for way, params in _raw_ways("role", "pg_read_server_files").items()
    ]
    + [
        pytest.param(
            {"session_authorization": "postgres"}, '"session_authorization"', id="sess auth"
        ),
        pytest.param(
            {"options": "-c default_transaction_read_only=off"},
            '"default_transaction_read_only"',
            id="default_transaction_read_only off in options",
        ),
        pytest.param({"lc_monetary": "C"}, '"lc_monetary"', id="lc_monetary"),
        pytest.param({"options": "-E"}, '"-E"', id="another server switch in options"),
        pytest.param({"no_such_setting": "1"}, '"no_such_setting"', id="an unknown parameter"),
    ]
)


@pytest.mark.parametrize(("params", "named"), RAW_CASES)
def test_raw_startup_parameter_is_refused_and_audited(
    startup_proxy: Proxy, params: dict[str, str], named: str
) -> None:
    fields, _, client = refused_raw(startup_proxy, params)
    assert_refused_and_audited(startup_proxy, fields, client, named)


PSQL_CASES = (
    [
        pytest.param(
            {"PGOPTIONS": f"-c client_encoding={enc}"},
            f'client_encoding "{enc}"',
            id=f"psql PGOPTIONS client_encoding {enc}",
        )
        for enc in ENCODINGS
    ]
    + [
        pytest.param(
            {"PGCLIENTENCODING": enc},
            f'client_encoding "{enc}"',
            id=f"psql PGCLIENTENCODING {enc}",
        )
        for enc in ENCODINGS
    ]
    + [
        pytest.param(
            {"PGOPTIONS": "-c standard_conforming_strings=off"},
            'standard_conforming_strings "off"',
            id="psql PGOPTIONS scs off",
        ),
        pytest.param(
            {"PGOPTIONS": "-c role=pg_read_server_files"}, '"role"', id="psql PGOPTIONS role"
        ),
    ]
)


@pytest.mark.parametrize(("env", "named"), PSQL_CASES)
def test_psql_environment_is_refused_and_audited(
    startup_proxy: Proxy, victim: None, pg: LocalPostgres, env: dict[str, str], named: str
) -> None:
    before = refusals_naming(startup_proxy, named)
    result = run_psql(startup_proxy.dsn(), "-c", "DELETE FROM startup_victim", env=env)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert refusals_naming(startup_proxy, named) == before + 1
    assert victim_rows(pg) == VICTIM_ROWS


# ------------------------------------------------------------------ the exploits


def test_sjis_exploit_deletes_rows_on_postgresql_directly(pg: LocalPostgres) -> None:
    """The control: without the proxy the exploit string really is two statements."""
    pg.execute("CREATE TABLE sjis_control AS SELECT g FROM generate_series(1, 3) AS g")
    dsn = pg.dsn(LocalPostgres.SUPERUSER, password=pg.passwords[LocalPostgres.SUPERUSER])
    try:
        with psycopg.connect(dsn, client_encoding="SJIS", autocommit=True) as conn:
            conn.execute(SJIS_EXPLOIT.replace(b"startup_victim", b"sjis_control"))
        assert pg.execute("SELECT count(*) FROM sjis_control").strip() == "0"
    finally:
        pg.execute("DROP TABLE sjis_control")


EXPLOIT_AFTER_REFUSAL = (
    [
        pytest.param({"client_encoding": enc}, SJIS_EXPLOIT, id=f"{enc} parameter")
        for enc in ENCODINGS
    ]
    + [
        pytest.param({"options": f"-c client_encoding={enc}"}, SJIS_EXPLOIT, id=f"{enc} in options")
        for enc in ENCODINGS
    ]
    + [
        pytest.param({"standard_conforming_strings": "off"}, SCS_EXPLOIT, id="scs off parameter"),
        pytest.param(
            {"options": "--standard-conforming-strings=off"}, SCS_EXPLOIT, id="scs off in options"
        ),
    ]
)


@pytest.mark.parametrize(("params", "exploit"), EXPLOIT_AFTER_REFUSAL)
def test_exploit_sent_behind_a_refused_sign_in_never_runs(
    startup_proxy: Proxy, victim: None, pg: LocalPostgres, params: dict[str, str], exploit: bytes
) -> None:
    fields, reply, _ = refused_raw(startup_proxy, params, then=message(b"Q", exploit + b"\0"))
    assert fields["C"] == "08004", fields
    assert b"DELETE" not in reply
    assert victim_rows(pg) == VICTIM_ROWS


@pytest.mark.parametrize("exploit", [SJIS_EXPLOIT, SCS_EXPLOIT], ids=["sjis", "scs"])
def test_exploit_in_a_pinned_session_is_one_select(
    startup_proxy: Proxy, victim: None, pg: LocalPostgres, exploit: bytes
) -> None:
    """Signed in, the server reads the bytes as UTF-8 with scs on, as the proxy does."""
    with raw_connect(startup_proxy) as sock:
        sock.sendall(startup_packet("alice", startup_proxy.dbname))
        assert recv_messages(sock)[-1][0] == b"Z"
        sock.sendall(message(b"Q", exploit + b"\0"))
        answers = recv_messages(sock)
    completes = [payload for kind, payload in answers if kind == b"C"]
    assert completes == [b"SELECT 1\0"], answers
    assert victim_rows(pg) == VICTIM_ROWS


# --------------------------------------------------------- real drivers still sign in


def _pinned_and(conn_settings: dict[str, str], expected: Mapping[str, str]) -> None:
    assert conn_settings["client_encoding"] == "UTF8"
    assert conn_settings["standard_conforming_strings"] == "on"
    for name, value in expected.items():
        assert conn_settings[name] == value, (name, conn_settings)


SHOW = (
    "SELECT current_setting('client_encoding'), current_setting('standard_conforming_strings'),"
    " current_setting('application_name'), current_setting('search_path'),"
    " current_setting('statement_timeout'), current_setting('DateStyle')"
)
NAMES = (
    "client_encoding",
    "standard_conforming_strings",
    "application_name",
    "search_path",
    "statement_timeout",
    "datestyle",
)


def test_psycopg_defaults_sign_in(startup_proxy: Proxy) -> None:
    with psycopg.connect(startup_proxy.dsn(), autocommit=True) as conn:
        row = conn.execute(SHOW).fetchone()
    assert row is not None
    _pinned_and(dict(zip(NAMES, row, strict=True)), {})


def test_psycopg_options_and_application_name_pass(startup_proxy: Proxy) -> None:
    with psycopg.connect(
        startup_proxy.dsn(),
        autocommit=True,
        options=r"-c application_name=billing\ app -c search_path=pg_catalog,public "
        "--statement-timeout=5s",
        client_encoding="utf-8",
    ) as conn:
        row = conn.execute(SHOW).fetchone()
    assert row is not None
    _pinned_and(
        dict(zip(NAMES, row, strict=True)),
        {
            "application_name": "billing app",
            "search_path": "pg_catalog,public",
            "statement_timeout": "5s",
        },
    )


def test_asyncpg_defaults_and_server_settings_sign_in(startup_proxy: Proxy) -> None:
    async def scenario(**kwargs: object) -> dict[str, str]:
        conn = await asyncpg.connect(**startup_proxy.asyncpg_args(), **kwargs)
        try:
            row = await conn.fetchrow(SHOW)
        finally:
            await conn.close()
        assert row is not None
        return dict(zip(NAMES, row, strict=True))

    _pinned_and(asyncio.run(scenario()), {})
    settings = {"application_name": "x", "search_path": "public"}
    _pinned_and(asyncio.run(scenario(server_settings=settings)), settings)


def test_pg8000_defaults_sign_in(startup_proxy: Proxy) -> None:
    conn = pg8000.native.Connection(**startup_proxy.pg8000_args())  # type: ignore[arg-type]
    try:
        row = conn.run(SHOW)[0]
    finally:
        conn.close()
    _pinned_and(dict(zip(NAMES, row, strict=True)), {})


def test_psql_defaults_and_environment_sign_in(startup_proxy: Proxy) -> None:
    result = run_psql(
        startup_proxy.dsn(),
        "-A",
        "-t",
        "-F",
        "|",
        "-c",
        SHOW,
        env={
            "PGAPPNAME": "reports",
            "PGCLIENTENCODING": "UTF8",
            "PGDATESTYLE": "German",
            "PGOPTIONS": "-c statement_timeout=7s",
        },
    )
    assert result.returncode == 0, result.stderr
    values = dict(zip(NAMES, result.stdout.strip().split("|"), strict=True))
    _pinned_and(
        values,
        {"application_name": "reports", "statement_timeout": "7s", "datestyle": "German, DMY"},
    )


def test_sql_ascii_as_psql_asks_in_a_c_locale_is_served_as_utf8(startup_proxy: Proxy) -> None:
    with raw_connect(startup_proxy) as sock:
        sock.sendall(
            startup_packet("alice", startup_proxy.dbname, extra={"client_encoding": "SQL_ASCII"})
        )
        answers = recv_messages(sock)
    assert answers[-1][0] == b"Z", answers
    assert (b"S", b"client_encoding\0UTF8\0") in answers


def test_setting_value_the_server_rejects_is_relayed(startup_proxy: Proxy) -> None:
    fields, _, _ = refused_raw(startup_proxy, {"DateStyle": "garbage"})
    assert fields["C"] == "22023", fields
    assert "DateStyle" in fields["M"] and "garbage" in fields["M"], fields


# ------------------------------------------------------------- names and escaping


@pytest.mark.parametrize(
    "user", [JAPANESE_USER, EMOJI_USER, COMBINING_USER], ids=["japanese", "emoji", "combining"]
)
def test_non_ascii_user_and_application_name_sign_in(
    startup_proxy: Proxy, pg: LocalPostgres, user: str
) -> None:
    application = f"アプリ🚀e\u0301 {uuid.uuid4().hex[:6]}"
    with psycopg.connect(
        startup_proxy.dsn(user), autocommit=True, application_name=application
    ) as conn:
        shown = conn.execute("SELECT current_setting('application_name')").fetchone()
    with psycopg.connect(
        pg.dsn(LocalPostgres.SUPERUSER, password=pg.passwords[LocalPostgres.SUPERUSER]),
        application_name=application,
    ) as direct:
        expected = direct.execute("SELECT current_setting('application_name')").fetchone()
    assert shown == expected  # PostgreSQL's own treatment of non-ASCII application_name
    starts = [
        r
        for r in startup_proxy.audit_records()
        if r["type"] == "session.start" and r["identity"] == f"user:{user}"
    ]
    assert starts and starts[-1]["decision"] == "allow"


def test_non_ascii_refused_user_is_named_intact(startup_proxy: Proxy) -> None:
    fields, _, client = refused_raw(startup_proxy, {}, user="未登録さん🙂")
    assert_refused_and_audited(startup_proxy, fields, client, "user:未登録さん🙂", code="28000")
    assert audit_record(startup_proxy, client)["identity"] == "user:未登録さん🙂"
    assert "user:未登録さん🙂" in startup_proxy.log()


FORGED = "2030-01-01 00:00:00,000 INFO steward.proxy: session forged: admin signed in"


@pytest.mark.parametrize(
    ("user", "escaped"),
    [
        pytest.param(f"eve\n{FORGED}", "eve\\x0a" + FORGED, id="newline"),
        pytest.param(f"eve\r\x1b[2K{FORGED}", "eve\\x0d\\x1b[2K" + FORGED, id="ANSI erase line"),
        pytest.param(f"eve\u2028{FORGED}", "eve\\u2028" + FORGED, id="line separator"),
    ],
)
def test_control_characters_in_user_name_stay_on_one_escaped_line(
    startup_proxy: Proxy, user: str, escaped: str
) -> None:
    before = startup_proxy.log_path.read_bytes().count(b"\n")
    fields, _, client = refused_raw(startup_proxy, {}, user=user)
    assert fields["C"] == "28000", fields
    assert escaped in fields["M"], fields
    record = audit_record(startup_proxy, client)
    assert record["identity"] == f"user:{escaped}"
    new = startup_proxy.log_path.read_bytes().split(b"\n")[before:]
    mentioning = [line for line in new if b"forged" in line]
    assert len(mentioning) == 1, new
    assert escaped.encode() in mentioning[0]
    assert not any(line.startswith(FORGED[:10].encode()) for line in new)


def test_control_characters_in_database_name_are_escaped(startup_proxy: Proxy) -> None:
    fields, _, client = refused_raw(startup_proxy, {}, database=f"db\n{FORGED}")
    assert fields["C"] == "3D000", fields
    assert fields["M"] == f'database "db\\x0a{FORGED}" is not served by this proxy', fields
    assert audit_record(startup_proxy, client)["database"] == f"db\\x0a{FORGED}"
    assert not any(line.startswith(FORGED[:10]) for line in startup_proxy.log().splitlines())


def test_invalid_utf8_in_user_name_gets_08p01_and_escaped_audit(startup_proxy: Proxy) -> None:
    fields, _, client = refused_raw(startup_proxy, {}, user=b"mal\xffory\xc3(")
    assert_refused_and_audited(startup_proxy, fields, client, '"user"', code="08P01")
    assert audit_record(startup_proxy, client)["identity"] == "user:mal\\xffory\\xc3("


def test_hundred_invalid_utf8_sign_ins_lock_no_one_out(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start_proxy(POLICY, "--max-connections", "5")
    socks = []
    try:
        for n in range(100):
            sock = raw_connect(proxy)
            socks.append(sock)
            user = b"bad\xfe" + str(n).encode()
            database = b"db\xc0\xaf" if n % 2 else proxy.dbname.encode()
            sock.sendall(startup_packet(user, database))
        for sock in socks:
            fields = first_error(read_until_closed(sock))
            assert fields is not None and fields["C"] == "08P01", fields
    finally:
        for sock in socks:
            sock.close()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 'served'").fetchone() == ("served",)
    assert proxy.terminate() == 0
    assert "Traceback" not in proxy.log()
    refused = [
        r for r in proxy.audit_records() if r["type"] == "session.start" and r["decision"] == "deny"
    ]
    assert len(refused) == 100
    assert all(str(r["error"]).startswith("08P01") for r in refused)
    assert proxy.audit_log is not None
    verify = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "audit", "verify", str(proxy.audit_log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


# ---------------------------------------------------------------- refusal messages


def test_wrong_database_is_not_told_the_served_one(startup_proxy: Proxy) -> None:
    fields, _, _ = refused_raw(startup_proxy, {}, database="elsewhere")
    assert fields["C"] == "3D000"
    assert fields["M"] == 'database "elsewhere" is not served by this proxy'
    assert startup_proxy.dbname not in fields["M"]
    assert startup_proxy.dbname in startup_proxy.log()  # the operator learns it


class FakeUpstream:
    """Answers every sign-in with trust and the given ParameterStatus values."""

    def __init__(self, parameters: Mapping[str, str]) -> None:
        self.parameters = parameters
        self.port = free_port()
        self.startups: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    self._answer(conn)
                except OSError:
                    continue

    def _answer(self, conn: socket.socket) -> None:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return
        (length,) = struct.unpack("!I", head)
        self.startups.append(conn.recv(length - 4, socket.MSG_WAITALL))
        out = message(b"R", struct.pack("!I", 0))
        for name, value in self.parameters.items():
            out += message(b"S", name.encode() + b"\0" + value.encode() + b"\0")
        out += message(b"K", struct.pack("!II", 4242, 99)) + message(b"Z", b"I")
        conn.sendall(out)
        conn.recv(1024)  # until the proxy closes

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize(
    "reported",
    [
        pytest.param({"client_encoding": "SJIS", "standard_conforming_strings": "on"}, id="sjis"),
        pytest.param({"client_encoding": "UTF8", "standard_conforming_strings": "off"}, id="scs"),
        pytest.param({"client_encoding": "UTF8"}, id="scs not reported"),
    ],
)
def test_upstream_that_does_not_keep_the_pin_is_refused(
    start_proxy: ProxyFactory, reported: dict[str, str]
) -> None:
    fake = FakeUpstream({"server_version": "15.0", **reported})
    try:
        proxy = start_proxy(
            POLICY,
            upstream=f"postgresql://steward@127.0.0.1:{fake.port}/orders?sslmode=disable",
        )
        with raw_connect(proxy) as sock:
            client = "{}:{}".format(*sock.getsockname())
            sock.sendall(startup_packet("alice", "orders") + query_message("SELECT 1"))
            reply = read_until_closed(sock)
        fields = first_error(reply)
        assert fields is not None and fields["C"] == "08004", reply[:300]
        assert "not pinned" in fields["M"]
        assert reply.startswith(b"E"), "nothing reaches the client before the refusal"
        assert b"client_encoding\0UTF8\0standard_conforming_strings\0on\0" in fake.startups[0]
        assert "sign-in refused" in proxy.log() and "upstream reported" in proxy.log()
        assert audit_record(proxy, client)["decision"] == "deny"
    finally:
        fake.close()
