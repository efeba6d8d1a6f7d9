"""The pure session relay: real protocol bytes in, bytes and audit records out.

Each test builds a :class:`~steward_proxy.session.Session` with a real
:class:`~steward_proxy.session.Judge` over policy compiled from YAML, feeds it
client and upstream messages encoded with :mod:`steward_proxy.wire`, and checks
what it sends upstream (the client's bytes, or a stand-in in place of a refused
statement), what reaches the client, in which order, and what it audits. The
upstream's answers are the ones PostgreSQL gives, stand-ins included: a syntax
error, then ReadyForQuery with the transaction status PostgreSQL would report.
The audit sink is a list that records each ``write`` call; no sockets are used.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from steward_proxy import wire
from steward_proxy.session import STAND_IN_SQL, Judge

from sessionkit import (
    IDENTITY,
    POLICY,
    AuditLog,
    KitSession,
    enc,
    frames,
    make_session,
    policies_for,
)

SSN = "123-45-6789"

CLOSED = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: closed}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: deny
"""

DENIED = "DELETE FROM t WHERE id = 1"


def backend(data: bytes) -> list[wire.Message]:
    """Decode a stream the session sent to the client."""
    return [wire.decode_backend(frame) for frame in frames(data)]


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


def ready(status: str = "I") -> bytes:
    return enc(wire.ReadyForQuery(status))


# What the session sends upstream in place of a refused statement.
STAND_IN_QUERY = enc(wire.Query(STAND_IN_SQL))


def stand_in_parse(name: str = "") -> bytes:
    return enc(wire.Parse(name, STAND_IN_SQL))


def stand_in_error(sqlstate: str = "42601") -> bytes:
    """PostgreSQL's answer to a stand-in: the syntax error at its last word."""
    return enc(
        wire.ErrorResponse.build(
            sqlstate,
            'syntax error at or near "STEWARD_REFUSED"',
            position=STAND_IN_SQL.index("STEWARD_REFUSED") + 1,
        )
    )


def stand_in_reply(status: str = "I") -> bytes:
    """PostgreSQL's answer to the stand-in Query: its error, then ReadyForQuery."""
    return stand_in_error() + ready(status)


def assert_is_refusal(error: wire.Message, sqlstate: str = "42501") -> None:
    """The client got the session's refusal, not the stand-in's error."""
    assert isinstance(error, wire.ErrorResponse)
    assert error.sqlstate == sqlstate
    assert "STEWARD_REFUSED" not in error.message


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
    assert session.feed_client(query) == query
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
    rule: str | None
    message_part: str
    policy: str = POLICY
    policy_key: str = "default/unit"


DENIED_CASES = [
    pytest.param(
        Denied(DENIED, False, "no-delete", "no-delete"),
        id="a denied DELETE outside a transaction is refused with 42501 and ReadyForQuery I",
    ),
    pytest.param(
        Denied(DENIED, True, "no-delete", "no-delete"),
        id="a denied DELETE inside a transaction fails it: ReadyForQuery E from the upstream",
    ),
    pytest.param(
        Denied("DROP TABLE t", False, "drops-need-review", "approval workflow is not enabled"),
        id="a statement held for review is refused with 42501 when approvals are off",
    ),
    pytest.param(
        Denied("SELECT 1; DELETE FROM t WHERE id = 2", False, "no-delete", "no-delete"),
        id="a multi-statement query with one denied part is refused whole",
    ),
    pytest.param(
        Denied("SELECT * FROM t", False, None, "defaultAction: deny", CLOSED, "default/closed"),
        id="a statement no rule matches is refused under defaultAction deny",
    ),
]


