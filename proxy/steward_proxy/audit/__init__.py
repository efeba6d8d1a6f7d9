"""The tamper-evident audit trail: hash-chained JSON-lines records, writer and verifier.

``record`` defines the format (DESIGN, "Audit record"), ``writer`` appends to a
local spool file with fsync and rotation options, ``verify`` recomputes the
chain and names the first bad record. File I/O only: no sockets here.
"""

from steward_proxy.audit.record import (
    AUDIT_FIELDS,
    RECORD_TYPES,
    ZERO_HASH,
    canonical_json,
    format_time,
    record_hash,
    record_line,
)
from steward_proxy.audit.verify import VerifyResult, trail_files, verify
from steward_proxy.audit.writer import AuditSink, AuditWriteError, AuditWriter, rotated_siblings

__all__ = [
    "AUDIT_FIELDS",
    "RECORD_TYPES",
    "ZERO_HASH",
    "AuditSink",
    "AuditWriteError",
    "AuditWriter",
    "VerifyResult",
    "canonical_json",
    "format_time",
    "record_hash",
    "record_line",
    "rotated_siblings",
    "trail_files",
    "verify",
]
