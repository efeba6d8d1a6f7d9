"""What the tests of the pure session relay share: a policy with one guardrail of
each kind, an audit sink that keeps its records, a session factory, and helpers
to encode and split protocol bytes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from steward_proxy import wire
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Identity, Policy, compile_documents
from steward_proxy.session import Judge, Session

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


def make_session(
    audit: AuditLog | None = None,
    policy: str | Sequence[Policy] = POLICY,
    *,
    clock: Callable[[], float] | None = None,
) -> Session:
    """A session for ``IDENTITY`` under ``policy`` (YAML text or compiled policies).

    The default clock advances one millisecond per reading.
    """
    if clock is None:
        ticks = itertools.count()
        clock = lambda: next(ticks) / 1000  # noqa: E731
    return Session(
        session_id="s1",
        identity=IDENTITY,
        database="app",
        client="127.0.0.1:5555",
        judge=Judge(policies_for(policy) if isinstance(policy, str) else policy),
        audit=audit if audit is not None else AuditLog(),
        metrics=ProxyMetrics(),
        clock=clock,
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
