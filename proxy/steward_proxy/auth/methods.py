"""Which authentication method a listener uses, and the two that ask nothing.

:func:`choose_method` reads the flags ``steward proxy`` was given and returns
the one method they select, or raises :class:`AuthConfigError` with a message
naming the flags: several methods at once, OIDC or mTLS without TLS, or trust
(no method at all) on an address other than loopback without
``--insecure-trust``.

:class:`Trust` believes the startup packet's user name (local development);
:class:`FixedIdentity` gives every client the one subject of ``--identity``
(a sidecar, whose only client is its own pod).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from steward_proxy.auth.base import ClientFacts, Exchange, Immediate, user_identity
from steward_proxy.policy import Identity

__all__ = [
    "AuthConfigError",
    "AuthFlags",
    "FixedIdentity",
    "Trust",
    "choose_method",
    "is_loopback",
]

METHOD_FLAGS = {
    "oidc": "--oidc-issuer",
    "cert": "--tls-client-ca",
    "scram-sha-256": "--users-file",
    "identity": "--identity",
}
TRUST_ADVICE = (
    "authenticate clients with --oidc-issuer (people, OIDC ID tokens), "
    "--tls-client-ca (client certificates), --users-file (SCRAM-SHA-256 passwords) "
    "or --identity (a sidecar's fixed subject); or give --insecure-trust to believe "
    "the user name clients send"
)


class AuthConfigError(ValueError):
    """The authentication flags do not make one usable method."""


@dataclass(frozen=True, slots=True)
class AuthFlags:
    """The flags that decide a listener's authentication."""

    listen_host: str
    oidc_issuer: str | None = None
    tls_client_ca: str | None = None
    users_file: str | None = None
    identity: str | None = None
    tls_cert: str | None = None
    insecure_trust: bool = False


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def choose_method(flags: AuthFlags) -> str:
    """The method the flags select: oidc, cert, scram-sha-256, identity or trust."""
    chosen = [
        method
        for method, given in (
            ("oidc", flags.oidc_issuer),
            ("cert", flags.tls_client_ca),
            ("scram-sha-256", flags.users_file),
            ("identity", flags.identity),
        )
        if given
    ]
    if len(chosen) > 1:
        names = " and ".join(METHOD_FLAGS[m] for m in chosen)
        raise AuthConfigError(
            f"{names} choose different authentication methods; a listener uses one"
        )
    if chosen:
        method = chosen[0]
        if method in ("oidc", "cert") and not flags.tls_cert:
            what = (
                "clients send their ID token as a password"
                if method == "oidc"
                else ("client certificates need TLS")
            )
            raise AuthConfigError(
                f"{METHOD_FLAGS[method]} needs TLS toward clients ({what}): "
                "give --tls-cert and --tls-key"
            )
        return method
    if not flags.insecure_trust and not is_loopback(flags.listen_host):
        raise AuthConfigError(
            f"no client authentication is configured and --listen {flags.listen_host} is "
            f"not a loopback address: anyone who can reach it could claim any user name; "
            f"{TRUST_ADVICE}"
        )
    return "trust"


class Trust:
    """The startup packet's user name is the subject ``user:NAME``; nothing is asked."""

    method = "trust"
    requires_tls = False

    def exchange(self, client: ClientFacts) -> Exchange:
        return Immediate(user_identity(client.user))

    def describe(self) -> str:
        return "trust (the user name clients send is believed; development only)"


class FixedIdentity:
    """Every client is the one subject the proxy was started with (a sidecar)."""

    method = "identity"
    requires_tls = False

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def exchange(self, client: ClientFacts) -> Exchange:
        return Immediate(self.identity)

    def describe(self) -> str:
        return f"identity (every client is {self.identity.subject})"
