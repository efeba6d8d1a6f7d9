"""Which source columns feed each output column of a statement, from its parse tree.

:func:`analyze` parses a statement string with pglast (PostgreSQL's own
grammar) and returns one :class:`StatementLineage` per statement. It needs no
catalog: a source is *symbolic*, named as the statement names it, and
:mod:`.plan` resolves it against the catalog later:

- ``("col", schema, relation, column)``: a column of a table or view
  (``schema`` is ``""`` when the statement leaves it to the search path);
- ``("all", schema, relation)``: every column of it (a whole-row reference
  such as ``row_to_json(u)``, or ``*`` inside an expression);
- ``("opaque", why)``: something the tree does not decide (fail closed), such
  as a function that runs SQL text it is given (``query_to_xml``).

Names are scoped as PostgreSQL scopes them: aliases, subqueries in FROM
(LATERAL too), CTEs (a CTE's name hides a table of the same name), joins, and
the outer query of a correlated subquery. Where a bare column name could come
from several relations, every one of them counts (the catalog narrows it down
to those that have such a column).

What a statement returns (``outputs``) is a list of :class:`Output` (the
sources of one column; ``bare`` when the column is a source column itself)
and :class:`StarOf` (``*`` over a table or view: its columns, in order, each
bare). ``None`` means the columns cannot be told apart here (``*`` over a
function or a join with USING, a UNION of ``*``); :mod:`.plan` then treats
every column as fed by everything the statement reads.

Besides outputs: ``reads`` (every source named anywhere), ``filters`` (sources
in WHERE, JOIN, GROUP BY, HAVING, ORDER BY, DISTINCT ON, window clauses,
LIMIT, aggregate FILTER and ORDER BY, CASE conditions), ``moves`` (sources
whose values a statement writes somewhere: INSERT, UPDATE SET, MERGE, CREATE
TABLE AS, SELECT INTO, COPY to a file or program, arguments of a function that
stores them such as ``set_config``), ``alters`` (relations an
ALTER or RENAME changes: renaming a masked column would unmask it),
``defines_code`` (DO blocks, functions, procedures and rules: code whose reads
the tree does not show), ``targets`` (tables a statement writes, whose errors
may quote whole rows), and what cursors, SQL ``PREPARE``/``EXECUTE`` and COPY
need.

Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as _pg

__all__ = ["CopyOut", "Output", "Source", "StarOf", "StatementLineage", "analyze"]

Source = tuple[str, ...]
DYNAMIC_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "query_to_xmlschema",
        "cursor_to_xml",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "dblink",
        "dblink_exec",
    }
)
"""Functions that run SQL text (or read whole tables) the parse tree does not show."""
STORING_FUNCTIONS = frozenset(
    {
        "set_config",
        "pg_notify",
        "lo_from_bytea",
        "lo_put",
        "lowrite",
        "lo_create",
        "lo_import",
        "pg_logical_emit_message",
        "setval",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_create_restore_point",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_replication_origin_create",
    }
)
"""Functions that keep their arguments somewhere a later statement (or another
session) reads them back: a setting, a notification, a large object (or its
OID), the WAL, a sequence's value, an advisory lock's key (pg_locks), a slot's
or origin's name."""
OPAQUE_SUBQUERY: Source = ("opaque", "subquery")


@dataclass(frozen=True, slots=True)
class Output:
    """One result column: the sources that feed it; ``bare`` if it is one of them as is."""

    sources: frozenset[Source]
    bare: Source | None = None


@dataclass(frozen=True, slots=True)
class StarOf:
    """``*`` over a table or view: its columns in order, each bare."""

    schema: str
    relation: str


OutputItem = Output | StarOf


@dataclass(frozen=True, slots=True)
class CopyOut:
    """``COPY ... TO STDOUT``: how the rows are written."""

    format: str  # "text", "csv" or "binary"
    delimiter: str
    null: str
    quote: str = '"'
    escape: str = '"'
    header: bool = False


