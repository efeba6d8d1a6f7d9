"""Approvals: statements a ``review`` guardrail holds until an approver lets them run once.

A :class:`Review` moves through a small state machine (:data:`TRANSITIONS`)::

    pending --approve--> approved --use--> used
       |                    |
       +--deny--> denied    +--expire--> expired
       +--expire--> expired

When a guardrail's decision is ``review``, the governor asks the
:class:`ReviewBook` (:meth:`ReviewBook.admit`): an approved review of the same
subject, database and statement shape (fingerprint) lets the statement run
and becomes ``used``; otherwise the pending review of that shape, or a new
one, is what the client is told about. An approver decides with
:meth:`ReviewBook.decision` and :meth:`ReviewBook.apply`: the approver must
match the policy's ``approval.approvers`` and is never the requester. A
pending review expires ``ttl`` after it was requested; an approval ``ttl``
after it was given. Time is wall-clock seconds (reviews outlive a restart),
read from the book's clock.

The book is plain data in memory, shared by every session of a proxy. It
never stores anything itself: each change waits in :meth:`ReviewBook.take_changes`
for whoever persists the book (a :class:`ReviewStore`), so the operator's
in-cluster QueryReview flow can keep the same logic over another store.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from steward_proxy.escape import escape
from steward_proxy.policy.model import Identity, Policy

__all__ = [
    "STATES",
    "TRANSITIONS",
    "Admitted",
    "Review",
    "ReviewBook",
    "ReviewRefused",
    "ReviewStore",
    "format_ttl",
    "held_message",
    "rfc3339",
    "statement_key",
]

State = Literal["pending", "approved", "denied", "expired", "used"]
Event = Literal["approve", "deny", "expire", "use"]
STATES: tuple[State, ...] = ("pending", "approved", "denied", "expired", "used")

TRANSITIONS: Mapping[tuple[State, Event], State] = {
    ("pending", "approve"): "approved",
    ("pending", "deny"): "denied",
    ("pending", "expire"): "expired",
    ("approved", "use"): "used",
    ("approved", "expire"): "expired",
}
"""``(state, event) -> next state``; any other pair is refused."""

MAX_STATEMENT_CHARS = 16384
"""Statement text kept per review (the fingerprint, not the text, is what an approval covers)."""
MAX_REASON_CHARS = 512
_PLACEHOLDER = re.compile(r"\$[0-9]+")


class ReviewRefused(Exception):
    """A decision that is not taken; ``problem`` says why in one word.

    ``unknown`` (no such review), ``state`` (not pending any more, or
    expired), ``approver`` (not one of the policy's approvers, or the requester).
    """

    def __init__(self, problem: Literal["unknown", "state", "approver"], message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


@dataclass(frozen=True, slots=True)
class Review:
    """One statement held for review, and what became of it. Times are Unix seconds."""

    id: str
    state: State
    subject: str
    groups: tuple[str, ...]
    database: str
    command: str | None
    statement: str
    fingerprint: str
    policy: str | None
    rule: str | None
    ttl: int
    requested: float
    expires: float
    constants: int = 0
    """How many constants the statement has (``$n`` in its text): part of what is approved."""
    session: str | None = None
    decided: float | None = None
    approver: str | None = None
    approver_groups: tuple[str, ...] = ()
    reason: str | None = None
    used: float | None = None
    used_session: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What an approval covers: the same subject, database and statement shape.

        The shape is the fingerprint and the number of constants: libpg_query's
        fingerprint does not count the rows of a ``VALUES`` list or the items
        of an ``IN`` list (``id = 1`` and ``id IN (1, 2, 3)`` share it).
        """
        return (self.subject, self.database, self.fingerprint, self.constants)

    def moved(self, event: Event, **changes: Any) -> Review:
        """This review after ``event``; :class:`ReviewRefused` when the state does not allow it."""
        state = TRANSITIONS.get((self.state, event))
        if state is None:
            raise ReviewRefused("state", f"review {self.id} is {self.state}, it cannot be {event}d")
        return replace(self, state=state, **changes)

    def as_json(self) -> dict[str, Any]:
        """The review as the admin API shows it (times in RFC 3339, UTC)."""
        return {
            "id": self.id,
            "state": self.state,
            "subject": self.subject,
            "groups": list(self.groups),
            "database": self.database,
            "command": self.command,
            "statement": self.statement,
            "fingerprint": self.fingerprint,
            "policy": self.policy,
            "rule": self.rule,
            "ttl": self.ttl,
            "requested": rfc3339(self.requested),
            "expires": rfc3339(self.expires),
            "session": self.session,
            "decided": rfc3339(self.decided),
            "approver": self.approver,
            "approverGroups": list(self.approver_groups),
            "reason": self.reason,
            "used": rfc3339(self.used),
            "usedSession": self.used_session,
        }

    def to_record(self) -> dict[str, Any]:
        """Plain fields for a store (:meth:`from_record` reads them back)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Review:
        fields = dict(record)
        fields["groups"] = tuple(fields.get("groups", ()))
        fields["approver_groups"] = tuple(fields.get("approver_groups", ()))
        if fields.get("state") not in STATES:
            raise ValueError(f"review {fields.get('id')!r} has an unknown state")
        return cls(**fields)


class Admitted(NamedTuple):
    """What :meth:`ReviewBook.admit` found for a statement held for review.

    ``outcome``: ``used`` (an approval was used: run it), ``approved`` (there
    is an approval, but it cannot be used this way), ``pending`` (the review
    asked for before), ``requested`` (a new review) or ``refused`` (no review
    could be made: ``message`` says why).
    """

    outcome: Literal["used", "approved", "pending", "requested", "refused"]
    review: Review | None
    message: str = ""


class ReviewStore(Protocol):
    """Where a book's reviews outlive the process."""

    def load(self) -> list[Review]: ...

    def save(self, changed: Sequence[Review], removed: Sequence[str]) -> None: ...


def rfc3339(moment: float | None) -> str | None:
    """Unix seconds as RFC 3339 in UTC with microseconds (``None`` stays ``None``)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_ttl(seconds: int) -> str:
    """``900`` -> ``15m``; ``5400`` -> ``1h30m``: the policy's own spelling of a duration."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def statement_key(statements: Sequence[Any]) -> tuple[str | None, str, str, int]:
    """``(command, text, fingerprint, constants)`` of a statement string held for review.

    One statement keeps its own; several are joined, with a fingerprint over
    theirs, so an approval covers exactly that sequence of shapes.
    """
    if len(statements) == 1:
        (only,) = statements
        command, text, fingerprint = only.command, only.normalized, only.fingerprint
    else:
        command = ",".join(dict.fromkeys(s.command for s in statements)) or None
        text = "; ".join(s.normalized for s in statements)
        joined = ",".join(s.fingerprint for s in statements).encode()
        fingerprint = hashlib.blake2b(joined, digest_size=8).hexdigest()
    return command, text, fingerprint, len(_PLACEHOLDER.findall(text))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _new_id() -> str:
    return secrets.token_hex(6)


class ReviewBook:
    """Every review a proxy knows, in memory; see the module docstring.

    ``max_reviews`` bounds the book: beyond it the oldest finished reviews
    (denied, expired, used) are dropped, and when only pending and approved
    ones are left no new review is made. ``max_pending_per_subject`` bounds
    what one subject can ask for at once.
    """

    def __init__(
        self,
        reviews: Iterable[Review] = (),
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
        max_reviews: int = 10_000,
        max_pending_per_subject: int = 100,
    ) -> None:
        self.clock = clock
        self.new_id = new_id
        self.max_reviews = max_reviews
        self.max_pending_per_subject = max_pending_per_subject
        self._reviews: dict[str, Review] = {}  # oldest request first
        self._by_key: dict[tuple[str, str, str, int], list[str]] = {}
        self._changed: dict[str, Review] = {}
        self._removed: dict[str, None] = {}
        for review in sorted(reviews, key=lambda r: r.requested):
            self._put(review)
        self._changed.clear()

    # -- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._reviews)

    @property
    def changed(self) -> bool:
        """Whether there are changes a store has not taken yet."""
        return bool(self._changed or self._removed)

    def take_changes(self) -> tuple[list[Review], list[str]]:
        """Reviews changed or added, and ids dropped, since the last call."""
        changed, removed = list(self._changed.values()), list(self._removed)
        self._changed, self._removed = {}, {}
        return changed, removed

    def get(self, review_id: str) -> Review | None:
        """The review ``review_id`` as of now (expired if its time is up)."""
        review = self._reviews.get(review_id)
        return None if review is None else self._expire(review, self.clock())

    def list(self, state: State | None = None) -> list[Review]:
        """Every review as of now, oldest request first; only those in ``state`` if given."""
        now = self.clock()
        reviews = [self._expire(r, now) for r in list(self._reviews.values())]
        return [r for r in reviews if state is None or r.state == state]

    # -- the governor's side -------------------------------------------------------------

    def admit(
        self,
        *,
        identity: Identity,
        database: str,
        statements: Sequence[Any],
        policy: Policy | None,
        rule: str | None,
        session: str | None,
        usable: bool = True,
    ) -> Admitted:
        """What to do with a statement string whose decision is ``review``.

        ``statements`` are its statements (``StatementInfo``); ``policy`` the
        policy that asked for review (its ttl applies); ``usable``: whether
        an approval may be used by this request (one that can only run once).
        """
        command, text, fingerprint, constants = statement_key(statements)
        key = (identity.subject, database, fingerprint, constants)
        now = self.clock()
        pending: Review | None = None
        for review_id in list(self._by_key.get(key, ())):
            review = self._expire(self._reviews[review_id], now)
            if review.state == "approved":
                if not usable:
                    return Admitted("approved", review)
                used = review.moved("use", used=now, used_session=session)
                self._put(used)
                return Admitted("used", used)
            if review.state == "pending" and pending is None:
                pending = review
        if pending is not None:
            return Admitted("pending", pending)
        subject = identity.subject
        waiting = sum(r.subject == subject and r.state == "pending" for r in self._reviews.values())
        if waiting >= self.max_pending_per_subject:
            return Admitted(
                "refused",
                None,
                f"no review was requested: {identity.subject} has {waiting} pending already",
            )
        if not self._make_room(now):
            return Admitted("refused", None, "no review was requested: the review book is full")
        ttl = policy.approval_ttl_seconds if policy is not None else 900
        review_id = self.new_id()
        while review_id in self._reviews:
            review_id = self.new_id()
        review = Review(
            id=review_id,
            state="pending",
            subject=identity.subject,
            groups=identity.groups,
            database=database,
            command=command,
            statement=_cut(text, MAX_STATEMENT_CHARS),
            fingerprint=fingerprint,
            policy=policy.key if policy is not None else None,
            rule=rule,
            ttl=ttl,
            requested=now,
            expires=now + ttl,
            constants=constants,
            session=session,
        )
        self._put(review)
        return Admitted("requested", review)

    # -- the approver's side --------------------------------------------------------------

    def decision(
        self,
        review_id: str,
        *,
        approve: bool,
        approver: Identity,
        policy: Policy | None,
        reason: str | None = None,
    ) -> Review:
        """The review after ``approver`` approves (or denies) it; not applied yet.

        Raises :class:`ReviewRefused`: no such review, not pending (or expired
        by now), the approver is the requester, the policy that asked for
        review is no longer loaded, or it does not name the approver.
        """
        review = self.get(review_id)
        if review is None:
            raise ReviewRefused("unknown", f"no review {escape(review_id, 64)}")
        event: Event = "approve" if approve else "deny"
        if review.state != "pending":
            raise ReviewRefused("state", f"review {review.id} is {review.state}, not pending")
        if approver.subject == review.subject:
            raise ReviewRefused(
                "approver", f"{approver.subject} requested review {review.id} and cannot decide it"
            )
        if policy is None or policy.key != review.policy:
            raise ReviewRefused(
                "approver",
                f"policy {review.policy} that asked for review {review.id} is no longer loaded",
            )
        if not policy.may_approve(approver):
            raise ReviewRefused(
                "approver",
                f"{approver.subject} is not an approver of policy {policy.key} "
                "(spec.approval.approvers)",
            )
        now = self.clock()
        return review.moved(
            event,
            decided=now,
            approver=approver.subject,
            approver_groups=approver.groups,
            reason=escape(reason, MAX_REASON_CHARS) if reason else None,
            expires=now + review.ttl if approve else review.expires,
        )

    def apply(self, review: Review) -> None:
        """Keep a decided review (from :meth:`decision`), once its record is written."""
        current = self._reviews.get(review.id)
        if current is None or current.state != "pending":
            raise ReviewRefused("state", f"review {review.id} changed meanwhile")
        self._put(review)

    # -- the book itself ----------------------------------------------------------------------

    def _expire(self, review: Review, now: float) -> Review:
        if now >= review.expires and (review.state, "expire") in TRANSITIONS:
            review = review.moved("expire")
            self._put(review)
        return review

    def _put(self, review: Review) -> None:
        if review.id not in self._reviews:
            self._by_key.setdefault(review.key, []).append(review.id)
        self._reviews[review.id] = review
        self._changed[review.id] = review
        self._removed.pop(review.id, None)

    def _drop(self, review: Review) -> None:
        del self._reviews[review.id]
        ids = self._by_key[review.key]
        ids.remove(review.id)
        if not ids:
            del self._by_key[review.key]
        self._changed.pop(review.id, None)
        self._removed[review.id] = None

    def _make_room(self, now: float) -> bool:
        """Drop the oldest finished reviews until one more fits; False if none can go."""
        if len(self._reviews) < self.max_reviews:
            return True
        for review in list(self._reviews.values()):
            if self._expire(review, now).state in ("denied", "expired", "used"):
                self._drop(self._reviews[review.id])
                if len(self._reviews) < self.max_reviews:
                    return True
        return False


def held_message(base: str, admitted: Admitted) -> str:
    """What a client is told about a statement held for review (``base``: the decision's)."""
    review = admitted.review
    if review is None:
        return f"{base} ({admitted.message})"
    if admitted.outcome == "approved":
        return (
            f"{base}: review {review.id} is approved; send the statement again as a simple "
            f"query (not a prepared statement) to run it once before {rfc3339(review.expires)}"
        )
    return (
        f"{base}: review {review.id} is pending until {rfc3339(review.expires)}; an approver "
        f"approves it with: steward review approve {review.id} --as SUBJECT; then send the "
        f"statement again to run it once within {format_ttl(review.ttl)}"
    )