@pytest.mark.parametrize("case", DENIED_CASES)
def test_denied_query_goes_upstream_as_the_stand_in_and_comes_back_as_the_refusal(
    case: Denied,
) -> None:
    audit = AuditLog()
    session = make_session(audit, case.policy)
    status = "I"
    if case.in_transaction:
        begin = enc(wire.Query("BEGIN"))
        assert session.feed_client(begin) == begin
        session.feed_upstream(enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T")))
        status = "E"  # PostgreSQL fails the transaction on the stand-in's error
    to_upstream = session.feed_client(enc(wire.Query(case.sql)))
    assert to_upstream == STAND_IN_QUERY
    assert case.sql.encode() not in to_upstream
    denied = [r for r in audit.statements() if r["decision"] == "deny"]
    assert denied, "a refusal is audited when it is made"
    assert all(r["rule"] == case.rule and r["rows"] is None for r in denied)
    assert all(r["policy"] == case.policy_key and r["error"] for r in denied)
    assert session.busy, "the upstream owes the answer to the stand-in"

    out = session.feed_upstream(stand_in_reply(status))
    [error, ready_for_query] = backend(out)
    assert_is_refusal(error)
    assert isinstance(error, wire.ErrorResponse)
    assert case.message_part in error.message
    assert case.policy_key in error.message
    assert ready_for_query == wire.ReadyForQuery(status), "the upstream's own ReadyForQuery"
    assert session.txn_status == status
    assert session.busy == case.in_transaction
    assert [r for r in audit.statements() if r["decision"] == "deny"] == denied
    assert len(audit.statements()) == len(denied) + case.in_transaction, (
        "the stand-in itself is never audited"
    )


@pytest.mark.parametrize(
    "sqlstate",
    [
        pytest.param("42601", id="the stand-in's syntax error"),
        pytest.param("57014", id="a cancel that reached the upstream during the stand-in"),
        pytest.param("25P02", id="an error for the failed transaction the stand-in ran in"),
    ],
)
def test_the_stand_in_error_is_replaced_by_the_refusal_whatever_its_sqlstate(
    sqlstate: str,
) -> None:
    session = make_session()
    assert session.feed_client(enc(wire.Query(DENIED))) == STAND_IN_QUERY
    out = session.feed_upstream(stand_in_error(sqlstate) + ready("I"))
    [error, ready_for_query] = backend(out)
    assert_is_refusal(error)
    assert ready_for_query == wire.ReadyForQuery("I")
    assert not session.busy


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(False, id="the upstream answers arrive in one chunk"),
        pytest.param(True, id="the upstream answers arrive message by message"),
    ],
)
def test_refusal_pipelined_behind_a_running_query_comes_after_its_answers(split: bool) -> None:
    session = make_session()
    first = enc(wire.Query("SELECT pg_sleep(1)"))
    assert session.feed_client(first) == first
    assert session.feed_client(enc(wire.Query(DENIED))) == STAND_IN_QUERY
    reply = rows_reply("SELECT 1", (b"",))
    upstream = reply + stand_in_reply("I")
    if split:
        out = b""
        for message in backend(upstream):
            chunk = enc(message)
            got = session.feed_upstream(chunk)
            if isinstance(message, wire.ErrorResponse):
                assert_is_refusal(backend(got)[0])
            else:
                assert got == chunk, "answers other than the stand-in's error pass untouched"
            out += got
    else:
        out = session.feed_upstream(upstream)
    assert out.startswith(reply)
    assert types(out[len(reply) :]) == "EZ"
    [error] = errors(out)
    assert_is_refusal(error)
    assert backend(out)[-1] == wire.ReadyForQuery("I")
    assert not session.busy


