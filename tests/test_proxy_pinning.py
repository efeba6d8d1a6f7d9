"""Through the live proxy: the server reads statements exactly as Steward judged them.

Each attack from the security review, replayed against ``steward proxy`` in front
of a real PostgreSQL with a policy that denies DELETE and ``pg_read_file``:

* changing ``client_encoding`` to an encoding that can swallow a backslash
  (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) with ``SET``, ``SET NAMES`` or
  ``set_config``; turning ``standard_conforming_strings`` off; taking another
  role. Each is refused (42501), and the exploit text that follows runs as the
  one harmless SELECT the proxy judged: the table keeps its rows;
* changing a setting where the parse tree cannot see it (dynamic SQL in a DO
  block, a function created earlier): the server's report of it ends the
  session, and exploit text pipelined behind it never reaches the server; the
  same change written in a DO block's static SQL is refused up front;
* statement strings that would cost the analysis far more than their size:
  refused with 54000 while another client is served.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import (
    DEFAULT_USER,
    Proxy,
    ProxyFactory,
    error_fields,
    message,
    raw_login,
    read_until_closed,
    recv_messages,
)

pytestmark = pytest.mark.timeout(120)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: guarded}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - {name: no-delete, match: {statements: [DELETE]}, action: deny}
    - {name: no-file-access, match: {functions: [pg_read_file]}, action: deny}
"""

ENCODINGS = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"]
# One SELECT of one string when read as UTF-8 with standard strings; a SELECT and
# a DELETE when the server reads it as SJIS (0x81 0x5C is one character there).
ENCODING_EXPLOIT = "SELECT E'\x81\\'; DELETE FROM pinned_rows; -- '"
# One SELECT of two strings with standard strings; a SELECT and a DELETE without.
SCS_EXPLOIT = "SELECT 'a\\' , ' ; DELETE FROM pinned_rows; -- '"
ROWS = 5


@pytest.fixture(scope="module")
def guarded(module_proxy_factory: ProxyFactory, pg: LocalPostgres) -> Proxy:
    pg.execute(
        "DROP TABLE IF EXISTS pinned_rows; CREATE TABLE pinned_rows (id int);"
        f"INSERT INTO pinned_rows SELECT generate_series(1, {ROWS});"
        "CREATE OR REPLACE FUNCTION sjis_now() RETURNS int LANGUAGE plpgsql AS $$"
        "BEGIN PERFORM set_config('client_encoding', 'SJIS', false); RETURN 1; END $$;"
    )
    return module_proxy_factory(POLICY)


@pytest.fixture
def rows_kept(pg: LocalPostgres) -> Iterator[None]:
    yield
    assert int(pg.execute("SELECT count(*) FROM pinned_rows").strip()) == ROWS


def connect(proxy: Proxy) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn(), autocommit=True)


def end_of_session(proxy: Proxy, session: str) -> dict[str, object]:
    (end,) = [
        r for r in proxy.audit_records() if r["type"] == "session.end" and r["session"] == session
    ]
    return end


def sessions_of(proxy: Proxy) -> set[str]:
    return {str(r["session"]) for r in proxy.audit_records() if r["type"] == "session.start"}


# ------------------------------------------------------------ visible changes


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "form",
    [
        "SET client_encoding = '{}'",
        "SET NAMES '{}'",
        "SELECT set_config('client_encoding', '{}', false)",
        "BEGIN; SET LOCAL client_encoding TO '{}'",
    ],
)
def test_changing_client_encoding_is_refused_and_the_exploit_stays_one_select(
    guarded: Proxy, rows_kept: None, form: str, encoding: str
) -> None:
    with connect(guarded) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="client_encoding"):
            conn.execute(form.format(encoding))
        conn.rollback()
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        (value,) = conn.execute(ENCODING_EXPLOIT).fetchone()  # type: ignore[misc]
        assert value.endswith("; DELETE FROM pinned_rows; -- ")


@pytest.mark.parametrize(
    "statement",
    [
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO 0",
        "RESET standard_conforming_strings",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT * FROM set_config('standard_conforming_strings', 'no', true)",
    ],
)
def test_turning_standard_strings_off_is_refused(
    guarded: Proxy, rows_kept: None, statement: str
) -> None:
    with connect(guarded) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="standard_conforming"):
            conn.execute(statement)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute(SCS_EXPLOIT).fetchone() == ("a\\", " ; DELETE FROM pinned_rows; -- ")