@dataclass(frozen=True, slots=True)
class StatementLineage:
    """What one statement reads, returns, filters by and moves; see the module docstring."""

    outputs: tuple[OutputItem, ...] | None = ()
    reads: frozenset[Source] = frozenset()
    filters: frozenset[Source] = frozenset()
    moves: frozenset[Source] = frozenset()
    targets: frozenset[Source] = frozenset()
    copy: CopyOut | None = None
    declares: str | None = None  # DECLARE name: the cursor whose rows ``outputs`` describe
    fetches: str | None = None  # FETCH name: rows from a cursor
    executes: str | None = None  # SQL EXECUTE name
    opaque: bool = False  # runs code the tree does not show (DO, CALL)
    defines_code: bool = False  # DO, CREATE FUNCTION/PROCEDURE, CREATE RULE
    alters: frozenset[Source] = frozenset()  # relations an ALTER or RENAME changes


def analyze(sql: str) -> tuple[StatementLineage, ...]:
    """One lineage per statement of ``sql``.

    Raises pglast's ``ParseError`` when ``sql`` does not parse. A tree too deep
    to walk gives an undecided lineage (``opaque`` sources), never an error.
    """
    tree = json.loads(_pg.parse_sql_json(sql))
    result = []
    for raw in tree.get("stmts", []):
        walker = _Walker()
        try:
            result.append(walker.statement(raw["stmt"]))
        except RecursionError:
            opaque = frozenset({("opaque", "nested too deeply")})
            result.append(
                StatementLineage(outputs=None, reads=opaque, filters=opaque, moves=opaque)
            )
    return tuple(result)


# -- scopes --------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A FROM item: a relation, a subquery or CTE, a function, or a join."""

    alias: str
    kind: str  # "rel", "sub", "func", "join"
    schema: str = ""
    name: str = ""
    outputs: list[OutputItem] | None = None  # sub
    names: list[str | None] = field(default_factory=list)  # sub: column names
    sources: frozenset[Source] = frozenset()  # func: what its arguments read
    children: list[_Entry] = field(default_factory=list)  # join

    def lookup(self, column: str) -> list[tuple[frozenset[Source], Source | None]]:
        """Candidate (sources, bare) for ``column`` of this entry."""
        if self.kind == "rel":
            source = ("col", self.schema, self.name, column)
            return [(frozenset({source}), source)]
        if self.kind == "func":
            return [(self.sources, None)]
        if self.kind == "join":
            return [c for child in self.children for c in child.lookup(column)]
        if self.outputs is None:
            return [(frozenset({OPAQUE_SUBQUERY}), None)]
        found: list[tuple[frozenset[Source], Source | None]] = []
        for item, name in zip(self.outputs, self.names, strict=False):
            if isinstance(item, StarOf):
                source = ("col", item.schema, item.relation, column)
                found.append((frozenset({source}), source))
            elif name == column:
                found.append((item.sources, item.bare))
        return found

    def whole(self) -> frozenset[Source]:
        """Every source behind this entry's columns (a whole-row reference)."""
        if self.kind == "rel":
            return frozenset({("all", self.schema, self.name)})
        if self.kind == "func":
            return self.sources
        if self.kind == "join":
            return frozenset().union(*(c.whole() for c in self.children))
        if self.outputs is None:
            return frozenset({OPAQUE_SUBQUERY})
        return _union(self.outputs)

    def star(self) -> list[tuple[OutputItem, str | None]] | None:
        """This entry's columns for ``*``; None when their number is not known here."""
        if self.kind == "rel":
            return [(StarOf(self.schema, self.name), None)]
        if self.kind == "func":
            return None
        if self.kind == "join":
            items: list[tuple[OutputItem, str | None]] = []
            for child in self.children:
                more = child.star()
                if more is None:
                    return None
                items += more
            return items
        if self.outputs is None:
            return None
        return list(zip(self.outputs, self.names, strict=False))


@dataclass(slots=True)
class _Scope:
    entries: list[_Entry]
    parent: _Scope | None
    ctes: dict[str, tuple[list[OutputItem] | None, list[str | None]]]
    merged: bool = False  # a JOIN ... USING or NATURAL: ``*`` merges columns

    def cte(self, name: str) -> tuple[list[OutputItem] | None, list[str | None]] | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None


def _union(items: list[OutputItem] | tuple[OutputItem, ...]) -> frozenset[Source]:
    sources: set[Source] = set()
    for item in items:
        if isinstance(item, StarOf):
            sources.add(("all", item.schema, item.relation))
        else:
            sources |= item.sources
    return frozenset(sources)


def _names(fields: list[dict[str, Any]]) -> list[str]:
    return ["*" if "A_Star" in f else f.get("String", {}).get("sval", "") for f in fields]


