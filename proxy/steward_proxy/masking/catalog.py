"""The catalog masking resolves columns with: relations and their columns, by OID and name.

Built from query results (:meth:`Catalog.from_rows`); the shell fetches them
(see :mod:`steward_proxy.catalog_fetch` and :data:`QUERIES`). A RowDescription
names a column by table OID and attribute number; a statement names it by
``schema.table.column`` or by a bare table name the search path resolves;
the catalog answers both. A view's columns are traced to what feeds them
through its definition (``pg_get_viewdef``), which :mod:`.plan` analyses on
first use.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["QUERIES", "Catalog", "Relation"]

QUERIES: Final = {
    "relations": (
        "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname !~ '^pg_toast'"
    ),
    "attributes": (
        "SELECT a.attrelid::int8, a.attnum::int4, a.attname::text, a.atttypid::int8 "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.attnum > 0 AND NOT a.attisdropped "
        "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname !~ '^pg_toast' "
        "ORDER BY 1, 2"
    ),
    "views": (
        "SELECT c.oid::int8, pg_catalog.pg_get_viewdef(c.oid) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('v', 'm') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    ),
    "text_types": (
        "SELECT t.oid::int8 FROM pg_catalog.pg_type t "
        "WHERE (t.typname = 'citext' AND t.typtype = 'b') "
        "OR (t.typtype = 'd' AND t.typbasetype IN (25, 1043, 1042, 19))"
    ),
}
"""What the shell runs (each returns the rows :meth:`Catalog.from_rows` takes)."""

# Catalog views whose columns hold samples of any column's values.
SAMPLING_VIEWS: Final = frozenset(
    {
        ("pg_catalog", "pg_stats"),
        ("pg_catalog", "pg_stats_ext"),
        ("pg_catalog", "pg_stats_ext_exprs"),
    }
)

SAMPLE_COLUMNS: Final = frozenset(
    {"most_common_vals", "histogram_bounds", "most_common_elems", "most_common_base_freqs"}
)


@dataclass(frozen=True, slots=True)
class Relation:
    """A table, view, materialized view or foreign table."""

    oid: int
    schema: str
    name: str
    kind: str  # relkind: r, p, v, m, f
    columns: dict[int, tuple[str, int]] = field(default_factory=dict)  # attnum -> name, type
    attnums: dict[str, int] = field(default_factory=dict)  # name -> attnum
    definition: str | None = None  # a view's SELECT

    @property
    def is_view(self) -> bool:
        return self.definition is not None

    @property
    def samples_values(self) -> bool:
        return (self.schema, self.name) in SAMPLING_VIEWS

    def qualified(self, column: str) -> str:
        return f"{self.schema}.{self.name}.{column}"


class Catalog:
    """Relations by OID and by name; ``generation`` grows with each load."""

    def __init__(
        self,
        relations: Iterable[Relation] = (),
        *,
        text_like: frozenset[int] = frozenset(),
        generation: int = 0,
    ) -> None:
        self.relations: dict[int, Relation] = {r.oid: r for r in relations}
        self.by_name: dict[str, list[Relation]] = {}
        for relation in self.relations.values():
            self.by_name.setdefault(relation.name, []).append(relation)
        self.text_like = text_like
        self.generation = generation

    @property
    def loaded(self) -> bool:
        return self.generation > 0

    def lookup(self, schema: str, name: str) -> list[Relation]:
        """Relations named ``name`` (in ``schema``, or in any schema when it is ``""``)."""
        found = self.by_name.get(name, [])
        if schema:
            return [r for r in found if r.schema == schema]
        return found

    @classmethod
    def from_rows(
        cls,
        relations: Iterable[tuple[int, str, str, str]],
        attributes: Iterable[tuple[int, int, str, int]],
        views: Iterable[tuple[int, str | None]] = (),
        text_types: Iterable[tuple[int]] = (),
        *,
        generation: int = 1,
    ) -> Catalog:
        """A catalog from the rows of :data:`QUERIES`."""
        columns: dict[int, dict[int, tuple[str, int]]] = {}
        for relid, attnum, attname, typid in attributes:
            columns.setdefault(int(relid), {})[int(attnum)] = (attname, int(typid))
        definitions = {int(oid): d for oid, d in views if d}
        built = []
        for oid, schema, name, kind in relations:
            oid = int(oid)
            cols = columns.get(oid, {})
            built.append(
                Relation(
                    oid,
                    schema,
                    name,
                    kind,
                    cols,
                    {n: a for a, (n, _) in cols.items()},
                    definitions.get(oid),
                )
            )
        return cls(built, text_like=frozenset(int(t) for (t,) in text_types), generation=generation)
