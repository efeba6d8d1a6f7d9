"""Statement analysis: command tag, tables, functions and writes of each statement.

``analyze(sql)`` parses a statement string with PostgreSQL's grammar (libpg_query
through pglast) and describes every statement in it as a :class:`StatementInfo`,
the input of the guardrail engine. The parse tree is read as libpg_query's JSON
and walked iteratively (no recursion limit for deeply nested expressions), with
the CTE names in scope at each point, so a reference to a ``WITH`` query is not
taken for a table while a real table of the same name elsewhere still is.

Results are cached in a :class:`ShapeCache` keyed by the normalized text of the
whole string, so a repeated statement shape with new literals costs one
``normalize`` call and a dict lookup. The text and fingerprint each
:class:`StatementInfo` carries for the audit trail are made from that key
(``scrub`` replaces the constants ``normalize`` keeps), so every string that
shares a cache entry is recorded alike and no literal of any of them survives.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pglast import ast as _ast
from pglast import parser as _pg

from steward_proxy.sql.cache import ShapeCache
from steward_proxy.sql.commands import command_tag
from steward_proxy.sql.errors import AnalysisLimitError, SQLSyntaxError
from steward_proxy.sql.shape import normalize, scrub_parts, shape_fingerprint, syntax_error

__all__ = ["DEFAULT_CACHE", "StatementInfo", "analyze"]

# Names looked up at call time so tests can count parses by monkeypatching them.
parse_sql_json = _pg.parse_sql_json
split = _pg.split

DEFAULT_CACHE: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache()


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What one statement does, as far as the parse tree tells.

    - ``command``: command tag, see :mod:`steward_proxy.sql.commands`.
    - ``normalized``: this statement's text with every constant, in every
      statement type, replaced by ``$n`` (numbered across the whole string it
      came from) and comments removed: what the audit trail records.
    - ``fingerprint``: 16 hex digits, computed from ``normalized`` alone (see
      :func:`~steward_proxy.sql.shape.shape_fingerprint`), so statements that
      differ only in literals share it.
    - ``tables``: every relation named anywhere in the statement (subqueries,
      CTE bodies, joins, DML targets, ``DROP``/``COMMENT`` objects), as
      ``schema.table`` (unqualified means ``public``), first appearance first.
      Names of ``WITH`` queries are not tables where they are in scope.
    - ``functions``: every function called, lower-cased: the bare name, and
      also ``schema.name`` when the call is schema-qualified.
    - ``has_where``: ``False`` when an ``UPDATE`` or ``DELETE`` that this
      statement executes has no ``WHERE`` (also one inside ``WITH``, under
      ``EXPLAIN ANALYZE`` or being prepared); ``True`` otherwise.
    - ``writes``: tables written by ``INSERT``, ``UPDATE``, ``DELETE``, ``MERGE``,
      ``TRUNCATE``, ``COPY ... FROM`` and ``SELECT INTO``/``CREATE TABLE AS``,
      wherever they occur in the statement. Statements that are only defined,
      not run (``CREATE RULE``, ``CREATE FUNCTION`` bodies, ``EXPLAIN`` without
      ``ANALYZE``) add nothing; ``PREPARE`` reports what ``EXECUTE`` will write.
    - ``settings``: each run-time parameter the statement sets, resets or
      attaches anywhere (``SET``, ``SET NAMES``, ``SET ROLE``, ``RESET``,
      ``ALTER ROLE|DATABASE|SYSTEM ... SET``, a function's ``SET`` clause,
      ``set_config()``), as ``(name, value)``: the name lower-cased, ``""``
      when it is not a constant; the value as text, ``None`` when it is not a
      constant or the parameter goes back to its default. ``RESET ALL`` is not
      listed (it restores the values the session started with).
    - ``prepared_name``: the name an SQL ``PREPARE`` gives its statement, or
      the one ``DEALLOCATE`` drops (``""`` for ``DEALLOCATE ALL``).
    - ``literal_dependent``: the analysis depends on constant values that
      :func:`normalize` replaces (a ``SET`` value, ``set_config`` arguments,
      ``EXPLAIN`` options), so it must not be reused for another statement of
      the same shape.
    """

    command: str
    normalized: str
    fingerprint: str
    tables: tuple[str, ...]
    functions: tuple[str, ...]
    has_where: bool
    writes: tuple[str, ...]
    settings: tuple[tuple[str, str | None], ...] = ()
    prepared_name: str | None = None
    literal_dependent: bool = False