@pytest.mark.parametrize(
    "statement",
    [
        "SET ROLE pg_read_server_files",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'pg_read_server_files', false)",
    ],
)
def test_taking_another_role_is_refused(guarded: Proxy, statement: str) -> None:
    with connect(guarded) as conn:
        (before,) = conn.execute("SELECT current_user").fetchone()  # type: ignore[misc]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        assert conn.execute("SELECT current_user").fetchone() == (before,)


def test_the_refusal_is_in_the_audit_trail(guarded: Proxy) -> None:
    with connect(guarded) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET NAMES 'SJIS'")
    record = [r for r in guarded.audit_records() if r.get("command") == "SET"][-1]
    assert record["decision"] == "deny"
    assert record["error"] == "statement refused: client_encoding is pinned to UTF8"


# ------------------------------------------------------- changes the tree cannot see


@pytest.mark.parametrize(
    ("setting", "value"),
    [("client_encoding", "SJIS"), ("standard_conforming_strings", "off")],
)
def test_a_do_block_that_changes_a_pinned_setting_ends_the_session(
    guarded: Proxy, setting: str, value: str
) -> None:
    before = sessions_of(guarded)
    with connect(guarded) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Steward pins it"):
            conn.execute(hidden_change(setting, value))
        assert conn.closed or conn.broken
    (session,) = sessions_of(guarded) - before
    assert end_of_session(guarded, session)["error"] == f"server setting changed: {setting}"


def hidden_change(setting: str, value: str) -> str:
    """A DO block that changes ``setting`` with SQL text built when it runs."""
    return (
        "DO $$BEGIN EXECUTE format('SELECT set_config(%L, %L, false)', "
        f"'{setting}', '{value}'); END$$"
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [("client_encoding", "SJIS"), ("standard_conforming_strings", "off")],
)
def test_a_do_block_whose_static_sql_changes_a_pinned_setting_is_refused(
    guarded: Proxy, setting: str, value: str
) -> None:
    with connect(guarded) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="statement refused"):
            conn.execute(f"DO $$BEGIN PERFORM set_config('{setting}', '{value}', false); END$$")
        assert conn.execute("SELECT current_setting(%s)", (setting,)).fetchone() != (value,)


def raw_exchange(proxy: Proxy, payload: bytes) -> bytes:
    """Sign in on a raw socket, send ``payload`` in one write, read until closed."""
    sock, _ = raw_login(proxy, DEFAULT_USER)
    with sock:
        sock.sendall(payload)
        return read_until_closed(sock)


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode("utf-8") + b"\0")


@pytest.mark.parametrize(
    ("change", "exploit"),
    [
        pytest.param(
            hidden_change("client_encoding", "SJIS"), ENCODING_EXPLOIT, id="client_encoding"
        ),
        pytest.param("SELECT sjis_now()", ENCODING_EXPLOIT, id="client_encoding in a function"),
        pytest.param(
            hidden_change("standard_conforming_strings", "off"),
            SCS_EXPLOIT,
            id="standard_conforming_strings",
        ),
    ],
)
def test_exploit_text_pipelined_behind_a_hidden_change_never_runs(
    guarded: Proxy, rows_kept: None, change: str, exploit: str
) -> None:
    before = sessions_of(guarded)
    answer = raw_exchange(guarded, query(change) + query(exploit))
    assert b"DELETE" not in answer
    (session,) = sessions_of(guarded) - before
    assert end_of_session(guarded, session)["error"].startswith("server setting changed")
    commands = [
        r.get("command")
        for r in guarded.audit_records()
        if r["type"] == "statement" and r["session"] == session
    ]
    assert "DELETE" not in commands


def parse(sql: str) -> bytes:
    return message(b"P", b"\0" + sql.encode("utf-8") + b"\0" + struct.pack("!h", 0))


BIND_EXECUTE = message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0)) + message(
    b"E", b"\0" + struct.pack("!i", 0)
)


