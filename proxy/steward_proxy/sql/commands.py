"""Command tags: which PostgreSQL command a parsed statement is.

The tag is the first word of the tag PostgreSQL itself reports for the
statement (``CREATE TABLE`` -> ``CREATE``, ``DECLARE CURSOR`` -> ``DECLARE``,
``REFRESH MATERIALIZED VIEW`` -> ``REFRESH``), because policies name statements
by that word (see DESIGN: ``statements: [UPDATE, DELETE]``). Exceptions, each
chosen so a policy cannot be sidestepped by spelling:

- ``START TRANSACTION`` is ``BEGIN`` and ``ROLLBACK TO SAVEPOINT`` is ``ROLLBACK``;
- two-phase commit keeps its full tags (``PREPARE TRANSACTION``,
  ``COMMIT PREPARED``, ``ROLLBACK PREPARED``) so they never pass for ``PREPARE``,
  ``COMMIT`` or ``ROLLBACK``; ``SECURITY LABEL`` keeps both words;
- ``SELECT ... INTO t`` creates a table, so it is ``CREATE`` (like
  ``CREATE TABLE ... AS``), not ``SELECT``.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["command_tag"]

Fields = Mapping[str, Any]

_FIXED: dict[str, str] = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "TruncateStmt": "TRUNCATE",
    "CallStmt": "CALL",
    "DoStmt": "DO",
    "VariableShowStmt": "SHOW",
    "ConstraintsSetStmt": "SET",
    "ListenStmt": "LISTEN",
    "NotifyStmt": "NOTIFY",
    "UnlistenStmt": "UNLISTEN",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "ExplainStmt": "EXPLAIN",
    "DeclareCursorStmt": "DECLARE",
    "ClosePortalStmt": "CLOSE",
    "DiscardStmt": "DISCARD",
    "LockStmt": "LOCK",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX",
    "CheckPointStmt": "CHECKPOINT",
    "LoadStmt": "LOAD",
    "RefreshMatViewStmt": "REFRESH",
    "ImportForeignSchemaStmt": "IMPORT",
    "ReassignOwnedStmt": "REASSIGN",
    "DropOwnedStmt": "DROP",
    # Node names that do not start with Create/Alter/Drop.
    "CreatedbStmt": "CREATE",
    "DropdbStmt": "DROP",
    "DefineStmt": "CREATE",
    "CompositeTypeStmt": "CREATE",
    "IndexStmt": "CREATE",
    "ViewStmt": "CREATE",
    "RuleStmt": "CREATE",
    "RenameStmt": "ALTER",
    "ReplicaIdentityStmt": "ALTER",
}

_TRANSACTION: dict[str, str] = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "BEGIN",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}


def _select(fields: Fields) -> str:
    return "CREATE" if fields.get("intoClause") else "SELECT"


def _transaction(fields: Fields) -> str:
    return _TRANSACTION.get(fields.get("kind", ""), "ROLLBACK")


def _set(fields: Fields) -> str:
    return "RESET" if fields.get("kind") in ("VAR_RESET", "VAR_RESET_ALL") else "SET"


def _grant(fields: Fields) -> str:
    return "GRANT" if fields.get("is_grant") else "REVOKE"


_COMPUTED: dict[str, Callable[[Fields], str]] = {
    "SelectStmt": _select,
    "TransactionStmt": _transaction,
    "VariableSetStmt": _set,
    "GrantStmt": _grant,
    "GrantRoleStmt": _grant,
    "VacuumStmt": lambda f: "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE",
    "FetchStmt": lambda f: "MOVE" if f.get("ismove") else "FETCH",
}


def command_tag(node_type: str, fields: Fields) -> str:
    """Return the command tag for a top-level statement node (see the module docstring)."""
    computed = _COMPUTED.get(node_type)
    if computed is not None:
        return computed(fields)
    fixed = _FIXED.get(node_type)
    if fixed is not None:
        return fixed
    for prefix, tag in (("Create", "CREATE"), ("Alter", "ALTER"), ("Drop", "DROP")):
        if node_type.startswith(prefix):
            return tag
    # A statement type this table does not know yet (a newer PostgreSQL grammar):
    # name it after the node so a policy can still see it is not a plain read.
    return node_type.removesuffix("Stmt").upper()
