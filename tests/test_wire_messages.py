"""Every protocol message survives encode -> frame -> decode unchanged.

Each message is encoded with :func:`encode`, split into a frame by a
:class:`MessageReader` and decoded by the decoder a real peer would use
(``decode_startup`` for startup-phase packets, ``decode_frontend`` with the
password kind the state machine would pick, ``decode_backend``). A handful of
byte layouts are checked literally against the "Message Formats" section of
the PostgreSQL protocol documentation, so the round trip cannot hide a
symmetric mistake in both directions.
"""

from __future__ import annotations

import struct

import pytest

from steward_proxy.wire import (
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSCMCredential,
    AuthenticationSSPI,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    Frame,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    GSSResponse,
    LocalProtocolError,
    Message,
    MessageReader,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)

MAX_OID = 2**32 - 1


def frame_of(data: bytes, *, startup: bool) -> Frame:
    """The single frame ``data`` holds; fails if there are bytes left over."""
    reader = MessageReader(startup=startup)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None, "encoded message is not a complete frame"
    assert reader.pending == 0, "encoded message has trailing bytes"
    assert frame.raw == data
    return frame


def decode_as_frontend(data: bytes, password_kind: str = "password") -> Message:
    if data[:1].isalpha():
        return decode_frontend(frame_of(data, startup=False), password_kind)
    return decode_startup(frame_of(data, startup=True))


def decode_as_backend(data: bytes) -> Message:
    return decode_backend(frame_of(data, startup=False))


# ---------------------------------------------------------------------------
# Round trips

STARTUP_MESSAGES = [
    pytest.param(StartupMessage({"user": "alice"}), id="StartupMessage with only a user"),
    pytest.param(
        StartupMessage(
            {
                "user": "alice",
                "database": "orders",
                "application_name": "psql ünïcode",
                "options": "-c search_path=shop",
                "client_encoding": "UTF8",
            }
        ),
        id="StartupMessage with database, options and non-ASCII values",
    ),
    pytest.param(
        StartupMessage({"user": "alice", "_pq_.compression": "on"}, 196609),
        id="StartupMessage for protocol 3.1 with a _pq_ option",
    ),
    pytest.param(StartupMessage({"user": "al\udcffice"}), id="StartupMessage with invalid UTF-8"),
    pytest.param(SSLRequest(), id="SSLRequest"),
    pytest.param(GSSENCRequest(), id="GSSENCRequest"),
    pytest.param(CancelRequest(4242, -123456789), id="CancelRequest with a negative key"),
]

FRONTEND_MESSAGES = [
    pytest.param(Query("select 1"), id="Query"),
    pytest.param(Query(""), id="Query that is empty"),
    pytest.param(Query("select 'é', '中文', '🙂'"), id="Query with non-ASCII text"),
    pytest.param(Parse("", "select $1, $2"), id="Parse of an unnamed statement without types"),
    pytest.param(
        Parse("s1", "select $1::int, $2", (23, 0, MAX_OID)),
        id="Parse with parameter types including an OID above 2**31",
    ),
    pytest.param(Bind("", ""), id="Bind with no parameters"),
    pytest.param(
        Bind("portal", "s1", (0, 1), (b"42", None, b"", b"\x00\xff"), (1,)),
        id="Bind with NULL and empty parameters and mixed formats",
    ),
    pytest.param(
        Bind("", "s", (1,), (None,) * 3, (0, 1, 0)),
        id="Bind with only NULL parameters and per-column result formats",
    ),
    pytest.param(
        Bind("", "many", (), (b"1",) * 40_000),
        id="Bind with more than 32767 parameters",
    ),
    pytest.param(Describe("S", "s1"), id="Describe of a statement"),
    pytest.param(Describe("P"), id="Describe of the unnamed portal"),
    pytest.param(Execute(), id="Execute of the unnamed portal without a row limit"),
    pytest.param(Execute("p1", 100), id="Execute with a row limit"),
    pytest.param(Sync(), id="Sync"),
    pytest.param(Flush(), id="Flush"),
    pytest.param(Close("S", "s1"), id="Close of a statement"),
    pytest.param(Close("P", ""), id="Close of the unnamed portal"),
    pytest.param(CopyData(b"1\tfoo\n"), id="CopyData from the client"),
    pytest.param(CopyData(b""), id="CopyData that is empty"),
    pytest.param(CopyDone(), id="CopyDone from the client"),
    pytest.param(CopyFail("aborted by user"), id="CopyFail"),
    pytest.param(FunctionCall(1598), id="FunctionCall without arguments"),
    pytest.param(
        FunctionCall(MAX_OID, (1,), (b"\x00\x00\x00\x01", None, b""), 1),
        id="FunctionCall with NULL and empty arguments and an OID above 2**31",
    ),
    pytest.param(Terminate(), id="Terminate"),
]

