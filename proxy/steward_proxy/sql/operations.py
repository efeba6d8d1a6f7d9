"""Operations: what a statement executes, as ``(command, table)`` pairs with details.

A guardrail judges operations, not a statement's outer tag: ``WITH d AS (DELETE
FROM t RETURNING *) SELECT * FROM d`` is a ``DELETE`` on ``t`` (plus the
``SELECT`` its ``RETURNING`` makes on ``t``, and the outer ``SELECT``), whatever
its tag says. :class:`Operation` is one such pair; the walker in ``analysis``
lists them. This module also holds PostgreSQL's fixed vocabularies the walker
needs: the functions that run SQL text they are given (``DYNAMIC``), and the
``CREATE``/``ALTER`` options that wire a function in to run later.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DYNAMIC",
    "DYNAMIC_FUNCTIONS",
    "WIRING_OPTIONS",
    "CopyTarget",
    "Operation",
]

DYNAMIC = "DYNAMIC"
"""The command of an operation that runs SQL Steward cannot read before it runs."""

CopyTarget = Literal["stdio", "file", "program"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One thing a statement executes (or wires in to execute later).

    - ``command``: a command tag (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``,
      ``MERGE``, ``COPY``, ``DO``, ``CREATE``, ...) or ``DYNAMIC``.
    - ``table``: ``schema.table`` the operation acts on (unqualified means
      ``public``), or ``None`` when it names no table (``SELECT 1``, ``DO``).
    - ``unbounded``: an ``UPDATE`` or ``DELETE`` (also a ``MERGE`` action) with
      no ``WHERE`` or one that holds whatever the row.
    - ``copy``: for a ``COPY`` operation, where its data comes from or goes to:
      ``stdio`` (the client), ``file`` (a server file), ``program`` (a server
      command).
    - ``language``: for a ``DO`` block or a ``CREATE FUNCTION``/``PROCEDURE``,
      the language of its code, lower-cased.
    """

    command: str
    table: str | None = None
    unbounded: bool = False
    copy: CopyTarget | None = None
    language: str | None = None


# Functions that run SQL text (or read relations named by) an argument, so what
# they execute is not in the parse tree: the xml.c functions build "SELECT * FROM
# <name>" or run the query text through SPI; ts_stat and the two-argument
# ts_rewrite run their query text; dblink runs SQL on a (possibly the same)
# server; tablefunc's crosstab and connectby run their query text.
DYNAMIC_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_send_query",
        "crosstab",
        "crosstab2",
        "crosstab3",
        "crosstab4",
        "connectby",
    }
)

# Options of CREATE AGGREGATE / OPERATOR / TYPE / TEXT SEARCH PARSER|TEMPLATE,
# CREATE TYPE ... AS RANGE, ALTER OPERATOR|TYPE ... SET, CREATE|ALTER FOREIGN DATA
# WRAPPER and CREATE|ALTER FUNCTION whose value names a function PostgreSQL will
# call later (PostgreSQL's own option names; "procedure" is the old spelling of
# an operator's "function").
WIRING_OPTIONS = frozenset(
    {
        # aggregates
        "sfunc",
        "sfunc1",
        "finalfunc",
        "finalfunc1",
        "combinefunc",
        "serialfunc",
        "deserialfunc",
        "msfunc",
        "minvfunc",
        "mfinalfunc",
        # operators
        "function",
        "procedure",
        "restrict",
        "join",
        # base and range types
        "input",
        "output",
        "receive",
        "send",
        "typmod_in",
        "typmod_out",
        "analyze",
        "subscript",
        "subtype_diff",
        "canonical",
        # text search parsers and templates
        "start",
        "gettoken",
        "end",
        "headline",
        "lextypes",
        "init",
        "lexize",
        # foreign data wrappers, languages
        "handler",
        "validator",
        "inline",
        # planner support functions
        "support",
    }
)
