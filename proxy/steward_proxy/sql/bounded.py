"""Whether a WHERE clause can hold for every row of the table an UPDATE or DELETE changes.

``unbounded(where, target_names)`` reads a ``WHERE`` (or a MERGE action's
condition) as libpg_query's JSON and answers whether it may be true whatever
the row: no clause at all, a boolean constant, a comparison of constants
(``1=1``, ``'a'='a'``), ``NOT false``, an ``OR`` with such a branch, ``IS NOT
NULL`` of a constant, casts of such constants, and generally any condition
that does not read the target row (``now() > '2000-01-01'``, ``EXISTS (SELECT
1)``, ``$1``, a column of another table only). ``WHERE CURRENT OF`` is bounded.

Each sub-expression is one of five values: known ``TRUE``, ``FALSE`` or
``NULL``; ``ROW`` (it reads the target row, so it may hold for some rows only);
``ANY`` (it does not read the row and its value is not known here, so it holds
for every row or for none). A clause is unbounded when it is ``TRUE`` or
``ANY``: a reading that is unsure leans to unbounded, never the other way.
Only constants this module can evaluate exactly (integers and decimals, text
equality, booleans, ``NULL``) become ``FALSE`` or ``NULL``.

A column reference reads the row unless it is qualified with the name of
another table; an unqualified name is taken for a column of the target.
Static analysis cannot tell ``WHERE id = id`` or ``WHERE id > 0`` from a real
filter: those count as bounded.

The answer depends on literal values (``1=1`` and ``1=2`` have one shape):
:attr:`Bounds.read_literals` says when it did, so the caller keys its cache by
the exact text.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["Bounds"]

TRUE, FALSE, NULL, ROW, ANY = "true", "false", "null", "row", "any"
_MAX_DEPTH = 200  # deeper conditions count as unbounded

_NUMERIC_TYPES = frozenset(
    {"int2", "int4", "int8", "smallint", "integer", "bigint", "int", "numeric", "decimal"}
)
_TEXT_TYPES = frozenset({"text", "varchar"})
_BOOL_TYPES = frozenset({"bool", "boolean"})
_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})

# PostgreSQL's parse_bool_with_len: unique prefixes of true/false/yes/no, on/off, 1/0.
_BOOL_WORDS = (("true", True), ("false", False), ("yes", True), ("no", False))


def _parse_bool(text: str) -> bool | None:
    word = text.strip(" \t\n\r\f\v").lower()
    if not word:
        return None
    for full, value in _BOOL_WORDS:
        if full.startswith(word):
            return value
    if word in ("on",):
        return True
    if word in ("of", "off"):
        return False
    return {"1": True, "0": False}.get(word)


class Bounds:
    """Evaluates conditions for one target table (see the module docstring).

    ``names`` are the names that denote the target's row in a qualified column
    reference: its alias if it has one, else its name (bare and schema-qualified).
    """

    __slots__ = ("names", "read_literals")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.read_literals = False

    def unbounded(self, *conditions: Any) -> bool:
        """Whether the conjunction of ``conditions`` (None: absent) may hold for every row."""
        return self._and([c for c in conditions if c], 0) in (TRUE, ANY)

    def unbounded_unless(self, join: Any, condition: Any) -> bool:
        """For ``WHEN NOT MATCHED BY SOURCE``: ``NOT join AND condition`` may hold for every row."""
        negated = _not(self._truth(join, 0)) if join else FALSE
        return _and_values([negated, self._and([condition] if condition else [], 0)]) in (TRUE, ANY)

    # -- truth values ---------------------------------------------------------------

    def _and(self, nodes: list[Any], depth: int) -> str:
        return _and_values([self._truth(n, depth + 1) for n in nodes])

    def _truth(self, node: Any, depth: int) -> str:
        if depth > _MAX_DEPTH or not isinstance(node, Mapping) or len(node) != 1:
            return ANY
        ((kind, fields),) = node.items()
        if not isinstance(fields, Mapping):
            return ANY
        if kind == "BoolExpr":
            args = [self._truth(a, depth + 1) for a in fields.get("args", ())]
            op = fields.get("boolop")
            if op == "AND_EXPR":
                return _and_values(args)
            if op == "OR_EXPR":
                return _or_values(args)
            return _not(args[0]) if args else ANY
        if kind == "CurrentOfExpr":
            return ROW
        if kind == "NullTest":
            value = self._value(fields.get("arg"), depth + 1)
            if value is ROW or value is ANY:
                return value
            is_null = value is None
            return TRUE if is_null == (fields.get("nulltesttype") == "IS_NULL") else FALSE
        if kind == "BooleanTest":
            return _boolean_test(
                self._truth(fields.get("arg"), depth + 1), fields.get("booltesttype", "")
            )
        if kind == "A_Expr":
            return self._comparison(fields, depth)
        if kind in ("A_Const", "TypeCast"):
            value = self._value(node, depth + 1)
            if value is ROW or value is ANY:
                return value
            if value is None:
                return NULL
            if isinstance(value, bool):
                return TRUE if value else FALSE
            if isinstance(value, str):
                parsed = _parse_bool(value)
                return ANY if parsed is None else (TRUE if parsed else FALSE)
            return ANY
        return ROW if self._reads_row(node) else ANY

    def _comparison(self, fields: Mapping[str, Any], depth: int) -> str:
        operands = [fields.get("lexpr"), fields.get("rexpr")]
        if any(self._reads_row(o) for o in operands if o is not None):
            return ROW
        kind = fields.get("kind")
        names = [
            item.get("String", {}).get("sval")
            for item in fields.get("name", ())
            if isinstance(item, Mapping)
        ]
        op = names[-1] if names else None
        if kind not in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") or op not in (
            _COMPARISONS
        ):
            return ANY
        if not all(_is_constant(o) for o in operands):
            return ANY
        left = self._value(operands[0], depth + 1)
        right = self._value(operands[1], depth + 1)
        if left is ANY or right is ANY:
            return ANY
        if kind != "AEXPR_OP":
            if left is None or right is None:
                same = left is None and right is None
            else:
                compared = _compare("=", left, right)
                if compared is None:
                    return ANY
                same = compared
            return TRUE if same == (kind == "AEXPR_NOT_DISTINCT") else FALSE
        if left is None or right is None:
            return NULL
        result = _compare(op, left, right)
        return ANY if result is None else (TRUE if result else FALSE)

    # -- values -----------------------------------------------------------------------

    def _value(self, node: Any, depth: int) -> Any:
        """A constant's value (None for NULL), or ROW or ANY."""
        if depth > _MAX_DEPTH or not isinstance(node, Mapping):
            return ANY
        if "A_Const" in node:
            self.read_literals = True
            return _const(node["A_Const"])
        if "TypeCast" in node:
            cast = node["TypeCast"]
            inner = self._value(cast.get("arg"), depth + 1)
            if inner is ROW or inner is ANY or inner is None:
                return inner
            return _cast(inner, _type_name(cast.get("typeName")))
        return ROW if self._reads_row(node) else ANY

    def _reads_row(self, node: Any) -> bool:
        """Whether ``node`` refers to the target row anywhere (iteratively, any depth)."""
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, Mapping):
                continue
            if "CurrentOfExpr" in item:
                return True
            column = item.get("ColumnRef")
            if isinstance(column, Mapping) and self._is_row_column(column):
                return True
            stack.extend(v for v in item.values() if isinstance(v, Mapping | list))
        return False

    def _is_row_column(self, column: Mapping[str, Any]) -> bool:
        parts = [
            f["String"].get("sval", "")
            for f in column.get("fields", ())
            if isinstance(f, Mapping) and "String" in f
        ]
        star = any(isinstance(f, Mapping) and "A_Star" in f for f in column.get("fields", ()))
        qualifiers = parts if star else parts[:-1]
        if not qualifiers:
            return True
        return ".".join(qualifiers[-2:]) in self.names or qualifiers[-1] in self.names