PASSWORD_MESSAGES = [
    pytest.param(PasswordMessage(b"secret"), "password", id="PasswordMessage in cleartext"),
    pytest.param(
        PasswordMessage(b"md5" + b"0123456789abcdef" * 2), "password", id="PasswordMessage md5"
    ),
    pytest.param(PasswordMessage(b""), "password", id="PasswordMessage that is empty"),
    pytest.param(
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"),
        "sasl-initial",
        id="SASLInitialResponse with data",
    ),
    pytest.param(
        SASLInitialResponse("SCRAM-SHA-256-PLUS", None),
        "sasl-initial",
        id="SASLInitialResponse without data",
    ),
    pytest.param(
        SASLInitialResponse("SCRAM-SHA-256", b""),
        "sasl-initial",
        id="SASLInitialResponse with empty data",
    ),
    pytest.param(SASLResponse(b"c=biws,r=abc,p=xyz"), "sasl", id="SASLResponse"),
    pytest.param(SASLResponse(b""), "sasl", id="SASLResponse that is empty"),
    pytest.param(GSSResponse(b"\x60\x82\x01\x00token"), "gss", id="GSSResponse"),
]

AUTHENTICATION_MESSAGES = [
    pytest.param(AuthenticationOk(), id="AuthenticationOk"),
    pytest.param(AuthenticationKerberosV5(), id="AuthenticationKerberosV5"),
    pytest.param(AuthenticationCleartextPassword(), id="AuthenticationCleartextPassword"),
    pytest.param(AuthenticationMD5Password(b"\x00\xff\x10\x80"), id="AuthenticationMD5Password"),
    pytest.param(AuthenticationSCMCredential(), id="AuthenticationSCMCredential"),
    pytest.param(AuthenticationGSS(), id="AuthenticationGSS"),
    pytest.param(AuthenticationGSSContinue(b"\x00gss\xff"), id="AuthenticationGSSContinue"),
    pytest.param(AuthenticationGSSContinue(b""), id="AuthenticationGSSContinue that is empty"),
    pytest.param(AuthenticationSSPI(), id="AuthenticationSSPI"),
    pytest.param(
        AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        id="AuthenticationSASL with two mechanisms",
    ),
    pytest.param(AuthenticationSASL(()), id="AuthenticationSASL with no mechanism"),
    pytest.param(
        AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"), id="AuthenticationSASLContinue"
    ),
    pytest.param(AuthenticationSASLFinal(b"v=c2lnbmF0dXJl"), id="AuthenticationSASLFinal"),
]