def analyze(
    sql: str,
    *,
    cache: ShapeCache[tuple[StatementInfo, ...]] | None = None,
    shape: str | None = None,
    max_statements: int = 0,
) -> tuple[StatementInfo, ...]:
    """Describe each statement of ``sql``; an empty or comment-only string gives ``()``.

    ``shape`` is ``normalize(sql)`` when the caller has it already. Raises
    :class:`SQLSyntaxError` when ``sql`` does not parse, and
    :class:`AnalysisLimitError` when it holds more than ``max_statements``
    statements (0: no bound).
    """
    if cache is None:
        cache = DEFAULT_CACHE
    if shape is None:
        shape = normalize(sql)
    infos = cached(cache, sql, shape)
    if infos is None:
        infos = analyze_uncached(sql, shape, max_statements)
        remember(cache, sql, shape, infos, depends_on_literals(infos))
    if max_statements and len(infos) > max_statements:
        raise _too_many(len(infos), max_statements)
    return infos


def _too_many(count: int, limit: int) -> AnalysisLimitError:
    return AnalysisLimitError(
        f"statement refused: the query string holds {count} statements, "
        f"more than the limit of {limit}; send them in several queries"
    )


# Keys of entries that hold for one exact text only: a NUL never occurs in
# analysed SQL (``normalize`` refuses it), so these never meet a shape key.
_EXACT = "\x00"

T = TypeVar("T")


def cached(cache: ShapeCache[T], sql: str, shape: str) -> T | None:
    """What ``cache`` holds for ``sql``: by its shape, else by its exact text."""
    exact = _EXACT + sql
    return cache.get(exact if exact in cache else shape)


def cached_exact(cache: ShapeCache[T], sql: str) -> T | None:
    """What ``cache`` holds for exactly ``sql`` (stored with ``exact=True``)."""
    exact = _EXACT + sql
    return cache.get(exact) if exact in cache else None


def remember(cache: ShapeCache[T], sql: str, shape: str, value: T, exact: bool) -> None:
    """Store ``value`` by shape, or by exact text when it depends on literals.

    Whether an analysis depends on literals is a property of the statement's
    structure (a ``SET``, a ``set_config`` call, ``EXPLAIN`` options), which
    every statement of one shape shares: a shape entry is never one that
    would have needed an exact key.
    """
    cache.put(_EXACT + sql if exact else shape, value)


def depends_on_literals(infos: tuple[StatementInfo, ...]) -> bool:
    return any(info.literal_dependent for info in infos)


