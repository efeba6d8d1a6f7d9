"""``spec.readOnly``: what a read-only subject may run, and what would undo it.

A read-only policy makes PostgreSQL itself enforce it: the proxy signs its
subjects in upstream with ``default_transaction_read_only=on``
(:data:`READ_ONLY_PARAMETER`), so a write hidden where Steward cannot see it (a
function created earlier, a view's rule, ``nextval``) fails inside the server.
On top of that the policy refuses, with a clearer message, what Steward sees:

- an operation that is not a plain read (:func:`writes`): anything but the
  commands of :data:`READ_COMMANDS`, so ``INSERT``, ``UPDATE``, ``DELETE``,
  ``MERGE`` (also inside ``WITH``, under ``EXPLAIN ANALYZE``, in a ``DO``
  body or a ``PREPARE``), DDL, ``CALL`` (a procedure may commit and start a
  new transaction) and ``DYNAMIC`` (SQL Steward cannot read before it runs);
- a setting that would turn read-only off (:func:`read_only_violation`):
  ``SET [LOCAL] default_transaction_read_only`` or ``transaction_read_only``
  to anything but on (``RESET`` and ``DEFAULT`` too: the value they restore is
  not Steward's to check), ``set_config()`` of either, ``SET SESSION
  CHARACTERISTICS AS TRANSACTION READ WRITE``, ``SET TRANSACTION READ WRITE``
  and ``BEGIN``/``START TRANSACTION ... READ WRITE``;
- a transaction that ends where more can follow before the server reports a
  setting: ``COMMIT``/``ROLLBACK`` inside a ``DO`` body, and a transaction end
  followed by more statements in one query string (:func:`sequence_violation`).

What the parse tree cannot show (a function that changes the setting) the
server reports in ParameterStatus; the session ends then.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from steward_proxy.policy.pinned import is_on

__all__ = [
    "READ_COMMANDS",
    "READ_ONLY_PARAMETER",
    "READ_ONLY_RULE",
    "TRANSACTION_ENDS",
    "read_only_violation",
    "sequence_violation",
    "writes",
]

READ_ONLY_PARAMETER = "default_transaction_read_only"
"""Sent upstream as ``on`` for a read-only subject, and watched in ParameterStatus."""

READ_ONLY_RULE = "readOnly"
"""The ``rule`` of a refusal by ``spec.readOnly`` (guardrail names are lower case)."""

READ_COMMANDS: frozenset[str] = frozenset(
    {
        "SELECT",
        "SHOW",
        "EXPLAIN",
        "COPY",  # COPY ... TO; COPY ... FROM is also an INSERT operation
        "SET",  # its settings are checked apart
        "RESET",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "PREPARE",  # judged by what EXECUTE will run, an operation of its own
        "EXECUTE",
        "DEALLOCATE",
        "DECLARE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "DISCARD",
        "LISTEN",
        "UNLISTEN",
        "NOTIFY",
        "DO",  # the static SQL of its body are operations of their own
    }
)
"""Commands of operations a read-only subject may run; every other one counts as a write."""

_READ_ONLY_SETTINGS = frozenset({READ_ONLY_PARAMETER, "transaction_read_only"})

TRANSACTION_ENDS: frozenset[str] = frozenset(
    {"COMMIT", "ROLLBACK", "COMMIT PREPARED", "ROLLBACK PREPARED", "PREPARE TRANSACTION"}
)
"""Commands that end a transaction: the next one starts with whatever default holds then."""


def writes(command: str) -> bool:
    """Whether an operation of ``command`` counts as a write under ``spec.readOnly``."""
    return command not in READ_COMMANDS


def sequence_violation(commands: Sequence[str]) -> str | None:
    """Why a read-only subject may not send these statements in one string, or None.

    A transaction that ends in the middle of a string starts another before
    the server can report that a function turned read-only off: nothing may
    follow the end.
    """
    for command in commands[:-1]:
        if command in TRANSACTION_ENDS:
            return f"a read-only subject may send nothing after {command} in the same query string"
    return None


def read_only_violation(settings: Iterable[tuple[str, str | None]]) -> str | None:
    """Why these ``(name, value)`` settings would turn read-only off, or None."""
    for name, value in settings:
        if name in _READ_ONLY_SETTINGS and (value is None or not is_on(value)):
            return f"{name} cannot be turned off for a read-only subject"
    return None
