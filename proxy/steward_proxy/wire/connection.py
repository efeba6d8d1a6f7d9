"""The protocol state machine, one shared table for both peers.

A frontend and a backend walk through the same states, so one table maps
``(state, message class)`` to the next state; who sends a message is fixed
by its class. :class:`ServerConnection` is the backend's side (it reads
frontend messages and writes backend ones); :class:`ClientConnection` is the
frontend's. As in h11, the caller feeds bytes with :meth:`receive_data`
(``b""`` means EOF), pulls one event at a time with :meth:`next_event` and
turns messages into bytes with :meth:`send`; both paths advance the state.
Pulling one event at a time lets the caller stop at the SSLRequest and switch
the transport to TLS before reading further.

Once the connection is ``READY`` the sequence of messages is the query
protocol's business, not the state machine's: :meth:`next_frame` hands out
raw frames for a proxy to forward untouched and decode only when it must.
"""

from __future__ import annotations

import enum
from typing import Final

from . import messages as m
from .codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Frame,
    MessageReader,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError


class State(enum.Enum):
    STARTUP = "startup"
    SSL_NEGOTIATION = "ssl-negotiation"
    AUTHENTICATING = "authenticating"
    PASSWORD = "password"
    SASL_INITIAL = "sasl-initial"
    SASL_CONTINUE = "sasl-continue"
    GSS = "gss"
    STARTING = "starting"
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CONNECTION_CLOSED: Final = _Sentinel("CONNECTION_CLOSED")

S = State
TRANSITIONS: Final[dict[tuple[State, type[m.Message]], State]] = {
    (S.STARTUP, m.SSLRequest): S.SSL_NEGOTIATION,
    (S.STARTUP, m.GSSENCRequest): S.SSL_NEGOTIATION,
    (S.SSL_NEGOTIATION, m.SSLResponse): S.STARTUP,
    (S.STARTUP, m.StartupMessage): S.AUTHENTICATING,
    (S.STARTUP, m.CancelRequest): S.CLOSED,
    (S.STARTUP, m.ErrorResponse): S.CLOSED,
    (S.AUTHENTICATING, m.NegotiateProtocolVersion): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationCleartextPassword): S.PASSWORD,
    (S.AUTHENTICATING, m.AuthenticationMD5Password): S.PASSWORD,
    (S.PASSWORD, m.PasswordMessage): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationSASL): S.SASL_INITIAL,
    (S.SASL_INITIAL, m.SASLInitialResponse): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationSASLContinue): S.SASL_CONTINUE,
    (S.SASL_CONTINUE, m.SASLResponse): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationSASLFinal): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationGSS): S.GSS,
    (S.AUTHENTICATING, m.AuthenticationSSPI): S.GSS,
    (S.AUTHENTICATING, m.AuthenticationGSSContinue): S.GSS,
    (S.GSS, m.GSSResponse): S.AUTHENTICATING,
    (S.AUTHENTICATING, m.AuthenticationOk): S.STARTING,
    (S.STARTING, m.ParameterStatus): S.STARTING,
    (S.STARTING, m.BackendKeyData): S.STARTING,
    (S.STARTING, m.NoticeResponse): S.STARTING,
    (S.STARTING, m.ReadyForQuery): S.READY,
}
# A failure or a goodbye ends any phase before READY.
for _state in (S.AUTHENTICATING, S.PASSWORD, S.SASL_INITIAL, S.SASL_CONTINUE, S.GSS, S.STARTING):
    TRANSITIONS[(_state, m.ErrorResponse)] = S.CLOSED
    TRANSITIONS[(_state, m.Terminate)] = S.CLOSED
TRANSITIONS[(S.AUTHENTICATING, m.NoticeResponse)] = S.AUTHENTICATING
del _state

# Which kind of 'p' message the frontend sends in each authentication state.
_PASSWORD_KIND: Final = {
    S.PASSWORD: "password",
    S.SASL_INITIAL: "sasl-initial",
    S.SASL_CONTINUE: "sasl",
    S.GSS: "gss",
}

Event = m.Message | _Sentinel


