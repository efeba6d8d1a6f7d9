"""The review state machine and book, pure: a clock the test moves, no store.

The live path (refused with an id, approved, run once, restart) is in
test_proxy_approvals.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml

from steward_proxy.policy import Identity, Policy, compile_documents
from steward_proxy.review import (
    STATES,
    TRANSITIONS,
    Review,
    ReviewBook,
    ReviewRefused,
    format_ttl,
    held_message,
    statement_key,
)
from steward_proxy.sql import ShapeCache, analyze

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: shop, namespace: prod}
spec:
  subjects: [{kind: User, name: alice}, {kind: User, name: carol}, {kind: Group, name: dba}]
  defaultAction: allow
  guardrails:
    - {name: drops-need-review, match: {statements: [DROP]}, action: review}
  approval:
    approvers: [{kind: Group, name: dba}, {kind: User, name: carol}]
    ttl: 1m
"""

ALICE = Identity("user:alice")
CAROL = Identity("user:carol")
DBA = Identity("user:dave", ("dba",))
MALLORY = Identity("user:mallory", ("devs",))


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def policy() -> Policy:
    return compile_documents(list(yaml.safe_load_all(POLICY))).policies[0]


def make_book(clock: Clock, **kwargs: Any) -> ReviewBook:
    ids = (f"r{n}" for n in itertools.count(1))
    return ReviewBook(clock=clock, new_id=lambda: next(ids), **kwargs)


def admit(book: ReviewBook, sql: str = "DROP TABLE t", who: Identity = ALICE, **kw: Any) -> Any:
    return book.admit(
        identity=who,
        database="shop",
        statements=analyze(sql, cache=ShapeCache(0)),
        policy=policy(),
        rule="drops-need-review",
        session="s1",
        **kw,
    )


def test_a_held_statement_makes_one_pending_review_until_it_is_decided() -> None:
    clock = Clock()
    book = make_book(clock)
    first = admit(book)
    assert first.outcome == "requested"
    review = first.review
    assert (review.id, review.state, review.subject, review.policy, review.rule) == (
        "r1",
        "pending",
        "user:alice",
        "prod/shop",
        "drops-need-review",
    )
    assert review.expires == clock.now + 60
    again = admit(book, "drop table   T")  # another spelling, the same shape
    assert (again.outcome, again.review.id) == ("pending", "r1")
    assert len(book) == 1


def test_an_approval_runs_the_same_shape_once() -> None:
    clock = Clock()
    book = make_book(clock)
    admit(book)
    clock.now += 30
    decided = book.decision("r1", approve=True, approver=DBA, policy=policy(), reason="ok")
    assert book.get("r1").state == "pending"  # not applied yet
    book.apply(decided)
    review = book.get("r1")
    assert (review.state, review.approver, review.approver_groups, review.reason) == (
        "approved",
        "user:dave",
        ("dba",),
        "ok",
    )
    assert review.expires == clock.now + 60  # the ttl counts from the approval
    assert admit(book, "DROP TABLE u").outcome == "requested"  # another table: another shape
    used = admit(book)
    assert (used.outcome, used.review.state, used.review.used_session) == ("used", "used", "s1")
    assert admit(book).outcome == "requested"  # used up: a new review


def test_an_approval_is_not_used_by_a_request_that_could_run_it_again() -> None:
    clock = Clock()
    book = make_book(clock)
    admit(book)
    book.apply(book.decision("r1", approve=True, approver=CAROL, policy=policy()))
    assert admit(book, usable=False).outcome == "approved"
    assert book.get("r1").state == "approved"
    assert admit(book).outcome == "used"


def test_another_subject_cannot_use_an_approval() -> None:
    book = make_book(Clock())
    admit(book)
    book.apply(book.decision("r1", approve=True, approver=DBA, policy=policy()))
    assert admit(book, who=CAROL).outcome == "requested"
    assert book.get("r1").state == "approved"


@pytest.mark.parametrize(
    ("approver", "problem", "text"),
    [
        (ALICE, "approver", "requested review r1 and cannot decide it"),
        (Identity("user:alice", ("dba",)), "approver", "cannot decide it"),
        (MALLORY, "approver", "is not an approver of policy prod/shop"),
    ],
    ids=["the requester", "the requester in an approver group", "not an approver"],
)
def test_who_may_not_decide(approver: Identity, problem: str, text: str) -> None:
    book = make_book(Clock())
    admit(book)
    for approve in (True, False):
        with pytest.raises(ReviewRefused) as refused:
            book.decision("r1", approve=approve, approver=approver, policy=policy())
        assert refused.value.problem == problem
        assert text in refused.value.message
    assert book.get("r1").state == "pending"


def test_a_policy_that_is_gone_or_another_one_cannot_approve() -> None:
    book = make_book(Clock())
    admit(book)
    other = compile_documents(list(yaml.safe_load_all(POLICY.replace("name: shop", "name: x"))))
    for candidate in (None, other.policies[0]):
        with pytest.raises(ReviewRefused, match="no longer loaded"):
            book.decision("r1", approve=True, approver=DBA, policy=candidate)


def test_a_pending_review_expires_after_the_ttl_and_cannot_be_approved() -> None:
    clock = Clock()
    book = make_book(clock)
    admit(book)
    clock.now += 60
    with pytest.raises(ReviewRefused) as refused:
        book.decision("r1", approve=True, approver=DBA, policy=policy())
    assert refused.value.problem == "state"
    assert "expired" in refused.value.message
    assert book.get("r1").state == "expired"
    assert admit(book).outcome == "requested"