def analyze_uncached(
    sql: str, normalized: str | None = None, max_statements: int = 0
) -> tuple[StatementInfo, ...]:
    """:func:`analyze` without a cache, bounding the statement count before the costly steps.

    ``normalized`` is ``normalize(sql)`` when the caller keys a cache on it: the
    recorded text is then built from it, so every string under one key records
    the same text.
    """
    try:
        tree = json.loads(parse_sql_json(sql))
    except (_pg.ParseError, UnicodeError) as exc:
        raise syntax_error(exc, sql) from None
    except RecursionError:
        raise SQLSyntaxError("statement is nested too deeply to analyze") from None
    raw_stmts = tree.get("stmts", [])
    if not raw_stmts:
        return ()
    if max_statements and len(raw_stmts) > max_statements:
        raise _too_many(len(raw_stmts), max_statements)
    originals = list(split(sql, with_parser=True))
    if len(originals) != len(raw_stmts):
        raise SQLSyntaxError("statement string cannot be split into statements")
    # Without a cache key to agree with, scrub the statements themselves:
    # linear, where ``normalize`` grows faster than the text on long strings.
    parts = (
        scrub_parts(originals) if normalized is None else _normalized_parts(normalized, originals)
    )
    infos = []
    for raw, part in zip(raw_stmts, parts, strict=True):
        ((node_type, fields),) = raw["stmt"].items()
        walker = _Walker()
        walker.walk(node_type, fields)
        prepared_name = None
        if node_type == "PrepareStmt":
            prepared_name = fields.get("name", "")
        elif node_type == "DeallocateStmt":
            prepared_name = fields.get("name", "")  # "" for DEALLOCATE ALL
        infos.append(
            StatementInfo(
                command=command_tag(node_type, fields),
                normalized=part,
                fingerprint=shape_fingerprint(part),
                tables=tuple(walker.tables),
                functions=tuple(walker.functions),
                has_where=walker.has_where,
                writes=tuple(walker.writes),
                settings=tuple(walker.settings),
                prepared_name=prepared_name,
                literal_dependent=walker.literal_dependent,
            )
        )
    return tuple(infos)


def _normalized_parts(normalized: str, originals: list[str]) -> list[str]:
    """Cut the normalized whole string into one scrubbed text per statement."""
    return scrub_parts(_split_normalized(normalized, originals))


def _split_normalized(normalized: str, originals: list[str]) -> list[str]:
    count = len(originals)
    # Normalized text does not always parse (``DO $1``, ``NOTIFY c, $1``); the
    # scanner-only split still cuts it right unless a BEGIN ATOMIC body is involved.
    for with_parser in (True, False):
        try:
            parts = list(split(normalized, with_parser=with_parser))
        except _pg.ParseError:
            continue
        if len(parts) == count:
            return parts
    return [normalize(original) for original in originals]


# --- the tree walk -----------------------------------------------------------------

_NODE_TYPES = frozenset(
    name
    for name in dir(_ast)
    if isinstance(getattr(_ast, name), type) and issubclass(getattr(_ast, name), _ast.Node)
) | {"List"}


def _typed_fields() -> dict[str, dict[str, str]]:
    """Fields whose C type is a specific node pointer: libpg_query's JSON omits their wrapper."""
    generic = {"Node", "List", "Expr"}
    table: dict[str, dict[str, str]] = {}
    for name in _NODE_TYPES - {"List"}:
        slots = getattr(_ast, name).__slots__
        if not isinstance(slots, dict):
            continue
        for field, info in slots.items():
            c_type = info.c_type
            if c_type.endswith("*") and c_type[:-1] in _NODE_TYPES and c_type[:-1] not in generic:
                table.setdefault(name, {})[field] = c_type[:-1]
    return table


_TYPED = _typed_fields()
_NO_TYPED: dict[str, str] = {}

# Leaves that can hold neither a relation nor a function call.
_SKIP = frozenset(
    {
        "A_Const",
        "String",
        "Integer",
        "Float",
        "Boolean",
        "BitString",
        "ColumnRef",
        "ParamRef",
        "A_Star",
        "Alias",
        "RoleSpec",
        "TypeName",
    }
)
_DML = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_WITH_OWNERS = _DML | {"SelectStmt"}
_TABLE_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"}
)
_BOOLEAN_WORDS = {"true": True, "on": True, "false": False, "off": False}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_EMPTY: frozenset[str] = frozenset()

Fields = Mapping[str, Any]
_Frame = tuple[str, Fields, frozenset[str], bool]


def _qualify(schema: str | None, name: str) -> str:
    return f"{schema or 'public'}.{name}"


def _strings(node: Any) -> list[str]:
    """The ``sval`` of each ``String`` in a list (or ``List`` node) of them."""
    if isinstance(node, Mapping):
        node = node.get("List", {}).get("items", [])
    out = []
    for item in node or ():
        if isinstance(item, Mapping) and "String" in item:
            out.append(item["String"].get("sval", ""))
    return out