def _is_constant(node: Any) -> bool:
    """Whether ``node`` is a constant, through casts (without reading its value)."""
    for _ in range(_MAX_DEPTH):
        if not isinstance(node, Mapping):
            return False
        if "A_Const" in node:
            return True
        if "TypeCast" not in node:
            return False
        node = node["TypeCast"].get("arg")
    return False


def _and_values(values: list[str]) -> str:
    if FALSE in values:
        return FALSE
    for value in (ROW, ANY, NULL):
        if value in values:
            return value
    return TRUE


def _or_values(values: list[str]) -> str:
    if TRUE in values:
        return TRUE
    for value in (ANY, ROW, NULL):
        if value in values:
            return value
    return FALSE


def _not(value: str) -> str:
    return {TRUE: FALSE, FALSE: TRUE}.get(value, value)


def _boolean_test(value: str, test: str) -> str:
    if value in (ROW, ANY):
        return value
    holds = {
        "IS_TRUE": value == TRUE,
        "IS_NOT_TRUE": value != TRUE,
        "IS_FALSE": value == FALSE,
        "IS_NOT_FALSE": value != FALSE,
        "IS_UNKNOWN": value == NULL,
        "IS_NOT_UNKNOWN": value != NULL,
    }.get(test)
    if holds is None:
        return ANY
    return TRUE if holds else FALSE


