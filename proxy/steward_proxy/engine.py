"""The one policy engine: statement text in, a verdict out, for one subject.

:class:`Judge` is what the proxy's sessions, ``steward policy explain`` and
(through the same compiled policies) the operator rely on: it analyses SQL
with :mod:`steward_proxy.sql` and decides with :mod:`steward_proxy.policy`.
The two packages never import each other (policy reads statements through
its ``StatementLike`` protocol); this module joins them.

Verdicts are cached once, here, by statement shape (literals replaced), or
by exact text when the analysis depends on a literal value.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from steward_proxy.masking.lineage import analyze as trace
from steward_proxy.policy import Decision, Policy, decide, decide_function_call
from steward_proxy.sql import (
    AnalysisLimitError,
    ShapeCache,
    SQLSyntaxError,
    StatementInfo,
    analyze_uncached,
    depends_on_literals,
    normalize,
)

if TYPE_CHECKING:
    from steward_proxy.masking.lineage import StatementLineage
    from steward_proxy.masking.plan import Masker

__all__ = ["Analysis", "Judge", "Note", "Verdict", "function_call_statement"]

# What analysis delivers, done here or off the event loop: the statements, or
# why they cannot be judged.
Analysis = tuple[StatementInfo, ...] | SQLSyntaxError | AnalysisLimitError


class Note(NamedTuple):
    """One statement of a judged string and the verdict on the string.

    What a session keeps with each request it forwards, to record it when
    the server answers.
    """

    statement: StatementInfo | None
    verdict: Verdict
    lineage: StatementLineage | None = None
    """Where the statement's result columns come from (masked subjects only)."""
    masked: set[str] | None = None
    """Audit labels of what masking did to this request's results (masked subjects only)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy says about one statement string, and what the string holds."""

    statements: tuple[StatementInfo, ...]
    decision: Decision
    lineage: tuple[StatementLineage, ...] | None = None
    """Per statement, what masking needs (only for a subject whose results are masked;
    None when the text was too large to trace inline)."""
    notes: tuple[Note, ...] = field(init=False, repr=False, compare=False)
    """One :class:`Note` per statement (one with no statement for an empty string)."""

    def __post_init__(self) -> None:
        notes = tuple(Note(s, self) for s in self.statements or (None,))
        object.__setattr__(self, "notes", notes)


def function_call_statement(function_oid: int) -> StatementInfo:
    """A FunctionCall message, as a statement: it names its function only by OID."""
    return StatementInfo(
        command="FUNCTION CALL",
        normalized=f"<function call oid {function_oid}>",
        fingerprint=f"fcall-{function_oid}",
        tables=(),
        functions=(str(function_oid),),
        has_where=True,
        writes=(),
    )


class Judge:
    """Verdicts on statement text for the policies that cover one subject.

    Shared by the sessions of that subject; ``max_statements`` bounds the
    statements of one string (more is an :class:`AnalysisLimitError`).
    """

    generation = 0
    """Changes whenever the policies behind this judge change (a live judge's do)."""

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        maxsize: int = 4096,
        max_statements: int = 0,
        masker: Masker | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self.max_statements = max_statements
        self.read_only = any(p.read_only for p in self.policies)
        """A policy of the subject has ``spec.readOnly``: sessions sign in read-only."""
        self.masker = masker
        """Masking for this subject (its results, refusals), when any policy masks anything."""
        # By shape; and by exact text for verdicts that depend on a literal. A
        # text is in at most one of them: whether a verdict depends on a
        # literal is a matter of the statement's structure, which every text
        # of one shape shares.
        self._by_shape: ShapeCache[Verdict] = ShapeCache(maxsize)
        self._by_text: ShapeCache[Verdict] = ShapeCache(maxsize)

    def judge(self, sql: str, analysed: Analysis | None = None) -> Verdict:
        """The verdict on ``sql``, analysing it here unless ``analysed`` is given.

        Raises :class:`SQLSyntaxError` or :class:`AnalysisLimitError`.
        """
        if isinstance(analysed, Exception):
            raise analysed
        if analysed is not None:
            # Too large to trace inline: masking refuses it if it names a masked table.
            verdict = Verdict(analysed, decide(self.policies, analysed))
            self._by_text.put(sql, verdict)
            return verdict
        shape = normalize(sql)
        verdict = self._by_shape.get(shape) or self._by_text.get(sql)
        if verdict is None:
            statements = analyze_uncached(sql, shape, self.max_statements)
            verdict = Verdict(
                statements, decide(self.policies, statements), self._lineage(sql, shape, statements)
            )
            if depends_on_literals(statements):
                self._by_text.put(sql, verdict)
            else:
                self._by_shape.put(shape, verdict)
        return verdict

    def _lineage(
        self, sql: str, shape: str, statements: tuple[StatementInfo, ...]
    ) -> tuple[StatementLineage, ...] | None:
        """Lineage for masking, from the text the verdict is cached under."""
        masker = self.masker
        if masker is None or not masker.config.active or not statements:
            return None
        for text in (sql,) if depends_on_literals(statements) else (shape, sql):
            try:
                traced = trace(text)
            except Exception:
                continue
            if len(traced) == len(statements):
                return traced
        return None

    def recall(self, sql: str) -> Verdict | None:
        """The verdict cached for exactly ``sql``, without analysing anything."""
        return self._by_text.get(sql)

    def judge_function_call(self, function_oid: int) -> Verdict:
        """The verdict on a FunctionCall message."""
        statement = function_call_statement(function_oid)
        return Verdict((statement,), decide_function_call(self.policies, statement))