def _explain_runs(fields: Fields) -> bool:
    """Whether an ``EXPLAIN`` executes its statement, read as PostgreSQL reads it.

    PostgreSQL's ``ExplainQuery`` lets every ``analyze`` option overwrite the one
    before (the last wins) and reads each with ``defGetBoolean``: no value is true,
    the integers 0 and 1, and the strings true/false/on/off in any ASCII case.
    Any other value makes PostgreSQL refuse the statement; it counts as running
    here, so a reading that differs from PostgreSQL's can only be stricter.
    """
    runs = False
    for option in fields.get("options", ()):
        elem = option.get("DefElem", {})
        if elem.get("defname") == "analyze":
            runs = _def_get_boolean(elem.get("arg")) is not False
    return runs


def _def_get_boolean(arg: Any) -> bool | None:
    """PostgreSQL's ``defGetBoolean`` on a DefElem argument; ``None`` where it raises."""
    if not arg:
        return True
    ((kind, value),) = arg.items()
    if kind == "Integer":
        return {0: False, 1: True}.get(value.get("ival", 0))
    if kind == "String":
        # pg_strcasecmp folds ASCII letters only.
        word = str(value.get("sval", "")).translate(_ASCII_LOWER)
        return _BOOLEAN_WORDS.get(word)
    if kind == "Boolean":
        return bool(value.get("boolval"))
    return None


def _constant(node: Any) -> tuple[bool, str | None]:
    """Whether ``node`` is a constant (through casts), and its value as text.

    libpg_query's JSON leaves out zero values: ``{"ival": {}}`` is 0.
    """
    while isinstance(node, Mapping) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if not isinstance(node, Mapping) or "A_Const" not in node:
        return False, None
    const = node["A_Const"]
    if const.get("isnull"):
        return True, None
    if "sval" in const:
        return True, str(const["sval"].get("sval", ""))
    if "ival" in const:
        return True, str(const["ival"].get("ival", 0))
    if "fval" in const:
        return True, str(const["fval"].get("fval", "0"))
    if "boolval" in const:
        return True, "true" if const["boolval"].get("boolval") else "false"
    if "bsval" in const:
        return True, str(const["bsval"].get("bsval", ""))
    return False, None


def _set_statement(fields: Fields) -> tuple[str, str | None] | None:
    """The ``(name, value)`` a ``VariableSetStmt`` sets; None for ``RESET ALL``."""
    kind = fields.get("kind", "")
    if kind == "VAR_RESET_ALL":
        return None
    name = str(fields.get("name", "")).lower()
    if kind != "VAR_SET_VALUE":
        return (name, None)
    args = fields.get("args") or []
    if len(args) != 1:
        return (name, None)
    return (name, _constant(args[0])[1])


def _set_config_call(args: Any) -> tuple[str, str | None]:
    """The ``(name, value)`` of a ``set_config(name, value, is_local)`` call."""
    args = args if isinstance(args, list) else []
    is_constant, name = _constant(args[0]) if args else (False, None)
    value = _constant(args[1])[1] if len(args) > 1 else None
    return ((name or "").lower() if is_constant else "", value)