def _colname(node: dict[str, Any]) -> str | None:
    """The name PostgreSQL gives an unnamed result column (FigureColname, roughly)."""
    if "ColumnRef" in node:
        last = _names(node["ColumnRef"]["fields"])[-1]
        return None if last == "*" else last
    if "FuncCall" in node:
        return _names(node["FuncCall"]["funcname"])[-1]
    if "TypeCast" in node:
        inner = _colname(node["TypeCast"].get("arg", {}))
        if inner is not None:
            return inner
        names = _names(node["TypeCast"]["typeName"].get("names", []))
        return names[-1] if names else None
    if "A_Indirection" in node:
        for item in reversed(node["A_Indirection"].get("indirection", [])):
            if "String" in item:
                return item["String"]["sval"]
        return _colname(node["A_Indirection"].get("arg", {}))
    if "CaseExpr" in node:
        return "case"
    return "?column?"


# -- the walker ----------------------------------------------------------------------


class _Walker:
    def __init__(self) -> None:
        self.reads: set[Source] = set()
        self.filters: set[Source] = set()
        self.moves: set[Source] = set()
        self.targets: set[Source] = set()

    def _done(
        self, outputs: list[OutputItem] | tuple[()] | None = (), **extra: Any
    ) -> StatementLineage:
        return StatementLineage(
            outputs=None if outputs is None else tuple(outputs),
            reads=frozenset(self.reads),
            filters=frozenset(self.filters),
            moves=frozenset(self.moves),
            targets=frozenset(self.targets),
            **extra,
        )

    # -- statements ----------------------------------------------------------------

    def statement(self, stmt: dict[str, Any]) -> StatementLineage:
        ((kind, node),) = stmt.items()
        root = _Scope([], None, {})
        if kind == "SelectStmt":
            outputs, _ = self.select(node, root)
            if node.get("intoClause") is not None:
                self.moves |= self.reads
                return self._done()
            return self._done(outputs)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self._done(self.modify(kind, node, root))
        if kind == "CreateTableAsStmt":
            into = node.get("into", {})
            self._query(node["query"], root)
            if not into.get("skipData"):
                self.moves |= self.reads
            return self._done()
        if kind == "CopyStmt":
            return self.copy(node, root)
        if kind == "DeclareCursorStmt":
            outputs, _ = self._query(node["query"], root)
            # DECLARE returns no rows; FETCH returns these.
            return self._done(outputs, declares=node.get("portalname", ""))
        if kind == "FetchStmt":
            if node.get("ismove"):
                return self._done()
            return self._done(None, fetches=node.get("portalname", ""))
        if kind == "PrepareStmt":
            inner = _Walker().statement(node["query"])
            return inner
        if kind == "ExecuteStmt":
            self.expr(node.get("params", []), root)
            return self._done(None, executes=node.get("name", ""))
        if kind == "ExplainStmt":
            inner = _Walker().statement(node["query"])
            self.reads |= inner.reads
            self.filters |= inner.filters
            self.moves |= inner.moves
            self.targets |= inner.targets
            return self._done([Output(frozenset())])
        if kind == "ViewStmt":
            self._query(node["query"], root)
            return self._done()
        if kind in ("DoStmt", "CallStmt"):
            if kind == "CallStmt":
                self.expr(node.get("funccall", {}), root)
            return self._done(None, opaque=True, defines_code=kind == "DoStmt")
        if kind in ("CreateFunctionStmt", "RuleStmt"):
            return self._done(defines_code=True)
        if kind in ("AlterTableStmt", "RenameStmt") and node.get("relation"):
            relation = node["relation"]
            changed = ("all", relation.get("schemaname", ""), relation.get("relname", ""))
            return self._done(alters=frozenset({changed}))
        return self._done()

    def _query(
        self, query: dict[str, Any], scope: _Scope
    ) -> tuple[list[OutputItem] | None, list[str | None]]:
        """Outputs of a query node (a SELECT, or a DML statement with RETURNING)."""
        ((kind, node),) = query.items()
        if kind == "SelectStmt":
            return self.select(node, scope)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            outputs = self.modify(kind, node, scope)
            returning = _returning(node)
            return outputs, [
                t["ResTarget"].get("name") or _colname(t["ResTarget"].get("val", {}))
                for t in returning
            ]
        return None, []

    def modify(self, kind: str, node: dict[str, Any], parent: _Scope) -> list[OutputItem]:
        """INSERT, UPDATE, DELETE, MERGE: moves, filters, and what RETURNING returns."""
        scope = self._with(node.get("withClause"), parent)
        relation = node.get("relation", {})
        target = self._relation_entry(relation, scope, as_target=True)
        self.targets.add(("all", target.schema, target.name))
        if kind == "InsertStmt":
            scope.entries.append(target)
            select = node.get("selectStmt")
            if select is not None:
                before = set(self.reads)
                inner = _Scope([], scope, {})
                self.select(select["SelectStmt"], inner)
                self.moves |= self.reads - before
            conflict = node.get("onConflictClause")
            if conflict:
                excluded = _Entry("excluded", "rel", target.schema, target.name)
                scope.entries.append(excluded)
                self.moves |= self.expr(conflict.get("targetList", []), scope)
                self.filters |= self.expr(conflict.get("whereClause"), scope)
        elif kind == "UpdateStmt":
            scope.entries.append(target)
            for item in node.get("fromClause", []):
                self.from_item(item, scope)
            self.moves |= self.expr(node.get("targetList", []), scope)
            self.filters |= self.expr(node.get("whereClause"), scope)
        elif kind == "DeleteStmt":
            scope.entries.append(target)
            for item in node.get("usingClause", []):
                self.from_item(item, scope)
            self.filters |= self.expr(node.get("whereClause"), scope)
        else:  # MergeStmt
            scope.entries.append(target)
            self.from_item(node["sourceRelation"], scope)
            self.filters |= self.expr(node.get("joinCondition"), scope)
            for clause in node.get("mergeWhenClauses", []):
                when = clause["MergeWhenClause"]
                self.filters |= self.expr(when.get("condition"), scope)
                self.moves |= self.expr(when.get("targetList", []), scope)
                self.moves |= self.expr(when.get("values", []), scope)
        returning = _returning(node)
        if returning:
            # RETURNING old.x / new.x (PostgreSQL 18) name the target too.
            for alias in ("old", "new"):
                scope.entries.append(_Entry(alias, "rel", target.schema, target.name))
        return self.targets_list(returning, scope) or []

    def copy(self, node: dict[str, Any], root: _Scope) -> StatementLineage:
        if node.get("is_from"):
            relation = node.get("relation")
            if relation:
                self.targets.add(("all", relation.get("schemaname", ""), relation["relname"]))
            return self._done()
        outputs: list[OutputItem] | None
        if node.get("query") is not None:
            outputs, _ = self._query(node["query"], root)
        else:
            relation = node["relation"]
            schema, name = relation.get("schemaname", ""), relation["relname"]
            columns = _names(node.get("attlist", []))
            if columns:
                outputs = []
                for column in columns:
                    source = ("col", schema, name, column)
                    outputs.append(Output(frozenset({source}), source))
                    self.reads.add(source)
            else:
                outputs = [StarOf(schema, name)]
                self.reads.add(("all", schema, name))
        if node.get("filename") is not None or node.get("is_program"):
            self.moves |= self.reads
            return self._done()
        options = {}
        for option in node.get("options", []):
            element = option["DefElem"]
            arg = element.get("arg", {})
            value = arg.get("String", {}).get("sval") if isinstance(arg, dict) else None
            if value is None and isinstance(arg, dict) and "Boolean" in arg:
                value = "true" if arg["Boolean"].get("boolval") else "false"
            options[element["defname"]] = value if value is not None else "true"
        fmt = (options.get("format") or "text").lower()
        csv = fmt == "csv"
        copy = CopyOut(
            format=fmt,
            delimiter=options.get("delimiter") or ("," if csv else "\t"),
            null=options.get("null") if options.get("null") is not None else ("" if csv else "\\N"),
            quote=options.get("quote") or '"',
            escape=options.get("escape") or options.get("quote") or '"',
            header=(options.get("header") or "false").lower() in ("true", "on", "1", "match"),
        )
        return self._done(outputs, copy=copy)

    # -- SELECT --------------------------------------------------------------------------

    def _with(self, clause: dict[str, Any] | None, parent: _Scope) -> _Scope:
        scope = _Scope([], parent, {})
        if not clause:
            return scope
        recursive = clause.get("recursive", False)
        for cte in clause.get("ctes", []):
            node = cte["CommonTableExpr"]
            name = node["ctename"]
            query = node["ctequery"]
            if (
                recursive
                and "SelectStmt" in query
                and query["SelectStmt"].get("op", "SETOP_NONE") != "SETOP_NONE"
            ):
                # The recursive term refers to the CTE itself: first the seed alone.
                seed = self.select(_unwrap(query["SelectStmt"]["larg"]), scope)
                scope.ctes[name] = seed
            outputs, names = self._query(query, scope)
            colnames = _names(node.get("aliascolnames", []))
            if colnames:
                names = colnames + names[len(colnames) :]
            scope.ctes[name] = (outputs, names)
        return scope

    def select(
        self, node: dict[str, Any], parent: _Scope
    ) -> tuple[list[OutputItem] | None, list[str | None]]:
        """Outputs and column names of a SELECT (also VALUES and set operations)."""
        scope = self._with(node.get("withClause"), parent)
        if node.get("op", "SETOP_NONE") != "SETOP_NONE":
            left, names = self.select(_unwrap(node["larg"]), scope)
            right, _ = self.select(_unwrap(node["rarg"]), scope)
            outputs: list[OutputItem] | None = None
            if (
                left is not None
                and right is not None
                and len(left) == len(right)
                and not any(isinstance(i, StarOf) for i in left + right)
            ):
                outputs = [
                    Output(a.sources | b.sources)  # type: ignore[union-attr]
                    for a, b in zip(left, right, strict=True)
                ]
            self._order(node, scope, outputs, names)
            return outputs, names
        if node.get("valuesLists"):
            columns: list[set[Source]] = []
            for row in node["valuesLists"]:
                for i, value in enumerate(row["List"]["items"]):
                    if i == len(columns):
                        columns.append(set())
                    columns[i] |= self.expr(value, scope)
            names = [f"column{i + 1}" for i in range(len(columns))]
            outputs = [Output(frozenset(c)) for c in columns]
            self._order(node, scope, outputs, names)
            return outputs, names
        for item in node.get("fromClause", []):
            self.from_item(item, scope)
        outputs_list = self.targets_list(node.get("targetList", []), scope)
        names = self._target_names(node.get("targetList", []), scope)
        self.filters |= self.expr(node.get("whereClause"), scope)
        self.filters |= self.expr(node.get("havingClause"), scope)
        for clause in ("groupClause", "distinctClause"):
            for item in node.get(clause) or []:
                self.filters |= self._sort_key(item, scope, outputs_list, names)
        for window in node.get("windowClause", []):
            self.filters |= self.expr(window, scope)
        self._order(node, scope, outputs_list, names)
        return outputs_list, names

    def _order(
        self,
        node: dict[str, Any],
        scope: _Scope,
        outputs: list[OutputItem] | None,
        names: list[str | None],
    ) -> None:
        for item in node.get("sortClause", []):
            self.filters |= self._sort_key(item["SortBy"]["node"], scope, outputs, names)
        self.filters |= self.expr(node.get("limitCount"), scope)
        self.filters |= self.expr(node.get("limitOffset"), scope)

    def _sort_key(
        self,
        key: dict[str, Any],
        scope: _Scope,
        outputs: list[OutputItem] | None,
        names: list[str | None],
    ) -> set[Source]:
        """Sources of an ORDER BY / GROUP BY key: a position, an output name or an expression."""
        if not key:
            return set()
        if "A_Const" in key and "ival" in key["A_Const"]:
            position = key["A_Const"]["ival"].get("ival", 0)
            if outputs is None:
                return {OPAQUE_SUBQUERY}
            stars = [i for i, o in enumerate(outputs) if isinstance(o, StarOf)]
            if stars and position - 1 >= stars[0]:
                return set(_union(outputs[stars[0] :]))  # which column a star gives is unknown
            if 1 <= position <= len(outputs):
                return set(_union([outputs[position - 1]]))
            return set()
        found: set[Source] = set()
        if "ColumnRef" in key and outputs is not None:
            fields = _names(key["ColumnRef"]["fields"])
            if len(fields) == 1:
                for item, name in zip(outputs, names, strict=False):
                    if name == fields[0]:
                        found |= _union([item])
        return found | self.expr(key, scope)

    def targets_list(self, targets: list[dict[str, Any]], scope: _Scope) -> list[OutputItem] | None:
        outputs: list[OutputItem] = []
        for target in targets:
            value = target["ResTarget"].get("val", {})
            if "ColumnRef" in value and _names(value["ColumnRef"]["fields"])[-1] == "*":
                fields = _names(value["ColumnRef"]["fields"])
                items = self._star(fields, scope)
                if items is None:
                    # Which columns ``*`` gives is unknown here: everything it covers is read.
                    self.reads |= self.column(fields, scope)[0]
                    return None
                outputs += [item for item, _ in items]
                self.reads |= _union([item for item, _ in items])
                continue
            sources, bare = self.column_or_expr(value, scope)
            outputs.append(Output(frozenset(sources), bare))
        return outputs

    def _target_names(self, targets: list[dict[str, Any]], scope: _Scope) -> list[str | None]:
        names: list[str | None] = []
        for target in targets:
            res = target["ResTarget"]
            value = res.get("val", {})
            if "ColumnRef" in value and _names(value["ColumnRef"]["fields"])[-1] == "*":
                items = self._star(_names(value["ColumnRef"]["fields"]), scope, read=False)
                names += [name for _, name in items or []]
                continue
            names.append(res.get("name") or _colname(value))
        return names

    def _star(
        self, fields: list[str], scope: _Scope, *, read: bool = True
    ) -> list[tuple[OutputItem, str | None]] | None:
        if len(fields) == 1:
            if scope.merged:
                return None
            items: list[tuple[OutputItem, str | None]] = []
            for entry in scope.entries:
                more = entry.star()
                if more is None:
                    return None
                items += more
            return items
        entry = self._entry(fields[-2], scope)
        if entry is None:
            if len(fields) >= 3:
                return [(StarOf(fields[-3], fields[-2]), None)]
            return None
        return entry.star()

    # -- FROM ------------------------------------------------------------------------------

    def _relation_entry(
        self, rv: dict[str, Any], scope: _Scope, *, as_target: bool = False
    ) -> _Entry:
        schema = rv.get("schemaname", "")
        name = rv.get("relname", "")
        alias = rv.get("alias", {}).get("aliasname") or name
        if not schema and not as_target:
            cte = scope.cte(name)
            if cte is not None:
                outputs, names = cte
                return _Entry(alias, "sub", outputs=outputs, names=list(names))
        return _Entry(alias, "rel", schema, name)

    def from_item(self, item: dict[str, Any], scope: _Scope) -> _Entry:
        ((kind, node),) = item.items()
        if kind == "RangeVar":
            entry = self._relation_entry(node, scope)
            colnames = _names(node.get("alias", {}).get("colnames", []))
            if colnames and entry.kind == "rel":
                # Renamed columns map by position, which only the catalog knows:
                # any of them may be any column.
                whole = entry.whole()
                self.reads |= whole
                entry = _Entry(entry.alias, "func", sources=whole)
            scope.entries.append(entry)
            return entry
        if kind == "RangeSubselect":
            inner = _Scope([], scope, {})  # LATERAL or not: earlier items may be visible
            outputs, names = self._query(node["subquery"], inner)
            alias = node.get("alias", {})
            colnames = _names(alias.get("colnames", []))
            if colnames:
                names = colnames + names[len(colnames) :]
            entry = _Entry(alias.get("aliasname", ""), "sub", outputs=outputs, names=list(names))
            scope.entries.append(entry)
            return entry
        if kind == "JoinExpr":
            before = len(scope.entries)
            self.from_item(node["larg"], scope)
            self.from_item(node["rarg"], scope)
            children = scope.entries[before:]
            if node.get("usingClause") or node.get("isNatural"):
                scope.merged = True
                for name in _names(node.get("usingClause", [])):
                    for child in children:
                        for sources, _ in child.lookup(name):
                            self.filters |= sources
                            self.reads |= sources
                if node.get("isNatural"):
                    for child in children:
                        self.filters |= child.whole()
            self.filters |= self.expr(node.get("quals"), scope)
            alias = node.get("alias", {}).get("aliasname")
            entry = _Entry(alias or "", "join", children=list(children))
            if alias:
                scope.entries.append(entry)
            return entry
        if kind == "RangeTableSample":
            entry = self.from_item(node["relation"], scope)
            self.filters |= self.expr(node.get("args", []), scope)
            return entry
        # RangeFunction, RangeTableFunc, JsonTable, ...: what the arguments read.
        inner = _Scope([], scope, {})
        sources = self.expr(node, inner)
        alias = node.get("alias", {}).get("aliasname", "") if isinstance(node, dict) else ""
        entry = _Entry(alias, "func", sources=frozenset(sources))
        scope.entries.append(entry)
        return entry

    def _entry(self, alias: str, scope: _Scope) -> _Entry | None:
        level: _Scope | None = scope
        while level is not None:
            for entry in reversed(level.entries):
                if entry.alias == alias:
                    return entry
                if entry.kind == "join":
                    for child in entry.children:
                        if child.alias == alias:
                            return child
            level = level.parent
        return None

    # -- expressions --------------------------------------------------------------------------

    def column_or_expr(
        self, value: dict[str, Any], scope: _Scope
    ) -> tuple[set[Source], Source | None]:
        if "ColumnRef" in value:
            sources, bare = self.column(_names(value["ColumnRef"]["fields"]), scope)
            self.reads |= sources
            return sources, bare
        return self.expr(value, scope), None

    def column(self, fields: list[str], scope: _Scope) -> tuple[set[Source], Source | None]:
        """Sources of a column reference, and the source it is as is (if one)."""
        if fields[-1] == "*":
            items = self._star(fields, scope)
            if items is None:
                if len(fields) >= 2:
                    entry = self._entry(fields[-2], scope)
                    if entry is not None:
                        return set(entry.whole()), None
                return {s for e in scope.entries for s in e.whole()}, None
            return set(_union([item for item, _ in items])), None
        if len(fields) >= 3:
            source = ("col", fields[-3], fields[-2], fields[-1])
            return {source}, source
        if len(fields) == 2:
            entry = self._entry(fields[0], scope)
            if entry is not None:
                found = entry.lookup(fields[1])
                return _candidates(found)
            # A composite column's field: (col).field
            sources, _ = self.column(fields[:1], scope)
            return sources, None
        name = fields[0]
        level: _Scope | None = scope
        while level is not None:
            found = [c for entry in level.entries for c in entry.lookup(name)]
            for entry in level.entries:
                if entry.alias == name:
                    found.append((entry.whole(), None))  # a whole-row reference
            if found:
                return _candidates(found)
            level = level.parent
        return {("opaque", "unresolved column")}, None

    def expr(self, node: Any, scope: _Scope) -> set[Source]:
        """Every source an expression (or a list of them) reads, subqueries included."""
        found: set[Source] = set()
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key == "ColumnRef":
                    sources, _ = self.column(_names(value["fields"]), scope)
                    found |= sources
                elif key == "SubLink":
                    outputs, _ = self._query(value["subselect"], _Scope([], scope, {}))
                    found |= _union(outputs) if outputs is not None else {OPAQUE_SUBQUERY}
                    stack.append(value.get("testexpr"))
                elif key == "CaseWhen" or (key == "CaseExpr" and value.get("arg")):
                    # A condition on a value is a predicate on it, wherever it is.
                    condition = value.get("expr") if key == "CaseWhen" else value.get("arg")
                    self.filters |= self.expr(condition, scope)
                    stack.append(value)
                elif key == "FuncCall":
                    function = _names(value["funcname"])[-1].lower()
                    if function in DYNAMIC_FUNCTIONS:
                        found.add(("opaque", "dynamic sql"))
                    elif function in STORING_FUNCTIONS:
                        self.moves |= self.expr(value.get("args", []), scope)
                    for part in ("agg_filter", "agg_order", "over"):
                        if value.get(part):
                            self.filters |= self.expr(value[part], scope)
                    stack.append(value)
                elif key in ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"):
                    outputs, _ = self._query({key: value}, _Scope([], scope, {}))
                    found |= _union(outputs) if outputs is not None else {OPAQUE_SUBQUERY}
                elif isinstance(value, dict | list):
                    stack.append(value)
        self.reads |= found
        return found


def _returning(node: dict[str, Any]) -> list[dict[str, Any]]:
    clause = node.get("returningClause")
    if clause is not None:
        return list(clause.get("exprs", []))
    return list(node.get("returningList", []))


def _unwrap(node: dict[str, Any]) -> dict[str, Any]:
    """A set operation's branch: a SelectStmt node, wrapped or not."""
    return node.get("SelectStmt", node)


def _candidates(
    found: list[tuple[frozenset[Source], Source | None]],
) -> tuple[set[Source], Source | None]:
    sources: set[Source] = set()
    for candidate, _ in found:
        sources |= candidate
    if not found:
        return {OPAQUE_SUBQUERY}, None
    bare = found[0][1] if len(found) == 1 else None
    return sources, bare
