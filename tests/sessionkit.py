"""What the tests of the pure session relay share: a policy with one guardrail of
each kind, an audit sink that keeps its records, a session factory, and helpers
to encode and split protocol bytes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from steward_proxy import wire
from steward_proxy.engine import Judge
from steward_proxy.policy import Identity, Policy, compile_documents
from steward_proxy.review import ReviewBook
from steward_proxy.session import AnalysisLimits, Session

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

IDENTITY = Identity("user:alice")


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


def policies_for(text: str) -> tuple[Policy, ...]:
    """The policies in ``text`` (YAML documents) that cover ``IDENTITY``."""
    return compile_documents(list(yaml.safe_load_all(text))).policies_for(IDENTITY)


class KitSession(Session):
    """A session whose effects are applied after every call, as the shell applies them.

    Audit records go to ``audit`` (an :class:`AuditLog`); metric events to
    ``metric_events``.
    """

    def __init__(self, *, audit: AuditLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audit = audit
        self.metric_events: list[tuple[str, str, float | None]] = []

    def _drain(self) -> None:
        for type, fields in self.take_records():
            self.audit.write(type, **fields)
        self.metric_events += self.take_metrics()

    def feed_client(self, data: bytes) -> bytes:
        try:
            return super().feed_client(data)
        finally:
            self._drain()

    def feed_upstream(self, data: bytes) -> bytes:
        try:
            return super().feed_upstream(data)
        finally:
            self._drain()

    def resume(self) -> bytes:
        try:
            return super().resume()
        finally:
            self._drain()

    def abandon(self, reason: str) -> None:
        try:
            super().abandon(reason)
        finally:
            self._drain()


def make_session(
    audit: AuditLog | None = None,
    policy: str | Sequence[Policy] = POLICY,
    *,
    clock: Callable[[], float] | None = None,
    limits: AnalysisLimits | None = None,
    parameters: dict[str, str] | None = None,
    judge: Judge | None = None,
    reviews: ReviewBook | None = None,
) -> KitSession:
    """A session for ``IDENTITY`` under ``policy`` (YAML text or compiled policies).

    The default clock advances one millisecond per reading. ``judge`` replaces
    the one made from ``policy``; ``reviews`` is the book of approvals.
    """
    if clock is None:
        ticks = itertools.count()
        clock = lambda: next(ticks) / 1000  # noqa: E731
    limits = limits or AnalysisLimits()
    policies = policies_for(policy) if isinstance(policy, str) else policy
    return KitSession(
        audit=audit if audit is not None else AuditLog(),
        session_id="s1",
        identity=IDENTITY,
        database="app",
        client="127.0.0.1:5555",
        judge=judge or Judge(policies, max_statements=limits.max_statements),
        limits=limits,
        parameters=parameters,
        clock=clock,
        reviews=reviews,
    )


def enc(*messages: wire.Message) -> bytes:
    return b"".join(wire.encode(m) for m in messages)


def frames(data: bytes) -> list[wire.Frame]:
    """Split ``data`` into frames, asserting it holds whole messages only."""
    reader = wire.MessageReader()
    reader.feed(data)
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    assert reader.pending == 0, f"part of a message: {data[-reader.pending :]!r}"
    return out