def test_risky_text_after_an_execute_in_one_batch_is_refused(
    guarded: Proxy, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-MARKER\n")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    exploit = f"SELECT E'\x81\\' , pg_read_file('{secret}') -- '"
    sock, _ = raw_login(guarded, DEFAULT_USER)
    with sock:
        sock.sendall(
            parse("SELECT sjis_now()")
            + BIND_EXECUTE
            + parse(exploit)
            + BIND_EXECUTE
            + message(b"S")
        )
        answer = recv_messages(sock)
        assert b"TOP-SECRET-MARKER" not in b"".join(body for _, body in answer)
        codes = [error_fields(body).get("C") for kind, body in answer if kind == b"E"]
        assert codes == ["0A000"]
        # The failed batch rolled the function's change back: the session goes on.
        sock.sendall(query("SHOW client_encoding"))
        rows = [body for kind, body in recv_messages(sock) if kind == b"D"]
        assert rows and rows[0].endswith(b"UTF8")


# ------------------------------------------------------------ costly statements


@pytest.mark.parametrize(
    ("sql", "words", "flags"),
    [
        pytest.param(
            "SELECT 1;" * 100_000, "100000 statements", (), id="100,000 statements in one string"
        ),
        pytest.param(
            "SELECT " + "1," * 600_000 + "1", "more than the limit", (), id="text over 1 MiB"
        ),
        pytest.param(
            "SELECT " + ",".join(["1"] * 500_000),
            "needs more than the 256 MiB",
            ("--analysis-memory", "256"),
            id="500,000 constants over the memory budget",
        ),
        pytest.param(
            "SELECT " + ",".join(["1"] * 200_000),
            "took longer than 0.2s",
            ("--analysis-timeout", "0.2"),
            id="200,000 constants over the time budget",
        ),
    ],
)
def test_costly_statements_are_refused_while_others_are_served(
    start_proxy: ProxyFactory, sql: str, words: str, flags: tuple[str, ...]
) -> None:
    proxy = start_proxy(POLICY, "--analysis-timeout", "10", *flags)
    served: list[object] = []

    def other_client() -> None:
        with connect(proxy) as conn:
            while not (done.is_set() and served):
                served.append(conn.execute("SELECT 1").fetchone())

    done = threading.Event()
    with connect(proxy) as conn:
        thread = threading.Thread(target=other_client)
        thread.start()
        try:
            with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=words):
                conn.execute(sql.encode())  # type: ignore[call-overload]
        finally:
            done.set()
            thread.join()
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert served and all(row == (1,) for row in served)
    assert proxy.alive()
    refusals = [r for r in proxy.audit_records() if r.get("error") and words in str(r["error"])]
    assert len(refusals) == 1


# ------------------------------------------------------------ text that is fine


def test_non_ascii_identifiers_and_literals_pass_and_are_judged(
    guarded: Proxy, pg: LocalPostgres
) -> None:
    """Japanese, emoji and combining marks are text like any other: read as UTF-8 by both."""
    values = ["日本語のテキスト", "🙂🚀 emoji", "e\u0301 combining", "Ωmega\\back'slash"]
    with connect(guarded) as conn:
        conn.execute('DROP TABLE IF EXISTS "顧客"')
        conn.execute('CREATE TABLE "顧客" ("名前" text, "メモ" text)')
        for value in values:
            # Literal text on purpose (not a parameter): the statement text carries it.
            escaped = value.replace("\\", "\\\\").replace("'", "''")
            conn.execute(f"INSERT INTO \"顧客\" VALUES (E'{escaped}', '絵文字 🙂')")
        rows = conn.execute('SELECT "名前" FROM "顧客" ORDER BY 1').fetchall()
        assert sorted(r[0] for r in rows) == sorted(values)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-delete"):
            conn.execute('DELETE FROM "顧客" WHERE "名前" = \'日本語のテキスト\'')
        assert conn.execute('SELECT count(*) FROM "顧客"').fetchone() == (len(values),)
        conn.execute('DROP TABLE "顧客"')
    deletes = [r for r in guarded.audit_records() if r.get("command") == "DELETE"]
    assert deletes[-1]["decision"] == "deny"
    assert '"顧客"' in str(deletes[-1]["statement"])
