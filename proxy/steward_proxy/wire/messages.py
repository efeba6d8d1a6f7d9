"""One frozen dataclass per PostgreSQL v3 protocol message.

Names follow the protocol documentation ("Message Formats", PostgreSQL 15
manual, section 55.7). Each class knows its type byte, how to write its body
(``_body``) and how to read one (``_parse``); :mod:`.codec` frames them.
Messages sent before a type byte exists (StartupMessage, SSLRequest,
GSSENCRequest, CancelRequest) have ``TYPE = b""``.

Text travels as UTF-8 (Steward requires ``client_encoding`` UTF8 for the
statements it analyses); undecodable bytes survive a round trip through
``surrogateescape`` so nothing is lost when a message is re-encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION_3 = 196608  # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_H = struct.Struct("!H")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _cstr(text: str) -> bytes:
    data = _bytes(text)
    if b"\0" in data:
        raise LocalProtocolError(f"string contains a NUL byte: {text!r}")
    return data + b"\0"


class BodyReader:
    """Reads the fields of one message body; any overrun is a remote error."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def _fail(self, problem: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed {self._what} message: {problem}")

    def _number(self, fmt: struct.Struct, what: str) -> int:
        if self._pos + fmt.size > len(self._data):
            raise self._fail(f"truncated {what}")
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos += fmt.size
        return value

    def int16(self) -> int:
        return self._number(_I16, "int16")

    def uint16(self) -> int:
        return self._number(_H, "uint16")

    def int32(self) -> int:
        return self._number(_I32, "int32")

    def uint32(self) -> int:
        return self._number(_U32, "uint32")

    def byte(self) -> str:
        if self._pos >= len(self._data):
            raise self._fail("truncated byte")
        value = chr(self._data[self._pos])
        self._pos += 1
        return value

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise self._fail("string is not NUL-terminated")
        value = _text(self._data[self._pos : end])
        self._pos = end + 1
        return value

    def raw(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise self._fail("truncated field")
        value = self._data[self._pos : self._pos + n]
        self._pos += n
        return value

    def value(self) -> bytes | None:
        """A length-prefixed value where length -1 means NULL."""
        n = self.int32()
        if n == -1:
            return None
        return self.raw(n)

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self._fail(f"{len(self._data) - self._pos} unexpected trailing bytes")


def _values(values: tuple[bytes | None, ...]) -> bytes:
    out = [_H.pack(len(values))]
    for value in values:
        if value is None:
            out.append(_I32.pack(-1))
        else:
            out.append(_I32.pack(len(value)))
            out.append(value)
    return b"".join(out)


def _int16s(items: tuple[int, ...]) -> bytes:
    return _H.pack(len(items)) + b"".join(_I16.pack(i) for i in items)


class Message:
    """Base of every protocol message."""

    __slots__ = ()
    TYPE: ClassVar[bytes] = b""
    FRONTEND: ClassVar[bool] = False

    def _body(self) -> bytes:
        return b""

    @classmethod
    def _parse(cls, r: BodyReader) -> Message:
        r.end()
        return cls()


# --------------------------------------------------------------------------
# Startup-phase packets (no type byte)


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    parameters: Mapping[str, str] = field(default_factory=dict)
    protocol_version: int = PROTOCOL_VERSION_3
    FRONTEND: ClassVar[bool] = True

    @property
    def user(self) -> str | None:
        return self.parameters.get("user")

    @property
    def database(self) -> str | None:
        return self.parameters.get("database") or self.parameters.get("user")

    def _body(self) -> bytes:
        parts = [_I32.pack(self.protocol_version)]
        for key, value in self.parameters.items():
            parts.append(_cstr(key))
            parts.append(_cstr(value))
        parts.append(b"\0")
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    process_id: int
    secret_key: int
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return (
            _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.process_id) + _I32.pack(self.secret_key)
        )


@dataclass(frozen=True, slots=True)
class SSLResponse(Message):
    """The single byte ``S`` or ``N`` a server sends after an SSL/GSSENC request."""

    accepted: bool


