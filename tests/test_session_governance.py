"""The governor's state that outlives one statement: read-only, SQL EXECUTE, approvals.

Pure: protocol bytes in, bytes and records out, as in test_session.py. A
:class:`Swappable` judge stands in for the server's live judge, so a policy
change between two statements of one session is one assignment.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from steward_proxy import wire
from steward_proxy.engine import Analysis, Judge, Verdict
from steward_proxy.policy import Identity, Policy
from steward_proxy.review import ReviewBook
from steward_proxy.session import SessionEnded

from sessionkit import POLICY, AuditLog, KitSession, enc, make_session, policies_for
from test_session import STAND_IN_QUERY, errors, ready, stand_in_reply

ALLOW_ALL = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: unit}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""
NO_DELETE = ALLOW_ALL + (
    "  guardrails:\n    - {name: no-delete, match: {statements: [DELETE]}, action: deny}\n"
)
LOG_DELETE = NO_DELETE.replace("no-delete", "deletes-logged").replace("deny", "log")
READ_ONLY = ALLOW_ALL + "  readOnly: true\n"
SIGNED_IN_READ_ONLY = {"default_transaction_read_only": "on"}


class Swappable(Judge):
    """A judge whose policies the test replaces, as a reload replaces the server's."""

    def __init__(self, policy: str) -> None:
        self.current = Judge(policies_for(policy))

    def swap(self, policy: str) -> None:
        self.current = Judge(policies_for(policy))
        self.generation += 1

    @property  # type: ignore[override]
    def policies(self) -> tuple[Policy, ...]:
        return self.current.policies

    @property  # type: ignore[override]
    def read_only(self) -> bool:
        return self.current.read_only

    @property  # type: ignore[override]
    def max_statements(self) -> int:
        return self.current.max_statements

    @property  # type: ignore[override]
    def masker(self) -> Any:
        return self.current.masker

    def judge(self, sql: str, analysed: Analysis | None = None) -> Verdict:
        return self.current.judge(sql, analysed)

    def recall(self, sql: str) -> Verdict | None:
        return self.current.recall(sql)


def query(sql: str) -> bytes:
    return enc(wire.Query(sql))


def done(tag: str, status: str = "I") -> bytes:
    return enc(wire.CommandComplete(tag), wire.ReadyForQuery(status))


def run(session: KitSession, sql: str, tag: str) -> bytes:
    """Send ``sql`` (it must go upstream as sent), answer it with ``tag``; the client's bytes."""
    sent = query(sql)
    assert session.feed_client(sent) == sent
    return session.feed_upstream(done(tag))


def refused(session: KitSession, sql: str) -> wire.ErrorResponse:
    """Send ``sql``; it must be refused; return the refusal the client gets."""
    assert session.feed_client(query(sql)) == STAND_IN_QUERY
    (error,) = errors(session.feed_upstream(stand_in_reply()))
    assert error.sqlstate == "42501"
    return error


def parameter(name: str, value: str) -> bytes:
    return enc(wire.ParameterStatus(name, value))


# ---------------------------------------------------------------- read-only


def test_a_read_only_session_ends_when_the_server_reports_read_only_off() -> None:
    session = make_session(policy=READ_ONLY, parameters=SIGNED_IN_READ_ONLY)
    assert session.read_only
    run(session, "SELECT 1", "SELECT 1")
    with pytest.raises(SessionEnded) as ended:
        session.feed_upstream(parameter("default_transaction_read_only", "off"))
    assert ended.value.kind == "setting_changed"
    assert "default_transaction_read_only" in ended.value.reason


