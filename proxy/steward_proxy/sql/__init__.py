"""SQL analysis on PostgreSQL's own grammar (pglast / libpg_query), with a shape cache.

``normalize`` and ``fingerprint`` give a statement's shape (the cache key),
``scrub`` and ``shape_fingerprint`` what the audit trail records of it,
``split_statements`` cuts a multi-statement string, ``analyze`` says what each
statement does (its operations, tables, functions, writes) for the guardrail engine.

Pure: no I/O, no sockets, no asyncio.
"""

from steward_proxy.sql.analysis import (
    DEFAULT_CACHE,
    StatementInfo,
    analyze,
    analyze_uncached,
    as_executed,
    cached,
    cached_exact,
    depends_on_literals,
    remember,
)
from steward_proxy.sql.cache import ShapeCache
from steward_proxy.sql.errors import AnalysisLimitError, SQLSyntaxError
from steward_proxy.sql.operations import DYNAMIC, Operation
from steward_proxy.sql.shape import (
    fingerprint,
    normalize,
    scrub,
    shape_fingerprint,
    split_statements,
)

__all__ = [
    "DEFAULT_CACHE",
    "DYNAMIC",
    "AnalysisLimitError",
    "Operation",
    "SQLSyntaxError",
    "ShapeCache",
    "StatementInfo",
    "analyze",
    "analyze_uncached",
    "as_executed",
    "cached",
    "cached_exact",
    "depends_on_literals",
    "fingerprint",
    "normalize",
    "remember",
    "scrub",
    "shape_fingerprint",
    "split_statements",
]
