"""Framing, decoding and encoding of PostgreSQL v3 messages.

Every message after the startup phase is a type byte, an int32 length that
counts itself but not the type byte, and a body. Startup-phase packets have no
type byte. :class:`MessageReader` is the receive buffer: it is fed bytes in
whatever chunks TCP delivers and hands out whole frames, refusing a declared
length above its bound *before* buffering it. A :class:`Frame` keeps the raw
bytes so a proxy can forward a message untouched without re-encoding it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import messages as m
from .errors import FEATURE_NOT_SUPPORTED, LocalProtocolError, RemoteProtocolError

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET_SIZE = 10_000  # PostgreSQL's own limit
_COMPACT_AT = 64 * 1024

_I32 = struct.Struct("!i")
_TYPE_BYTES = tuple(bytes([i]) for i in range(256))


class Frame(NamedTuple):
    """One complete message as it came off the wire."""

    type: bytes  # b"" for a startup-phase packet
    raw: bytes  # header and body, exactly as received

    @property
    def body(self) -> memoryview:
        return memoryview(self.raw)[5 if self.type else 4 :]


class MessageReader:
    """Receive buffer that splits a byte stream into frames.

    ``startup`` says whether the next frame is a startup-phase packet (no
    type byte); the connection flips it as the protocol moves on.
    """

    __slots__ = ("_buf", "_eof", "_pos", "max_message_size", "startup")

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, startup: bool = False):
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.max_message_size = max_message_size
        self.startup = startup

    def feed(self, data: bytes) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self._eof = True
            return
        if self._pos and (self._pos == len(self._buf) or self._pos > _COMPACT_AT):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def at_eof(self) -> bool:
        return self._eof

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more data arrives."""
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if self.startup:
            if available < 4:
                return None
            (length,) = _I32.unpack_from(buf, pos)
            if length < 8 or length > MAX_STARTUP_PACKET_SIZE:
                raise RemoteProtocolError(f"invalid startup packet length {length}")
            if available < length:
                return None
            self._pos = pos + length
            return Frame(b"", bytes(buf[pos : pos + length]))
        if available < 5:
            return None
        (length,) = _I32.unpack_from(buf, pos + 1)
        if length < 4:
            raise RemoteProtocolError(f"invalid message length {length}")
        if length > self.max_message_size:
            raise RemoteProtocolError(
                f"message length {length} exceeds the limit of {self.max_message_size} bytes"
            )
        end = pos + 1 + length
        if len(buf) < end:
            return None
        self._pos = end
        return Frame(_TYPE_BYTES[buf[pos]], bytes(buf[pos:end]))

    def read_spans(self, run: int = -1) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        """Every complete typed frame buffered now, without a copy per frame.

        Returns the frames' bytes as one object and, for each frame, its type
        byte (an int), where it starts and ends in that object and how many
        frames it holds: 1, but each run of consecutive frames of type ``run``
        is one span. A relay that forwards most frames untouched passes the
        bytes on whole; one that counts result rows, or rewrites them a run at
        a time, does nothing per row beyond finding where each one ends.
        """
        buf = self._buf
        start = pos = self._pos
        size = len(buf)
        limit = self.max_message_size
        unpack = _I32.unpack_from
        spans = []
        while size - pos >= 5:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > limit:
                self._pos = pos
                self.next_frame()  # raises the precise error
            end = pos + 1 + length
            if size < end:
                break
            kind = buf[pos]
            first = pos
            pos = end
            count = 1
            if kind == run:
                while size - pos >= 5 and buf[pos] == run:
                    (length,) = unpack(buf, pos + 1)
                    end = pos + 1 + length
                    if length < 4 or length > limit or size < end:
                        break  # the outer loop raises, or waits for the rest
                    pos = end
                    count += 1
            spans.append((kind, first - start, pos - start, count))
        self._pos = pos
        return bytes(buf[start:pos]), spans

    def take_pending(self) -> bytes:
        """Remove and return every buffered byte not yet framed."""
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data


# --------------------------------------------------------------------------
# Decoding

_FRONTEND: dict[bytes, type[m.Message]] = {
    cls.TYPE: cls
    for cls in (
        m.Query,
        m.Parse,
        m.Bind,
        m.Describe,
        m.Execute,
        m.Sync,
        m.Flush,
        m.Close,
        m.CopyData,
        m.CopyDone,
        m.CopyFail,
        m.FunctionCall,
        m.Terminate,
    )
}