BACKEND_MESSAGES = [
    pytest.param(ParameterStatus("server_version", "16.2"), id="ParameterStatus"),
    pytest.param(ParameterStatus("application_name", ""), id="ParameterStatus with empty value"),
    pytest.param(BackendKeyData(31337, -2), id="BackendKeyData with a negative key"),
    pytest.param(ReadyForQuery("I"), id="ReadyForQuery idle"),
    pytest.param(ReadyForQuery("T"), id="ReadyForQuery in a transaction"),
    pytest.param(ReadyForQuery("E"), id="ReadyForQuery in a failed transaction"),
    pytest.param(RowDescription(()), id="RowDescription with no fields"),
    pytest.param(
        RowDescription(
            (
                FieldDescription("id", 16384, 1, 23, 4, -1, 0),
                FieldDescription("name", 16384, 2, 25, -1, -1, 0),
                FieldDescription("amount", 16384, 3, 1700, -1, 655366, 1),
                FieldDescription("?column?"),
                FieldDescription("späße", MAX_OID, 32767, MAX_OID, -2, 2**31 - 1, 1),
            )
        ),
        id="RowDescription with several fields and extreme OIDs",
    ),
    pytest.param(DataRow(()), id="DataRow with no columns"),
    pytest.param(
        DataRow((b"1", None, b"", b"\x00\xff", None)),
        id="DataRow with NULLs and empty values",
    ),
    pytest.param(CommandComplete("SELECT 3"), id="CommandComplete"),
    pytest.param(EmptyQueryResponse(), id="EmptyQueryResponse"),
    pytest.param(
        ErrorResponse.build("42501", "permission denied", detail="d", hint="h", position=7),
        id="ErrorResponse built with detail, hint and position",
    ),
    pytest.param(ErrorResponse(()), id="ErrorResponse with no fields"),
    pytest.param(
        ErrorResponse((("S", "FATAL"), ("\xc8", "vendor field"))),
        id="ErrorResponse with a non-ASCII field code",
    ),
    pytest.param(
        NoticeResponse.build("01000", "just so you know", severity="WARNING"),
        id="NoticeResponse",
    ),
    pytest.param(NotificationResponse(77, "jobs", '{"id": 1}'), id="NotificationResponse"),
    pytest.param(ParseComplete(), id="ParseComplete"),
    pytest.param(BindComplete(), id="BindComplete"),
    pytest.param(CloseComplete(), id="CloseComplete"),
    pytest.param(NoData(), id="NoData"),
    pytest.param(PortalSuspended(), id="PortalSuspended"),
    pytest.param(ParameterDescription(()), id="ParameterDescription with no parameters"),
    pytest.param(
        ParameterDescription((23, 2**31, MAX_OID)),
        id="ParameterDescription with OIDs above 2**31",
    ),
    pytest.param(
        ParameterDescription((25,) * 40_000), id="ParameterDescription with 40000 parameters"
    ),
    pytest.param(CopyInResponse(), id="CopyInResponse in text format"),
    pytest.param(CopyInResponse(1, (1, 1, 1)), id="CopyInResponse in binary format"),
    pytest.param(CopyOutResponse(0, (0, 0)), id="CopyOutResponse"),
    pytest.param(CopyBothResponse(1, (1,)), id="CopyBothResponse"),
    pytest.param(CopyData(b"\x00row"), id="CopyData from the server"),
    pytest.param(CopyDone(), id="CopyDone from the server"),
    pytest.param(FunctionCallResponse(b"\x00\x00\x00\x2a"), id="FunctionCallResponse"),
    pytest.param(FunctionCallResponse(None), id="FunctionCallResponse that is NULL"),
    pytest.param(FunctionCallResponse(b""), id="FunctionCallResponse that is empty"),
    pytest.param(NegotiateProtocolVersion(0), id="NegotiateProtocolVersion without options"),
    pytest.param(
        NegotiateProtocolVersion(0, ("_pq_.compression", "_pq_.other")),
        id="NegotiateProtocolVersion with unrecognized options",
    ),
]


@pytest.mark.parametrize("message", STARTUP_MESSAGES + FRONTEND_MESSAGES)
def test_frontend_message_round_trips(message: Message) -> None:
    assert decode_as_frontend(encode(message)) == message


@pytest.mark.parametrize(("message", "password_kind"), PASSWORD_MESSAGES)
def test_password_message_round_trips_with_its_kind(message: Message, password_kind: str) -> None:
    assert decode_as_frontend(encode(message), password_kind) == message


