"""``EXECUTE p`` judged by what ``PREPARE p`` held in this session.

A statement string is judged on its own by the :class:`~steward_proxy.engine.Judge`
(and its verdict cached by shape); an ``EXECUTE p`` in it (also ``EXPLAIN
EXECUTE p`` and ``CREATE TABLE ... AS EXECUTE p``) runs whatever ``p`` holds,
which only the session knows: an SQL ``PREPARE`` it saw complete, or a
protocol-level Parse under that name (PostgreSQL shares the names). So
:func:`as_run` decides such a string again with each of those statements
merged with what it runs (:func:`~steward_proxy.sql.as_executed`), under the
policies that run now; the result depends on the session and is never cached.
A ``PREPARE`` earlier in the same string counts, and so does a
``DEALLOCATE`` or ``DISCARD ALL``. An ``EXECUTE`` of a name the session has
not seen prepared is refused: Steward cannot know what it would run.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steward_proxy.engine import Note, Verdict
from steward_proxy.escape import escape
from steward_proxy.policy import Decision, Policy, decide
from steward_proxy.sql import StatementInfo, as_executed

__all__ = ["as_run", "policy_refuses"]

# Commands whose prepared_name names a statement they define or drop, not one they run.
_NAMING = frozenset({"PREPARE", "DEALLOCATE", "DISCARD"})
_UNKNOWN = object()


def as_run(
    verdict: Verdict,
    statement_note: Callable[[str], Any],
    policies: Sequence[Policy],
) -> Verdict:
    """``verdict`` with every ``EXECUTE`` judged by what it runs; unchanged without one.

    ``statement_note`` gives the note the session keeps for a prepared
    statement's name (a :class:`Note`, or None when it knows none).
    """
    here: dict[str, Any] = {}  # names prepared (or dropped) earlier in this string
    statements: list[StatementInfo] = []
    unknown: str | None = None
    changed = False
    for statement in verdict.statements:
        name = statement.prepared_name
        if name is None:
            statements.append(statement)
            continue
        if statement.command == "PREPARE":
            here[name] = statement
        elif statement.command in _NAMING:
            if name:
                here[name] = _UNKNOWN
            else:  # DEALLOCATE ALL, DISCARD ALL
                here = _Forgotten()
        else:
            prepared = here.get(name)
            if prepared is None:
                note = statement_note(name)
                prepared = note.statement if isinstance(note, Note) else _UNKNOWN
            if prepared is _UNKNOWN or prepared is None:
                unknown = unknown if unknown is not None else name
            else:
                statement = as_executed(statement, prepared)
                changed = True
        statements.append(statement)
    if unknown is not None:
        return Verdict(
            tuple(statements),
            Decision(
                "deny",
                None,
                None,
                f'statement refused: EXECUTE of prepared statement "{escape(unknown, 64)}", '
                "which Steward has not seen prepared in this session",
            ),
        )
    if not changed:
        return verdict
    return Verdict(tuple(statements), decide(policies, statements), verdict.lineage)


def policy_refuses(notes: Sequence[tuple[str, Any]], policies: Sequence[Policy]) -> str | None:
    """The name of a prepared statement ``policies`` refuse that its verdict let through.

    ``notes`` are the session's prepared statements and their notes. A
    protocol-level Bind and Execute of a prepared statement is not judged
    again, so a session that holds one the policy now refuses must not go on.
    """
    for name, note in notes:
        if not isinstance(note, Note) or note.verdict.decision.action in ("deny", "review"):
            continue
        statements = note.verdict.statements
        if statements and decide(policies, statements).action in ("deny", "review"):
            return escape(name, 64)
    return None


class _Forgotten(dict[str, Any]):
    """Names after ``DEALLOCATE ALL``/``DISCARD ALL``: none is known but those prepared since."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key, _UNKNOWN)
