"""The upstream leg: where the proxy connects, how it signs in, the connection.

:class:`UpstreamTarget` is parsed from a ``postgresql://`` URL. The proxy signs
in with its own credentials, answering whichever request the server makes
(trust, cleartext, MD5 or SCRAM-SHA-256 through ``scramp``, the library pg8000
uses); the client's password never travels upstream. :class:`Authenticator`
computes the answers without I/O; :class:`UpstreamProtocol` is the asyncio
connection, which queues sign-in messages for :func:`sign_in_upstream` and
then hands every chunk to the client's session.

A refused sign-in tells the client only that the upstream is unavailable or
refused the proxy; host, port and the server's own words go to the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

import scramp

from steward_proxy import startup as startup_rules
from steward_proxy import wire
from steward_proxy.admission import Refusal
from steward_proxy.escape import escape
from steward_proxy.sqlstate import (
    CANNOT_CONNECT,
    CONNECTION_REJECTED,
    INVALID_PARAMETER_VALUE,
    UNDEFINED_OBJECT,
)

if TYPE_CHECKING:
    from steward_proxy.client import ClientProtocol

log = logging.getLogger("steward.proxy")

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class UpstreamAuthError(Exception):
    """The upstream asked for something the proxy cannot answer."""


class UpstreamGone(Exception):
    """The upstream closed the connection or stopped answering during sign-in."""


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


class UpstreamProtocol(asyncio.Protocol):
    """The proxy's connection to PostgreSQL for one client."""

    def __init__(self, client: ClientProtocol) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.conn = wire.ClientConnection(max_message_size=client.server.settings.max_message_size)
        self.events: asyncio.Queue[wire.Message | None] = asyncio.Queue()
        self.relaying = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            self.client.from_upstream(data)
            return
        self.conn.receive_data(data)
        if self.conn.state is wire.State.READY:
            return  # held for the session, which takes it over
        try:
            while True:
                event = self.conn.next_event()
                if event is wire.NEED_DATA:
                    return
                if event is wire.CONNECTION_CLOSED:
                    self.events.put_nowait(None)
                    return
                self.events.put_nowait(event)  # type: ignore[arg-type]
                if self.conn.state is wire.State.READY or isinstance(event, wire.SSLResponse):
                    return
        except wire.ProtocolError as exc:
            self.events.put_nowait(None)
            log.warning("upstream protocol error during sign-in: %s", exc.message)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.relaying:
            self.client.upstream_lost(exc)
        else:
            self.events.put_nowait(None)

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()

    async def next_event(self, timeout: float) -> wire.Message:
        """The upstream's next sign-in message; UpstreamGone when it closes or stalls."""
        try:
            event = await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise UpstreamGone(f"the upstream did not answer within {timeout:g}s") from None
        if event is None:
            raise UpstreamGone("the upstream closed the connection during sign-in")
        return event

    def send(self, message: wire.Message) -> None:
        assert self.transport is not None
        self.transport.write(self.conn.send(message))


# What a refused client is told; the operator's detail goes to the log.
UPSTREAM_UNAVAILABLE = "upstream database unavailable"
UPSTREAM_SIGN_IN_FAILED = "the proxy could not sign in upstream"
UPSTREAM_NOT_PINNED = (
    "upstream client_encoding and standard_conforming_strings are not pinned; "
    "the proxy refuses the session"
)
# Upstream sign-in errors caused by a setting the client chose: the client may see them.
_CLIENT_SETTING_ERRORS = {INVALID_PARAMETER_VALUE, UNDEFINED_OBJECT}


