"""Protocol errors raised by the codec.

As in h11, :class:`LocalProtocolError` means *we* tried to do something the
protocol forbids (a bug in the caller), and :class:`RemoteProtocolError` means
the peer sent bytes that break the protocol. Both carry the SQLSTATE that a
PostgreSQL server would report, so the shell can turn them straight into an
ErrorResponse. Any error moves the connection to its ``ERROR`` state.
"""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"


class ProtocolError(Exception):
    """A violation of the PostgreSQL v3 protocol."""

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow now."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of place."""
