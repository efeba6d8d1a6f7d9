"""The audit record format: field order, canonical JSON, hashes, timestamps.

A record is one JSON object per line with exactly the keys of
:data:`AUDIT_FIELDS`, in that order (DESIGN, "Audit record"); records of
earlier versions have those of :data:`EARLIER_FIELDS`. Its ``hash`` is
the hex SHA-256 of the record's canonical JSON without ``hash``: keys sorted,
no spaces, UTF-8 (non-ASCII characters are not escaped). ``prev`` holds the
previous record's hash, :data:`ZERO_HASH` for the first record of a trail, so
every record commits to the whole history before it.

The line written to disk is the same object in field order with the same
compact separators, so a reader can check that a line is byte-for-byte the
serialization of the record it parses to.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "AUDIT_FIELDS",
    "EARLIER_FIELDS",
    "LIST_FIELDS",
    "RECORD_LAYOUTS",
    "RECORD_TYPES",
    "ZERO_HASH",
    "canonical_json",
    "check_finite",
    "format_time",
    "record_hash",
    "record_line",
]

AUDIT_FIELDS: tuple[str, ...] = (
    "seq",
    "time",
    "type",
    "session",
    "identity",
    "groups",
    "database",
    "client",
    "application",
    "backend_pid",
    "command",
    "statement",
    "fingerprint",
    "decision",
    "policy",
    "rule",
    "masked",
    "rows",
    "duration_ms",
    "error",
    "prev",
    "hash",
)

# Records written before ``application`` and ``backend_pid`` existed. They stay
# valid: the verifier accepts them and the writer continues a trail ending in one.
EARLIER_FIELDS: tuple[str, ...] = tuple(
    name for name in AUDIT_FIELDS if name not in ("application", "backend_pid")
)
RECORD_LAYOUTS: frozenset[tuple[str, ...]] = frozenset({AUDIT_FIELDS, EARLIER_FIELDS})

# Fields that are lists: ``[]`` rather than ``null`` when not applicable.
LIST_FIELDS: frozenset[str] = frozenset({"groups", "masked"})

RECORD_TYPES: frozenset[str] = frozenset(
    {
        "session.start",
        "statement",
        "session.end",
        "review.requested",
        "review.decided",
        "policy.loaded",
    }
)

ZERO_HASH = "0" * 64


def check_finite(record: Mapping[str, Any]) -> None:
    """Refuse NaN and infinities, which JSON cannot hold."""
    for value in record.values():
        # orjson refuses float subclasses, so only floats themselves can be NaN here.
        if value.__class__ is float and not math.isfinite(value):
            raise ValueError(f"audit records cannot hold {value!r}")


# orjson writes exactly what the format asks for (compact, UTF-8, non-ASCII
# unescaped) at a fraction of the json module's cost; this runs per statement.
def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Canonical JSON of ``record`` without its ``hash`` key: sorted keys, no spaces, UTF-8."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    check_finite(record)
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``record``."""
    return hashlib.sha256(canonical_json(record)).hexdigest()


def record_line(record: Mapping[str, Any]) -> bytes:
    """The line stored for ``record``: its keys in their order, compact, UTF-8, ``\\n``-ended."""
    check_finite(record)
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z`` suffix; a naive time is taken as UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