def _const(const: Mapping[str, Any]) -> Any:
    # libpg_query's JSON leaves out zero values: {"ival": {}} is 0.
    if const.get("isnull"):
        return None
    if "ival" in const:
        return Decimal(int(const["ival"].get("ival", 0)))
    if "fval" in const:
        try:
            value = Decimal(str(const["fval"].get("fval", "0")))
        except InvalidOperation:
            return ANY
        return value if value.is_finite() else ANY
    if "boolval" in const:
        return bool(const["boolval"].get("boolval", False))
    if "sval" in const:
        return str(const["sval"].get("sval", ""))
    return ANY


def _type_name(type_name: Any) -> str:
    if not isinstance(type_name, Mapping) or type_name.get("arrayBounds"):
        return ""
    names = [
        n["String"].get("sval", "")
        for n in type_name.get("names", ())
        if isinstance(n, Mapping) and "String" in n
    ]
    if not names or (len(names) == 2 and names[0] != "pg_catalog") or len(names) > 2:
        return ""  # a type in another schema may be anything
    return names[-1]


def _cast(value: Any, type_name: str) -> Any:
    if type_name in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            parsed = _parse_bool(value)
            return ANY if parsed is None else parsed
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return value != 0
        return ANY
    if type_name in _NUMERIC_TYPES:
        if isinstance(value, Decimal):
            return value if type_name in ("numeric", "decimal") else _integer(value)
        if isinstance(value, str):
            try:
                number = Decimal(value.strip(" \t\n\r\f\v"))
            except InvalidOperation:
                return ANY
            if not number.is_finite():
                return ANY
            return number if type_name in ("numeric", "decimal") else _integer(number)
        return ANY
    if type_name in _TEXT_TYPES and isinstance(value, str):
        return value
    return ANY


def _integer(value: Decimal) -> Any:
    # A cast to an integer type rounds; a text that is not an integer fails there.
    return value if value == value.to_integral_value() else ANY


def _compare(op: str, left: Any, right: Any) -> bool | None:
    """``left op right`` where both are constants of one kind; None when not exact here."""
    if isinstance(left, bool) != isinstance(right, bool):
        return None
    if isinstance(left, Decimal) and isinstance(right, Decimal):
        pass
    elif isinstance(left, str) and isinstance(right, str):
        # Text ordering depends on the collation; equality does not (deterministic).
        if op not in ("=", "<>", "!="):
            return None
    elif not (isinstance(left, bool) and isinstance(right, bool)):
        return None
    if op == "=":
        return bool(left == right)
    if op in ("<>", "!="):
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == ">":
        return bool(left > right)
    if op == "<=":
        return bool(left <= right)
    return bool(left >= right)
