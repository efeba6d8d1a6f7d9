"""The pure session relay: real protocol bytes in, bytes and audit records out.

Each test builds a :class:`~steward_proxy.session.Session` with a real
:class:`~steward_proxy.session.Judge` over policy compiled from YAML, feeds it
client and upstream messages encoded with :mod:`steward_proxy.wire`, and checks
what it forwards, what it answers itself, in which order, and what it audits.
The audit sink is a list that records each ``write`` call; no sockets are used.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from steward_proxy import wire
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Identity, compile_documents
from steward_proxy.session import Judge, Session

SSN = "123-45-6789"

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: unit}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - {name: no-delete, match: {statements: [DELETE]}, action: deny}
    - {name: drops-need-review, match: {statements: [DROP]}, action: review}
    - {name: no-file-access, match: {functions: [pg_read_file]}, action: deny}
  approval:
    approvers: [{kind: Group, name: dba}]
"""

DENIED = "DELETE FROM t WHERE id = 1"


class AuditLog:
    """An audit sink that keeps every record it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        record = {"type": type, **fields}
        self.records.append(record)
        return record

    def statements(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "statement"]


def make_session(audit: AuditLog | None = None, policy: str = POLICY) -> Session:
    policies = compile_documents(list(yaml.safe_load_all(policy)))
    identity = Identity("user:alice")
    ticks = itertools.count()
    return Session(
        session_id="s1",
        identity=identity,
        database="app",
        client="127.0.0.1:5555",
        judge=Judge(policies.policies_for(identity)),
        audit=audit if audit is not None else AuditLog(),
        metrics=ProxyMetrics(),
        clock=lambda: next(ticks) / 1000,
    )


def enc(*messages: wire.Message) -> bytes:
    return b"".join(wire.encode(m) for m in messages)


def backend(data: bytes) -> list[wire.Message]:
    """Decode a stream the session sent to the client."""
    reader = wire.MessageReader()
    reader.feed(data)
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(wire.decode_backend(frame))
    assert reader.pending == 0, "the session sent part of a message"
    return out


def types(data: bytes) -> str:
    """The type bytes of a backend stream, e.g. ``"12DCZ"``."""
    return "".join(type(m).TYPE.decode() for m in backend(data))


def errors(data: bytes) -> list[wire.ErrorResponse]:
    return [m for m in backend(data) if isinstance(m, wire.ErrorResponse)]


def rows_reply(tag: str, *rows: tuple[bytes | None, ...], status: str = "I") -> bytes:
    """What PostgreSQL answers to a simple Query returning ``rows``."""
    width = len(rows[0]) if rows else 1
    description = wire.RowDescription(tuple(wire.FieldDescription(f"c{i}") for i in range(width)))
    return enc(
        description,
        *(wire.DataRow(r) for r in rows),
        wire.CommandComplete(tag),
        wire.ReadyForQuery(status),
    )


def execute_batch(sql: str, *params: bytes | None) -> bytes:
    """Parse, Bind, Execute of the unnamed statement (no Sync)."""
    return enc(wire.Parse("", sql), wire.Bind("", "", (), params, ()), wire.Execute("", 0))


def execute_reply(tag: str, *rows: tuple[bytes | None, ...]) -> bytes:
    """Upstream answers to one ``execute_batch`` (no ReadyForQuery)."""
    return enc(
        wire.ParseComplete(),
        wire.BindComplete(),
        *(wire.DataRow(r) for r in rows),
        wire.CommandComplete(tag),
    )


def error_reply(sqlstate: str, message: str = "failed") -> bytes:
    return enc(wire.ErrorResponse.build(sqlstate, message))


# --------------------------------------------------------------- simple Query


@dataclass(frozen=True)
class Allowed:
    sql: str
    reply: bytes
    command: str
    rows: int


ALLOWED = [
    pytest.param(
        Allowed(
            f"SELECT id FROM t WHERE ssn = '{SSN}'",
            rows_reply("SELECT 2", (b"1",), (b"2",)),
            "SELECT",
            2,
        ),
        id="a SELECT returning two rows is audited with rows 2",
    ),
    pytest.param(
        Allowed("INSERT INTO t VALUES (1), (2), (3)", rows_reply("INSERT 0 3"), "INSERT", 3),
        id="an INSERT of three rows takes rows 3 from its tag",
    ),
    pytest.param(
        Allowed("UPDATE t SET a = 1 WHERE id = 5", rows_reply("UPDATE 1"), "UPDATE", 1),
        id="an UPDATE with WHERE is allowed and counts one row",
    ),
    pytest.param(
        Allowed("SELECT 1 FROM t LIMIT 0", rows_reply("SELECT 0"), "SELECT", 0),
        id="a SELECT returning nothing is audited with rows 0",
    ),
]


@pytest.mark.parametrize("case", ALLOWED)
def test_allowed_query_is_forwarded_byte_identical_and_audited(case: Allowed) -> None:
    audit = AuditLog()
    session = make_session(audit)
    query = enc(wire.Query(case.sql))
    assert session.feed_client(query) == (query, b"")
    assert session.busy
    assert audit.statements() == []  # recorded when the upstream says how it ended
    assert session.feed_upstream(case.reply) == case.reply
    assert not session.busy
    [record] = audit.statements()
    assert record["command"] == case.command
    assert record["decision"] == "allow"
    assert record["rows"] == case.rows
    assert record["error"] is None
    assert record["policy"] == "default/unit"
    assert record["session"] == "s1"
    assert record["identity"] == "user:alice"
    assert record["statement"].startswith(case.command)
    assert "'" not in record["statement"], "literals are replaced"


@dataclass(frozen=True)
class Denied:
    sql: str
    in_transaction: bool
    rule: str
    message_part: str


DENIED_CASES = [
    pytest.param(
        Denied(DENIED, False, "no-delete", "no-delete"),
        id="a denied DELETE outside a transaction is answered with 42501 and ReadyForQuery I",
    ),
    pytest.param(
        Denied(DENIED, True, "no-delete", "no-delete"),
        id="a denied DELETE inside a transaction is answered with ReadyForQuery T",
    ),
    pytest.param(
        Denied("DROP TABLE t", False, "drops-need-review", "approval workflow is not enabled"),
        id="a statement held for review is refused with 42501 when approvals are off",
    ),
    pytest.param(
        Denied("SELECT 1; DELETE FROM t WHERE id = 2", False, "no-delete", "no-delete"),
        id="a multi-statement query with one denied part is refused whole",
    ),
]


@pytest.mark.parametrize("case", DENIED_CASES)
def test_denied_query_is_answered_by_the_session_and_never_sent_upstream(case: Denied) -> None:
    audit = AuditLog()
    session = make_session(audit)
    status = "I"
    if case.in_transaction:
        session.feed_client(enc(wire.Query("BEGIN")))
        session.feed_upstream(enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T")))
        status = "T"
    to_upstream, to_client = session.feed_client(enc(wire.Query(case.sql)))
    assert to_upstream == b""
    [error, ready] = backend(to_client)
    assert isinstance(error, wire.ErrorResponse)
    assert error.sqlstate == "42501"
    assert case.message_part in error.message
    assert "default/unit" in error.message
    assert ready == wire.ReadyForQuery(status)
    denied = [r for r in audit.statements() if r["decision"] == "deny"]
    assert denied, "a refusal must be audited"
    assert all(r["rule"] == case.rule and r["rows"] is None for r in denied)
    assert all(r["error"] for r in denied)
    assert not session.busy or case.in_transaction


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(False, id="the upstream answer arrives in one chunk"),
        pytest.param(True, id="the upstream answer arrives message by message"),
    ],
)
def test_refusal_pipelined_behind_a_running_query_waits_for_its_ready_for_query(
    split: bool,
) -> None:
    session = make_session()
    first = enc(wire.Query("SELECT pg_sleep(1)"))
    assert session.feed_client(first) == (first, b"")
    assert session.feed_client(enc(wire.Query(DENIED))) == (b"", b"")
    reply = rows_reply("SELECT 1", (b"",))
    if split:
        out = b""
        messages = [enc(m) for m in backend(reply)]
        for i, chunk in enumerate(messages):
            got = session.feed_upstream(chunk)
            if i < len(messages) - 1:
                assert got == chunk, "the refusal overtook an answer to the first query"
            out += got
    else:
        out = session.feed_upstream(reply)
    assert out.startswith(reply)
    assert types(out[len(reply) :]) == "EZ"
    assert errors(out)[0].sqlstate == "42501"
    assert not session.busy


def test_refusal_answers_take_the_transaction_status_current_when_they_are_sent() -> None:
    session = make_session()
    session.feed_client(enc(wire.Query("BEGIN")))
    assert session.feed_client(enc(wire.Query(DENIED))) == (b"", b"")
    out = session.feed_upstream(enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T")))
    assert backend(out)[-1] == wire.ReadyForQuery("T")


# ----------------------------------------------------------- extended protocol


def test_denied_parse_alone_in_its_batch_sends_nothing_upstream() -> None:
    audit = AuditLog()
    session = make_session(audit)
    to_upstream, to_client = session.feed_client(
        execute_batch(DENIED) + enc(wire.Describe("P", ""), wire.Sync())
    )
    assert to_upstream == b""
    assert types(to_client) == "EZ"
    assert errors(to_client)[0].sqlstate == "42501"
    assert backend(to_client)[-1] == wire.ReadyForQuery("I")
    assert [r["decision"] for r in audit.statements()] == ["deny"]
    assert not session.busy
    # The session reads normally again after the Sync.
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(query) == (query, b"")


def test_denied_parse_after_forwarded_messages_forwards_the_sync() -> None:
    audit = AuditLog()
    session = make_session(audit)
    allowed = execute_batch("SELECT $1::int", b"7")
    dropped = execute_batch(DENIED) + enc(wire.Describe("P", ""))
    sync = enc(wire.Sync())
    assert session.feed_client(allowed + dropped + sync) == (allowed + sync, b"")
    reply = execute_reply("SELECT 1", (b"7",))
    out = session.feed_upstream(reply + enc(wire.ReadyForQuery("I")))
    assert types(out) == "12DCEZ"
    assert errors(out)[0].sqlstate == "42501"
    assert [(r["command"], r["decision"], r["rows"]) for r in audit.statements()] == [
        ("DELETE", "deny", None),
        ("SELECT", "allow", 1),
    ]
    assert not session.busy


@pytest.mark.parametrize(
    ("before", "forwarded"),
    [
        pytest.param(
            execute_batch("SELECT 1"),
            True,
            id="a Flush after a refusal reaches the upstream while earlier answers are owed",
        ),
        pytest.param(b"", False, id="a Flush after a refusal with nothing owed is dropped"),
    ],
)
def test_flush_while_skipping_to_sync(before: bytes, forwarded: bool) -> None:
    session = make_session()
    flush = enc(wire.Flush())
    to_upstream, to_client = session.feed_client(before + execute_batch(DENIED) + flush)
    assert to_upstream == before + (flush if forwarded else b"")
    if forwarded:
        assert to_client == b""
        out = session.feed_upstream(execute_reply("SELECT 1", (b"1",)))
        assert types(out) == "12DCE", "the refusal follows the flushed answers"
    else:
        assert types(to_client) == "E"


@dataclass(frozen=True)
class MidBatchError:
    client: bytes
    reply: bytes
    expected_types: str
    audited: Sequence[tuple[str | None, str | None]] = field(default_factory=tuple)


MID_BATCH_ERRORS = [
    pytest.param(
        MidBatchError(
            execute_batch("SELECT 1 / $1::int", b"0")
            + execute_batch("SELECT 2")
            + execute_batch("INSERT INTO t VALUES (1)")
            + enc(wire.Sync()),
            enc(wire.ParseComplete(), wire.BindComplete())
            + error_reply("22012", "division by zero")
            + enc(wire.ReadyForQuery("I")),
            "12EZ",
            (
                ("SELECT", "SQLSTATE 22012"),
                ("SELECT", "not executed"),
                ("INSERT", "not executed"),
            ),
        ),
        id="Executes skipped after an upstream error are audited as not executed",
    ),
    pytest.param(
        MidBatchError(
            execute_batch("SELECT 1 / $1::int", b"0")
            + execute_batch("SELECT 2")
            + execute_batch(DENIED)
            + enc(wire.Sync()),
            enc(wire.ParseComplete(), wire.BindComplete())
            + error_reply("22012", "division by zero")
            + enc(wire.ReadyForQuery("I")),
            "12EZ",
            (
                ("DELETE", "statement denied"),
                ("SELECT", "SQLSTATE 22012"),
                ("SELECT", "not executed"),
            ),
        ),
        id="a refusal queued after an upstream error is dropped: only the first error is sent",
    ),
    pytest.param(
        MidBatchError(
            enc(wire.Parse("", "SELECT $1::int"), wire.Bind("", "", (), (b"x",), ()))
            + enc(wire.Execute("", 0), wire.Sync()),
            enc(wire.ParseComplete())
            + error_reply("22P02", "invalid input syntax")
            + enc(wire.ReadyForQuery("I")),
            "1EZ",
            (("SELECT", "not executed"),),
        ),
        id="an Execute after a failed Bind is audited as not executed",
    ),
]


@pytest.mark.parametrize("case", MID_BATCH_ERRORS)
def test_upstream_error_in_the_middle_of_a_batch(case: MidBatchError) -> None:
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(case.client)
    out = session.feed_upstream(case.reply)
    assert types(out) == case.expected_types
    assert len(errors(out)) == 1
    got = [(r["command"], r["error"]) for r in audit.statements()]
    assert len(got) == len(case.audited)
    for (command, error), (want_command, want_error) in zip(got, case.audited, strict=True):
        assert command == want_command
        assert error is not None and want_error is not None and want_error in error
    assert not session.busy


def test_statements_after_the_error_batch_are_judged_and_forwarded_again() -> None:
    session = make_session()
    session.feed_client(execute_batch("SELECT 1 / 0") + execute_batch(DENIED) + enc(wire.Sync()))
    session.feed_upstream(
        enc(wire.ParseComplete(), wire.BindComplete())
        + error_reply("22012")
        + enc(wire.ReadyForQuery("I"))
    )
    batch = execute_batch("SELECT 3") + enc(wire.Sync())
    assert session.feed_client(batch) == (batch, b"")


def test_named_prepared_statement_is_judged_once_and_audited_per_execute() -> None:
    audit = AuditLog()
    session = make_session(audit)
    prepare = enc(wire.Parse("s1", "SELECT id FROM t WHERE ssn = $1"), wire.Sync())
    assert session.feed_client(prepare) == (prepare, b"")
    session.feed_upstream(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    run = enc(
        wire.Bind("p1", "s1", (), (SSN.encode(),), ()),
        wire.Execute("p1", 0),
        wire.Bind("p1", "s1", (), (b"other",), ()),
        wire.Execute("p1", 0),
        wire.Sync(),
    )
    assert session.feed_client(run) == (run, b"")
    reply = enc(
        wire.BindComplete(),
        wire.DataRow((b"1",)),
        wire.CommandComplete("SELECT 1"),
        wire.BindComplete(),
        wire.CommandComplete("SELECT 0"),
        wire.ReadyForQuery("I"),
    )
    assert session.feed_upstream(reply) == reply
    records = audit.statements()
    assert [r["rows"] for r in records] == [1, 0]
    assert {r["statement"] for r in records} == {"SELECT id FROM t WHERE ssn = $1"}


# ------------------------------------------------------ multi-statement Query


def test_multi_statement_query_is_audited_once_per_statement() -> None:
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(enc(wire.Query("SELECT 1; INSERT INTO t VALUES (5); SELECT 2, 3")))
    session.feed_upstream(
        enc(
            wire.RowDescription((wire.FieldDescription("a"),)),
            wire.DataRow((b"1",)),
            wire.CommandComplete("SELECT 1"),
            wire.CommandComplete("INSERT 0 1"),
            wire.RowDescription((wire.FieldDescription("a"), wire.FieldDescription("b"))),
            wire.CommandComplete("SELECT 0"),
            wire.ReadyForQuery("I"),
        )
    )
    records = audit.statements()
    assert [(r["command"], r["rows"], r["error"]) for r in records] == [
        ("SELECT", 1, None),
        ("INSERT", 1, None),
        ("SELECT", 0, None),
    ]
    assert all(r["fingerprint"] for r in records)


def test_statements_after_an_upstream_error_in_a_query_are_recorded_as_not_executed() -> None:
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(enc(wire.Query("SELECT 1; SELECT 1/0; INSERT INTO t VALUES (5)")))
    out = session.feed_upstream(
        enc(wire.DataRow((b"1",)), wire.CommandComplete("SELECT 1"))
        + error_reply("22012", "division by zero")
        + enc(wire.ReadyForQuery("I"))
    )
    assert types(out) == "DCEZ"
    records = audit.statements()
    assert [r["command"] for r in records] == ["SELECT", "SELECT", "INSERT"]
    assert records[0]["error"] is None and records[0]["rows"] == 1
    assert records[1]["error"] == "SQLSTATE 22012"
    assert records[2]["error"].startswith("not executed")
    assert records[2]["rows"] is None
    assert not session.busy


# ------------------------------------------------------------ syntax errors


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELEC 1", id="a misspelt keyword is refused at position 1"),
        pytest.param(f"SELECT '{SSN}' FROM WHERE", id="a missing table name is refused at WHERE"),
        pytest.param(f"SELECT '{SSN}", id="an unterminated literal is refused"),
    ],
)
@pytest.mark.parametrize("extended", [False, True], ids=["simple Query", "Parse"])
def test_unparseable_sql_gets_42601_with_position_and_an_audit_record_without_its_text(
    sql: str, extended: bool
) -> None:
    audit = AuditLog()
    session = make_session(audit)
    data = execute_batch(sql) + enc(wire.Sync()) if extended else enc(wire.Query(sql))
    to_upstream, to_client = session.feed_client(data)
    assert to_upstream == b""
    assert types(to_client) == "EZ"
    [error] = errors(to_client)
    assert error.sqlstate == "42601"
    position = error.get("P")
    assert position is not None and 1 <= int(position) <= len(sql) + 1
    if sql.endswith("WHERE"):
        assert int(position) == sql.index("WHERE") + 1
    [record] = audit.statements()
    assert record["decision"] == "deny"
    assert "does not parse" in record["error"]
    assert record.get("statement") in (None, "")
    assert SSN not in json.dumps(audit.records)


def test_empty_query_is_forwarded_and_audited_without_a_command() -> None:
    audit = AuditLog()
    session = make_session(audit)
    query = enc(wire.Query(""))
    assert session.feed_client(query) == (query, b"")
    reply = enc(wire.EmptyQueryResponse(), wire.ReadyForQuery("I"))
    assert session.feed_upstream(reply) == reply
    [record] = audit.statements()
    assert record["command"] is None
    assert record["statement"] == ""
    assert record["decision"] == "allow"
    assert record["error"] is None
    assert not session.busy


# ---------------------------------------------------------------- FunctionCall


ALLOW_ALL = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: open}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""
LO_OPEN = 952
PG_READ_FILE = 3826  # pg_read_file(text) in PostgreSQL's catalog


def function_call(oid: int, *args: bytes) -> bytes:
    return enc(wire.FunctionCall(oid, (1,) if args else (), args, 1))


def function_reply(status: str = "I") -> bytes:
    return enc(wire.FunctionCallResponse(b"\x00\x00\x00\x00"), wire.ReadyForQuery(status))


def test_function_call_is_forwarded_and_audited_by_oid() -> None:
    audit = AuditLog()
    session = make_session(audit, ALLOW_ALL)
    call = function_call(LO_OPEN, b"\x00\x00\x40\x00", b"\x00\x02\x00\x00")
    assert session.feed_client(call) == (call, b"")
    assert session.feed_upstream(function_reply()) == function_reply()
    [record] = audit.statements()
    assert record["command"] == "FUNCTION CALL"
    assert str(LO_OPEN) in record["statement"]
    assert record["decision"] == "allow"
    assert not session.busy


@pytest.mark.parametrize(
    "oid",
    [
        pytest.param(PG_READ_FILE, id="pg_read_file called by its OID"),
        pytest.param(LO_OPEN, id="any function, since its name is unknown to the proxy"),
    ],
)
def test_function_call_is_refused_when_a_guardrail_restricts_functions(oid: int) -> None:
    audit = AuditLog()
    session = make_session(audit)
    to_upstream, to_client = session.feed_client(function_call(oid, b"/etc/passwd"))
    assert to_upstream == b""
    assert types(to_client) == "EZ", "a FunctionCall ends with ReadyForQuery, not at a Sync"
    assert errors(to_client)[0].sqlstate == "42501"
    assert "no-file-access" in errors(to_client)[0].message
    [record] = audit.statements()
    assert (record["command"], record["decision"]) == ("FUNCTION CALL", "deny")
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(query) == (query, b""), "the session must not wait for a Sync"


def test_function_call_pipelined_before_a_query_keeps_the_query_pending() -> None:
    audit = AuditLog()
    session = make_session(audit, ALLOW_ALL)
    call = function_call(LO_OPEN, b"\x00\x00\x40\x00")
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(call + query) == (call + query, b"")
    session.feed_upstream(function_reply())
    assert session.busy, "the query is still running"
    session.feed_upstream(rows_reply("SELECT 1", (b"1",)))
    assert [r["command"] for r in audit.statements()] == ["FUNCTION CALL", "SELECT"]
    assert audit.statements()[1]["rows"] == 1
    assert not session.busy


# -------------------------------------------------------- whole vs byte by byte

Step = tuple[str, bytes]  # ("client" | "upstream", bytes)

SCENARIOS = [
    pytest.param(
        [
            ("client", enc(wire.Query(f"SELECT * FROM t WHERE ssn = '{SSN}'"))),
            ("upstream", rows_reply("SELECT 2", (b"a",), (None,))),
        ],
        id="an allowed query and its rows",
    ),
    pytest.param(
        [
            ("client", enc(wire.Query("SELECT 1"), wire.Query(DENIED), wire.Query("SELEC"))),
            ("upstream", rows_reply("SELECT 1", (b"1",))),
        ],
        id="refusals pipelined behind a running query",
    ),
    pytest.param(
        [
            (
                "client",
                execute_batch("SELECT $1::text", SSN.encode())
                + execute_batch(DENIED)
                + enc(wire.Sync()),
            ),
            ("upstream", execute_reply("SELECT 1", (SSN.encode(),))),
            ("upstream", enc(wire.ReadyForQuery("I"))),
        ],
        id="an extended batch with a denied Parse after an allowed one",
    ),
    pytest.param(
        [
            ("client", execute_batch("SELECT 1/0") + execute_batch("SELECT 2") + enc(wire.Sync())),
            (
                "upstream",
                enc(wire.ParseComplete(), wire.BindComplete())
                + error_reply("22012")
                + enc(wire.ReadyForQuery("I")),
            ),
            ("client", enc(wire.Query(""), wire.Terminate())),
        ],
        id="an upstream error mid-batch, an empty query and Terminate",
    ),
]


def run_scenario(steps: Sequence[Step], *, byte_by_byte: bool) -> tuple[list[bytes], AuditLog]:
    audit = AuditLog()
    session = make_session(audit)
    outputs: list[bytes] = []
    for side, data in steps:
        chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
        if side == "client":
            up = down = b""
            for chunk in chunks:
                u, d = session.feed_client(chunk)
                up, down = up + u, down + d
            outputs += [up, down]
        else:
            outputs.append(b"".join(session.feed_upstream(chunk) for chunk in chunks))
    return outputs, audit


@pytest.mark.parametrize("steps", SCENARIOS)
def test_feeding_byte_by_byte_gives_the_same_output_as_feeding_whole(
    steps: Sequence[Step],
) -> None:
    whole, whole_audit = run_scenario(steps, byte_by_byte=False)
    split, split_audit = run_scenario(steps, byte_by_byte=True)
    assert split == whole

    def comparable(audit: AuditLog) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "duration_ms"} for r in audit.records]

    assert comparable(split_audit) == comparable(whole_audit)
    assert whole_audit.records, "every scenario writes audit records"


# ------------------------------------------------------------ audit secrecy


@pytest.mark.parametrize(
    "client",
    [
        pytest.param(
            enc(wire.Query(f"SELECT * FROM t WHERE ssn = '{SSN}'")),
            id="a literal in a WHERE clause",
        ),
        pytest.param(
            execute_batch("SELECT * FROM t WHERE ssn = $1", SSN.encode()) + enc(wire.Sync()),
            id="a bound parameter",
        ),
        pytest.param(
            enc(wire.Query(f"DELETE FROM t WHERE ssn = '{SSN}'")),
            id="a literal in a denied statement",
        ),
        pytest.param(
            execute_batch(f"DELETE FROM t WHERE ssn = '{SSN}' AND id = $1", b"1")
            + enc(wire.Sync()),
            id="a literal in a denied Parse",
        ),
        pytest.param(
            enc(wire.Query(f"SELECT 1; UPDATE t SET ssn = E'{SSN}' WHERE id = 1")),
            id="an escaped literal in a multi-statement query",
        ),
    ],
)
def test_audit_never_contains_literal_values(client: bytes) -> None:
    audit = AuditLog()
    session = make_session(audit)
    to_upstream, _ = session.feed_client(client)
    if to_upstream:
        reply = (
            enc(wire.ParseComplete(), wire.BindComplete()) if to_upstream.startswith(b"P") else b""
        )
        reply += enc(
            wire.DataRow((SSN.encode(),)),
            wire.CommandComplete("SELECT 1"),
            wire.CommandComplete("UPDATE 1"),
            wire.ReadyForQuery("I"),
        )
        session.feed_upstream(reply)
    session.abandon("client disconnected")
    assert audit.statements()
    assert SSN not in json.dumps(audit.records)


# ----------------------------------------------------------------- Terminate


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(b"", id="Terminate on an idle session"),
        pytest.param(execute_batch(DENIED), id="Terminate while skipping to Sync after a refusal"),
    ],
)
def test_terminate_is_forwarded_and_sets_terminated(before: bytes) -> None:
    session = make_session()
    terminate = enc(wire.Terminate())
    to_upstream, _ = session.feed_client(before + terminate)
    assert to_upstream == terminate
    assert session.terminated


def test_unknown_message_type_from_the_client_is_a_protocol_error() -> None:
    session = make_session()
    with pytest.raises(wire.RemoteProtocolError):
        session.feed_client(b"?\x00\x00\x00\x04")


def test_abandon_records_statements_still_running() -> None:
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(enc(wire.Query("SELECT 1; SELECT 2")))
    session.abandon("upstream lost")
    assert [r["error"] for r in audit.statements()] == ["upstream lost", "upstream lost"]
    assert session.closed