class _Connection:
    """Shared machinery; subclasses say which side decodes what."""

    _reads_frontend: bool

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.state = S.STARTUP
        # Which request the SSL_NEGOTIATION answer is for: 'S' accepts SSL, 'G' GSS.
        self._accept_byte = b"S"
        self._reader = MessageReader(
            max_message_size=max_message_size, startup=self._reads_frontend
        )

    # -- state ---------------------------------------------------------------

    def _advance(self, message: m.Message) -> None:
        state = self.state
        if state is S.READY:
            if not message.TYPE:
                # Startup-phase packets have no type byte and would desync the stream.
                raise LocalProtocolError(f"{type(message).__name__} is not allowed in state ready")
            if type(message) is m.Terminate:
                self.state = S.CLOSED
            return
        try:
            self.state = TRANSITIONS[(state, type(message))]
        except KeyError:
            raise LocalProtocolError(
                f"{type(message).__name__} is not allowed in state {state.value}"
            ) from None
        if self._reads_frontend:
            self._reader.startup = self.state is S.STARTUP
        if self.state is S.SSL_NEGOTIATION:
            self._accept_byte = b"G" if type(message) is m.GSSENCRequest else b"S"

    def _fail(self) -> None:
        self.state = S.ERROR

    # -- receiving -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` marks end of stream."""
        self._reader.feed(data)

    @property
    def pending(self) -> int:
        """Bytes received but not yet turned into events."""
        return self._reader.pending

    def take_pending(self) -> bytes:
        """Remove and return bytes received but not yet read, to hand them on."""
        return self._reader.take_pending()

    def next_frame(self) -> Frame | None:
        """The next raw frame, for the READY phase's pass-through path."""
        try:
            frame = self._reader.next_frame()
        except ProtocolError:
            self._fail()
            raise
        if frame is None and self._reader.at_eof and self._reader.pending:
            self._fail()
            raise RemoteProtocolError("connection closed in the middle of a message")
        return frame

    def next_event(self) -> Event:
        """The next message from the peer, ``NEED_DATA`` or ``CONNECTION_CLOSED``."""
        if self.state is S.ERROR:
            raise LocalProtocolError("connection is in the ERROR state")
        try:
            event = self._next_event()
        except ProtocolError as exc:
            self._fail()
            if isinstance(exc, LocalProtocolError):
                # A message that decodes but is out of place is the peer's fault.
                raise RemoteProtocolError(exc.message, exc.sqlstate) from None
            raise
        return event

    def _next_event(self) -> Event:
        frame = self.next_frame()
        if frame is None:
            if self._reader.at_eof:
                return CONNECTION_CLOSED
            return NEED_DATA
        message = self.decode(frame)
        self._advance(message)
        return message

    def decode(self, frame: Frame) -> m.Message:
        raise NotImplementedError

    # -- sending ---------------------------------------------------------------

    def send(self, message: m.Message) -> bytes:
        """Advance the state for an outgoing message and return its bytes."""
        try:
            if self._reads_frontend == message.FRONTEND and not isinstance(
                message, m.CopyData | m.CopyDone
            ):
                raise LocalProtocolError(f"this side cannot send {type(message).__name__}")
            data = encode(message)
            if isinstance(message, m.SSLResponse) and message.accepted:
                data = self._accept_byte
            self._advance(message)
        except LocalProtocolError:
            self._fail()
            raise
        return data


class ServerConnection(_Connection):
    """The backend's side: reads frontend messages, writes backend ones."""

    _reads_frontend = True

    def decode(self, frame: Frame) -> m.Message:
        if not frame.type:
            return decode_startup(frame)
        return decode_frontend(frame, _PASSWORD_KIND.get(self.state, "password"))

    def send(self, message: m.Message) -> bytes:
        if isinstance(message, m.SSLResponse) and message.accepted and self.pending:
            # Bytes that arrived before the TLS handshake would be trusted as
            # if encrypted (CVE-2021-23214); refuse them.
            self._fail()
            raise RemoteProtocolError("received unencrypted data after SSL request")
        return super().send(message)


class ClientConnection(_Connection):
    """The frontend's side: reads backend messages, writes frontend ones."""

    _reads_frontend = False

    def _next_event(self) -> Event:
        if self.state is S.SSL_NEGOTIATION:
            if self._reader.pending == 0:
                return CONNECTION_CLOSED if self._reader.at_eof else NEED_DATA
            answer = self._reader.take_pending()
            if answer[:1] not in (self._accept_byte, b"N"):
                # A server too old for SSL answers with an ErrorResponse.
                raise RemoteProtocolError(f"invalid response to SSL request: {answer[:1]!r}")
            if len(answer) > 1:
                raise RemoteProtocolError("received unencrypted data after SSL response")
            message = m.SSLResponse(answer == self._accept_byte)
            self._advance(message)
            return message
        return super()._next_event()

    def decode(self, frame: Frame) -> m.Message:
        return decode_backend(frame)
