"""The audit record format: field order, canonical JSON, hashes, timestamps.

A record is one JSON object per line with exactly the keys of
:data:`AUDIT_FIELDS`, in that order (DESIGN, "Audit record"). Its ``hash`` is
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
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "AUDIT_FIELDS",
    "LIST_FIELDS",
    "RECORD_TYPES",
    "ZERO_HASH",
    "canonical_json",
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

# Built once: json.dumps() with options constructs a new encoder on every call.
CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(record: Mapping[str, Any]) -> bytes:
    """Canonical JSON of ``record`` without its ``hash`` key: sorted keys, no spaces, UTF-8."""
    if "hash" in record:
        record = {key: value for key, value in record.items() if key != "hash"}
    return CANONICAL_ENCODER.encode(record).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``record``."""
    return hashlib.sha256(canonical_json(record)).hexdigest()


def record_line(record: Mapping[str, Any]) -> bytes:
    """The line stored for ``record``: its keys in their order, compact, UTF-8, ``\\n``-ended."""
    return (LINE_ENCODER.encode(record) + "\n").encode("utf-8")


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z`` suffix; a naive time is taken as UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
