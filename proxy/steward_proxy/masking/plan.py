"""What masking does with a statement: its refusals, and each result column's masker.

:class:`MaskingConfig` is what the policies covering one subject say about
masking (their MaskingRules in order, ``detect``, ``predicates``, whether the
subject is exempt). :class:`Masker` joins it with the catalog and the hash key:

- :meth:`Masker.refusal`: a statement that filters by a masked column (with
  ``predicates: deny``), moves masked values into a write or a store, copies
  them out in binary, defines code whose reads cannot be traced (DO,
  functions, rules) or changes a table with masked columns is refused before
  it runs;
- :meth:`Masker.plan`: for a result's columns (the RowDescription's table OID,
  attribute number and type) and the statement's lineage, a row filter that
  masks each DataRow, or None when nothing needs masking (the fast path).

A result column is masked with its rule's strategy when it *is* a masked
column (the RowDescription or the lineage says so); with ``redact`` when a
masked column feeds it in any other way (a derived value cannot be partly
masked safely); with ``redact`` too when what feeds it cannot be told (a
relation the catalog does not know, a subquery the lineage cannot follow).
Columns no rule covers go through content detection when ``detect`` is on.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from steward_proxy.masking import lineage as ln
from steward_proxy.masking.binary import text_form
from steward_proxy.masking.catalog import SAMPLE_COLUMNS, Catalog, Relation
from steward_proxy.masking.detect import DATA_CLASSES, NEEDED, find
from steward_proxy.masking.lineage import Output, Source, StarOf, StatementLineage
from steward_proxy.masking.strategies import (
    REDACT,
    TEXT_LIKE_OIDS,
    Strategies,
    Strategy,
    ValueMasker,
)
from steward_proxy.policy.model import (
    HashKeySecretRef,
    Identity,
    MaskingColumnRule,
    MaskingRuleSet,
    Policy,
    PolicySet,
)

__all__ = ["UNRESOLVED", "Masker", "MaskingConfig", "Plan", "Recipe", "plan_from_recipe"]

UNRESOLVED = "unresolved"
"""The audit label of a column masked because what feeds it cannot be told."""

# Types whose text form survives a span replaced by another ASCII span: JSON,
# and arrays of text in text form.
_SPAN_SAFE_TEXT = frozenset({114, 3802, 1009, 1015, 1014, 199, 3807})
_SPAN_SAFE_BINARY = frozenset({114, 3802})
# Types whose text form is at most 11 characters of digits and a sign (or t/f):
# no data class fits in one (a card number, the only class of digits alone,
# has 13 or more), so detection skips them.
_TOO_SHORT = frozenset({16, 21, 23, 26})  # bool, int2, int4, oid
_MAX_DEPTH = 16  # views over views
_UNTIL_RUN = 1 << 62  # a schema change sent, not yet run
# Sources resolved and remembered until the catalog changes: statements name
# whatever a client likes, so the memory is bounded.
_MAX_RESOLVED = 65536


@dataclass(frozen=True, slots=True)
class MaskingConfig:
    """What the policies that cover one subject say about masking."""

    rule_sets: tuple[MaskingRuleSet, ...] = ()
    detect: bool = False
    predicates: str = "deny"
    exempt: bool = False
    hashing: tuple[tuple[str, HashKeySecretRef | None], ...] = ()
    """Each policy of the subject that masks with ``hash`` and the Secret key it names
    (None: the proxy's own key). One key is used for the subject; see :attr:`hash_keys`."""

    @property
    def column_rules(self) -> bool:
        return any(r.columns for s in self.rule_sets for r in s.rules)

    @property
    def active(self) -> bool:
        """Whether anything is masked for this subject."""
        return not self.exempt and (self.column_rules or self.detect)

    @property
    def hash_keys(self) -> tuple[HashKeySecretRef | None, ...]:
        """The distinct keys ``hash`` would use for this subject: none when nothing is
        hashed, one normally; more than one is a conflict (the subject may not sign in)."""
        if not self.active:
            return ()
        return tuple(dict.fromkeys(ref for _, ref in self.hashing))

    def column_rule(self, qualified: str) -> MaskingColumnRule | None:
        for rule_set in self.rule_sets:
            rule = rule_set.strategy_for_column(qualified)
            if rule is not None:
                return rule
        return None

    def class_strategy(self, data_class: str) -> Strategy:
        for rule_set in self.rule_sets:
            rule = rule_set.strategy_for_class(data_class)
            if rule is not None:
                return _strategy(rule)
        return REDACT

    @classmethod
    def for_identity(
        cls, policy_set: PolicySet, policies: Sequence[Policy], identity: Identity
    ) -> MaskingConfig:
        """Masking for ``identity`` under the ``policies`` that cover it.

        Rules of every covering policy apply (in policy order); detection is on
        if any policy turns it on; predicates are denied unless every policy
        allows them; the subject is exempt only if every policy that masks
        anything exempts it. ``hashing`` lists the policies whose MaskingRules
        use ``hash``, each with the Secret key it names for it.
        """
        rule_sets: list[MaskingRuleSet] = []
        masking = [p for p in policies if p.masking_rule_names or p.detect]
        for policy in masking:
            rule_sets += [s for s in policy_set.masking_for(policy) if s not in rule_sets]
        return cls(
            rule_sets=tuple(rule_sets),
            detect=any(p.detect for p in masking),
            predicates="allow"
            if masking and all(p.masking_predicates == "allow" for p in masking)
            else "deny",
            exempt=bool(masking) and all(p.is_exempt_from_masking(identity) for p in masking),
            hashing=tuple((p.key, p.hash_key_secret_ref) for p in masking if policy_set.hashes(p)),
        )


def _strategy(rule: MaskingColumnRule) -> Strategy:
    return Strategy(rule.strategy, rule.keep_last if rule.keep_last is not None else 4)


Recipe = tuple[bytes, tuple[tuple[str, int, int, bool, bool] | None, ...]]
"""A plan of strategies only, as plain values another process can rebuild it
from: the hash key and, per result column, None (kept) or its strategy's name
and ``keepLast``, its type OID, whether it is in binary form and whether the
type is text-like."""


@dataclass(slots=True)
class Plan:
    """What was decided for one result: the row filter's column maskers and audit labels."""

    maskers: list[ValueMasker | None]
    labels: set[str] = field(default_factory=set)
    every: ValueMasker | None = None
    """For rows whose columns were never described: applied to every value."""
    screens: dict[int, bytes] = field(default_factory=dict)
    """Per column masked by detection, a translation table: a value in which it
    leaves no NUL byte is one the masker gives back unchanged (the row filter
    keeps it without calling the masker)."""
    recipe: Recipe | None = field(default=None, repr=False)  # holds the hash key
    """The same maskers as plain values, when every one is a strategy's (no
    detection): what :func:`plan_from_recipe` rebuilds this plan from."""


class Masker:
    """Masking for one subject: config, hash key and the current catalog.

    ``unavailable`` says why this subject's masking cannot run (its hash key
    is missing, or its policies name different keys): it then has no
    ``strategies`` and :meth:`refusal` refuses every statement with the
    reason, so no row is ever masked with a key other than the one the
    policy names.
    """

    def __init__(
        self,
        config: MaskingConfig,
        strategies: Strategies | None,
        catalog: Catalog,
        *,
        unavailable: str | None = None,
    ) -> None:
        if strategies is None and unavailable is None:
            raise ValueError("masking without strategies needs the reason it is unavailable")
        self.config = config
        self._strategies = strategies
        self.unavailable = unavailable
        self._catalog = catalog
        self._resolved: dict[Source, tuple[frozenset[str], bool]] = {}
        self._views: dict[int, list[Output] | None] = {}
        self._rules: dict[str, Strategy | None] = {}
        self.invalidated: Callable[[], int | None] | None = None
        """Called when a statement may have changed the catalog (the shell refreshes it);
        returns the generation of the catalog that will show the change."""
        # Relation names (without schema) a schema change was sent for, and the
        # catalog generation that shows it (_UNTIL_RUN: the change has not run).
        # Until then they resolve to nothing known (masked, as unknown ones).
        self._changing: dict[str, int] = {}

    @property
    def strategies(self) -> Strategies:
        """The value maskers under the subject's key; none when masking is unavailable."""
        if self._strategies is None:
            raise RuntimeError(f"masking is unavailable: {self.unavailable}")
        return self._strategies

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._resolved.clear()
        self._views.clear()
        if self._changing:
            generation = catalog.generation
            self._changing = {n: g for n, g in self._changing.items() if g > generation}

    def invalidate(self) -> None:
        if self.invalidated is not None:
            self.invalidated()

    def changing(self, tables: Sequence[str]) -> list[str]:
        """A schema change naming ``tables`` is sent: they resolve as unknown until
        :meth:`changed` and the catalog reload after it. Returns the names marked."""
        names = [table.rpartition(".")[2] for table in tables]
        for name in names:
            self._changing[name] = _UNTIL_RUN
        self._resolved.clear()
        return names

    def changed(self, names: Sequence[str], *, ran: bool) -> None:
        """The schema change that marked ``names`` ran (the catalog is reloaded), or never will."""
        generation = None
        if ran and self.invalidated is not None:
            generation = self.invalidated()
        for name in names:
            if self._changing.get(name) != _UNTIL_RUN:
                continue
            if generation is None:
                del self._changing[name]
            else:
                self._changing[name] = generation
        self._resolved.clear()

    # -- resolution ------------------------------------------------------------------

    def rule(self, qualified: str) -> Strategy | None:
        """The strategy of the column rule covering ``schema.table.column``, if any."""
        try:
            return self._rules[qualified]
        except KeyError:
            rule = self.config.column_rule(qualified)
            strategy = self._rules[qualified] = _strategy(rule) if rule is not None else None
            return strategy

    def resolve(self, source: Source, depth: int = 0) -> tuple[frozenset[str], bool]:
        """The catalog's columns behind ``source``, and whether some could not be resolved."""
        found = self._resolved.get(source)
        if found is None:
            found = self._resolve(source, depth)
            if depth == 0:
                if len(self._resolved) >= _MAX_RESOLVED:
                    self._resolved.clear()
                self._resolved[source] = found
        return found

    def _resolve(self, source: Source, depth: int) -> tuple[frozenset[str], bool]:
        if source[0] == "opaque" or depth > _MAX_DEPTH or source[2] in self._changing:
            return frozenset(), True
        relations = self._catalog.lookup(source[1], source[2])
        if not relations:
            return frozenset(), True  # a relation the catalog does not know (yet)
        names: set[str] = set()
        unresolved = False
        column = source[3] if source[0] == "col" else None
        for relation in relations:
            if relation.samples_values and (column is None or column in SAMPLE_COLUMNS):
                unresolved = True
                continue
            if relation.is_view:
                outputs = self.view_outputs(relation, depth)
                if outputs is None:
                    unresolved = True
                    continue
                if column is None:
                    wanted = outputs
                else:
                    attnum = relation.attnums.get(column, 0)
                    wanted = [outputs[attnum - 1]] if 0 < attnum <= len(outputs) else []
                for output in wanted:
                    for inner in output.sources:
                        more, lost = self.resolve(inner, depth + 1)
                        names |= more
                        unresolved |= lost
                continue
            if column is None:
                names |= {relation.qualified(n) for n, _ in relation.columns.values()}
            elif column in relation.attnums:
                names.add(relation.qualified(column))
        return frozenset(names), unresolved

    def view_outputs(self, relation: Relation, depth: int = 0) -> list[Output] | None:
        """A view's columns, each with what feeds it (None: not traceable)."""
        if relation.oid in self._views:
            return self._views[relation.oid]
        self._views[relation.oid] = None  # a view that reaches itself is not traceable
        outputs: list[Output] | None = None
        try:
            parsed = ln.analyze(relation.definition or "")
        except Exception:
            parsed = ()
        if len(parsed) == 1 and parsed[0].outputs is not None:
            outputs = self.expand(parsed[0].outputs)
        if outputs is not None and len(outputs) != len(relation.columns):
            outputs = None
        self._views[relation.oid] = outputs
        return outputs

    def expand(self, items: Sequence[Output | StarOf]) -> list[Output] | None:
        """Outputs with each ``*`` expanded to its relation's columns (None if unknown)."""
        expanded: list[Output] = []
        for item in items:
            if isinstance(item, Output):
                expanded.append(item)
                continue
            relations = self._catalog.lookup(item.schema, item.relation)
            if len({len(r.columns) for r in relations}) != 1 or item.relation in self._changing:
                return None
            if len(relations) == 1:
                relation = relations[0]
                for attnum in sorted(relation.columns):
                    source = ("col", relation.schema, relation.name, relation.columns[attnum][0])
                    expanded.append(Output(frozenset({source}), source))
                continue
            # A name without a schema that several tables of one width have:
            # each column is fed by that column of any of them.
            columns = [
                [("col", r.schema, r.name, r.columns[a][0]) for a in sorted(r.columns)]
                for r in relations
            ]
            expanded += [Output(frozenset(sources)) for sources in zip(*columns, strict=True)]
        return expanded

    def masked_sources(self, sources: frozenset[Source] | set[Source]) -> tuple[list[str], bool]:
        """The masked columns among ``sources``, and whether some could not be resolved."""
        masked: set[str] = set()
        unresolved = False
        for source in sources:
            names, lost = self.resolve(source)
            unresolved |= lost
            masked |= {n for n in names if self.rule(n) is not None}
        return sorted(masked), unresolved

    # -- refusals ----------------------------------------------------------------------

    def untraced(
        self, tables: Sequence[str], writes: bool, command: str | None = None
    ) -> StatementLineage:
        """A stand-in lineage for a statement too large to trace inline.

        Everything it names counts as read, filtered by and (if it writes)
        moved; a relation the catalog does not know counts only when a column
        rule could name one of its columns. A FETCH or DECLARE (``command``)
        is ``opaque``: the rows of a cursor come from no table the FETCH names,
        and the cursor a DECLARE names is not known.
        """
        sources: set[Source] = set()
        for table in tables:
            schema, _, name = table.rpartition(".")
            if schema == "public":
                schema = ""  # the analysis qualifies bare names with public
            if self._catalog.lookup(schema, name) or self._might_cover(schema, name):
                sources.add(("all", schema, name))
        everything = frozenset(sources)
        return StatementLineage(
            outputs=None,
            reads=everything,
            filters=everything,
            moves=everything if writes else frozenset(),
            opaque=command in ("FETCH", "DECLARE"),
        )

    def _might_cover(self, schema: str, name: str) -> bool:
        for rule_set in self.config.rule_sets:
            for rule in rule_set.rules:
                for pattern in rule.columns:
                    parts = pattern.split(".")
                    if (
                        len(parts) == 3
                        and fnmatchcase(name, parts[1])
                        and (not schema or fnmatchcase(schema, parts[0]))
                    ):
                        return True
        return False

    def refusal(self, lineage: StatementLineage) -> str | None:
        """Why a statement must not run for this subject, or None."""
        config = self.config
        if not config.active:
            return None
        if self.unavailable is not None:
            return f"statement refused: {self.unavailable}"
        copy = lineage.copy
        unreadable_copy = copy is not None and (
            copy.format not in ("text", "csv") or len(copy.delimiter.encode()) != 1
        )
        if unreadable_copy and config.detect:
            return (
                "statement refused: content detection reads COPY rows as text or CSV, "
                "not binary; use text or CSV"
            )
        if not config.column_rules:
            return None
        if lineage.defines_code:
            return (
                "statement refused: DO blocks, functions, procedures and rules run code "
                "Steward cannot trace, so a subject whose results are masked may not "
                "define them"
            )
        masked, unresolved = self.masked_sources(lineage.alters)
        if masked or unresolved:
            return (
                f"statement refused: it would change a relation with masked column {_name(masked)}"
            )
        masked, unresolved = self.masked_sources(lineage.moves)
        if masked or unresolved:
            return (
                f"statement refused: it would write values of masked column "
                f"{_name(masked)} somewhere no masking rule covers"
            )
        if config.predicates == "deny":
            masked, unresolved = self.masked_sources(lineage.filters)
            if masked or unresolved:
                return (
                    f"statement refused: it filters, joins, groups or orders by masked column "
                    f"{_name(masked)} (masking.predicates is deny)"
                )
        if unreadable_copy:
            masked, unresolved = self.masked_sources(lineage.reads)
            if masked or unresolved:
                return (
                    f"statement refused: binary COPY would include masked column "
                    f"{_name(masked)}; use text or CSV"
                )
        return None

    def tainted(self, lineage: StatementLineage | None) -> bool:
        """Whether a masked column (or something untraceable) feeds the statement at all."""
        if not self.config.column_rules:
            return False
        if lineage is None or lineage.opaque:
            return True
        masked, unresolved = self.masked_sources(lineage.reads | lineage.targets)
        return bool(masked or unresolved)

    # -- result columns ------------------------------------------------------------------

    def decide(self, output: Output) -> tuple[Strategy | None, list[str]]:
        """The strategy for an output column, and its audit labels."""
        if output.bare is not None:
            names, lost = self.resolve(output.bare)
            if len(names) == 1 and not lost:
                (name,) = names
                strategy = self.rule(name)
                if strategy is None:
                    return None, []
                return strategy, [f"{name}:{strategy.label}"]
        masked, unresolved = self.masked_sources(output.sources)
        if masked or (unresolved and self.config.column_rules):
            return REDACT, [f"{m}:redact" for m in masked] or [f"{UNRESOLVED}:redact"]
        return None, []

    def plan(
        self,
        lineage: StatementLineage | None,
        fields: Sequence[Any] | None,
        formats: Sequence[int] = (),
        *,
        labels: set[str] | None = None,
    ) -> Plan | None:
        """How to mask each column of a result, or None when nothing needs masking.

        ``fields`` are the RowDescription's (None when the client never had
        the rows described: then types are unknown and every masked value
        becomes NULL). ``formats`` are the Bind's result format codes.
        """
        config = self.config
        if not config.active:
            return None
        if labels is None:
            labels = set()
        if fields is None:
            return self._plan_blind(lineage, labels, binary=any(formats))
        outputs = None
        if lineage is not None and lineage.outputs is not None:
            outputs = self.expand(lineage.outputs)
            if outputs is not None and len(outputs) != len(fields):
                outputs = None
        tainted: bool | None = None
        catalog = self._catalog
        maskers: list[ValueMasker | None] = []
        screens: dict[int, bytes] = {}
        columns: list[tuple[str, int, int, bool, bool] | None] = []
        text_like = catalog.text_like
        for i, fd in enumerate(fields):
            strategy: Strategy | None = None
            found: list[str] = []
            relation = catalog.relations.get(fd.table_oid) if fd.table_oid else None
            if relation is not None and relation.name in self._changing:
                relation = None  # a schema change the catalog does not show yet
            if fd.table_oid and relation is None:
                if config.column_rules:
                    strategy, found = REDACT, [f"{UNRESOLVED}:redact"]
            elif (
                relation is not None
                and relation.samples_values
                and relation.columns.get(fd.column_number, ("", 0))[0] in SAMPLE_COLUMNS
            ):
                strategy, found = REDACT, [f"{UNRESOLVED}:redact"]
            elif relation is not None and not relation.is_view:
                column = relation.columns.get(fd.column_number)
                if column is None:
                    strategy, found = REDACT, [f"{UNRESOLVED}:redact"]
                else:
                    name = relation.qualified(column[0])
                    strategy = self.rule(name)
                    found = [f"{name}:{strategy.label}"] if strategy else []
            elif relation is not None:
                view = self.view_outputs(relation)
                if view is None or not 0 < fd.column_number <= len(view):
                    strategy, found = REDACT, [f"{UNRESOLVED}:redact"]
                else:
                    strategy, found = self.decide(view[fd.column_number - 1])
            elif outputs is not None:
                strategy, found = self.decide(outputs[i])
            else:
                if tainted is None:
                    tainted = self.tainted(lineage)
                if tainted:
                    masked, _ = self.masked_sources(lineage.reads if lineage else frozenset())
                    strategy = REDACT
                    found = [f"{m}:redact" for m in masked] or [f"{UNRESOLVED}:redact"]
            if strategy is None and relation is not None and outputs is not None:
                # The server names the table it read when the statement was
                # described; planned again (search_path changed, a table
                # dropped), the same text may read another with the same
                # types. What the text may read is masked too.
                strategy, found = self.decide(outputs[i])
            binary = _binary(formats, i)
            if strategy is not None:
                labels.update(found)
                maskers.append(self.strategies.masker(strategy, fd.type_oid, binary, text_like))
                columns.append(
                    (
                        strategy.name,
                        strategy.keep_last,
                        fd.type_oid,
                        binary,
                        fd.type_oid in text_like,
                    )
                )
            elif config.detect:
                detector, screen = self._detector(fd.type_oid, binary, labels)
                maskers.append(detector)
                if screen is not None:
                    screens[i] = screen
            else:
                maskers.append(None)
                columns.append(None)
        if not any(m is not None for m in maskers):
            return None
        recipe = None if config.detect else (self.strategies.key, tuple(columns))
        return Plan(maskers, labels, screens=screens, recipe=recipe)

    def plan_copy(
        self, lineage: StatementLineage | None, columns: int, *, labels: set[str] | None = None
    ) -> Plan | None:
        """How to mask each field of a text or CSV COPY out of ``columns`` columns."""
        if not self.config.active:
            return None
        if labels is None:
            labels = set()
        outputs = None
        if lineage is not None and lineage.outputs is not None:
            outputs = self.expand(lineage.outputs)
            if outputs is not None and len(outputs) != columns:
                outputs = None
        if outputs is None:
            if self.tainted(lineage):
                labels.add(f"{UNRESOLVED}:null")
                return Plan([], labels, every=_null_all)
            outputs = [Output(frozenset())] * columns
        maskers: list[ValueMasker | None] = []
        for output in outputs:
            strategy, found = self.decide(output)
            type_oid = self._type_of(output)
            if strategy is not None:
                labels.update(found)
                maskers.append(
                    self.strategies.masker(strategy, type_oid, False, self._catalog.text_like)
                )
            elif self.config.detect:
                maskers.append(self._detector(type_oid, False, labels)[0])
            else:
                maskers.append(None)
        if not any(m is not None for m in maskers):
            return None
        return Plan(maskers, labels)

    def _type_of(self, output: Output) -> int:
        """The type of a bare output's column (0, unknown, for anything else)."""
        if output.bare is None:
            return 0
        relations = self._catalog.lookup(output.bare[1], output.bare[2])
        types = {
            r.columns[r.attnums[output.bare[3]]][1]
            for r in relations
            if not r.is_view and output.bare[3] in r.attnums
        }
        return types.pop() if len(types) == 1 else 0

    def _plan_blind(
        self, lineage: StatementLineage | None, labels: set[str], *, binary: bool
    ) -> Plan | None:
        """Rows whose columns were never described: NULL if masked, else detection.

        Detection reads a value as it comes, which holds for text only: a
        binary value of a type not known (an int8 card number is eight bytes)
        is NULL.
        """
        if self.tainted(lineage):
            masked, _ = self.masked_sources(lineage.reads if lineage else frozenset())
            labels.update(f"{m}:null" for m in masked or [UNRESOLVED])
            return Plan([], labels, every=_null_all)
        if self.config.detect and binary:
            labels.add(f"{UNRESOLVED}:null")
            return Plan([], labels, every=_null_all)
        if self.config.detect:
            return Plan([], labels, every=self.detector(labels, spans=False))
        return None

    def _detector(
        self, type_oid: int, binary: bool, labels: set[str]
    ) -> tuple[ValueMasker | None, bytes | None]:
        """Detection's masker for a column, and the screen the row filter may test first.

        The screen (:data:`NEEDED`) holds for a value read as it comes; a binary
        value of a type that is not text is read in its printed form, which
        only the masker makes, so it gets no screen.
        """
        if type_oid in _TOO_SHORT:
            return None, None
        text_like = type_oid in TEXT_LIKE_OIDS or type_oid in self._catalog.text_like
        spans = text_like or (type_oid in (_SPAN_SAFE_BINARY if binary else _SPAN_SAFE_TEXT))
        if binary and not spans:
            # Its bytes, and the text of the numbers and addresses in it.
            detect = self.detector(labels, spans=False)

            def detect_binary(value: bytes) -> bytes | None:
                return value if detect(text_form(value, type_oid)) is not None else None

            return detect_binary, None
        return self.detector(labels, spans=spans), NEEDED

    def detector(self, labels: set[str], *, spans: bool = True) -> ValueMasker:
        """A value masker that masks each detected datum (or the whole value if not ``spans``)."""
        text = self.strategies.text
        needed = NEEDED
        strategies = {c: self.config.class_strategy(c) for c in DATA_CLASSES}
        found = {c: f"{c}:{strategy.label}" for c, strategy in strategies.items()}

        def detect(value: bytes) -> bytes | None:
            if 0 not in value.translate(needed):
                return value
            matches = find(value, DATA_CLASSES)
            if not matches:
                return value
            pieces = []
            cut = 0
            for start, end, data_class in matches:
                strategy = strategies[data_class]
                labels.add(found[data_class])
                replacement = text(strategy, value[start:end])
                if replacement is None or not spans:
                    return None
                pieces += (value[cut:start], replacement)
                cut = end
            pieces.append(value[cut:])
            return b"".join(pieces)

        return detect


def _binary(formats: Sequence[int], i: int) -> bool:
    """Whether column ``i`` comes in binary, by the Bind's result format codes."""
    if not formats:
        return False
    if len(formats) == 1:
        return formats[0] == 1
    return i < len(formats) and formats[i] == 1


def _null_all(value: bytes) -> None:
    return None


def _name(masked: list[str]) -> str:
    if not masked:
        return "(a column Steward cannot trace)"
    if len(masked) == 1:
        return masked[0]
    return f"{masked[0]} (and {len(masked) - 1} more)"


_rebuilt: dict[bytes, Strategies] = {}
_MAX_KEYS = 8  # each remembers up to 65,536 pseudonyms


def plan_from_recipe(recipe: Recipe) -> Plan:
    """The plan whose :attr:`Plan.recipe` is ``recipe``: the same maskers, no labels."""
    key, columns = recipe
    strategies = _rebuilt.get(key)
    if strategies is None:
        if len(_rebuilt) >= _MAX_KEYS:
            _rebuilt.clear()
        strategies = _rebuilt[key] = Strategies(key)  # one pseudonym memory per key
    maskers: list[ValueMasker | None] = []
    for column in columns:
        if column is None:
            maskers.append(None)
            continue
        name, keep_last, type_oid, binary, text_like = column
        strategy = Strategy(name, keep_last)  # type: ignore[arg-type]
        like = frozenset({type_oid}) if text_like else frozenset()
        maskers.append(strategies.masker(strategy, type_oid, binary, like))
    return Plan(maskers, recipe=recipe)