# --------------------------------------------------------------------------
# Frontend messages


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    password: bytes
    TYPE: ClassVar[bytes] = b"p"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return self.password + b"\0"

    @classmethod
    def _parse(cls, r: BodyReader) -> PasswordMessage:
        data = r.rest()
        if not data.endswith(b"\0"):
            raise RemoteProtocolError("malformed PasswordMessage: not NUL-terminated")
        return cls(data[:-1])


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    mechanism: str
    data: bytes | None
    TYPE: ClassVar[bytes] = b"p"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        if self.data is None:
            return _cstr(self.mechanism) + _I32.pack(-1)
        return _cstr(self.mechanism) + _I32.pack(len(self.data)) + self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> SASLInitialResponse:
        mechanism = r.cstring()
        data = r.value()
        r.end()
        return cls(mechanism, data)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    data: bytes
    TYPE: ClassVar[bytes] = b"p"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> SASLResponse:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    data: bytes
    TYPE: ClassVar[bytes] = b"p"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> GSSResponse:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class Query(Message):
    query: str
    TYPE: ClassVar[bytes] = b"Q"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return _cstr(self.query)

    @classmethod
    def _parse(cls, r: BodyReader) -> Query:
        query = r.cstring()
        r.end()
        return cls(query)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    name: str
    query: str
    param_types: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b"P"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        types = b"".join(_U32.pack(t) for t in self.param_types)
        return _cstr(self.name) + _cstr(self.query) + _H.pack(len(self.param_types)) + types

    @classmethod
    def _parse(cls, r: BodyReader) -> Parse:
        name = r.cstring()
        query = r.cstring()
        types = tuple(r.uint32() for _ in range(r.uint16()))
        r.end()
        return cls(name, query, types)


@dataclass(frozen=True, slots=True)
class Bind(Message):
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b"B"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return (
            _cstr(self.portal)
            + _cstr(self.statement)
            + _int16s(self.param_formats)
            + _values(self.params)
            + _int16s(self.result_formats)
        )

    @classmethod
    def _parse(cls, r: BodyReader) -> Bind:
        portal = r.cstring()
        statement = r.cstring()
        formats = tuple(r.int16() for _ in range(r.uint16()))
        params = tuple(r.value() for _ in range(r.uint16()))
        results = tuple(r.int16() for _ in range(r.uint16()))
        r.end()
        return cls(portal, statement, formats, params, results)


class _Target(Message):
    """Describe and Close: a kind (``S`` statement or ``P`` portal) and a name."""

    __slots__ = ()
    kind: str
    name: str

    def _body(self) -> bytes:
        return _bytes(self.kind) + _cstr(self.name)

    @classmethod
    def _parse(cls, r: BodyReader) -> _Target:
        kind = r.byte()
        if kind not in "SP":
            raise RemoteProtocolError(f"invalid {cls.__name__} kind {kind!r}")
        name = r.cstring()
        r.end()
        return cls(kind, name)  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Describe(_Target):
    kind: str  # "S" statement or "P" portal
    name: str = ""
    TYPE: ClassVar[bytes] = b"D"
    FRONTEND: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Execute(Message):
    portal: str = ""
    max_rows: int = 0
    TYPE: ClassVar[bytes] = b"E"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)

    @classmethod
    def _parse(cls, r: BodyReader) -> Execute:
        portal = r.cstring()
        max_rows = r.int32()
        r.end()
        return cls(portal, max_rows)


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TYPE: ClassVar[bytes] = b"S"
    FRONTEND: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TYPE: ClassVar[bytes] = b"H"
    FRONTEND: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Close(_Target):
    kind: str  # "S" statement or "P" portal
    name: str = ""
    TYPE: ClassVar[bytes] = b"C"
    FRONTEND: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    """Sent by either side during COPY."""

    data: bytes
    TYPE: ClassVar[bytes] = b"d"

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> CopyData:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    """Sent by either side at the end of COPY data."""

    TYPE: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    message: str
    TYPE: ClassVar[bytes] = b"f"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return _cstr(self.message)

    @classmethod
    def _parse(cls, r: BodyReader) -> CopyFail:
        message = r.cstring()
        r.end()
        return cls(message)


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0
    TYPE: ClassVar[bytes] = b"F"
    FRONTEND: ClassVar[bool] = True

    def _body(self) -> bytes:
        return (
            _U32.pack(self.function_oid)
            + _int16s(self.arg_formats)
            + _values(self.args)
            + _I16.pack(self.result_format)
        )

    @classmethod
    def _parse(cls, r: BodyReader) -> FunctionCall:
        oid = r.uint32()
        formats = tuple(r.int16() for _ in range(r.uint16()))
        args = tuple(r.value() for _ in range(r.uint16()))
        result = r.int16()
        r.end()
        return cls(oid, formats, args, result)


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TYPE: ClassVar[bytes] = b"X"
    FRONTEND: ClassVar[bool] = True


# --------------------------------------------------------------------------
# Backend messages: authentication ('R', told apart by an int32 code)


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 0

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 2

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 3

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Message):
    salt: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 5

    def _body(self) -> bytes:
        if len(self.salt) != 4:
            raise LocalProtocolError("MD5 salt must be 4 bytes")
        return _I32.pack(self.CODE) + self.salt

    @classmethod
    def _parse(cls, r: BodyReader) -> AuthenticationMD5Password:
        salt = r.raw(4)
        r.end()
        return cls(salt)


