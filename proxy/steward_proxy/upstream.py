"""Where the proxy connects upstream and how it signs in there.

:class:`UpstreamTarget` is parsed from a ``postgresql://`` URL. The proxy signs
in with its own credentials, answering whichever request the server makes
(trust, cleartext, MD5 or SCRAM-SHA-256 through ``scramp``, the library pg8000
uses); the client's password never travels upstream. The answers are computed
by pure functions here; :mod:`steward_proxy.server` moves the bytes.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import scramp

from steward_proxy import wire

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class UpstreamAuthError(Exception):
    """The upstream asked for something the proxy cannot answer."""


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    database: str
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    sslrootcert: str | None = None

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None) -> UpstreamTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"upstream must be a postgresql:// URL, got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("upstream URL has no host")
        if not parts.username:
            raise ValueError("upstream URL has no user")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sslmode = query.get("sslmode", "prefer")
        if sslmode not in SSL_MODES:
            raise ValueError(f"unknown sslmode {sslmode!r}; one of {', '.join(SSL_MODES)}")
        database = unquote(parts.path.lstrip("/")) or unquote(parts.username)
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username),
            database=database,
            password=unquote(parts.password) if parts.password else password,
            sslmode=sslmode,
            sslrootcert=query.get("sslrootcert"),
        )

    def redacted(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client-side TLS context the sslmode asks for, or None for no TLS."""
        if self.sslmode == "disable":
            return None
        if self.sslmode in ("verify-ca", "verify-full"):
            context = ssl.create_default_context(cafile=self.sslrootcert)
            context.check_hostname = self.sslmode == "verify-full"
            return context
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's ``md5`` answer: md5(md5(password + user) + salt), hex, prefixed."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


class Authenticator:
    """Answers the upstream's authentication requests, one message at a time."""

    def __init__(self, target: UpstreamTarget) -> None:
        self._target = target
        self._scram: scramp.ScramClient | None = None

    def _password(self) -> str:
        if self._target.password is None:
            raise UpstreamAuthError(
                "the upstream asks for a password and none is configured "
                "(use the URL, --upstream-password-file or STEWARD_UPSTREAM_PASSWORD)"
            )
        return self._target.password

    def answer(self, request: wire.Message) -> wire.Message | None:
        """The message to send for an authentication request, None when none is due."""
        if isinstance(request, wire.AuthenticationOk):
            return None
        if isinstance(request, wire.AuthenticationCleartextPassword):
            return wire.PasswordMessage(self._password().encode())
        if isinstance(request, wire.AuthenticationMD5Password):
            return wire.PasswordMessage(
                md5_password(self._target.user, self._password(), request.salt)
            )
        if isinstance(request, wire.AuthenticationSASL):
            if "SCRAM-SHA-256" not in request.mechanisms:
                raise UpstreamAuthError(f"no supported SASL mechanism in {request.mechanisms}")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self._target.user, self._password())
            first = self._scram.get_client_first()
            return wire.SASLInitialResponse("SCRAM-SHA-256", first.encode())
        if isinstance(request, wire.AuthenticationSASLContinue):
            if self._scram is None:
                raise UpstreamAuthError("SASLContinue before SASL")
            try:
                self._scram.set_server_first(request.data.decode())
                return wire.SASLResponse(self._scram.get_client_final().encode())
            except scramp.ScramException as exc:
                raise UpstreamAuthError(f"SCRAM exchange failed: {exc}") from None
        if isinstance(request, wire.AuthenticationSASLFinal):
            if self._scram is None:
                raise UpstreamAuthError("SASLFinal before SASL")
            try:
                self._scram.set_server_final(request.data.decode())
            except scramp.ScramException as exc:
                raise UpstreamAuthError(f"upstream failed SCRAM verification: {exc}") from None
            return None
        raise UpstreamAuthError(
            f"unsupported upstream authentication request {type(request).__name__}"
        )