@pytest.mark.parametrize("message", AUTHENTICATION_MESSAGES + BACKEND_MESSAGES)
def test_backend_message_round_trips(message: Message) -> None:
    assert decode_as_backend(encode(message)) == message


@pytest.mark.parametrize("message", [CopyData(b"x\ny"), CopyDone()], ids=["CopyData", "CopyDone"])
def test_copy_messages_decode_the_same_from_either_side(message: Message) -> None:
    data = encode(message)
    assert decode_as_frontend(data) == decode_as_backend(data) == message


def test_every_message_class_is_covered() -> None:
    covered = {
        type(p.values[0])
        for p in STARTUP_MESSAGES
        + FRONTEND_MESSAGES
        + PASSWORD_MESSAGES
        + AUTHENTICATION_MESSAGES
        + BACKEND_MESSAGES
    }
    covered.add(SSLResponse)  # not framed; see test_ssl_response_is_one_byte
    import steward_proxy.wire.messages as messages

    every = {
        obj
        for name, obj in vars(messages).items()
        if isinstance(obj, type)
        and issubclass(obj, Message)
        and obj is not Message
        and not name.startswith("_")
    }
    assert every - covered == set()


@pytest.mark.parametrize(
    ("message", "data"),
    [(SSLResponse(True), b"S"), (SSLResponse(False), b"N")],
    ids=["SSLResponse that accepts is S", "SSLResponse that refuses is N"],
)
def test_ssl_response_is_one_byte(message: SSLResponse, data: bytes) -> None:
    assert encode(message) == data


# ---------------------------------------------------------------------------
# Byte layouts straight from the protocol documentation


def _i32(n: int) -> bytes:
    return struct.pack("!i", n)