_BACKEND: dict[bytes, type[m.Message]] = {
    cls.TYPE: cls
    for cls in (
        m.ParameterStatus,
        m.BackendKeyData,
        m.ReadyForQuery,
        m.RowDescription,
        m.DataRow,
        m.CommandComplete,
        m.EmptyQueryResponse,
        m.ErrorResponse,
        m.NoticeResponse,
        m.NotificationResponse,
        m.ParseComplete,
        m.BindComplete,
        m.CloseComplete,
        m.NoData,
        m.PortalSuspended,
        m.ParameterDescription,
        m.CopyInResponse,
        m.CopyOutResponse,
        m.CopyBothResponse,
        m.CopyData,
        m.CopyDone,
        m.FunctionCallResponse,
        m.NegotiateProtocolVersion,
    )
}

PASSWORD_KINDS: dict[str, type[m.Message]] = {
    "password": m.PasswordMessage,
    "sasl-initial": m.SASLInitialResponse,
    "sasl": m.SASLResponse,
    "gss": m.GSSResponse,
}


def _parse(cls: type[m.Message], body: bytes | memoryview) -> m.Message:
    try:
        return cls._parse(m.BodyReader(body, cls.__name__))
    except RemoteProtocolError:
        raise
    except (ValueError, struct.error, IndexError) as exc:
        raise RemoteProtocolError(f"malformed {cls.__name__} message: {exc}") from None


def decode_startup(frame: Frame) -> m.Message:
    """Decode a startup-phase packet sent by a frontend."""
    r = m.BodyReader(frame.body, "startup")
    code = r.int32()
    if code == m.SSL_REQUEST_CODE:
        r.end()
        return m.SSLRequest()
    if code == m.GSSENC_REQUEST_CODE:
        r.end()
        return m.GSSENCRequest()
    if code == m.CANCEL_REQUEST_CODE:
        pid, key = r.int32(), r.int32()
        r.end()
        return m.CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise RemoteProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
            FEATURE_NOT_SUPPORTED,
        )
    parameters: dict[str, str] = {}
    while True:
        key = r.cstring()
        if not key:
            break
        parameters[key] = r.cstring()
    r.end()
    if "user" not in parameters:
        raise RemoteProtocolError("no PostgreSQL user name specified in startup packet")
    return m.StartupMessage(parameters, code)


def decode_frontend(frame: Frame, password_kind: str = "password") -> m.Message:
    """Decode a typed frontend message; ``password_kind`` resolves the ``p`` type."""
    if frame.type == b"p":
        cls = PASSWORD_KINDS[password_kind]
    else:
        found = _FRONTEND.get(frame.type)
        if found is None:
            raise RemoteProtocolError(f"invalid frontend message type {frame.type!r}")
        cls = found
    return _parse(cls, frame.body)


def decode_backend(frame: Frame) -> m.Message:
    """Decode a typed backend message."""
    if frame.type == b"R":
        body = frame.body
        if len(body) < 4:
            raise RemoteProtocolError("malformed Authentication message: truncated")
        (code,) = _I32.unpack_from(body, 0)
        cls = m.AUTHENTICATION_MESSAGES.get(code)
        if cls is None:
            raise RemoteProtocolError(f"unknown authentication request {code}")
        return _parse(cls, body[4:])
    found = _BACKEND.get(frame.type)
    if found is None:
        raise RemoteProtocolError(f"invalid backend message type {frame.type!r}")
    return _parse(found, frame.body)


# --------------------------------------------------------------------------
# Encoding


def encode(message: m.Message) -> bytes:
    """The wire bytes of one message."""
    if isinstance(message, m.SSLResponse):
        return b"S" if message.accepted else b"N"
    try:
        body = message._body()
    except (ValueError, struct.error) as exc:
        # A field out of range for its wire type (a count above 65535, an OID
        # above 2**32, a format code that is not one byte, ...).
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    if not message.TYPE:
        return _I32.pack(len(body) + 4) + body
    if len(body) + 4 > 0x7FFFFFFF:
        raise LocalProtocolError(f"{type(message).__name__} is too large to send")
    return message.TYPE + _I32.pack(len(body) + 4) + body
