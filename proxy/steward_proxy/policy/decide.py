"""Judging statements against the policies that cover a subject.

Pure: no I/O. A statement is judged by what it executes: each of its operations
(see ``model.StatementLike``) on its own. Within a policy the guardrails are
tried in order and the first that matches an operation decides for it; when
none matches, the policy's ``defaultAction`` does. A statement that changes a
setting Steward pins (see ``pinned``) is refused before any policy is
consulted. Across the operations of a statement, the statements of one query
string and several policies, the most restrictive decision wins (deny > review
> log > allow); between equally restrictive decisions the first statement,
then the first operation, then the first policy (by ``namespace/name``), is
reported. So an ``allow`` guardrail allows a statement only when it (or
another allowing rule) covers every operation: ``INSERT INTO payments SELECT
...`` is not allowed by a rule that allows SELECT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from steward_proxy.policy.model import (
    ACTION_RANK,
    Action,
    OperationLike,
    Policy,
    StatementLike,
    operations_of,
)
from steward_proxy.policy.pinned import pinned_violation

_VERB = {
    "deny": "denied by",
    "review": "held for review by",
    "log": "logged by",
    "allow": "allowed by",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for a statement: what to do, and which policy and rule said so."""

    action: Action
    policy: str | None
    rule: str | None
    message: str

    @property
    def rank(self) -> int:
        return ACTION_RANK[self.action]


NO_POLICY = Decision(action="deny", policy=None, rule=None, message="no policy covers this subject")
EMPTY_QUERY = Decision(action="allow", policy=None, rule=None, message="empty query")


def pinned(statement: StatementLike) -> Decision | None:
    """The refusal of a statement that changes a pinned setting, whatever the policy."""
    reason = pinned_violation(statement.settings) if statement.settings else None
    if reason is None:
        return None
    return Decision("deny", None, None, f"statement refused: {reason}")


def decide_operation(
    policy: Policy, operation: OperationLike, statement: StatementLike
) -> Decision:
    """The decision of one policy on one operation of ``statement``."""
    for guardrail in policy.guardrails:
        if guardrail.matches_operation(operation, statement):
            verb = _VERB[guardrail.action]
            message = f"statement {verb} policy {policy.key} rule {guardrail.name}"
            if guardrail.message:
                message = f"{message}: {guardrail.message}"
            return Decision(guardrail.action, policy.key, guardrail.name, message)
    action = policy.default_action
    return Decision(
        action,
        policy.key,
        None,
        f"statement {_VERB[action]} policy {policy.key} (defaultAction: {action})",
    )


def decide_one(policy: Policy, statement: StatementLike) -> Decision:
    """The decision of one policy on one statement: the strictest over its operations."""
    refused = pinned(statement)
    if refused is not None:
        return refused
    return _combine(decide_operation(policy, op, statement) for op in operations_of(statement))


def decide_operations(
    policies: Sequence[Policy], statement: StatementLike
) -> tuple[tuple[OperationLike, Decision], ...]:
    """Each operation of ``statement`` with the combined decision of ``policies`` on it."""
    return tuple(
        (op, _combine(decide_operation(p, op, statement) for p in policies))
        for op in operations_of(statement)
    )


def decide_each(
    policies: Sequence[Policy], statements: Sequence[StatementLike]
) -> tuple[Decision, ...]:
    """One combined decision per statement, in statement order."""
    return tuple(
        pinned(s)
        or _combine(decide_operation(p, op, s) for op in operations_of(s) for p in policies)
        for s in statements
    )


def decide(policies: Sequence[Policy], statements: Sequence[StatementLike]) -> Decision:
    """The decision for a whole query string: the most restrictive over its parts.

    No policies means no access (deny); no statements (an empty query) is allowed.
    """
    for statement in statements:
        refused = pinned(statement)
        if refused is not None:
            return refused
    if not policies:
        return NO_POLICY
    if not statements:
        return EMPTY_QUERY
    return _combine(
        decide_operation(p, op, s) for s in statements for op in operations_of(s) for p in policies
    )


def decide_function_call(policies: Sequence[Policy], statement: StatementLike) -> Decision:
    """The decision on a FunctionCall message, which names its function only by OID.

    A guardrail that restricts functions by name cannot tell whether the OID is
    one of them (``pg_read_file`` is as callable this way as from SQL), so it
    counts as matched: fail closed.
    """
    decision = decide(policies, (statement,))
    if decision.action in ("deny", "review"):
        return decision
    for policy in policies:
        for guardrail in policy.guardrails:
            if guardrail.functions and guardrail.action in ("deny", "review"):
                return Decision(
                    "deny",
                    policy.key,
                    guardrail.name,
                    f"statement denied by policy {policy.key} rule {guardrail.name}: "
                    "a FunctionCall message names its function only by OID, "
                    "so it cannot be checked against the rule's functions",
                )
    return decision


def _combine(decisions: Iterable[Decision]) -> Decision:
    best: Decision | None = None
    for decision in decisions:
        if best is None or decision.rank > best.rank:
            best = decision
            if best.action == "deny":
                break
    if best is None:
        return NO_POLICY
    return best
