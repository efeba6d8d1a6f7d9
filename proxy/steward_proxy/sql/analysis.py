"""Statement analysis: what each statement executes, as operations, and what it names.

``analyze(sql)`` parses a statement string with PostgreSQL's grammar (libpg_query
through pglast) and describes every statement in it as a :class:`StatementInfo`,
the input of the guardrail engine. The parse tree is read as libpg_query's JSON
and walked iteratively (no recursion limit for deeply nested expressions), with
the CTE names in scope at each point, so a reference to a ``WITH`` query is not
taken for a table while a real table of the same name elsewhere still is.

The walk lists the statement's :class:`~steward_proxy.sql.operations.Operation`
s: what runs now (DML inside ``WITH``, under ``EXPLAIN ANALYZE``, in a ``PREPARE``,
the static SQL of a PL/pgSQL ``DO`` body, SQL text given as a constant to a
function that runs it) and what the statement wires in to run later (a view's
query, a rule's actions, a SQL or PL/pgSQL function body). Code carried as text
is parsed and walked in turn, to a bounded depth; code that cannot be read
(dynamic ``EXECUTE``, another language, deeper nesting) is a ``DYNAMIC``
operation. Functions wired in by ``CREATE OPERATOR``, ``TRIGGER``, ``AGGREGATE``,
``CAST`` and their kin count as functions the statement names.

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
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

from pglast import ast as _ast
from pglast import parser as _pg

from steward_proxy.sql.bounded import Bounds
from steward_proxy.sql.cache import ShapeCache
from steward_proxy.sql.commands import command_tag
from steward_proxy.sql.errors import AnalysisLimitError, SQLSyntaxError
from steward_proxy.sql.operations import DYNAMIC, DYNAMIC_FUNCTIONS, WIRING_OPTIONS, Operation
from steward_proxy.sql.plpgsql import PlpgsqlError, body_sql
from steward_proxy.sql.shape import (
    normalize,
    scrub,
    scrub_parts,
    shape_fingerprint,
    syntax_error,
)

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
    - ``functions``: every function called, or wired in to be called later
      (``CREATE OPERATOR ... FUNCTION =``, triggers, aggregates, casts, rule
      actions, defaults, function bodies), lower-cased: the bare name, and
      also ``schema.name`` when the name is schema-qualified.
    - ``has_where``: ``not unbounded`` (kept for older readers).
    - ``writes``: tables written by ``INSERT``, ``UPDATE``, ``DELETE``, ``MERGE``,
      ``TRUNCATE``, ``COPY ... FROM`` and ``SELECT INTO``/``CREATE TABLE AS``
      when the statement runs: also inside ``WITH`` and a ``DO`` body.
      Statements that are only defined, not run (``CREATE RULE``, ``CREATE
      FUNCTION`` bodies, ``EXPLAIN`` without ``ANALYZE``) add nothing;
      ``PREPARE`` reports what ``EXECUTE`` will write.
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
      ``EXPLAIN`` options, a constant ``WHERE`` such as ``1=1``, a ``DO`` or
      function body, SQL text given to a function), so it must not be reused
      for another statement of the same shape.
    - ``operations``: what the statement executes or wires in, see
      :class:`~steward_proxy.sql.operations.Operation`; first appearance
      first, never empty for a statement that came from :func:`analyze`. For a
      ``PREPARE``, a ``PREPARE`` operation and then what ``EXECUTE`` will run.
    - ``unbounded``: some ``UPDATE`` or ``DELETE`` operation (also a ``MERGE``
      action) has no ``WHERE``, or one that holds whatever the row (see
      :mod:`~steward_proxy.sql.bounded`).
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
    operations: tuple[Operation, ...] = ()
    unbounded: bool = False


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


def as_executed(execute: StatementInfo, prepared: StatementInfo) -> StatementInfo:
    """``EXECUTE p`` (``execute``) with what the ``PREPARE p`` it runs (``prepared``) holds.

    The result keeps the EXECUTE's command, text and fingerprint (what the audit
    records) and takes the prepared statement's operations (its own PREPARE
    operation left out), tables, functions, writes and settings, so a guardrail
    judges the EXECUTE by what it runs.
    """
    operations = prepared.operations
    if operations and operations[0] == Operation(prepared.command):
        operations = operations[1:]
    merged = dict.fromkeys((*execute.operations, *operations))
    return replace(
        execute,
        operations=tuple(merged),
        tables=tuple(dict.fromkeys((*execute.tables, *prepared.tables))),
        functions=tuple(dict.fromkeys((*execute.functions, *prepared.functions))),
        writes=prepared.writes,
        settings=(*execute.settings, *prepared.settings),
        has_where=prepared.has_where and execute.has_where,
        unbounded=prepared.unbounded or execute.unbounded,
    )


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
    for raw, part, original in zip(raw_stmts, parts, originals, strict=True):
        ((node_type, fields),) = raw["stmt"].items()
        command = command_tag(node_type, fields)
        walker = _Walker(original)
        walker.statement(node_type, fields, _RUN, command)
        prepared_name = None
        if node_type == "PrepareStmt":
            prepared_name = fields.get("name", "")
        elif node_type == "DeallocateStmt":
            prepared_name = fields.get("name", "")  # "" for DEALLOCATE ALL
        if node_type == "DoStmt":
            # Keyed by its exact text (the body is a literal of its shape), so
            # the record may show the body, with its own literals replaced.
            part = _do_audit_text(fields) or part
        unbounded = walker.unbounded
        infos.append(
            StatementInfo(
                command=command,
                normalized=part,
                fingerprint=shape_fingerprint(part),
                tables=tuple(walker.tables),
                functions=tuple(walker.functions),
                has_where=not unbounded,
                writes=tuple(walker.writes),
                settings=tuple(walker.settings),
                prepared_name=prepared_name,
                literal_dependent=walker.literal_dependent,
                operations=tuple(walker.operations),
                unbounded=unbounded,
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
_DML_COMMAND = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
}
_MERGE_COMMAND = {"CMD_UPDATE": "UPDATE", "CMD_DELETE": "DELETE", "CMD_INSERT": "INSERT"}
_TABLE_OBJECTS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"}
)
# Statements whose options (DefElem lists) may name a function to call later.
_WIRING_OPTION_FIELDS = {
    "DefineStmt": "definition",
    "AlterOperatorStmt": "options",
    "AlterTypeStmt": "options",
    "CreateRangeStmt": "params",
    "CreateFdwStmt": "func_options",
    "AlterFdwStmt": "func_options",
    "AlterFunctionStmt": "actions",
}
# Statements with fields that name a function to call later.
_WIRING_NAME_FIELDS = {
    "CreateTrigStmt": ("funcname",),
    "CreateEventTrigStmt": ("funcname",),
    "CreateCastStmt": ("func",),
    "CreateTransformStmt": ("fromsql", "tosql"),
    "CreateConversionStmt": ("func_name",),
    "CreatePLangStmt": ("plhandler", "plinline", "plvalidator"),
    "CreateAmStmt": ("handler_name",),
}
_OPCLASS_ITEM_FUNCTION = 2
_BARE_SELECT = frozenset({"targetList", "limitOption", "op"})
_BOOLEAN_WORDS = {"true": True, "on": True, "false": False, "off": False}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_EMPTY: frozenset[str] = frozenset()
# Code in code in code: deeper than this is not read, and counts as DYNAMIC.
_MAX_NESTING = 8

# How what a node describes is executed: now, later (wired in: a view's query,
# a rule's actions, a function body), or not at all (under a plain EXPLAIN).
_NOT, _LATER, _RUN = 0, 1, 2

Fields = Mapping[str, Any]


class _Ctx(NamedTuple):
    scope: frozenset[str]  # WITH query names visible here
    mode: int  # _RUN, _LATER or _NOT
    command: str  # the command a table named here is an operation of


_Frame = tuple[str, Fields, _Ctx]


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


def _name_parts(arg: Any) -> list[str]:
    """The dotted name an option or field gives: a TypeName, a List, a String, an ObjectWithArgs."""
    if not isinstance(arg, Mapping):
        return _strings(arg) if isinstance(arg, list) else []
    if "TypeName" in arg:
        arg = arg["TypeName"]
    if "objname" in arg:
        return _strings(arg.get("objname"))
    if "names" in arg:
        return _strings(arg.get("names"))
    if "String" in arg:
        return [str(arg["String"].get("sval", ""))]
    return _strings(arg)


def _def_elems(items: Any) -> Iterator[Fields]:
    for item in items or ():
        if isinstance(item, Mapping) and isinstance(item.get("DefElem"), Mapping):
            yield item["DefElem"]


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


def _sval(node: Any) -> str | None:
    """The text of a ``String`` node (an option's value) or of a string constant."""
    if isinstance(node, Mapping) and isinstance(node.get("String"), Mapping):
        return str(node["String"].get("sval", ""))
    return _string_constant(node)


def _string_constant(node: Any) -> str | None:
    """The text of a string constant (through casts), else None."""
    while isinstance(node, Mapping) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if isinstance(node, Mapping) and "A_Const" in node and "sval" in node["A_Const"]:
        return str(node["A_Const"]["sval"].get("sval", ""))
    return None


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


def _options(fields: Fields, key: str = "options") -> dict[str, Any]:
    return {elem.get("defname", ""): elem.get("arg") for elem in _def_elems(fields.get(key))}


def _do_parts(fields: Fields) -> tuple[str, str | None]:
    """A ``DO`` statement's language (as written, default plpgsql) and body."""
    options = _options(fields, "args")
    language = options.get("language")
    body = options.get("as")
    return (_sval(language) or "plpgsql", _sval(body))


def _function_language(fields: Fields) -> str | None:
    language = _options(fields).get("language")
    if language is not None:
        return _sval(language)
    return "sql" if fields.get("sql_body") else None


def _statement_texts(sql: str, raw_stmts: list[Any]) -> list[str]:
    """Each statement's own text, cut by libpg_query's byte locations."""
    data = sql.encode("utf-8", "surrogatepass")
    out = []
    for raw in raw_stmts:
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        chunk = data[start : start + length] if length else data[start:]
        out.append(chunk.decode("utf-8", "surrogatepass"))
    return out


def _do_audit_text(fields: Fields) -> str | None:
    """What the audit trail records of a PL/pgSQL ``DO``: its body with literals replaced."""
    language, body = _do_parts(fields)
    if language.lower() != "plpgsql" or body is None:
        return None
    try:
        scrubbed = scrub(body)
    except SQLSyntaxError:
        return None
    tag, n = "$$", 0
    while tag in scrubbed:
        n += 1
        tag = f"$body{n}$"
    return f"DO {tag} {scrubbed} {tag}"


class _Walker:
    """What one statement (and the code it carries) executes; see :class:`StatementInfo`."""

    __slots__ = (
        "depth",
        "functions",
        "literal_dependent",
        "operations",
        "settings",
        "tables",
        "text",
        "writes",
    )

    def __init__(self, text: str, depth: int = 0) -> None:
        self.text = text
        self.depth = depth
        self.tables: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.writes: dict[str, None] = {}
        self.operations: dict[Operation, None] = {}
        self.settings: list[tuple[str, str | None]] = []
        self.literal_dependent = False

    @property
    def unbounded(self) -> bool:
        return any(op.unbounded for op in self.operations)

    # -- entry points ------------------------------------------------------------------

    def statement(
        self, node_type: str, fields: Fields, mode: int, command: str, *, ensure: bool = True
    ) -> None:
        """Walk one statement root; ``command`` is its tag (or, under a plain EXPLAIN, EXPLAIN).

        ``ensure``: the statement's own command is an operation even when it names no table.
        """
        ctx = _Ctx(_EMPTY, mode, command)
        self.walk(node_type, fields, ctx)
        if ensure and not any(op.command == command for op in self.operations):
            self.operations = {Operation(command): None, **self.operations}

    def walk(self, node_type: str, fields: Fields, ctx: _Ctx) -> None:
        stack: list[_Frame] = [(node_type, fields, ctx)]
        while stack:
            frame = stack.pop()
            children = list(self._visit(*frame))
            stack.extend(reversed(children))

    # -- what the walk records -------------------------------------------------------

    def _op(self, command: str, table: str | None = None, **details: Any) -> None:
        self.operations[Operation(command, table, **details)] = None

    def _table(self, rangevar: Any, command: str, ctx: _Ctx, *, write: bool = False) -> str | None:
        """Record a relation the statement acts on as an operation of ``command``."""
        if not isinstance(rangevar, Mapping):
            return None
        rangevar = rangevar.get("RangeVar", rangevar)
        name = _qualify(rangevar.get("schemaname"), rangevar.get("relname", ""))
        self.tables[name] = None
        if ctx.mode == _NOT:
            self._op(ctx.command, name)
            return name
        self._op(command, name)
        if write and ctx.mode == _RUN:
            self.writes[name] = None
        return name

    def _function(self, parts: list[str]) -> None:
        names = [name.lower() for name in parts if name]
        if not names:
            return
        self.functions[names[-1]] = None
        if len(names) > 1:
            self.functions[f"{names[-2]}.{names[-1]}"] = None
        if names[-1] in DYNAMIC_FUNCTIONS:
            self._op(DYNAMIC)

    def _merge(self, child: _Walker) -> None:
        self.tables.update(child.tables)
        self.functions.update(child.functions)
        self.writes.update(child.writes)
        self.operations.update(child.operations)
        self.settings.extend(child.settings)
        self.literal_dependent = self.literal_dependent or child.literal_dependent

    # -- code carried as text ------------------------------------------------------------

    def _nested(self, sql: str, ctx: _Ctx, *, strict: bool, expression: bool = False) -> None:
        """Analyse SQL text this statement runs (now or later) as part of it.

        ``strict``: text PostgreSQL will run as SQL; if it cannot be read here,
        it is DYNAMIC. Otherwise (a string that may not be SQL at all, such as a
        dblink connection string) text that does not parse is left alone.
        ``expression``: ``SELECT expr`` standing for a PL/pgSQL expression, whose
        own SELECT is no operation unless it reads a table.
        """
        if self.depth >= _MAX_NESTING:
            self._op(DYNAMIC)
            return
        try:
            raw_stmts = json.loads(parse_sql_json(sql)).get("stmts", [])
        except (_pg.ParseError, UnicodeError, ValueError, RecursionError):
            if strict:
                self._op(DYNAMIC)
            return
        for raw, text in zip(raw_stmts, _statement_texts(sql, raw_stmts), strict=True):
            ((node_type, fields),) = raw["stmt"].items()
            child = _Walker(text, self.depth + 1)
            command = command_tag(node_type, fields) if ctx.mode != _NOT else ctx.command
            child.statement(node_type, fields, ctx.mode, command, ensure=not expression)
            self._merge(child)

    def _plpgsql(self, ctx: _Ctx) -> None:
        """The static SQL of this statement's PL/pgSQL body is its own; EXECUTE is DYNAMIC."""
        self.literal_dependent = True  # the body is a constant of the statement's shape
        try:
            body = body_sql(self.text)
        except PlpgsqlError:
            self._op(DYNAMIC)
            return
        for text in body.statements:
            self._nested(text, ctx, strict=True)
        for text in body.expressions:
            self._nested(text, ctx, strict=True, expression=True)
        for text in body.dynamic:
            self._op(DYNAMIC)
            self._dynamic_text(text, ctx)
        for tag in body.transaction:
            self._op(tag)

    def _dynamic_text(self, expression: str, ctx: _Ctx) -> None:
        """``SELECT expr`` whose value is run as SQL: read the expression, and a constant's SQL."""
        self._nested(expression, ctx, strict=True, expression=True)
        try:
            stmts = json.loads(parse_sql_json(expression)).get("stmts", [])
        except (_pg.ParseError, UnicodeError, ValueError, RecursionError):
            return
        select = stmts[0]["stmt"].get("SelectStmt", {}) if len(stmts) == 1 else {}
        targets = select.get("targetList", [])
        # Only a bare constant: SELECT 'text', no FROM, WHERE or anything else.
        if set(select) <= _BARE_SELECT and len(targets) == 1:
            text = _string_constant(targets[0].get("ResTarget", {}).get("val"))
            if text is not None:
                self._nested(text, ctx, strict=False)

    def _dynamic_arguments(self, args: Any, ctx: _Ctx) -> None:
        """The SQL in constant string arguments of a function that runs SQL text."""
        # What the arguments hold decides the analysis, whatever their kind.
        self.literal_dependent = True
        for arg in args if isinstance(args, list) else ():
            text = _string_constant(arg)
            if text is not None:
                self._nested(text, ctx, strict=False)

    # -- the visit -------------------------------------------------------------------

    def _visit(self, node_type: str, fields: Fields, ctx: _Ctx) -> Iterator[_Frame]:
        if node_type in _SKIP:
            return
        skip: tuple[str, ...] = ()
        if node_type == "RangeVar" or (node_type == "?" and "relname" in fields):
            schema = fields.get("schemaname")
            relname = fields.get("relname", "")
            if schema or relname not in ctx.scope:
                self._table(fields, ctx.command, ctx)
            return
        if node_type == "FuncCall":
            names = _strings(fields.get("funcname"))
            self._function(names)
            bare = names[-1].lower() if names else ""
            if bare == "set_config":
                self.settings.append(_set_config_call(fields.get("args")))
                self.literal_dependent = True
            elif bare in DYNAMIC_FUNCTIONS:
                self._dynamic_arguments(fields.get("args"), ctx)
            skip = ("funcname",)
        elif node_type == "VariableSetStmt":
            setting = _set_statement(fields)
            if setting is not None:
                self.settings.append(setting)
            self.literal_dependent = True
        elif node_type in _WITH_OWNERS:
            if ctx.mode != _NOT:
                ctx = ctx._replace(command="SELECT")
            with_clause = fields.get("withClause")
            if with_clause:
                ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes", ())]
                names = [c.get("ctename", "") for c in ctes]
                recursive = bool(with_clause.get("recursive"))
                for index, cte in enumerate(ctes):
                    visible = names if recursive else names[:index]
                    yield ("CommonTableExpr", cte, ctx._replace(scope=ctx.scope.union(visible)))
                ctx = ctx._replace(scope=ctx.scope.union(names))
            if node_type in _DML:
                # A DML target is always a table: WITH names never apply to it.
                self._dml(node_type, fields, ctx)
            skip = ("withClause", "relation") if node_type in _DML else ("withClause",)
        elif node_type == "IntoClause":
            self._table(fields.get("rel"), "CREATE", ctx, write=True)
            skip = ("rel",)
        elif node_type == "CopyStmt":
            self._copy(fields, ctx)
            skip = ("relation", "query")
        elif node_type == "TruncateStmt":
            for rangevar in fields.get("relations", ()):
                self._table(rangevar, ctx.command, ctx, write=True)
            return
        elif node_type in ("DropStmt", "CommentStmt", "SecLabelStmt"):
            objtype = fields.get("removeType") or fields.get("objtype")
            objects = fields.get("objects") or [fields.get("object")]
            for obj in objects:
                names = _strings(obj)
                if objtype == "OBJECT_COLUMN":
                    names = names[:-1]
                if names and (objtype in _TABLE_OBJECTS or objtype == "OBJECT_COLUMN"):
                    schema = names[-2] if len(names) > 1 else None
                    self._table({"schemaname": schema, "relname": names[-1]}, ctx.command, ctx)
            return
        elif node_type == "ExplainStmt":
            if not _explain_runs(fields):
                ctx = ctx._replace(mode=_NOT)
            self.literal_dependent = self.literal_dependent or bool(fields.get("options"))
        elif node_type == "DoStmt":
            # Language and body are constants of the statement's shape.
            self.literal_dependent = True
            language, _ = _do_parts(fields)
            self._op(ctx.command, language=language.lower())
            if language.lower() == "plpgsql":
                self._plpgsql(ctx)
            else:
                self._op(DYNAMIC)  # code Steward cannot read runs now
            return
        elif node_type == "CreateFunctionStmt":
            yield from self._create_function(fields, ctx)
            skip = ("sql_body", "funcname")
        elif node_type == "RuleStmt":
            later = ctx._replace(mode=min(ctx.mode, _LATER))
            yield from self._children({"relation": fields.get("relation")}, "RuleStmt", ctx)
            yield from self._children(
                {"whereClause": fields.get("whereClause"), "actions": fields.get("actions")},
                "RuleStmt",
                later,
            )
            return
        elif node_type == "ViewStmt":
            yield from self._children({"view": fields.get("view")}, "ViewStmt", ctx)
            later = ctx._replace(mode=min(ctx.mode, _LATER))
            yield from self._children({"query": fields.get("query")}, "ViewStmt", later)
            return
        elif node_type == "CreateOpClassItem":
            if fields.get("itemtype") == _OPCLASS_ITEM_FUNCTION:
                self._function(_name_parts(fields.get("name")))
            return
        if node_type in _WIRING_NAME_FIELDS:
            for key in _WIRING_NAME_FIELDS[node_type]:
                self._function(_name_parts(fields.get(key)))
            skip = (*skip, *_WIRING_NAME_FIELDS[node_type])
        elif node_type in _WIRING_OPTION_FIELDS:
            key = _WIRING_OPTION_FIELDS[node_type]
            for elem in _def_elems(fields.get(key)):
                if elem.get("defname", "").lower() in WIRING_OPTIONS:
                    self._function(_name_parts(elem.get("arg")))
        yield from self._children(fields, node_type, ctx, skip)

    def _children(
        self, fields: Fields, node_type: str, ctx: _Ctx, skip: tuple[str, ...] = ()
    ) -> Iterator[_Frame]:
        typed = _TYPED.get(node_type, _NO_TYPED)
        for key, value in fields.items():
            if key in skip:
                continue
            child_type = typed.get(key)
            if child_type is not None and isinstance(value, Mapping):
                yield (child_type, value, ctx)
            elif isinstance(value, Mapping):
                yield _wrapped(value, ctx)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, Mapping):
                        yield _wrapped(item, ctx)
                    elif isinstance(item, list):
                        yield ("?", {"items": item}, ctx)

    def _dml(self, node_type: str, fields: Fields, ctx: _Ctx) -> None:
        """The operations of an INSERT, UPDATE, DELETE or MERGE on its target."""
        relation = fields.get("relation")
        command = _DML_COMMAND[node_type]
        if ctx.mode == _NOT or not isinstance(relation, Mapping):
            self._table(relation, command, ctx)
            return
        relation = relation.get("RangeVar", relation)
        alias = (relation.get("alias") or {}).get("aliasname")
        bounds = Bounds(frozenset({alias} if alias else {relation.get("relname", "")}))
        if node_type == "MergeStmt":
            name = self._table(relation, "MERGE", ctx, write=True)
            join = fields.get("joinCondition")
            for item in fields.get("mergeWhenClauses", ()):
                clause = item.get("MergeWhenClause", {})
                action = _MERGE_COMMAND.get(clause.get("commandType", ""))
                if action is None:
                    continue
                unbounded = False
                if action != "INSERT":
                    condition = clause.get("condition")
                    if clause.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
                        unbounded = bounds.unbounded_unless(join, condition)
                    else:
                        unbounded = bounds.unbounded(join, condition)
                self._op(action, name, unbounded=unbounded)
        elif node_type == "InsertStmt":
            name = self._table(relation, "INSERT", ctx, write=True)
            conflict = fields.get("onConflictClause") or {}
            if conflict.get("action") == "ONCONFLICT_UPDATE":
                self._op("UPDATE", name)
        else:
            name = _qualify(relation.get("schemaname"), relation.get("relname", ""))
            self.tables[name] = None
            if ctx.mode == _RUN:
                self.writes[name] = None
            unbounded = bounds.unbounded(fields.get("whereClause"))
            self._op(command, name, unbounded=unbounded)
        if bounds.read_literals:
            self.literal_dependent = True
        returning = fields.get("returningClause") or {}
        if returning.get("exprs") or fields.get("returningList"):
            self._op("SELECT", name)

    def _copy(self, fields: Fields, ctx: _Ctx) -> None:
        """COPY t: a COPY of t, and an INSERT into it (FROM) or a SELECT of it (TO)."""
        if fields.get("is_program"):
            target = "program"
        elif fields.get("filename") is not None:
            target = "file"
        else:
            target = "stdio"
        relation = fields.get("relation")
        if isinstance(relation, Mapping):
            is_from = bool(fields.get("is_from"))
            name = _qualify(relation.get("schemaname"), relation.get("relname", ""))
            self.tables[name] = None
            self._op("COPY", name, copy=target)
            self._op("INSERT" if is_from else "SELECT", name)
            if is_from and ctx.mode == _RUN:
                self.writes[name] = None
        query = fields.get("query")
        if isinstance(query, Mapping):
            # COPY (query) TO is a COPY of every table the query reads.
            child = _Walker(self.text, self.depth)
            for frame in self._children({"query": query}, "CopyStmt", ctx):
                child.walk(*frame)
            for table in child.tables or (None,):
                self._op("COPY", table, copy=target)
            self._merge(child)
        elif not isinstance(relation, Mapping):
            self._op("COPY", copy=target)

    def _create_function(self, fields: Fields, ctx: _Ctx) -> Iterator[_Frame]:
        # LANGUAGE 'sql' and the body are constants of the statement's shape.
        self.literal_dependent = True
        language = _function_language(fields)
        self._op(ctx.command, language=language.lower() if language else None)
        options = _options(fields)
        if "support" in options:
            self._function(_name_parts(options["support"]))
        later = ctx._replace(mode=min(ctx.mode, _LATER))
        body = fields.get("sql_body")
        language = (language or "").lower()
        if body:
            yield from self._children({"sql_body": body}, "CreateFunctionStmt", later)
        elif language == "sql":
            for text in _strings(options.get("as"))[:1]:
                self._nested(text, later, strict=True)
        elif language == "plpgsql":
            self._plpgsql(later)


def _wrapped(value: Fields, ctx: _Ctx) -> _Frame:
    if len(value) == 1:
        ((name, inner),) = value.items()
        if name in _NODE_TYPES and isinstance(inner, Mapping):
            return (name, inner, ctx)
    # Not a node wrapper this pglast version knows: walk it as an anonymous node.
    return ("?", value, ctx)
