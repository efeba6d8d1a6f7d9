"""Who may start a session: the sign-in rules as one pure function.

:func:`admit` looks at a client's startup packet and at what the proxy knows
at that moment (:class:`Admission`) and either returns the settings the
upstream session gets, or raises :class:`Refusal` with the SQLSTATE and
message the client is told. The subject's identity and the policies that
cover it are judged apart (``ProxyServer.identity_for`` and ``judge_for``).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from steward_proxy import startup as startup_rules
from steward_proxy import wire
from steward_proxy.escape import escape
from steward_proxy.policy.readonly import READ_ONLY_PARAMETER
from steward_proxy.sqlstate import (
    ADMIN_SHUTDOWN,
    CONNECTION_REJECTED,
    FEATURE_NOT_SUPPORTED,
    INVALID_CATALOG_NAME,
    PROTOCOL_VIOLATION,
    TOO_MANY_CONNECTIONS,
)

__all__ = ["Admission", "Refusal", "admit", "check_read_only", "read_only_settings"]


class Refusal(Exception):
    """Sign-in is refused with this SQLSTATE and message (already escaped).

    ``detail`` is for the proxy's log only (it may name the upstream);
    ``kind`` names the refusal in metrics when it is the proxy's own trouble.
    """

    def __init__(
        self,
        sqlstate: str,
        message: str,
        hint: str | None = None,
        *,
        detail: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint
        self.detail = detail
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Admission:
    """What the proxy knows when a client signs in."""

    database: str
    """The one database this proxy serves."""
    live_sessions: int
    """Sessions open or signing in (admitted ones)."""
    max_connections: int
    draining: bool = False
    audit_failed: bool = False


def admit(startup: wire.StartupMessage, state: Admission) -> dict[str, str]:
    """The settings the upstream session gets, or :class:`Refusal`."""
    parameters = startup.parameters
    invalid = startup_rules.invalid_utf8_parameter(parameters)
    if invalid is not None:
        raise Refusal(PROTOCOL_VIOLATION, f'startup parameter "{invalid}" is not valid UTF-8')
    if state.draining:
        raise Refusal(ADMIN_SHUTDOWN, "the proxy is shutting down")
    if state.audit_failed:
        raise Refusal(CONNECTION_REJECTED, "the audit trail cannot be written")
    if "replication" in parameters:
        raise Refusal(
            FEATURE_NOT_SUPPORTED, "replication connections are not allowed through Steward"
        )
    try:
        settings = startup_rules.upstream_parameters(parameters)
    except startup_rules.StartupRefused as exc:
        raise Refusal(exc.sqlstate, exc.message, exc.hint) from None
    # Sessions still signing in count too, or simultaneous sign-ins all pass.
    if state.live_sessions >= state.max_connections:
        raise Refusal(TOO_MANY_CONNECTIONS, "sorry, too many clients already")
    database = startup.database or ""
    if database != state.database:
        raise Refusal(
            INVALID_CATALOG_NAME,
            f'database "{escape(database)}" is not served by this proxy',
            detail=f"the client asked for database {escape(database)}; "
            f"this proxy serves {state.database}",
        )
    return settings


def read_only_settings(settings: dict[str, str]) -> dict[str, str]:
    """The upstream settings of a read-only subject: ``default_transaction_read_only=on`` last.

    Clients cannot set it (it is not on the startup allow-list), so it is
    the proxy's alone.
    """
    return {**settings, READ_ONLY_PARAMETER: "on"}


def check_read_only(reported: Mapping[str, str]) -> None:
    """Refuse a read-only subject's session unless the upstream reports read-only on.

    PostgreSQL 14 and later report ``default_transaction_read_only``; without
    that report the session could not be watched, so it is refused.
    """
    value = reported.get(READ_ONLY_PARAMETER)
    if value != "on":
        shown = "nothing" if value is None else f'"{escape(value)}"'
        raise Refusal(
            CONNECTION_REJECTED,
            "the subject is read-only, but the upstream does not report "
            "default_transaction_read_only on; the proxy refuses the session",
            detail=f"the upstream reported default_transaction_read_only {shown} "
            "(PostgreSQL 14 or later reports it)",
            kind="upstream_not_read_only",
        )