def test_an_approval_expires_after_the_ttl_unused() -> None:
    clock = Clock()
    book = make_book(clock)
    admit(book)
    book.apply(book.decision("r1", approve=True, approver=DBA, policy=policy()))
    clock.now += 61
    result = admit(book)
    assert (result.outcome, result.review.id) == ("requested", "r2")
    assert book.get("r1").state == "expired"


def test_decided_reviews_cannot_be_decided_again() -> None:
    book = make_book(Clock())
    admit(book)
    book.apply(book.decision("r1", approve=False, approver=DBA, policy=policy()))
    with pytest.raises(ReviewRefused, match="is denied, not pending"):
        book.decision("r1", approve=True, approver=CAROL, policy=policy())
    with pytest.raises(ReviewRefused) as refused:
        book.decision("nope", approve=True, approver=CAROL, policy=policy())
    assert refused.value.problem == "unknown"


def test_every_transition_is_in_the_table_and_others_are_refused() -> None:
    review = Review(
        id="r",
        state="pending",
        subject="user:a",
        groups=(),
        database="d",
        command="DROP",
        statement="DROP TABLE t",
        fingerprint="f",
        policy="p",
        rule="r",
        ttl=60,
        requested=0,
        expires=60,
    )
    for state in STATES:
        for event in ("approve", "deny", "expire", "use"):
            current = Review(**{**review.to_record(), "state": state})
            if (state, event) in TRANSITIONS:
                assert current.moved(event).state == TRANSITIONS[(state, event)]  # type: ignore[arg-type]
            else:
                with pytest.raises(ReviewRefused):
                    current.moved(event)  # type: ignore[arg-type]


def test_changes_wait_for_a_store_and_a_restored_book_goes_on() -> None:
    clock = Clock()
    book = make_book(clock)
    admit(book)
    admit(book, "DROP TABLE u")
    book.apply(book.decision("r1", approve=True, approver=DBA, policy=policy()))
    changed, removed = book.take_changes()
    assert {r.id for r in changed} == {"r1", "r2"} and removed == []
    assert not book.changed
    restored = ReviewBook(
        [Review.from_record(r.to_record()) for r in changed], clock=clock, new_id=lambda: "r9"
    )
    assert not restored.changed
    assert admit(restored).outcome == "used"
    assert admit(restored, "DROP TABLE u").review.id == "r2"


def test_the_book_is_bounded() -> None:
    clock = Clock()
    book = make_book(clock, max_reviews=3, max_pending_per_subject=2)
    admit(book, "DROP TABLE a")
    admit(book, "DROP TABLE b")
    refused = admit(book, "DROP TABLE c")
    assert (refused.outcome, refused.review) == ("refused", None)
    assert "2 pending already" in held_message("held", refused)
    admit(book, "DROP TABLE c", who=CAROL)
    assert admit(book, "DROP TABLE d", who=CAROL).outcome == "refused"  # full, nothing finished
    clock.now += 120  # everything expires: the oldest finished make room
    assert admit(book, "DROP TABLE d", who=CAROL).outcome == "requested"
    assert len(book) == 3
    assert book.take_changes()[1] == ["r1"]


def test_several_statements_are_one_review_of_their_sequence() -> None:
    statements = analyze("SELECT 1; DROP TABLE t", cache=ShapeCache(0))
    command, text, fingerprint, constants = statement_key(statements)
    assert (command, text, constants) == ("SELECT,DROP", "SELECT $1; DROP TABLE t", 1)
    assert fingerprint not in {s.fingerprint for s in statements}
    assert statement_key(analyze("select 2; drop table t", cache=ShapeCache(0)))[2] == fingerprint


@pytest.mark.parametrize(
    ("approved", "other"),
    [
        ("DELETE FROM t WHERE id = 1", "DELETE FROM t WHERE id IN (1, 2, 3)"),
        ("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1), (2)"),
    ],
    ids=["an IN list", "more VALUES rows"],
)
def test_an_approval_does_not_cover_more_constants_of_the_same_fingerprint(
    approved: str, other: str
) -> None:
    (one,) = analyze(approved, cache=ShapeCache(0))
    (more,) = analyze(other, cache=ShapeCache(0))
    assert one.fingerprint == more.fingerprint  # libpg_query's fingerprint does not tell them apart
    book = make_book(Clock())
    admit(book, approved)
    book.apply(book.decision("r1", approve=True, approver=DBA, policy=policy()))
    assert admit(book, other).outcome == "requested"
    assert admit(book, approved.lower()).outcome == "used"


def test_the_message_names_the_review_and_how_to_approve_it() -> None:
    book = make_book(Clock())
    result = admit(book)
    message = held_message("statement held for review by policy prod/shop rule x", result)
    assert message.startswith("statement held for review by policy prod/shop rule x: review r1 ")
    assert "steward review approve r1" in message
    assert "within 1m" in message


@pytest.mark.parametrize(
    ("seconds", "text"), [(900, "15m"), (5400, "1h30m"), (30, "30s"), (3601, "1h1s"), (0, "0s")]
)
def test_ttls_are_shown_as_the_policy_writes_them(seconds: int, text: str) -> None:
    assert format_ttl(seconds) == text