async def sign_in_upstream(
    upstream: UpstreamProtocol,
    target: UpstreamTarget,
    session_settings: dict[str, str],
    *,
    timeout: float,
    session: str,
) -> tuple[tuple[int, int] | None, list[wire.Message]]:
    """Connect ``upstream`` and sign in with the proxy's credentials and these settings.

    Returns the upstream's cancel key and the ParameterStatus and notice
    messages it sent, or raises :class:`Refusal` (with the detail logged).
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: upstream, target.host, target.port), timeout
        )
    except (OSError, TimeoutError) as exc:
        log.warning(
            "session %s: could not connect to upstream %s:%s: %s",
            session,
            target.host,
            target.port,
            getattr(exc, "strerror", None) or exc or "timed out",
        )
        raise Refusal(CANNOT_CONNECT, UPSTREAM_UNAVAILABLE, kind="upstream_connect") from None
    context = target.ssl_context()
    if context is not None:
        upstream.send(wire.SSLRequest())
        answer = await _next(upstream, timeout, session)
        if isinstance(answer, wire.SSLResponse) and answer.accepted:
            try:
                upstream.transport = await loop.start_tls(  # type: ignore[assignment]
                    upstream.transport,  # type: ignore[arg-type]
                    upstream,
                    context,
                    server_hostname=target.host if target.sslmode == "verify-full" else None,
                    ssl_handshake_timeout=timeout,
                )
            except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
                log.warning("session %s: TLS handshake with the upstream failed: %s", session, exc)
                raise Refusal(CANNOT_CONNECT, UPSTREAM_UNAVAILABLE) from None
        elif target.sslmode in ("require", "verify-ca", "verify-full"):
            log.warning(
                "session %s: upstream does not support TLS (sslmode=%s requires it)",
                session,
                target.sslmode,
            )
            raise Refusal(CANNOT_CONNECT, UPSTREAM_UNAVAILABLE)
    params = {"user": target.user, "database": target.database, **session_settings}
    upstream.send(wire.StartupMessage(params))
    auth = Authenticator(target)
    key: tuple[int, int] | None = None
    reported: list[wire.Message] = []
    while True:
        event = await _next(upstream, timeout, session)
        if isinstance(event, wire.ErrorResponse):
            log.warning(
                "session %s: upstream refused the proxy's sign-in: %s: %s",
                session,
                event.sqlstate,
                escape(event.message, limit=1024),
            )
            if event.sqlstate in _CLIENT_SETTING_ERRORS:
                raise Refusal(event.sqlstate, escape(event.message))
            raise Refusal(CONNECTION_REJECTED, UPSTREAM_SIGN_IN_FAILED)
        if isinstance(event, wire.ReadyForQuery):
            _check_pinned(reported, session)
            return key, reported
        if isinstance(event, wire.BackendKeyData):
            key = (event.process_id, event.secret_key)
        elif isinstance(event, wire.ParameterStatus | wire.NoticeResponse):
            reported.append(event)
        elif isinstance(event, wire.NegotiateProtocolVersion):
            continue
        else:
            try:
                reply = auth.answer(event)
            except UpstreamAuthError as exc:
                log.warning("session %s: upstream sign-in failed: %s", session, exc)
                raise Refusal(CONNECTION_REJECTED, UPSTREAM_SIGN_IN_FAILED) from None
            if reply is not None:
                upstream.send(reply)


def _check_pinned(reported: list[wire.Message], session: str) -> None:
    """Refuse the session unless the upstream reports the pinned settings."""
    status = {m.name: m.value for m in reported if isinstance(m, wire.ParameterStatus)}
    reason = startup_rules.check_pinned(status)
    if reason is not None:
        log.warning("session %s: %s; sign-in refused", session, reason)
        raise Refusal(CONNECTION_REJECTED, UPSTREAM_NOT_PINNED, kind="upstream_not_pinned")


async def _next(upstream: UpstreamProtocol, timeout: float, session: str) -> wire.Message:
    try:
        return await upstream.next_event(timeout)
    except UpstreamGone as exc:
        log.warning("session %s: upstream sign-in broke off: %s", session, exc)
        raise Refusal(CANNOT_CONNECT, UPSTREAM_UNAVAILABLE) from None