class _Walker:
    __slots__ = ("functions", "has_where", "literal_dependent", "settings", "tables", "writes")

    def __init__(self) -> None:
        self.tables: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.writes: dict[str, None] = {}
        self.settings: list[tuple[str, str | None]] = []
        self.has_where = True
        self.literal_dependent = False

    def walk(self, node_type: str, fields: Fields) -> None:
        stack: list[_Frame] = [(node_type, fields, _EMPTY, True)]
        while stack:
            frame = stack.pop()
            children = list(self._visit(*frame))
            stack.extend(reversed(children))

    def _target(self, rangevar: Any, *, write: bool) -> None:
        if not isinstance(rangevar, Mapping):
            return
        rangevar = rangevar.get("RangeVar", rangevar)
        name = _qualify(rangevar.get("schemaname"), rangevar.get("relname", ""))
        self.tables[name] = None
        if write:
            self.writes[name] = None

    def _visit(
        self, node_type: str, fields: Fields, scope: frozenset[str], run: bool
    ) -> Iterator[_Frame]:
        if node_type in _SKIP:
            return
        skip: tuple[str, ...] = ()
        if node_type == "RangeVar" or (node_type == "?" and "relname" in fields):
            schema = fields.get("schemaname")
            relname = fields.get("relname", "")
            if schema or relname not in scope:
                self.tables[_qualify(schema, relname)] = None
            return
        if node_type == "FuncCall":
            names = [name.lower() for name in _strings(fields.get("funcname"))]
            if names:
                self.functions[names[-1]] = None
                if len(names) > 1:
                    self.functions[f"{names[-2]}.{names[-1]}"] = None
                if names[-1] == "set_config":
                    self.settings.append(_set_config_call(fields.get("args")))
                    self.literal_dependent = True
            skip = ("funcname",)
        elif node_type == "VariableSetStmt":
            setting = _set_statement(fields)
            if setting is not None:
                self.settings.append(setting)
            self.literal_dependent = True
        elif node_type in _WITH_OWNERS:
            with_clause = fields.get("withClause")
            if with_clause:
                ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes", ())]
                names = [c.get("ctename", "") for c in ctes]
                recursive = bool(with_clause.get("recursive"))
                for index, cte in enumerate(ctes):
                    visible = names if recursive else names[:index]
                    yield ("CommonTableExpr", cte, scope.union(visible), run)
                scope = scope.union(names)
            if node_type in _DML:
                # A DML target is always a table: WITH names never apply to it.
                self._target(fields.get("relation"), write=run)
                if (
                    run
                    and node_type in ("UpdateStmt", "DeleteStmt")
                    and not fields.get("whereClause")
                ):
                    self.has_where = False
            skip = ("withClause", "relation") if node_type in _DML else ("withClause",)
        elif node_type == "IntoClause":
            self._target(fields.get("rel"), write=run)
            skip = ("rel",)
        elif node_type == "CopyStmt":
            self._target(fields.get("relation"), write=run and bool(fields.get("is_from")))
            skip = ("relation",)
        elif node_type == "TruncateStmt":
            for rangevar in fields.get("relations", ()):
                self._target(rangevar, write=run)
            return
        elif node_type in ("DropStmt", "CommentStmt", "SecLabelStmt"):
            objtype = fields.get("removeType") or fields.get("objtype")
            objects = fields.get("objects") or [fields.get("object")]
            for obj in objects:
                names = _strings(obj)
                if objtype == "OBJECT_COLUMN":
                    names = names[:-1]
                if names and (objtype in _TABLE_OBJECTS or objtype == "OBJECT_COLUMN"):
                    self._target(
                        {"schemaname": names[-2] if len(names) > 1 else None, "relname": names[-1]},
                        write=False,
                    )
            return
        elif node_type == "ExplainStmt":
            run = run and _explain_runs(fields)
            self.literal_dependent = self.literal_dependent or bool(fields.get("options"))
        elif node_type in ("RuleStmt", "CreateFunctionStmt"):
            run = False

        typed = _TYPED.get(node_type, _NO_TYPED)
        for key, value in fields.items():
            if key in skip:
                continue
            child_type = typed.get(key)
            if child_type is not None and isinstance(value, Mapping):
                yield (child_type, value, scope, run)
            elif isinstance(value, Mapping):
                yield _wrapped(value, scope, run)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, Mapping):
                        yield _wrapped(item, scope, run)
                    elif isinstance(item, list):
                        yield ("?", {"items": item}, scope, run)


def _wrapped(value: Fields, scope: frozenset[str], run: bool) -> _Frame:
    if len(value) == 1:
        ((name, inner),) = value.items()
        if name in _NODE_TYPES and isinstance(inner, Mapping):
            return (name, inner, scope, run)
    # Not a node wrapper this pglast version knows: walk it as an anonymous node.
    return ("?", value, scope, run)