def test_refusal_inside_a_transaction_fails_it_until_rollback() -> None:
    audit = AuditLog()
    session = make_session(audit)
    begin, insert = enc(wire.Query("BEGIN")), enc(wire.Query("INSERT INTO t VALUES (1)"))
    after = enc(wire.Query("SELECT 1"))
    to_upstream = session.feed_client(begin + insert + enc(wire.Query(DENIED)) + after)
    assert to_upstream == begin + insert + STAND_IN_QUERY + after
    out = session.feed_upstream(
        enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T"))
        + enc(wire.CommandComplete("INSERT 0 1"), wire.ReadyForQuery("T"))
        + stand_in_reply("E")
        + error_reply("25P02", "current transaction is aborted")
        + ready("E")
    )
    assert types(out) == "CZCZEZEZ"
    refusal, in_failed = errors(out)
    assert_is_refusal(refusal)
    assert in_failed.sqlstate == "25P02", "what PostgreSQL says after any failed statement"
    assert [m for m in backend(out) if isinstance(m, wire.ReadyForQuery)][-2:] == [
        wire.ReadyForQuery("E"),
        wire.ReadyForQuery("E"),
    ]
    assert session.txn_status == "E" and session.busy

    rollback = enc(wire.Query("ROLLBACK"))
    assert session.feed_client(rollback) == rollback
    session.feed_upstream(enc(wire.CommandComplete("ROLLBACK"), wire.ReadyForQuery("I")))
    assert session.txn_status == "I" and not session.busy
    records = audit.statements()
    assert [(r["command"], r["decision"]) for r in records] == [
        ("DELETE", "deny"),  # audited when refused, before the upstream answered anything
        ("BEGIN", "allow"),
        ("INSERT", "allow"),
        ("SELECT", "allow"),
        ("ROLLBACK", "allow"),
    ]
    assert records[0]["error"].startswith("statement denied")
    assert records[3]["error"] == "SQLSTATE 25P02"
    assert [r["error"] for r in records[1:3] + records[4:]] == [None, None, None]


# ----------------------------------------------------------- extended protocol


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="the unnamed statement"),
        pytest.param("s1", id="a named statement keeps its name in the stand-in"),
    ],
)
def test_denied_parse_alone_in_its_batch_sends_the_stand_in_and_the_sync(name: str) -> None:
    audit = AuditLog()
    session = make_session(audit)
    client = enc(
        wire.Parse(name, DENIED),
        wire.Bind("", name, (), (), ()),
        wire.Describe("P", ""),
        wire.Execute("", 0),
        wire.Sync(),
    )
    to_upstream = session.feed_client(client)
    assert to_upstream == stand_in_parse(name) + enc(wire.Sync())
    assert b"DELETE" not in to_upstream
    assert [r["decision"] for r in audit.statements()] == ["deny"]
    assert session.busy

    out = session.feed_upstream(stand_in_error() + ready("I"))
    assert types(out) == "EZ"
    assert_is_refusal(errors(out)[0])
    assert backend(out)[-1] == wire.ReadyForQuery("I")
    assert [r["decision"] for r in audit.statements()] == ["deny"]
    assert not session.busy
    # The session reads normally again after the Sync.
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(query) == query


def test_denied_parse_after_forwarded_messages_comes_back_after_their_answers() -> None:
    audit = AuditLog()
    session = make_session(audit)
    allowed = execute_batch("SELECT $1::int", b"7")
    dropped = enc(wire.Bind("", "", (), (), ()), wire.Describe("P", ""), wire.Execute("", 0))
    sync = enc(wire.Sync())
    to_upstream = session.feed_client(allowed + enc(wire.Parse("", DENIED)) + dropped + sync)
    assert to_upstream == allowed + stand_in_parse() + sync
    reply = execute_reply("SELECT 1", (b"7",))
    out = session.feed_upstream(reply + stand_in_error() + ready("I"))
    assert out.startswith(reply)
    assert types(out) == "12DCEZ"
    assert_is_refusal(errors(out)[0])
    assert [(r["command"], r["decision"], r["rows"]) for r in audit.statements()] == [
        ("DELETE", "deny", None),
        ("SELECT", "allow", 1),
    ]
    assert not session.busy


