"""Framing: the same events come out however the bytes are chunked.

TCP delivers a stream in arbitrary pieces, so every input here is fed whole,
one byte at a time, split in two at every offset, and followed by the first
bytes of a message that has not fully arrived yet. The bounds on declared
lengths are checked to fire on the header alone, before a body is buffered,
and end of stream is told apart at a message boundary (``CONNECTION_CLOSED``)
and inside a message (a protocol violation).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import pytest

from steward_proxy.wire import (
    CONNECTION_CLOSED,
    MAX_STARTUP_PACKET_SIZE,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationOk,
    BackendKeyData,
    Bind,
    ClientConnection,
    CommandComplete,
    DataRow,
    Describe,
    Execute,
    FieldDescription,
    Frame,
    LocalProtocolError,
    Message,
    MessageReader,
    NoticeResponse,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    RowDescription,
    ServerConnection,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    State,
    Sync,
    Terminate,
    encode,
)

Connection = ServerConnection | ClientConnection


def _i32(n: int) -> bytes:
    return struct.pack("!i", n)


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte, and split in two at every inner offset."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


# ---------------------------------------------------------------------------
# The streams each side receives

STARTUP = StartupMessage({"user": "alice", "database": "orders"})

FRONTEND_STREAM: list[Message] = [
    STARTUP,
    PasswordMessage(b"secret"),
    Query("select 1"),
    Parse("s1", "select $1", (23,)),
    Bind("", "s1", (0,), (b"42",), ()),
    Describe("P"),
    Execute(),
    Sync(),
    Terminate(),
]

BACKEND_STREAM: list[Message] = [
    AuthenticationOk(),
    ParameterStatus("server_version", "16.2"),
    ParameterStatus("client_encoding", "UTF8"),
    BackendKeyData(1, 2),
    ReadyForQuery("I"),
    RowDescription((FieldDescription("?column?", type_oid=23, type_size=4),)),
    DataRow((b"1",)),
    DataRow((None,)),
    CommandComplete("SELECT 2"),
    NoticeResponse.build("01000", "hello", severity="NOTICE"),
    ReadyForQuery("I"),
]


def respond_as_server(server: ServerConnection, event: object) -> None:
    """What a backend sends back, so the next frontend message is in place."""
    if isinstance(event, SSLRequest):
        server.send(SSLResponse(False))
    elif isinstance(event, StartupMessage):
        server.send(AuthenticationCleartextPassword())
    elif isinstance(event, PasswordMessage):
        for message in (AuthenticationOk(), BackendKeyData(1, 2), ReadyForQuery("I")):
            server.send(message)


def new_server() -> ServerConnection:
    return ServerConnection()


def new_client() -> ClientConnection:
    client = ClientConnection()
    client.send(STARTUP)
    return client


def pull(conn: Connection, respond: Callable[[object], None] | None = None) -> list[object]:
    """Every event available now, up to and including NEED_DATA or CONNECTION_CLOSED."""
    events: list[object] = []
    while True:
        event = conn.next_event()
        events.append(event)
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return events
        if respond is not None:
            respond(event)


def feed_all(conn: Connection, chunks: list[bytes], respond=None) -> list[object]:
    """Feed chunks one at a time, pulling events after each; NEED_DATA is dropped."""
    events: list[object] = []
    for chunk in chunks:
        assert chunk, "an empty chunk would mean end of stream"
        conn.receive_data(chunk)
        events += [e for e in pull(conn, respond) if e is not NEED_DATA]
    return events


SIDES = [
    pytest.param(
        new_server,
        FRONTEND_STREAM,
        lambda conn: lambda event: respond_as_server(conn, event),
        id="server reading a frontend stream",
    ),
    pytest.param(
        new_client, BACKEND_STREAM, lambda conn: None, id="client reading a backend stream"
    ),
]


@pytest.mark.parametrize(("new", "stream", "responder"), SIDES)
def test_every_chunking_gives_the_same_events(new, stream, responder) -> None:
    data = b"".join(encode(m) for m in stream)
    for chunks in chunkings(data):
        conn = new()
        assert feed_all(conn, chunks, responder(conn)) == stream, chunks
        assert conn.pending == 0


@pytest.mark.parametrize(("new", "stream", "responder"), SIDES)
@pytest.mark.parametrize(
    "cut",
    [lambda n: 1, lambda n: 4, lambda n: n - 1],
    ids=["its type byte", "part of its length", "all but its last byte"],
)
def test_trailing_partial_message_waits_for_more_data(new, stream, responder, cut) -> None:
    data = b"".join(encode(m) for m in stream[:-1])
    last = encode(stream[-1])
    partial = cut(len(last))
    for chunks in ([data + last[:partial]], [data, last[:partial]]):
        conn = new()
        assert feed_all(conn, chunks, responder(conn)) == stream[:-1]
        assert conn.next_event() is NEED_DATA
        assert conn.pending == partial
        conn.receive_data(last[partial:])
        assert conn.next_event() == stream[-1]
        assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize(("new", "stream", "responder"), SIDES)
def test_end_of_stream_is_clean_only_at_a_message_boundary(new, stream, responder) -> None:
    encoded = [encode(m) for m in stream]
    boundaries = {sum(len(e) for e in encoded[:i]) for i in range(len(encoded) + 1)}
    data = b"".join(encoded)
    for cut in range(len(data) + 1):
        conn = new()
        events = feed_all(conn, [data[:cut]] if cut else [], responder(conn))
        conn.receive_data(b"")
        if cut in boundaries:
            assert conn.next_event() is CONNECTION_CLOSED, cut
            assert conn.next_event() is CONNECTION_CLOSED
            assert events == stream[: len(events)]
        else:
            with pytest.raises(RemoteProtocolError, match="closed in the middle"):
                conn.next_event()
            assert conn.state is State.ERROR


# ---------------------------------------------------------------------------
# MessageReader on its own


def test_reader_splits_a_typed_stream_at_every_offset() -> None:
    messages = [Query("select 1"), Sync(), Query(""), Terminate()]
    data = b"".join(encode(m) for m in messages)
    expected = [Frame(m.TYPE, encode(m)) for m in messages]
    for chunks in chunkings(data):
        reader = MessageReader()
        frames = []
        for chunk in chunks:
            reader.feed(chunk)
            while (frame := reader.next_frame()) is not None:
                frames.append(frame)
        assert frames == expected
        assert reader.pending == 0


def test_read_spans_splits_a_typed_stream_at_every_offset() -> None:
    messages = [Query("select 1"), Sync(), Query(""), DataRow((b"x", None)), Terminate()]
    data = b"".join(encode(m) for m in messages)
    expected = [Frame(m.TYPE, encode(m)) for m in messages]
    for chunks in chunkings(data):
        reader = MessageReader()
        frames = []
        for chunk in chunks:
            reader.feed(chunk)
            whole, spans = reader.read_spans()
            assert whole == b"".join(whole[start:end] for _, start, end, _ in spans)
            assert all(count == 1 for *_, count in spans)
            frames += [Frame(bytes([t]), whole[start:end]) for t, start, end, _ in spans]
        assert frames == expected
        assert reader.pending == 0


def test_read_spans_gives_each_run_of_rows_as_one_span_whatever_the_chunking() -> None:
    rows = [DataRow((b"x", None)), DataRow((b"y" * 300,)), DataRow(())]
    messages = [Sync(), *rows, CommandComplete("SELECT 3"), *rows[:1], Sync()]
    data = b"".join(encode(m) for m in messages)
    expected = [Frame(m.TYPE, encode(m)) for m in messages]
    for chunks in chunkings(data):
        reader = MessageReader()
        frames = []
        for chunk in chunks:
            reader.feed(chunk)
            whole, spans = reader.read_spans(ord("D"))
            assert whole == b"".join(whole[start:end] for _, start, end, _ in spans)
            for kind, start, end, count in spans:
                run = MessageReader()
                run.feed(whole[start:end])
                inside = list(iter(run.next_frame, None))
                assert len(inside) == count and {f.type for f in inside} == {bytes([kind])}
                assert count == 1 or kind == ord("D")
                frames += inside
        assert frames == expected
        assert reader.pending == 0


def test_read_spans_refuses_a_run_with_an_oversize_length_inside_a_run() -> None:
    reader = MessageReader(max_message_size=100)
    reader.feed(encode(DataRow((b"x",))) + b"D" + struct.pack("!I", 101))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        reader.read_spans(ord("D"))


def test_read_spans_refuses_an_oversize_length() -> None:
    reader = MessageReader(max_message_size=100)
    reader.feed(encode(Sync()) + b"D" + struct.pack("!I", 101))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        reader.read_spans()


def test_reader_frame_body_excludes_the_header() -> None:
    reader = MessageReader(startup=True)
    reader.feed(encode(SSLRequest()) + b"Q")
    frame = reader.next_frame()
    assert frame is not None
    assert (frame.type, bytes(frame.body)) == (b"", b"\x04\xd2\x16\x2f")
    reader.startup = False
    reader.feed(b"\x00\x00\x00\x05x")
    frame = reader.next_frame()
    assert frame is not None
    assert (frame.type, bytes(frame.body)) == (b"Q", b"x")


def test_reader_take_pending_empties_the_buffer() -> None:
    reader = MessageReader()
    reader.feed(encode(Sync()) + b"Q\x00")
    reader.next_frame()
    assert reader.take_pending() == b"Q\x00"
    assert reader.pending == 0
    assert reader.next_frame() is None


def test_reader_compacts_its_buffer_after_many_frames() -> None:
    reader = MessageReader()
    one = encode(DataRow((b"x" * 1000,)))
    for _ in range(200):
        reader.feed(one)
        assert reader.next_frame() == Frame(b"D", one)
    assert reader.pending == 0
    assert len(reader._buf) < 2 * 64 * 1024


# ---------------------------------------------------------------------------
# Length bounds fire on the header, before the body is buffered


@pytest.mark.parametrize(
    ("limit", "length"),
    [
        pytest.param(None, 0x7FFFFFFF, id="a length of 0x7fffffff under the default limit"),
        pytest.param(1000, 1001, id="a length one over a limit of 1000"),
        pytest.param(5, 6, id="a length one over a limit of 5"),
    ],
)
def test_oversize_length_is_refused_from_the_header_alone(limit: int | None, length: int) -> None:
    reader = MessageReader() if limit is None else MessageReader(max_message_size=limit)
    header = b"D" + struct.pack("!I", length)
    for byte in header[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_frame() is None
    reader.feed(header[-1:])
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        reader.next_frame()
    assert reader.pending == 5


def test_length_at_the_limit_is_accepted() -> None:
    reader = MessageReader(max_message_size=1000)
    reader.feed(b"d" + _i32(1000))
    assert reader.next_frame() is None
    assert reader.pending == 5
    reader.feed(b"x" * 996)
    frame = reader.next_frame()
    assert frame is not None
    assert len(frame.raw) == 1001


@pytest.mark.parametrize("length", [3, 0, -1, -(2**31)], ids=lambda n: f"length {n}")
def test_length_below_four_is_refused(length: int) -> None:
    reader = MessageReader()
    reader.feed(b"Q" + _i32(length) + b"rest")
    with pytest.raises(RemoteProtocolError, match="invalid message length"):
        reader.next_frame()


@pytest.mark.parametrize(
    "length",
    [MAX_STARTUP_PACKET_SIZE + 1, 0x7FFFFFFF, 7, 4, 0, -1],
    ids=lambda n: f"startup length {n}",
)
def test_startup_packet_length_out_of_bounds_is_refused(length: int) -> None:
    server = ServerConnection()
    server.receive_data(_i32(length))
    with pytest.raises(RemoteProtocolError, match="invalid startup packet length"):
        server.next_event()
    assert server.state is State.ERROR
    assert server.pending == 4


@pytest.mark.parametrize("length", [8, MAX_STARTUP_PACKET_SIZE], ids=lambda n: f"length {n}")
def test_startup_packet_length_at_the_bounds_is_accepted(length: int) -> None:
    reader = MessageReader(startup=True)
    reader.feed(_i32(length))
    assert reader.next_frame() is None


def test_connection_applies_its_max_message_size() -> None:
    server, _ = ready_pair(max_message_size=100)
    server.receive_data(b"Q" + _i32(101))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit") as info:
        server.next_event()
    assert info.value.sqlstate == "08P01"
    assert server.state is State.ERROR
    assert server.pending == 5
    with pytest.raises(LocalProtocolError):
        server.next_event()


def test_client_applies_its_max_message_size() -> None:
    client = ClientConnection(max_message_size=100)
    client.send(STARTUP)
    client.receive_data(b"D" + _i32(101))
    with pytest.raises(RemoteProtocolError):
        client.next_event()
    assert client.state is State.ERROR


# ---------------------------------------------------------------------------
# Startup packets and message types a server must refuse


def ready_pair(**kwargs: int) -> tuple[ServerConnection, ClientConnection]:
    server, client = ServerConnection(**kwargs), ClientConnection(**kwargs)
    server.receive_data(client.send(STARTUP))
    assert server.next_event() == STARTUP
    for message in (AuthenticationOk(), ReadyForQuery("I")):
        client.receive_data(server.send(message))
        assert client.next_event() == message
    assert server.state is client.state is State.READY
    return server, client


def startup_packet(version: int, *pairs: bytes) -> bytes:
    body = _i32(version) + b"".join(p + b"\0" for p in pairs) + b"\0"
    return _i32(len(body) + 4) + body


@pytest.mark.parametrize(
    "version",
    [0x00020000, 0x00040000, 0x00010000, 0],
    ids=["protocol 2.0", "protocol 4.0", "protocol 1.0", "protocol 0.0"],
)
def test_unsupported_protocol_version_is_feature_not_supported(version: int) -> None:
    server = ServerConnection()
    server.receive_data(startup_packet(version, b"user", b"alice"))
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.sqlstate == "0A000"
    assert server.state is State.ERROR


def test_newer_minor_version_is_accepted_for_negotiation() -> None:
    server = ServerConnection()
    server.receive_data(startup_packet(0x00030002, b"user", b"alice"))
    event = server.next_event()
    assert isinstance(event, StartupMessage)
    assert event.protocol_version == 0x00030002


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(startup_packet(0x30000), id="a startup packet with no parameters"),
        pytest.param(
            startup_packet(0x30000, b"database", b"orders"), id="a startup packet without a user"
        ),
        pytest.param(
            _i32(17) + _i32(0x30000) + b"user\0alice", id="a startup packet missing its NULs"
        ),
        pytest.param(
            _i32(18) + _i32(0x30000) + b"user\0alice\0", id="a startup packet missing its end"
        ),
        pytest.param(
            _i32(20) + _i32(0x30000) + b"user\0al\0\0junk"[:12], id="a startup packet with junk"
        ),
        pytest.param(_i32(12) + _i32(80877103) + b"xxxx", id="an SSLRequest with extra bytes"),
        pytest.param(_i32(12) + _i32(80877102) + b"xxxx", id="a CancelRequest that is short"),
    ],
)
def test_malformed_startup_packet_is_refused(packet: bytes) -> None:
    server = ServerConnection()
    server.receive_data(packet)
    with pytest.raises(RemoteProtocolError) as info:
        server.next_event()
    assert info.value.sqlstate == "08P01"
    assert server.state is State.ERROR


@pytest.mark.parametrize(
    "kind",
    [b"?", b"\x00", b"\xff", b"Z", b"T", b"R"],
    ids=lambda k: f"type {k!r}",
)
def test_server_refuses_an_unknown_message_type(kind: bytes) -> None:
    server, _ = ready_pair()
    server.receive_data(kind + _i32(4))
    with pytest.raises(RemoteProtocolError, match="invalid frontend message type"):
        server.next_event()
    assert server.state is State.ERROR


@pytest.mark.parametrize(
    "kind",
    [b"?", b"\x00", b"\xff", b"Q", b"P", b"p", b"X"],
    ids=lambda k: f"type {k!r}",
)
def test_client_refuses_an_unknown_message_type(kind: bytes) -> None:
    _, client = ready_pair()
    client.receive_data(kind + _i32(4))
    with pytest.raises(RemoteProtocolError, match="invalid backend message type"):
        client.next_event()
    assert client.state is State.ERROR


def test_next_frame_hands_out_raw_frames_when_ready() -> None:
    server, _ = ready_pair()
    data = encode(Query("select 1")) + encode(Sync())
    for chunks in chunkings(data):
        server, _ = ready_pair()
        frames = []
        for chunk in chunks:
            server.receive_data(chunk)
            while (frame := server.next_frame()) is not None:
                frames.append(frame)
        assert [f.raw for f in frames] == [encode(Query("select 1")), encode(Sync())]


def test_next_frame_reports_end_of_stream_inside_a_message() -> None:
    server, _ = ready_pair()
    server.receive_data(encode(Query("select 1"))[:-1])
    server.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        server.next_frame()
    assert server.state is State.ERROR
