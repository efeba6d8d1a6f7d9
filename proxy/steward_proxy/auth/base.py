"""What every authentication method shares: the exchange protocol and its failure.

An :class:`Exchange` is one client's authentication, as a sans-I/O state
machine: :meth:`~Exchange.begin` and :meth:`~Exchange.receive` return a
:class:`Step` (messages to send the client, and either the proven
:class:`~steward_proxy.policy.Identity` or a wish for more input). The shell
sends the messages, reads the client's next authentication message and feeds
it back, until the exchange is done or raises :class:`AuthFailed`.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from steward_proxy import wire
from steward_proxy.admission import Refusal
from steward_proxy.escape import escape, has_controls
from steward_proxy.policy import Identity
from steward_proxy.sqlstate import INVALID_AUTHORIZATION, INVALID_PASSWORD

__all__ = [
    "AuthFailed",
    "Authenticator",
    "ClientFacts",
    "Exchange",
    "Step",
    "user_identity",
]

REASONS = frozenset(
    {
        "no_tls",
        "no_certificate",
        "certificate",
        "token",
        "expired",
        "not_yet_valid",
        "audience",
        "issuer",
        "signature",
        "algorithm",
        "unknown_key",
        "claims",
        "keys_unavailable",
        "password",
        "user_name",
        "protocol",
    }
)
"""Why a sign-in failed, as metrics count it: a small fixed set (bounded cardinality)."""


class AuthFailed(Refusal):
    """Authentication failed: 28000, or 28P01 for a wrong password.

    ``reason`` is one of :data:`REASONS`; the message (already escaped) is what
    the client is told and never holds a token or a password.
    """

    def __init__(
        self,
        message: str,
        reason: str,
        *,
        sqlstate: str = INVALID_AUTHORIZATION,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        assert reason in REASONS, reason
        super().__init__(sqlstate, message, hint, detail=detail)
        self.reason = reason


def wrong_password(user: str) -> AuthFailed:
    """PostgreSQL's own words for a failed password or SCRAM exchange (28P01)."""
    return AuthFailed(
        f'password authentication failed for user "{escape(user)}"',
        "password",
        sqlstate=INVALID_PASSWORD,
    )


@dataclass(frozen=True, slots=True)
class Step:
    """What the shell does next: send ``send``; then stop at ``identity`` or read on.

    ``fetch_keys`` asks the shell to refresh the OIDC key set and call
    :meth:`Exchange.resume` (an exchange that never sets it needs no resume).
    """

    send: tuple[wire.Message, ...] = ()
    identity: Identity | None = None
    fetch_keys: bool = False


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What the transport knows about a client when it signs in."""

    user: str
    """The startup packet's user name (a claim; proven only by trust)."""
    tls: bool = False
    peer_certificate: dict[str, object] | None = None
    """The verified client certificate as :meth:`ssl.SSLSocket.getpeercert` gives it."""
    now: float = 0.0
    """The shell's monotonic clock, for caches."""


class Exchange(Protocol):
    """One client's authentication."""

    def begin(self) -> Step: ...

    def receive(self, message: wire.Message) -> Step: ...

    def resume(self) -> Step: ...


class Authenticator(Protocol):
    """One listener's authentication method; makes an exchange per client."""

    method: str
    """Recorded on ``session.start``: trust, identity, oidc, scram-sha-256 or cert."""
    requires_tls: bool

    def exchange(self, client: ClientFacts) -> Exchange: ...

    def describe(self) -> str:
        """One line for the startup log."""
        ...


MAX_NAME = 256
"""Characters a user or group name may have (an e-mail address has at most 254)."""


def user_identity(name: str, groups: tuple[str, ...] = ()) -> Identity:
    """``user:NAME`` with groups; AuthFailed (28000) for a name no log line may hold."""
    if not name or has_controls(name) or len(name) > MAX_NAME:
        raise AuthFailed(f'invalid user name "{escape(name)}"', "user_name")
    bad = next((g for g in groups if not g or has_controls(g) or len(g) > MAX_NAME), None)
    if bad is not None:
        raise AuthFailed(f'invalid group name "{escape(bad)}"', "claims")
    return Identity(f"user:{name}", groups)


class Immediate:
    """An exchange that is over before it starts: its identity is known already."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def begin(self) -> Step:
        return Step(identity=self._identity)

    def receive(self, message: wire.Message) -> Step:
        raise AuthFailed("unexpected authentication message", "protocol")

    def resume(self) -> Step:
        return self.begin()