def test_refused_parse_in_an_explicit_transaction_gets_the_upstreams_ready_for_query() -> None:
    session = make_session()
    begin = enc(wire.Query("BEGIN"))
    session.feed_client(begin)
    session.feed_upstream(enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T")))
    batch = execute_batch(DENIED) + enc(wire.Sync())
    assert session.feed_client(batch) == stand_in_parse() + enc(wire.Sync())
    out = session.feed_upstream(stand_in_error() + ready("E"))
    assert types(out) == "EZ"
    assert_is_refusal(errors(out)[0])
    assert backend(out)[-1] == wire.ReadyForQuery("E")
    assert session.txn_status == "E" and session.busy


def test_refused_parse_under_the_name_of_a_prepared_statement_keeps_that_statement() -> None:
    # PostgreSQL keeps a named statement when a later Parse under its name fails,
    # so Executes of it still run the statement judged when it was prepared.
    audit = AuditLog()
    session = make_session(audit)
    prepare = enc(wire.Parse("s1", "SELECT id FROM t WHERE id = $1"), wire.Sync())
    assert session.feed_client(prepare) == prepare
    session.feed_upstream(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    refused = enc(wire.Parse("s1", DENIED), wire.Sync())
    assert session.feed_client(refused) == stand_in_parse("s1") + enc(wire.Sync())
    session.feed_upstream(stand_in_error() + ready("I"))
    run = enc(wire.Bind("", "s1", (), (b"1",), ()), wire.Execute("", 0), wire.Sync())
    assert session.feed_client(run) == run
    session.feed_upstream(
        enc(
            wire.BindComplete(),
            wire.DataRow((b"1",)),
            wire.CommandComplete("SELECT 1"),
            wire.ReadyForQuery("I"),
        )
    )
    assert [(r["command"], r["decision"]) for r in audit.statements()] == [
        ("DELETE", "deny"),
        ("SELECT", "allow"),
    ]
    assert audit.statements()[-1]["statement"] == "SELECT id FROM t WHERE id = $1"


@pytest.mark.parametrize(
    ("before", "reply", "expected_types"),
    [
        pytest.param(
            execute_batch("SELECT 1"),
            execute_reply("SELECT 1", (b"1",)) + stand_in_error(),
            "12DCE",
            id="the refusal follows the answers flushed for messages before it",
        ),
        pytest.param(
            b"",
            stand_in_error(),
            "E",
            id="the refusal of a Parse alone in its batch comes on Flush",
        ),
    ],
)
def test_flush_while_skipping_to_sync_still_reaches_the_upstream(
    before: bytes, reply: bytes, expected_types: str
) -> None:
    session = make_session()
    flush = enc(wire.Flush())
    to_upstream = session.feed_client(before + execute_batch(DENIED) + flush)
    assert to_upstream == before + stand_in_parse() + flush
    out = session.feed_upstream(reply)
    assert types(out) == expected_types
    assert_is_refusal(errors(out)[0])
    sync = enc(wire.Sync())
    assert session.feed_client(sync) == sync
    assert session.feed_upstream(ready("I")) == ready("I")
    assert not session.busy


def test_a_sync_with_nothing_before_it_is_forwarded() -> None:
    session = make_session()
    sync = enc(wire.Sync())
    assert session.feed_client(sync) == sync
    assert session.busy
    assert session.feed_upstream(ready("I")) == ready("I")
    assert not session.busy


@dataclass(frozen=True)
class MidBatchError:
    client: bytes
    upstream: bytes
    reply: bytes
    expected_types: str
    sqlstate: str
    audited: Sequence[tuple[str | None, str | None]] = field(default_factory=tuple)


MID_BATCH_ERRORS = [
    pytest.param(
        MidBatchError(
            execute_batch("SELECT 1 / $1::int", b"0")
            + execute_batch("SELECT 2")
            + execute_batch("INSERT INTO t VALUES (1)")
            + enc(wire.Sync()),
            execute_batch("SELECT 1 / $1::int", b"0")
            + execute_batch("SELECT 2")
            + execute_batch("INSERT INTO t VALUES (1)")
            + enc(wire.Sync()),
            enc(wire.ParseComplete(), wire.BindComplete())
            + error_reply("22012", "division by zero")
            + ready("I"),
            "12EZ",
            "22012",
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
            execute_batch("SELECT 1 / $1::int", b"0")
            + execute_batch("SELECT 2")
            + stand_in_parse()
            + enc(wire.Sync()),
            # The upstream skips the stand-in after its first error, as any message.
            enc(wire.ParseComplete(), wire.BindComplete())
            + error_reply("22012", "division by zero")
            + ready("I"),
            "12EZ",
            "22012",
            (
                ("DELETE", "statement denied"),
                ("SELECT", "SQLSTATE 22012"),
                ("SELECT", "not executed"),
            ),
        ),
        id="a refusal after an upstream error in its batch is dropped, the first error is sent",
    ),
    pytest.param(
        MidBatchError(
            enc(wire.Parse("", "SELECT $1::int"), wire.Bind("", "", (), (b"x",), ()))
            + enc(wire.Execute("", 0), wire.Sync()),
            enc(wire.Parse("", "SELECT $1::int"), wire.Bind("", "", (), (b"x",), ()))
            + enc(wire.Execute("", 0), wire.Sync()),
            enc(wire.ParseComplete()) + error_reply("22P02", "invalid input syntax") + ready("I"),
            "1EZ",
            "22P02",
            (("SELECT", "not executed"),),
        ),
        id="an Execute after a failed Bind is audited as not executed",
    ),
    pytest.param(
        MidBatchError(
            execute_batch("INSERT INTO t VALUES (1)") + execute_batch(DENIED) + enc(wire.Sync()),
            execute_batch("INSERT INTO t VALUES (1)") + stand_in_parse() + enc(wire.Sync()),
            # The upstream ran the INSERT, failed the stand-in and rolled the batch back.
            execute_reply("INSERT 0 1") + stand_in_error() + ready("I"),
            "12CEZ",
            "42501",
            (("DELETE", "statement denied"), ("INSERT", None)),
        ),
        id="a refusal after an executed statement is the batch's one error",
    ),
]


@pytest.mark.parametrize("case", MID_BATCH_ERRORS)
def test_upstream_error_in_the_middle_of_a_batch(case: MidBatchError) -> None:
    audit = AuditLog()
    session = make_session(audit)
    to_upstream = session.feed_client(case.client)
    assert to_upstream == case.upstream
    assert b"DELETE" not in to_upstream
    out = session.feed_upstream(case.reply)
    assert types(out) == case.expected_types
    [error] = errors(out)
    assert error.sqlstate == case.sqlstate
    got = [(r["command"], r["error"]) for r in audit.statements()]
    assert len(got) == len(case.audited)
    for (command, error_text), (want_command, want_error) in zip(got, case.audited, strict=True):
        assert command == want_command
        if want_error is None:
            assert error_text is None
        else:
            assert error_text is not None and want_error in error_text
    assert not session.busy


def test_statements_after_the_error_batch_are_judged_and_forwarded_again() -> None:
    session = make_session()
    session.feed_client(execute_batch("SELECT 1 / 0") + execute_batch(DENIED) + enc(wire.Sync()))
    session.feed_upstream(
        enc(wire.ParseComplete(), wire.BindComplete()) + error_reply("22012") + ready("I")
    )
    batch = execute_batch("SELECT 3") + enc(wire.Sync())
    assert session.feed_client(batch) == batch
    refused = execute_batch(DENIED) + enc(wire.Sync())
    assert session.feed_client(refused) == stand_in_parse() + enc(wire.Sync())


def test_a_query_sent_inside_a_failed_batch_is_discarded_with_it() -> None:
    # PostgreSQL discards everything up to Sync after an error in a batch, a
    # simple Query in the middle included; the session must not wait for it.
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(execute_batch("SELECT 1 / 0") + enc(wire.Query("SELECT 2"), wire.Sync()))
    session.feed_upstream(
        enc(wire.ParseComplete(), wire.BindComplete()) + error_reply("22012") + ready("I")
    )
    assert not session.busy
    assert [(r["command"], r["error"]) for r in audit.statements()] == [
        ("SELECT", "SQLSTATE 22012"),
        ("SELECT", "not executed: an earlier message failed (SQLSTATE 22012)"),
    ]
    session.feed_client(enc(wire.Query("SELECT 3")))
    session.feed_upstream(rows_reply("SELECT 1", (b"3",)))
    assert audit.statements()[-1]["rows"] == 1
    assert not session.busy


def test_a_statement_skipped_after_an_error_is_timed_from_when_it_went() -> None:
    # Not from the clock's zero: a monotonic clock reads hours of uptime.
    audit = AuditLog()
    ticks = itertools.count()
    session = make_session(audit, clock=lambda: 5000.0 + next(ticks) / 1000)
    batch = execute_batch("SELECT 1 / 0") + execute_batch("SELECT 2") + enc(wire.Sync())
    session.feed_client(batch)
    session.feed_upstream(
        enc(wire.ParseComplete(), wire.BindComplete()) + error_reply("22012") + ready("I")
    )
    skipped = audit.statements()[-1]
    assert skipped["error"] == "not executed: an earlier message failed (SQLSTATE 22012)"
    assert 0 <= skipped["duration_ms"] < 100


def test_named_prepared_statement_is_judged_once_and_audited_per_execute() -> None:
    audit = AuditLog()
    session = make_session(audit)
    prepare = enc(wire.Parse("s1", "SELECT id FROM t WHERE ssn = $1"), wire.Sync())
    assert session.feed_client(prepare) == prepare
    session.feed_upstream(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    run = enc(
        wire.Bind("p1", "s1", (), (SSN.encode(),), ()),
        wire.Execute("p1", 0),
        wire.Bind("p1", "s1", (), (b"other",), ()),
        wire.Execute("p1", 0),
        wire.Sync(),
    )
    assert session.feed_client(run) == run
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
        + ready("I")
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
    to_upstream = session.feed_client(data)
    assert to_upstream == (stand_in_parse() + enc(wire.Sync()) if extended else STAND_IN_QUERY)
    assert sql.encode() not in to_upstream
    out = session.feed_upstream(stand_in_error() + ready("I"))
    assert types(out) == "EZ"
    [error] = errors(out)
    assert_is_refusal(error, "42601")
    assert "does not parse" in error.message, "the session's error, not the stand-in's"
    position = error.get("P")
    assert position is not None and 1 <= int(position) <= len(sql) + 1
    if sql.endswith("WHERE"):
        assert int(position) == sql.index("WHERE") + 1
    [record] = audit.statements()
    assert record["decision"] == "deny"
    assert "does not parse" in record["error"]
    assert record.get("statement") in (None, "")
    assert SSN not in json.dumps(audit.records)
    assert not session.busy


def test_empty_query_is_forwarded_and_audited_without_a_command() -> None:
    audit = AuditLog()
    session = make_session(audit)
    query = enc(wire.Query(""))
    assert session.feed_client(query) == query
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
    assert session.feed_client(call) == call
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
    to_upstream = session.feed_client(function_call(oid, b"/etc/passwd"))
    assert to_upstream == STAND_IN_QUERY, "a stand-in Query, answered up to its ReadyForQuery"
    assert b"/etc/passwd" not in to_upstream
    [record] = audit.statements()
    assert (record["command"], record["decision"]) == ("FUNCTION CALL", "deny")
    out = session.feed_upstream(stand_in_reply("I"))
    assert types(out) == "EZ", "a FunctionCall ends with ReadyForQuery, not at a Sync"
    [error] = errors(out)
    assert_is_refusal(error)
    assert "no-file-access" in error.message
    assert len(audit.statements()) == 1
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(query) == query, "the session must not wait for a Sync"


def test_refused_function_call_pipelined_before_a_query_is_answered_in_order() -> None:
    audit = AuditLog()
    session = make_session(audit)
    query = enc(wire.Query("SELECT 1"))
    to_upstream = session.feed_client(function_call(PG_READ_FILE, b"/etc/passwd") + query)
    assert to_upstream == STAND_IN_QUERY + query
    reply = rows_reply("SELECT 1", (b"1",))
    out = session.feed_upstream(stand_in_reply("I") + reply)
    assert types(out) == "EZTDCZ"
    assert_is_refusal(errors(out)[0])
    assert out.endswith(reply)
    assert [(r["command"], r["decision"]) for r in audit.statements()] == [
        ("FUNCTION CALL", "deny"),
        ("SELECT", "allow"),
    ]
    assert not session.busy


def test_function_call_pipelined_before_a_query_keeps_the_query_pending() -> None:
    audit = AuditLog()
    session = make_session(audit, ALLOW_ALL)
    call = function_call(LO_OPEN, b"\x00\x00\x40\x00")
    query = enc(wire.Query("SELECT 1"))
    assert session.feed_client(call + query) == call + query
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
            ("upstream", rows_reply("SELECT 1", (b"1",)) + stand_in_reply("I")),
            ("upstream", stand_in_reply("I")),
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
            ("upstream", stand_in_error() + ready("I")),
        ],
        id="an extended batch with a denied Parse after an allowed one",
    ),
    pytest.param(
        [
            ("client", enc(wire.Query("BEGIN"), wire.Query(DENIED), wire.Query("SELECT 1"))),
            ("upstream", enc(wire.CommandComplete("BEGIN"), wire.ReadyForQuery("T"))),
            ("upstream", stand_in_reply("E") + error_reply("25P02") + ready("E")),
            ("client", enc(wire.Query("ROLLBACK"))),
            ("upstream", enc(wire.CommandComplete("ROLLBACK"), wire.ReadyForQuery("I"))),
        ],
        id="a refusal that fails an explicit transaction, then ROLLBACK",
    ),
    pytest.param(
        [
            ("client", execute_batch("SELECT 1/0") + execute_batch("SELECT 2") + enc(wire.Sync())),
            (
                "upstream",
                enc(wire.ParseComplete(), wire.BindComplete()) + error_reply("22012") + ready("I"),
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
        feed = session.feed_client if side == "client" else session.feed_upstream
        outputs.append(b"".join(feed(chunk) for chunk in chunks))
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
    ("client", "tags"),
    [
        pytest.param(
            enc(wire.Query(f"SELECT * FROM t WHERE ssn = '{SSN}'")),
            ("SELECT 1",),
            id="a literal in a WHERE clause",
        ),
        pytest.param(
            execute_batch("SELECT * FROM t WHERE ssn = $1", SSN.encode()) + enc(wire.Sync()),
            ("SELECT 1",),
            id="a bound parameter",
        ),
        pytest.param(
            enc(wire.Query(f"DELETE FROM t WHERE ssn = '{SSN}'")),
            None,
            id="a literal in a denied statement",
        ),
        pytest.param(
            execute_batch(f"DELETE FROM t WHERE ssn = '{SSN}' AND id = $1", b"1")
            + enc(wire.Sync()),
            None,
            id="a literal in a denied Parse",
        ),
        pytest.param(
            enc(wire.Query(f"SELECT 1; UPDATE t SET ssn = E'{SSN}' WHERE id = 1")),
            ("SELECT 1", "UPDATE 1"),
            id="an escaped literal in a multi-statement query",
        ),
    ],
)
def test_audit_never_contains_literal_values(client: bytes, tags: tuple[str, ...] | None) -> None:
    audit = AuditLog()
    session = make_session(audit)
    to_upstream = session.feed_client(client)
    if tags is None:
        assert SSN.encode() not in to_upstream, "a refused statement never goes upstream"
        reply = stand_in_error() + ready("I")
    else:
        reply = (
            enc(wire.ParseComplete(), wire.BindComplete()) if to_upstream.startswith(b"P") else b""
        )
        reply += enc(
            wire.DataRow((SSN.encode(),)),
            *(wire.CommandComplete(tag) for tag in tags),
            wire.ReadyForQuery("I"),
        )
    session.feed_upstream(reply)
    session.abandon("client disconnected")
    assert audit.statements()
    assert SSN not in json.dumps(audit.records)


# ----------------------------------------------------------------- Terminate


@pytest.mark.parametrize(
    ("before", "sent_first"),
    [
        pytest.param(b"", b"", id="Terminate on an idle session"),
        pytest.param(
            execute_batch(DENIED),
            stand_in_parse(),
            id="Terminate while skipping to Sync after a refusal",
        ),
    ],
)
def test_terminate_is_forwarded_and_sets_terminated(before: bytes, sent_first: bytes) -> None:
    session = make_session()
    terminate = enc(wire.Terminate())
    assert session.feed_client(before + terminate) == sent_first + terminate
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
    assert not session.running


def test_abandon_with_a_refusal_pending_does_not_audit_it_twice() -> None:
    audit = AuditLog()
    session = make_session(audit)
    session.feed_client(enc(wire.Query(DENIED)))
    session.abandon("upstream lost")
    [record] = audit.statements()
    assert record["decision"] == "deny"
    assert not session.busy


@pytest.mark.parametrize(
    ("severity", "idle", "noted"),
    [
        pytest.param("FATAL", True, "57P01", id="a FATAL on an idle session is noted"),
        pytest.param("FATAL", False, "57P01", id="a FATAL ending a running statement is noted"),
        pytest.param("PANIC", True, "57P01", id="a PANIC is noted"),
        pytest.param("ERROR", False, None, id="an ERROR is not"),
    ],
)
def test_a_fatal_error_from_the_upstream_is_relayed_and_noted(
    severity: str, idle: bool, noted: str | None
) -> None:
    audit = AuditLog()
    session = make_session(audit)
    if not idle:
        session.feed_client(enc(wire.Query("SELECT pg_sleep(60)")))
    fatal = enc(wire.ErrorResponse.build("57P01", "terminating connection", severity=severity))
    assert session.feed_upstream(fatal) == fatal
    assert session.upstream_fatal == noted
    if not idle:
        [record] = audit.statements()
        assert record["error"] == "SQLSTATE 57P01"


def test_every_record_of_a_session_names_its_application_and_backend_pid() -> None:
    audit = AuditLog()
    session = KitSession(
        audit=audit,
        session_id="s1",
        identity=IDENTITY,
        database="app",
        client="127.0.0.1:5555",
        application="billing",
        backend_pid=4242,
        judge=Judge(policies_for(POLICY)),
    )
    session.feed_client(enc(wire.Query("SELECT 1"), wire.Query(DENIED)))
    session.feed_upstream(rows_reply("SELECT 1", (b"1",)))
    assert len(audit.statements()) == 2
    for record in audit.records:
        assert (record["application"], record["backend_pid"]) == ("billing", 4242), record
    assert list(session.who()) == [
        "session", "identity", "groups", "database", "client", "application", "backend_pid"
    ]  # fmt: skip


def test_client_input_is_held_while_the_server_owes_too_many_answers() -> None:
    """Each request the server owes costs memory: a client that pipelines without
    reading (a flood of 5-byte Syncs) is held until the server catches up."""
    from steward_proxy.session import AnalysisLimits

    session = make_session(limits=AnalysisLimits(max_pending=100))
    sync = enc(wire.Sync())
    assert session.feed_client(sync * 150) == sync * 150  # one chunk goes whole
    assert session.stalled == "backlog" and session.tracker.pending == 150
    assert session.feed_client(sync * 10) == b""  # held
    ready = enc(wire.ReadyForQuery("I"))
    session.feed_upstream(ready * 99)
    assert session.stalled == "backlog" and not session.resumable
    session.feed_upstream(ready)  # 50 owed: half the bound
    assert session.stalled is None and session.resumable
    assert session.resume() == sync * 10
    assert session.tracker.pending == 60