@dataclass(frozen=True, slots=True)
class AuthenticationSCMCredential(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 6

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 7

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(Message):
    data: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 8

    def _body(self) -> bytes:
        return _I32.pack(self.CODE) + self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> AuthenticationGSSContinue:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Message):
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 9

    def _body(self) -> bytes:
        return _I32.pack(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Message):
    mechanisms: tuple[str, ...]
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 10

    def _body(self) -> bytes:
        return _I32.pack(self.CODE) + b"".join(_cstr(m) for m in self.mechanisms) + b"\0"

    @classmethod
    def _parse(cls, r: BodyReader) -> AuthenticationSASL:
        mechanisms = []
        while True:
            mechanism = r.cstring()
            if not mechanism:
                break
            mechanisms.append(mechanism)
        r.end()
        return cls(tuple(mechanisms))


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Message):
    data: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 11

    def _body(self) -> bytes:
        return _I32.pack(self.CODE) + self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> AuthenticationSASLContinue:
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Message):
    data: bytes
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 12

    def _body(self) -> bytes:
        return _I32.pack(self.CODE) + self.data

    @classmethod
    def _parse(cls, r: BodyReader) -> AuthenticationSASLFinal:
        return cls(r.rest())


AUTHENTICATION_MESSAGES: dict[int, type[Message]] = {
    cls.CODE: cls  # type: ignore[attr-defined]
    for cls in (
        AuthenticationOk,
        AuthenticationKerberosV5,
        AuthenticationCleartextPassword,
        AuthenticationMD5Password,
        AuthenticationSCMCredential,
        AuthenticationGSS,
        AuthenticationGSSContinue,
        AuthenticationSSPI,
        AuthenticationSASL,
        AuthenticationSASLContinue,
        AuthenticationSASLFinal,
    )
}


# --------------------------------------------------------------------------
# Backend messages: the rest


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    name: str
    value: str
    TYPE: ClassVar[bytes] = b"S"

    def _body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def _parse(cls, r: BodyReader) -> ParameterStatus:
        name = r.cstring()
        value = r.cstring()
        r.end()
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    process_id: int
    secret_key: int
    TYPE: ClassVar[bytes] = b"K"

    def _body(self) -> bytes:
        return _I32.pack(self.process_id) + _I32.pack(self.secret_key)

    @classmethod
    def _parse(cls, r: BodyReader) -> BackendKeyData:
        pid = r.int32()
        key = r.int32()
        r.end()
        return cls(pid, key)


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    status: str = "I"  # I idle, T in transaction, E failed transaction
    TYPE: ClassVar[bytes] = b"Z"

    def _body(self) -> bytes:
        return _bytes(self.status)

    @classmethod
    def _parse(cls, r: BodyReader) -> ReadyForQuery:
        status = r.byte()
        r.end()
        if status not in "ITE":
            raise RemoteProtocolError(f"invalid transaction status {status!r}")
        return cls(status)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    fields: tuple[FieldDescription, ...]
    TYPE: ClassVar[bytes] = b"T"

    def _body(self) -> bytes:
        parts = [_H.pack(len(self.fields))]
        for f in self.fields:
            parts.append(_cstr(f.name))
            parts.append(
                _FIELD.pack(
                    f.table_oid, f.column_number, f.type_oid, f.type_size, f.type_modifier, f.format
                )
            )
        return b"".join(parts)

    @classmethod
    def _parse(cls, r: BodyReader) -> RowDescription:
        fields = []
        for _ in range(r.uint16()):
            name = r.cstring()
            values = _FIELD.unpack(r.raw(_FIELD.size))
            fields.append(FieldDescription(name, *values))
        r.end()
        return cls(tuple(fields))


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    values: tuple[bytes | None, ...]
    TYPE: ClassVar[bytes] = b"D"

    def _body(self) -> bytes:
        return _values(self.values)

    @classmethod
    def _parse(cls, r: BodyReader) -> DataRow:
        values = tuple(r.value() for _ in range(r.uint16()))
        r.end()
        return cls(values)


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    tag: str
    TYPE: ClassVar[bytes] = b"C"

    @property
    def rows(self) -> int | None:
        """The row count a tag such as ``SELECT 5`` or ``INSERT 0 3`` carries."""
        last = self.tag.rpartition(" ")[2]
        return int(last) if last.isascii() and last.isdigit() else None

    def _body(self) -> bytes:
        return _cstr(self.tag)

    @classmethod
    def _parse(cls, r: BodyReader) -> CommandComplete:
        tag = r.cstring()
        r.end()
        return cls(tag)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TYPE: ClassVar[bytes] = b"I"