def test_a_read_only_session_refuses_turning_it_off() -> None:
    session = make_session(policy=READ_ONLY, parameters=SIGNED_IN_READ_ONLY)
    error = refused(session, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
    assert "rule readOnly" in error.message


def test_a_database_read_only_by_default_may_be_turned_off_where_no_policy_asks_for_it() -> None:
    session = make_session(policy=ALLOW_ALL, parameters=SIGNED_IN_READ_ONLY)
    run(session, "SET default_transaction_read_only = off", "SET")
    session.feed_upstream(parameter("default_transaction_read_only", "off"))
    assert not session.read_only
    run(session, "SELECT 1", "SELECT 1")


def test_a_session_that_a_new_policy_makes_read_only_ends_at_its_next_statement() -> None:
    judge = Swappable(ALLOW_ALL)
    session = make_session(judge=judge, parameters={"default_transaction_read_only": "off"})
    run(session, "SELECT 1", "SELECT 1")
    judge.swap(READ_ONLY)
    with pytest.raises(SessionEnded) as ended:
        session.feed_client(query("SELECT 1"))
    assert ended.value.kind == "read_only"


def test_a_read_only_session_goes_on_when_the_policy_lets_go_of_read_only() -> None:
    judge = Swappable(READ_ONLY)
    session = make_session(judge=judge, parameters=SIGNED_IN_READ_ONLY)
    judge.swap(ALLOW_ALL)
    run(session, "SET default_transaction_read_only = off", "SET")
    session.feed_upstream(parameter("default_transaction_read_only", "off"))
    run(session, "SELECT 1", "SELECT 1")


# ----------------------------------------------------------------- SQL EXECUTE


def prepared_delete(judge: Swappable, audit: AuditLog | None = None) -> KitSession:
    """A session that prepared ``p`` as a DELETE while DELETE was allowed."""
    session = make_session(audit, judge=judge)
    run(session, "PREPARE p AS DELETE FROM t WHERE id = $1", "PREPARE")
    return session


def test_an_execute_is_judged_and_recorded_by_what_its_prepare_held() -> None:
    audit = AuditLog()
    session = make_session(audit, LOG_DELETE)
    run(session, "PREPARE p AS DELETE FROM t WHERE id = $1", "PREPARE")
    for sql in ("EXECUTE p(1)", "EXPLAIN ANALYZE EXECUTE p(2)", "CREATE TABLE x AS EXECUTE p(3)"):
        run(session, sql, "DONE")
    records = audit.statements()[1:]
    assert [(r["command"], r["decision"], r["rule"]) for r in records] == [
        ("EXECUTE", "log", "deletes-logged"),
        ("EXPLAIN", "log", "deletes-logged"),
        ("CREATE", "log", "deletes-logged"),
    ]
    assert records[0]["statement"] == "EXECUTE p($1)"


def test_a_session_holding_a_prepare_the_new_policy_refuses_ends_at_its_next_message() -> None:
    # EXECUTE would be judged again, but a protocol Bind of the name would not.
    judge = Swappable(ALLOW_ALL)
    session = prepared_delete(judge)
    run(session, "EXECUTE p(1)", "DELETE 0")
    judge.swap(NO_DELETE)
    with pytest.raises(SessionEnded) as ended:
        session.feed_client(query("EXECUTE p(2)"))
    assert ended.value.kind == "policy_changed"
    assert 'prepared statement "p"' in ended.value.reason


def test_a_denied_statement_cannot_be_prepared_to_be_run_later() -> None:
    session = make_session(policy=NO_DELETE)
    assert "rule no-delete" in refused(session, "PREPARE p AS DELETE FROM t").message
    # Never prepared, so never run: EXECUTE of a name Steward has not seen.
    assert "has not seen prepared" in refused(session, "EXECUTE p").message


def test_an_execute_of_a_statement_the_session_never_prepared_is_refused() -> None:
    error = refused(make_session(policy=ALLOW_ALL), "EXECUTE ghost")
    assert 'EXECUTE of prepared statement "ghost"' in error.message


def test_a_prepare_earlier_in_the_same_string_counts() -> None:
    session = make_session(policy=NO_DELETE)
    sent = query("PREPARE q AS SELECT 1; EXECUTE q")
    assert session.feed_client(sent) == sent
    session.feed_upstream(enc(wire.CommandComplete("PREPARE"), wire.CommandComplete("SELECT 1")))
    session.feed_upstream(ready())
    assert "rule no-delete" in refused(session, "PREPARE r AS DELETE FROM t; EXECUTE r").message


@pytest.mark.parametrize(
    "drop", ["DEALLOCATE p", "DEALLOCATE ALL", "DISCARD ALL"], ids=lambda d: f"after {d}"
)
def test_a_dropped_name_is_forgotten(drop: str) -> None:
    judge = Swappable(ALLOW_ALL)
    session = prepared_delete(judge)
    assert "has not seen prepared" in refused(session, f"{drop}; EXECUTE p(1)").message
    run(session, drop, drop.split()[0])
    assert "has not seen prepared" in refused(session, "EXECUTE p(1)").message


def test_a_session_holding_a_prepared_statement_the_new_policy_refuses_ends() -> None:
    # Bind and Execute of a prepared statement are not judged again: the
    # session may not keep a statement the policy now refuses.
    judge = Swappable(ALLOW_ALL)
    session = make_session(judge=judge)
    parse = enc(wire.Parse("s1", "DELETE FROM t WHERE id = $1"), wire.Sync())
    assert session.feed_client(parse) == parse
    session.feed_upstream(enc(wire.ParseComplete()) + ready())
    judge.swap(ALLOW_ALL.replace("name: unit", "name: other"))  # refuses nothing more
    run(session, "SELECT 1", "SELECT 1")
    judge.swap(NO_DELETE)
    bind = enc(wire.Bind("", "s1", (), (b"1",), ()), wire.Execute("", 0), wire.Sync())
    with pytest.raises(SessionEnded) as ended:
        session.feed_client(bind)
    assert ended.value.kind == "policy_changed"
    assert '"s1"' in ended.value.reason


def test_an_execute_of_a_protocol_prepared_statement_is_judged_by_it() -> None:
    audit = AuditLog()
    session = make_session(audit, LOG_DELETE)
    parse = enc(wire.Parse("p", "DELETE FROM t WHERE id = $1"), wire.Sync())
    assert session.feed_client(parse) == parse
    session.feed_upstream(enc(wire.ParseComplete()) + ready())
    run(session, "EXECUTE p(1)", "DELETE 0")
    assert audit.statements()[-1]["rule"] == "deletes-logged"


# ----------------------------------------------------------------- approvals


def book() -> ReviewBook:
    ids = (f"r{n}" for n in itertools.count(1))
    return ReviewBook(new_id=lambda: next(ids))


def approve(
    reviews: ReviewBook, review_id: str, approver: Identity, policy: Sequence[Policy]
) -> Any:
    decided = reviews.decision(review_id, approve=True, approver=approver, policy=policy[0])
    reviews.apply(decided)
    return decided


def test_a_held_statement_is_refused_with_a_review_and_runs_once_when_approved() -> None:
    audit = AuditLog()
    reviews = book()
    session = make_session(audit, POLICY, reviews=reviews)
    error = refused(session, "DROP TABLE t")
    assert (
        "statement held for review by policy default/unit rule drops-need-review" in error.message
    )
    assert "review r1 is pending" in error.message
    assert "steward review approve r1" in error.message
    requested = [r for r in audit.records if r["type"] == "review.requested"]
    assert len(requested) == 1
    assert (requested[0]["statement"], requested[0]["decision"], requested[0]["rule"]) == (
        "DROP TABLE t",
        "review",
        "drops-need-review",
    )
    assert "review r1" in requested[0]["error"]
    assert "review r1 is pending" in refused(session, "drop table t").message  # the same review
    approve(reviews, "r1", Identity("user:dave", ("dba",)), policies_for(POLICY))
    run(session, "DROP TABLE t", "DROP TABLE")
    record = audit.statements()[-1]
    assert (record["statement"], record["decision"], record["error"]) == (
        "DROP TABLE t",
        "review",
        None,
    )
    assert reviews.get("r1").state == "used"
    assert "review r2 is pending" in refused(session, "DROP TABLE t").message


def test_an_approval_is_not_used_by_a_parse() -> None:
    reviews = book()
    session = make_session(policy=POLICY, reviews=reviews)
    refused(session, "DROP TABLE t")
    approve(reviews, "r1", Identity("user:dave", ("dba",)), policies_for(POLICY))
    parse = enc(wire.Parse("", "DROP TABLE t"), wire.Sync())
    sent = session.feed_client(parse)
    assert sent != parse  # the stand-in went instead
    (error,) = errors(session.feed_upstream(stand_in_reply()))
    assert "review r1 is approved; send the statement again as a simple query" in error.message
    assert reviews.get("r1").state == "approved"


def test_without_a_book_review_only_refuses() -> None:
    error = refused(make_session(policy=POLICY), "DROP TABLE t")
    assert "approval workflow is not enabled" in error.message


def test_a_session_that_forgot_a_prepared_statement_ends_when_the_policy_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Statements beyond the bound the tracker remembers are forgotten, and a
    # forgotten one could be one the new policy refuses.
    monkeypatch.setattr("steward_proxy.wire.tracker._MAX_NAMED", 10)
    judge = Swappable(ALLOW_ALL)
    session = make_session(judge=judge)
    parses = [wire.Parse("s1", "DELETE FROM t WHERE id = $1")]
    parses += [wire.Parse(f"n{i}", "SELECT 1") for i in range(10)]
    session.feed_client(enc(*parses, wire.Sync()))
    session.feed_upstream(enc(*[wire.ParseComplete()] * 11) + ready())
    assert session.tracker.statement_note("s1") is None  # forgotten
    judge.swap(NO_DELETE)
    bind = enc(wire.Bind("", "s1", (), (b"1",), ()), wire.Execute("", 0), wire.Sync())
    with pytest.raises(SessionEnded) as ended:
        session.feed_client(bind)
    assert ended.value.kind == "policy_changed"
