"""Fuzzing: whatever a peer sends, only ``RemoteProtocolError`` escapes.

A proxy reads bytes from strangers, so no input may crash the codec with
``struct.error``, ``IndexError``, ``UnicodeError``, ``KeyError``,
``ValueError`` or ``MemoryError``. Three strategies feed both connection
classes, from every state the table can reach:

* arbitrary bytes, delivered in arbitrary chunks, optionally followed by EOF;
* well-formed frames of every known type with arbitrary bodies, which must
  either be refused or decode to a message that re-encodes to the very same
  bytes (a proxy that re-encodes must not change what it forwards);
* streams of valid messages with mutations: flipped bytes, overwritten
  length fields, truncation and insertion.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_proxy.wire import (
    AUTHENTICATION_MESSAGES,
    CONNECTION_CLOSED,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    BackendKeyData,
    Bind,
    CancelRequest,
    ClientConnection,
    CommandComplete,
    CopyData,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    FieldDescription,
    Frame,
    FunctionCall,
    GSSENCRequest,
    Message,
    NegotiateProtocolVersion,
    ParameterDescription,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    SASLInitialResponse,
    ServerConnection,
    SSLRequest,
    StartupMessage,
    State,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    encode,
)
from steward_proxy.wire.codec import PASSWORD_KINDS

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

Connection = ServerConnection | ClientConnection
STARTUP = StartupMessage({"user": "alice"})

# How to bring a fresh pair of connections into each state: (sender, message).
PREFIXES: dict[State, list[tuple[str, Message]]] = {
    State.STARTUP: [],
    State.SSL_NEGOTIATION: [("client", SSLRequest())],
    State.AUTHENTICATING: [("client", STARTUP)],
    State.PASSWORD: [("client", STARTUP), ("server", AuthenticationCleartextPassword())],
    State.SASL_INITIAL: [("client", STARTUP), ("server", AuthenticationSASL(("SCRAM-SHA-256",)))],
    State.SASL_CONTINUE: [
        ("client", STARTUP),
        ("server", AuthenticationSASL(("SCRAM-SHA-256",))),
        ("client", SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x")),
        ("server", AuthenticationSASLContinue(b"r=xy")),
    ],
    State.GSS: [("client", STARTUP), ("server", AuthenticationGSS())],
    State.STARTING: [("client", STARTUP), ("server", AuthenticationOk())],
    State.READY: [("client", STARTUP), ("server", AuthenticationOk()), ("server", ReadyForQuery())],
}


def connection_in(state: State, side: str) -> Connection:
    """A connection of the given side, brought to ``state`` by a valid exchange."""
    conns = {"server": ServerConnection(), "client": ClientConnection()}
    for who, message in PREFIXES[state]:
        other = conns["client" if who == "server" else "server"]
        other.receive_data(conns[who].send(message))
        assert other.next_event() == message
    assert conns[side].state is state
    return conns[side]


def drain(conn: Connection) -> None:
    """Pull events until the connection wants data, is closed, or refuses the input."""
    for _ in range(100_000):
        try:
            event = conn.next_event()
        except RemoteProtocolError:
            assert conn.state is State.ERROR
            return
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return
    raise AssertionError("next_event never asked for more data")


def feed_in_chunks(conn: Connection, data: bytes, cuts: list[int], eof: bool) -> None:
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(positions):
        conn.receive_data(data[start:end])
        drain(conn)
        if conn.state is State.ERROR:
            return
    if eof:
        conn.receive_data(b"")
        drain(conn)


states = st.sampled_from(list(PREFIXES))
sides = st.sampled_from(["server", "client"])
cuts = st.lists(st.integers(min_value=0, max_value=2000), max_size=8)


# ---------------------------------------------------------------------------
# Arbitrary bytes


@FUZZ
@given(state=states, side=sides, data=st.binary(max_size=400), cuts=cuts, eof=st.booleans())
def test_arbitrary_bytes_raise_only_remote_errors(state, side, data, cuts, eof) -> None:
    feed_in_chunks(connection_in(state, side), data, cuts, eof)


# ---------------------------------------------------------------------------
# Well-formed frames with arbitrary bodies

FRONTEND_TYPES = b"QPBDESHCdcfFXp"
BACKEND_TYPES = b"SKZTDCIENA123nstGHWdcVvR"


def frame(kind: bytes, body: bytes) -> Frame:
    return Frame(kind, kind + struct.pack("!i", len(body) + 4) + body)


def assert_canonical(decoded: Message, raw: bytes) -> None:
    assert encode(decoded) == raw, f"{decoded!r} re-encodes differently"


@FUZZ
@given(
    kind=st.sampled_from([bytes([b]) for b in FRONTEND_TYPES]),
    password_kind=st.sampled_from(sorted(PASSWORD_KINDS)),
    body=st.binary(max_size=200),
)
def test_frontend_frames_are_refused_or_re_encode_identically(kind, password_kind, body) -> None:
    f = frame(kind, body)
    try:
        decoded = decode_frontend(f, password_kind)
    except RemoteProtocolError:
        return
    assert_canonical(decoded, f.raw)


auth_bodies = st.builds(
    lambda code, rest: struct.pack("!i", code) + rest,
    st.one_of(st.sampled_from(sorted(AUTHENTICATION_MESSAGES)), st.integers(-(2**31), 2**31 - 1)),
    st.binary(max_size=60),
)


@FUZZ
@given(
    kind=st.sampled_from([bytes([b]) for b in BACKEND_TYPES]),
    body=st.binary(max_size=200),
    auth_body=auth_bodies,
)
def test_backend_frames_are_refused_or_re_encode_identically(kind, body, auth_body) -> None:
    f = frame(kind, auth_body if kind == b"R" else body)
    try:
        decoded = decode_backend(f)
    except RemoteProtocolError:
        return
    assert_canonical(decoded, f.raw)


@FUZZ
@given(
    kind=st.sampled_from([bytes([b]) for b in FRONTEND_TYPES]),
    body=st.binary(max_size=200),
    state=states,
)
def test_frontend_frames_at_any_state_raise_only_remote_errors(kind, body, state) -> None:
    server = connection_in(state, "server")
    server.receive_data(frame(kind, body).raw)
    drain(server)


@FUZZ
@given(
    kind=st.sampled_from([bytes([b]) for b in BACKEND_TYPES]),
    body=st.binary(max_size=200),
    auth_body=auth_bodies,
    state=states,
)
def test_backend_frames_at_any_state_raise_only_remote_errors(kind, body, auth_body, state) -> None:
    client = connection_in(state, "client")
    client.receive_data(frame(kind, auth_body if kind == b"R" else body).raw)
    drain(client)


# ---------------------------------------------------------------------------
# Valid streams with mutations

FRONTEND_SAMPLES: list[Message] = [
    Query("select 1"),
    Parse("s", "select $1", (23, 2**32 - 1)),
    Bind("p", "s", (0, 1), (b"1", None, b""), (1,)),
    Describe("S", "s"),
    Execute("p", 10),
    Sync(),
    CopyData(b"row\n"),
    FunctionCall(42, (1,), (None, b"x"), 1),
    Terminate(),
]
BACKEND_SAMPLES: list[Message] = [
    ParameterStatus("a", "b"),
    BackendKeyData(1, 2),
    RowDescription((FieldDescription("a"), FieldDescription("b", 1, 2, 3, 4, 5, 1))),
    DataRow((b"1", None, b"")),
    CommandComplete("SELECT 1"),
    ErrorResponse.build("42000", "x", detail="y"),
    ParameterDescription((23, 2**31)),
    NegotiateProtocolVersion(0, ("_pq_.a",)),
    ReadyForQuery("T"),
]
STARTUP_SAMPLES: list[Message] = [
    STARTUP,
    StartupMessage({"user": "bob", "database": "db", "options": "-c x=y"}),
    SSLRequest(),
    GSSENCRequest(),
    CancelRequest(1, 2),
]


@st.composite
def mutated(draw: st.DrawFn, samples: list[Message]) -> bytes:
    messages = draw(st.lists(st.sampled_from(samples), min_size=1, max_size=5))
    data = bytearray(b"".join(encode(m) for m in messages))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "length", "truncate", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "length":
            value = draw(
                st.one_of(
                    st.sampled_from([-1, 0, 3, 4, 5, 0x7FFFFFFF, 0x80000000 - 5, 10_001]),
                    st.integers(-(2**31), 2**31 - 1),
                )
            )
            data[pos : pos + 4] = struct.pack("!i", value)
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.parametrize(
    ("state", "side", "samples"),
    [
        pytest.param(State.READY, "server", FRONTEND_SAMPLES, id="frontend messages to a server"),
        pytest.param(State.READY, "client", BACKEND_SAMPLES, id="backend messages to a client"),
        pytest.param(State.STARTUP, "server", STARTUP_SAMPLES, id="startup packets to a server"),
    ],
)
def test_mutated_streams_raise_only_remote_errors(state, side, samples) -> None:
    @FUZZ
    @given(data=mutated(samples), cuts=cuts, eof=st.booleans())
    def check(data: bytes, cuts: list[int], eof: bool) -> None:
        feed_in_chunks(connection_in(state, side), data, cuts, eof)

    check()