# Field codes of ErrorResponse/NoticeResponse (protocol section 55.8).
SEVERITY = "S"
SEVERITY_NONLOCALIZED = "V"
SQLSTATE = "C"
MESSAGE = "M"
DETAIL = "D"
HINT = "H"
POSITION = "P"


class _Fields(Message):
    __slots__ = ()
    fields: tuple[tuple[str, str], ...]

    def get(self, code: str, default: str | None = None) -> str | None:
        for key, value in self.fields:
            if key == code:
                return value
        return default

    @property
    def sqlstate(self) -> str:
        return self.get(SQLSTATE) or ""

    @property
    def message(self) -> str:
        return self.get(MESSAGE) or ""

    @property
    def severity(self) -> str:
        return self.get(SEVERITY_NONLOCALIZED) or self.get(SEVERITY) or ""

    def _body(self) -> bytes:
        return b"".join(k.encode("latin-1") + _cstr(v) for k, v in self.fields) + b"\0"

    @classmethod
    def _parse(cls, r: BodyReader) -> _Fields:
        fields = []
        while True:
            code = r.byte()
            if code == "\0":
                break
            fields.append((code, r.cstring()))
        r.end()
        return cls(tuple(fields))  # type: ignore[call-arg]

    @classmethod
    def build(
        cls,
        sqlstate: str,
        message: str,
        *,
        severity: str = "ERROR",
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ) -> Self:
        fields = [
            (SEVERITY, severity),
            (SEVERITY_NONLOCALIZED, severity),
            (SQLSTATE, sqlstate),
            (MESSAGE, message),
        ]
        if detail:
            fields.append((DETAIL, detail))
        if hint:
            fields.append((HINT, hint))
        if position is not None:
            fields.append((POSITION, str(position)))
        return cls(tuple(fields))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    fields: tuple[tuple[str, str], ...]
    TYPE: ClassVar[bytes] = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    fields: tuple[tuple[str, str], ...]
    TYPE: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    process_id: int
    channel: str
    payload: str
    TYPE: ClassVar[bytes] = b"A"

    def _body(self) -> bytes:
        return _I32.pack(self.process_id) + _cstr(self.channel) + _cstr(self.payload)

    @classmethod
    def _parse(cls, r: BodyReader) -> NotificationResponse:
        pid = r.int32()
        channel = r.cstring()
        payload = r.cstring()
        r.end()
        return cls(pid, channel, payload)


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TYPE: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TYPE: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TYPE: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TYPE: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TYPE: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    type_oids: tuple[int, ...]
    TYPE: ClassVar[bytes] = b"t"

    def _body(self) -> bytes:
        return _H.pack(len(self.type_oids)) + b"".join(_U32.pack(t) for t in self.type_oids)

    @classmethod
    def _parse(cls, r: BodyReader) -> ParameterDescription:
        oids = tuple(r.uint32() for _ in range(r.uint16()))
        r.end()
        return cls(oids)


class _CopyResponse(Message):
    __slots__ = ()
    format: int
    column_formats: tuple[int, ...]

    def _body(self) -> bytes:
        return bytes([self.format]) + _int16s(self.column_formats)

    @classmethod
    def _parse(cls, r: BodyReader) -> _CopyResponse:
        fmt = ord(r.byte())
        columns = tuple(r.int16() for _ in range(r.uint16()))
        r.end()
        return cls(fmt, columns)  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    format: int = 0
    column_formats: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    format: int = 0
    column_formats: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    format: int = 0
    column_formats: tuple[int, ...] = ()
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    value: bytes | None
    TYPE: ClassVar[bytes] = b"V"

    def _body(self) -> bytes:
        if self.value is None:
            return _I32.pack(-1)
        return _I32.pack(len(self.value)) + self.value

    @classmethod
    def _parse(cls, r: BodyReader) -> FunctionCallResponse:
        value = r.value()
        r.end()
        return cls(value)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    newest_minor: int
    unrecognized: tuple[str, ...] = ()
    TYPE: ClassVar[bytes] = b"v"

    def _body(self) -> bytes:
        names = b"".join(_cstr(n) for n in self.unrecognized)
        return _I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized)) + names

    @classmethod
    def _parse(cls, r: BodyReader) -> NegotiateProtocolVersion:
        minor = r.int32()
        names = tuple(r.cstring() for _ in range(r.uint32()))
        r.end()
        return cls(minor, names)


__all__ = [
    "AUTHENTICATION_MESSAGES",
    "PROTOCOL_VERSION_3",
    "FieldDescription",
    *(
        name
        for name, obj in list(globals().items())
        if isinstance(obj, type) and issubclass(obj, Message) and not name.startswith("_")
    ),
]
