"""The SQL inside a PL/pgSQL body: ``DO`` blocks and ``LANGUAGE plpgsql`` functions.

libpg_query carries PostgreSQL's PL/pgSQL grammar (``pglast.parser.
parse_plpgsql_json``); it turns a body into a tree whose every SQL fragment is a
``PLpgSQL_expr`` holding the text PostgreSQL will run, and a parse mode that
says how PostgreSQL reads it: a whole statement (mode 0), an expression run
as ``SELECT expr`` (mode 2), or an assignment ``target := expr`` (modes 3-5).
:func:`body_sql` returns each of them as SQL text that the core grammar parses.

Dynamic SQL (``EXECUTE``, ``FOR ... IN EXECUTE``, ``OPEN ... FOR EXECUTE``,
``RETURN QUERY EXECUTE``) runs text computed when the body runs: its
expression is returned apart, so the caller can record an opaque ``DYNAMIC``
operation (and still read the expression's own function calls). ``COMMIT`` and
``ROLLBACK`` in a body end the caller's transaction, so they are listed too.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as _pg

__all__ = ["PlBody", "PlpgsqlError", "body_sql"]

_DYNAMIC_NODES = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})
_TRANSACTION_NODES = {"PLpgSQL_stmt_commit": "COMMIT", "PLpgSQL_stmt_rollback": "ROLLBACK"}
_STATEMENT_MODE = 0
_EXPRESSION_MODE = 2
_ASSIGN_MODES = frozenset({3, 4, 5})


class PlpgsqlError(Exception):
    """A body that PL/pgSQL's grammar refuses (or that cannot be read here)."""


@dataclass(slots=True)
class PlBody:
    """What a PL/pgSQL body runs.

    ``statements``: SQL statements the body runs as written. ``expressions``:
    ``SELECT expr`` for each expression it evaluates (conditions, assignments,
    RAISE arguments, defaults). ``dynamic``: ``SELECT expr`` for each expression
    whose value is SQL text run dynamically. ``transaction``: ``COMMIT`` and
    ``ROLLBACK`` tags. Each text parses on its own with the core grammar.
    """

    statements: list[str] = field(default_factory=list)
    expressions: list[str] = field(default_factory=list)
    dynamic: list[str] = field(default_factory=list)
    transaction: list[str] = field(default_factory=list)


def body_sql(statement: str) -> PlBody:
    """The SQL that the PL/pgSQL body of ``statement`` (one DO or CREATE FUNCTION) runs.

    Raises :class:`PlpgsqlError` when PL/pgSQL's grammar refuses the body.
    """
    try:
        functions = json.loads(_pg.parse_plpgsql_json(statement))
    except (_pg.ParseError, UnicodeError, ValueError, RecursionError) as exc:
        raise PlpgsqlError(str(exc)) from None
    out = PlBody()
    stack: list[tuple[Any, bool]] = [(functions, False)]
    while stack:
        node, dynamic = stack.pop()
        if isinstance(node, list):
            stack.extend((item, dynamic) for item in reversed(node))
            continue
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            if key == "PLpgSQL_expr" and isinstance(value, Mapping):
                _expression(value, dynamic, out)
            elif key in _TRANSACTION_NODES:
                out.transaction.append(_TRANSACTION_NODES[key])
            elif isinstance(value, Mapping | list):
                if key in _DYNAMIC_NODES and isinstance(value, Mapping):
                    # The query expression gives SQL text; the rest (INTO, USING) is static.
                    for inner_key, inner in value.items():
                        stack.append((inner, inner_key == "query"))
                    continue
                stack.append((value, dynamic or key == "dynquery"))
    return out


def _expression(expr: Mapping[str, Any], dynamic: bool, out: PlBody) -> None:
    query = str(expr.get("query", ""))
    mode = expr.get("parseMode", _STATEMENT_MODE)
    if mode == _STATEMENT_MODE:
        text = query
    elif mode == _EXPRESSION_MODE:
        text = f"SELECT {query}"
    elif mode in _ASSIGN_MODES:
        text = _assignment(query)
    else:
        return  # a type name
    if dynamic:
        out.dynamic.append(text)
    elif mode == _STATEMENT_MODE:
        out.statements.append(text)
    else:
        out.expressions.append(text)


def _assignment(query: str) -> str:
    """``target := expr`` as ``SELECT target, expr`` (subscripts in the target are expressions)."""
    try:
        tokens = list(_pg.scan(query))
    except (_pg.ParseError, UnicodeError) as exc:
        raise PlpgsqlError(str(exc)) from None
    depth = 0
    for token in tokens:
        name = token.name
        if name in ("ASCII_40", "ASCII_91"):  # ( [
            depth += 1
        elif name in ("ASCII_41", "ASCII_93"):  # ) ]
            depth -= 1
        elif depth == 0 and name in ("COLON_EQUALS", "ASCII_61"):  # := =
            return f"SELECT {query[: token.start]}, {query[token.end + 1 :]}"
    raise PlpgsqlError(f"not an assignment: {query!r}")