@pytest.mark.parametrize(
    ("message", "data"),
    [
        pytest.param(Query("select 1"), b"Q\x00\x00\x00\x0dselect 1\x00", id="Query"),
        pytest.param(SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f", id="SSLRequest"),
        pytest.param(GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30", id="GSSENCRequest"),
        pytest.param(
            CancelRequest(1, 2),
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00\x02",
            id="CancelRequest",
        ),
        pytest.param(
            StartupMessage({"user": "u"}),
            b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00",
            id="StartupMessage",
        ),
        pytest.param(ReadyForQuery("I"), b"Z\x00\x00\x00\x05I", id="ReadyForQuery"),
        pytest.param(Sync(), b"S\x00\x00\x00\x04", id="Sync"),
        pytest.param(Terminate(), b"X\x00\x00\x00\x04", id="Terminate"),
        pytest.param(AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00", id="AuthOk"),
        pytest.param(
            AuthenticationMD5Password(b"salt"),
            b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt",
            id="AuthenticationMD5Password",
        ),
        pytest.param(
            AuthenticationSASL(("SCRAM-SHA-256",)),
            b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
            id="AuthenticationSASL",
        ),
        pytest.param(
            SASLInitialResponse("SCRAM-SHA-256", None),
            b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
            id="SASLInitialResponse without data",
        ),
        pytest.param(PasswordMessage(b"pw"), b"p\x00\x00\x00\x07pw\x00", id="PasswordMessage"),
        pytest.param(
            DataRow((None, b"", b"ab")),
            b"D\x00\x00\x00\x14\x00\x03\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x02ab",
            id="DataRow with NULL, empty and a value",
        ),
        pytest.param(
            RowDescription((FieldDescription("a", 1, 2, 23, 4, -1, 0),)),
            b"T\x00\x00\x00\x1a\x00\x01a\x00"
            b"\x00\x00\x00\x01\x00\x02\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
            id="RowDescription",
        ),
        pytest.param(
            Bind("", "s", (1,), (None,), (1,)),
            b"B\x00\x00\x00\x15\x00s\x00\x00\x01\x00\x01\x00\x01\xff\xff\xff\xff\x00\x01\x00\x01",
            id="Bind",
        ),
        pytest.param(
            ParameterDescription((MAX_OID,)),
            b"t\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff",
            id="ParameterDescription",
        ),
        pytest.param(
            ErrorResponse.build("42501", "denied"),
            b"E\x00\x00\x00\x22SERROR\x00VERROR\x00C42501\x00Mdenied\x00\x00",
            id="ErrorResponse",
        ),
        pytest.param(
            CopyOutResponse(0, (0, 0)),
            b"H\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00",
            id="CopyOutResponse",
        ),
        pytest.param(
            FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff", id="FunctionCallResp"
        ),
        pytest.param(
            NegotiateProtocolVersion(0, ("_pq_.x",)),
            b"v\x00\x00\x00\x13" + _i32(0) + _i32(1) + b"_pq_.x\x00",
            id="NegotiateProtocolVersion",
        ),
    ],
)
def test_byte_layout_matches_the_protocol_documentation(message: Message, data: bytes) -> None:
    assert encode(message) == data


# ---------------------------------------------------------------------------
# ErrorResponse / NoticeResponse helpers


def test_error_response_build_exposes_its_fields() -> None:
    error = ErrorResponse.build(
        "42P01", 'relation "x" does not exist', detail="dd", hint="hh", position=15
    )
    assert error.sqlstate == "42P01"
    assert error.message == 'relation "x" does not exist'
    assert error.severity == "ERROR"
    assert error.get("D") == "dd"
    assert error.get("H") == "hh"
    assert error.get("P") == "15"
    assert error.get("W") is None
    assert error.get("W", "fallback") == "fallback"


def test_error_response_build_leaves_out_optional_fields() -> None:
    error = ErrorResponse.build("08P01", "bad", severity="FATAL")
    assert [code for code, _ in error.fields] == ["S", "V", "C", "M"]
    assert error.severity == "FATAL"


def test_notice_response_build_returns_a_notice() -> None:
    notice = NoticeResponse.build("01000", "note", severity="NOTICE")
    assert type(notice) is NoticeResponse
    assert (notice.sqlstate, notice.message, notice.severity) == ("01000", "note", "NOTICE")


def test_error_fields_default_to_empty_strings() -> None:
    error = ErrorResponse(())
    assert (error.sqlstate, error.message, error.severity) == ("", "", "")


def test_severity_prefers_the_nonlocalized_field() -> None:
    error = ErrorResponse((("S", "FEHLER"), ("V", "ERROR")))
    assert error.severity == "ERROR"
    assert ErrorResponse((("S", "FEHLER"),)).severity == "FEHLER"


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        pytest.param("SELECT 5", 5, id="SELECT carries a row count"),
        pytest.param("INSERT 0 3", 3, id="INSERT carries the count after the OID"),
        pytest.param("UPDATE 0", 0, id="UPDATE of no rows is zero"),
        pytest.param("BEGIN", None, id="BEGIN has no row count"),
        pytest.param("", None, id="an empty tag has no row count"),
        pytest.param("SELECT ²", None, id="a superscript digit is not a row count"),
        pytest.param("SELECT ٣", None, id="a non-ASCII decimal digit is not a row count"),
    ],
)
def test_command_complete_row_count(tag: str, rows: int | None) -> None:
    assert CommandComplete(tag).rows == rows


def test_startup_message_user_and_database() -> None:
    assert StartupMessage({"user": "alice"}).database == "alice"
    startup = StartupMessage({"user": "alice", "database": "orders"})
    assert (startup.user, startup.database) == ("alice", "orders")


# ---------------------------------------------------------------------------
# Malformed bodies are the peer's fault


def typed(kind: bytes, body: bytes) -> Frame:
    return Frame(kind, kind + struct.pack("!i", len(body) + 4) + body)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(typed(b"Q", b"select 1"), id="Query without its NUL"),
        pytest.param(typed(b"Q", b"select 1\x00x"), id="Query with trailing bytes"),
        pytest.param(typed(b"D", b"Xs1\x00"), id="Describe of an unknown kind"),
        pytest.param(typed(b"C", b""), id="Close without a kind"),
        pytest.param(typed(b"E", b"p1\x00\x00\x00"), id="Execute with a truncated row limit"),
        pytest.param(typed(b"p", b"secret"), id="PasswordMessage without its NUL"),
        pytest.param(
            typed(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab\x00\x00"),
            id="Bind with a parameter longer than the message",
        ),
        pytest.param(
            typed(b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),
            id="Bind with a parameter length of -2",
        ),
        pytest.param(
            typed(b"B", b"\x00\x00\xff\xff"),
            id="Bind whose format count 0xffff is not -1",
        ),
        pytest.param(typed(b"P", b"\x00select\x00\x00\x02\x00\x00\x00\x17"), id="Parse short"),
        pytest.param(typed(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00"), id="FunctionCall short"),
    ],
)
def test_malformed_frontend_body_is_a_remote_error(frame: Frame) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_frontend(frame)
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(typed(b"R", b""), id="Authentication without a code"),
        pytest.param(typed(b"R", b"\x00\x00"), id="Authentication with a truncated code"),
        pytest.param(typed(b"R", _i32(99)), id="Authentication with an unknown code"),
        pytest.param(typed(b"R", _i32(0) + b"x"), id="AuthenticationOk with trailing bytes"),
        pytest.param(typed(b"R", _i32(5) + b"abc"), id="AuthenticationMD5Password short salt"),
        pytest.param(typed(b"R", _i32(10) + b"SCRAM"), id="AuthenticationSASL unterminated"),
        pytest.param(typed(b"Z", b"Q"), id="ReadyForQuery with an unknown status"),
        pytest.param(typed(b"Z", b""), id="ReadyForQuery without a status"),
        pytest.param(typed(b"Z", b"II"), id="ReadyForQuery with two statuses"),
        pytest.param(typed(b"K", b"\x00\x00\x00\x01"), id="BackendKeyData without a key"),
        pytest.param(typed(b"T", b"\x00\x01a\x00\x00\x00"), id="RowDescription short field"),
        pytest.param(typed(b"D", b"\x00\x02\xff\xff\xff\xff"), id="DataRow with a missing value"),
        pytest.param(typed(b"D", b"\xff\xff"), id="DataRow whose count 0xffff is not -1"),
        pytest.param(typed(b"E", b"Mno terminator"), id="ErrorResponse unterminated"),
        pytest.param(typed(b"E", b""), id="ErrorResponse with no end marker"),
        pytest.param(typed(b"t", b"\x00\x02\x00\x00\x00\x17"), id="ParameterDescription short"),
        pytest.param(typed(b"G", b""), id="CopyInResponse without a format"),
        pytest.param(typed(b"V", b"\xff\xff\xff\xfe"), id="FunctionCallResponse of length -2"),
        pytest.param(typed(b"v", _i32(0) + _i32(-1)), id="NegotiateProtocolVersion of -1 names"),
    ],
)
def test_malformed_backend_body_is_a_remote_error(frame: Frame) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_backend(frame)


# ---------------------------------------------------------------------------
# Messages that cannot be encoded are the caller's fault


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(Query("select '\0'"), id="a Query containing NUL"),
        pytest.param(StartupMessage({"user": "a\0b"}), id="a StartupMessage containing NUL"),
        pytest.param(AuthenticationMD5Password(b"abc"), id="an MD5 salt of three bytes"),
        pytest.param(Bind("", "", (), (None,) * 65_536), id="a Bind with 65536 parameters"),
        pytest.param(Parse("", "q", (2**32,)), id="a Parse with an OID above 2**32"),
        pytest.param(CopyInResponse(256), id="a CopyInResponse format above one byte"),
        pytest.param(ErrorResponse((("中", "x"),)), id="an ErrorResponse field code above 0xff"),
    ],
)
def test_unencodable_message_is_a_local_error(message: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(message)
