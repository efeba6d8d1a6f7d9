"""The protocol tracker on its own: requests, answers, events, any chunking.

Each test plays a client's messages and the server's true answers through a
:class:`~steward_proxy.wire.Tracker`, forwarding every statement with a note,
and checks the bytes that come out and the events. The chunking property:
whatever the TCP chunking on either side, the bytes out and the events are the
same. The answers table gets one test per entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_proxy import wire
from steward_proxy.wire import ANSWERS, Answer, Request

from sessionkit import enc


def drive(tracker: wire.Tracker, data: bytes, note: Any = "n") -> bytes:
    """Feed client ``data``; forward each statement (a Query's with one note per ';')."""
    tracker.receive_client(data)
    while (statement := tracker.next_statement()) is not wire.NEED_DATA:
        assert isinstance(statement, wire.Statement)
        if statement.kind == "Q":
            count = statement.text.count(b";") + 1
            tracker.forward(statement, [f"{note}{i}" for i in range(count)])
        else:
            tracker.forward(statement, note)
    return tracker.take_upstream()


CLIENT = enc(
    wire.Query("SELECT 1; SELECT 2"),
    wire.Parse("s", "SELECT $1::int"),
    wire.Describe("S", "s"),
    wire.Bind("p", "s", (0,), (b"7",), (1,)),
    wire.Describe("P", "p"),
    wire.Execute("p", 0),
    wire.Sync(),
)
ROW = wire.RowDescription((wire.FieldDescription("x", type_oid=23),))
SERVER = enc(
    ROW,
    wire.DataRow((b"1",)),
    wire.CommandComplete("SELECT 1"),
    ROW,
    wire.DataRow((b"2",)),
    wire.CommandComplete("SELECT 1"),
    wire.ReadyForQuery("I"),
    wire.ParseComplete(),
    wire.ParameterDescription((23,)),
    ROW,
    wire.BindComplete(),
    ROW,
    wire.DataRow((b"\x00\x00\x00\x07",)),
    wire.CommandComplete("SELECT 1"),
    wire.ParameterStatus("TimeZone", "UTC"),
    wire.ReadyForQuery("I"),
)


def summary(events: list[wire.TrackerEvent]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, wire.Finished):
            out.append(("finished", e.note, e.rows, e.error, e.tag))
        elif isinstance(e, wire.RowLayout):
            out.append(("layout", e.note, tuple(f.name for f in e.fields), e.formats))
        else:
            out.append(("parameter", e.name, e.value))
    return out


EXPECTED = [
    ("layout", "n0", ("x",), ()),
    ("finished", "n0", 1, None, b"SELECT 1"),
    ("layout", "n1", ("x",), ()),
    ("finished", "n1", 1, None, b"SELECT 1"),
    ("layout", "n", ("x",), (1,)),
    ("finished", "n", 1, None, b"SELECT 1"),
    ("parameter", "TimeZone", "UTC"),
]


def test_a_whole_exchange_gives_its_events_and_forwards_everything() -> None:
    tracker = wire.Tracker(track_layouts=True)
    assert drive(tracker, CLIENT) == CLIENT
    assert tracker.pending == 9
    assert tracker.receive_server(SERVER) == SERVER
    # The Execute's layout comes when it is sent; the rest in answer order.
    events = summary(tracker.take_events())
    assert sorted(events, key=repr) == sorted(EXPECTED, key=repr)
    assert tracker.pending == 0 and not tracker.unsettled and not tracker.dirty


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    client_cuts=st.lists(st.integers(0, 10_000), max_size=8),
    server_cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_any_chunking_gives_the_same_bytes_and_events(
    client_cuts: list[int], server_cuts: list[int]
) -> None:
    tracker = wire.Tracker(track_layouts=True)
    upstream = b"".join(drive(tracker, piece) for piece in chunks(CLIENT, client_cuts))
    assert upstream == CLIENT
    client = b"".join(tracker.receive_server(piece) for piece in chunks(SERVER, server_cuts))
    assert client == SERVER
    assert sorted(summary(tracker.take_events()), key=repr) == sorted(EXPECTED, key=repr)


def test_a_statement_not_answered_is_offered_again_and_holds_what_follows() -> None:
    tracker = wire.Tracker()
    data = enc(wire.Query("SELECT 1"), wire.Query("SELECT 2"))
    tracker.receive_client(data)
    first = tracker.next_statement()
    assert tracker.next_statement() is first
    assert tracker.take_upstream() == b""
    tracker.forward(first, ["a"])  # type: ignore[arg-type]
    second = tracker.next_statement()
    assert isinstance(second, wire.Statement) and second.text == b"SELECT 2"
    assert tracker.take_upstream() == enc(wire.Query("SELECT 1"))
    tracker.forward(second, ["b"])
    assert tracker.next_statement() is wire.NEED_DATA
    assert tracker.take_upstream() == enc(wire.Query("SELECT 2"))


def test_a_refused_query_goes_up_as_a_stand_in_and_its_error_becomes_the_refusal() -> None:
    tracker = wire.Tracker()
    tracker.receive_client(enc(wire.Query("DELETE FROM t")))
    statement = tracker.next_statement()
    refusal = wire.encode(wire.ErrorResponse.build("42501", "no"))
    tracker.refuse(statement, refusal)  # type: ignore[arg-type]
    assert tracker.take_upstream() == enc(wire.Query(wire.STAND_IN_SQL))
    out = tracker.receive_server(
        enc(wire.ErrorResponse.build("42601", "syntax error"), wire.ReadyForQuery("I"))
    )
    assert out == refusal + enc(wire.ReadyForQuery("I"))


def test_a_row_filter_rewrites_every_row_of_its_request_only() -> None:
    def plan(note: Any, fields: Any, formats: tuple[int, ...]) -> wire.RowFilter | None:
        if note != "secret0":
            return None
        return each_row(lambda row: wire.encode(wire.DataRow((b"****",))))

    tracker = wire.Tracker(plan_rows=plan)
    drive(tracker, enc(wire.Query("SELECT ssn FROM t; SELECT 1")), note="secret")
    out = tracker.receive_server(
        enc(
            ROW,
            wire.DataRow((b"123-45-6789",)),
            wire.DataRow((b"987-65-4321",)),
            wire.CommandComplete("SELECT 2"),
            ROW,
            wire.DataRow((b"1",)),
            wire.CommandComplete("SELECT 1"),
            wire.ReadyForQuery("I"),
        )
    )
    rows = [m for m in map(wire.decode_backend, frames_of(out)) if isinstance(m, wire.DataRow)]
    assert [r.values for r in rows] == [(b"****",), (b"****",), (b"1",)]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(server_cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_a_row_filter_gets_whole_rows_a_run_at_a_time_whatever_the_chunking(
    server_cuts: list[int],
) -> None:
    runs: list[list[wire.Frame]] = []

    def plan(note: Any, fields: Any, formats: tuple[int, ...]) -> wire.RowFilter:
        def rewrite(chunk: bytes, start: int, end: int) -> bytes:
            runs.append(frames_of(chunk[start:end]))
            return chunk[start:end].replace(b"secret", b"******")

        return rewrite

    tracker = wire.Tracker(plan_rows=plan)
    drive(tracker, enc(wire.Query("SELECT s FROM t")), note="q")
    server = enc(
        ROW,
        *(wire.DataRow((b"secret %d" % i,)) for i in range(5)),
        wire.ErrorResponse.build("57014", "canceling statement"),
        wire.ReadyForQuery("I"),
    )
    out = b"".join(tracker.receive_server(piece) for piece in chunks(server, server_cuts))
    assert out == server.replace(b"secret", b"******")
    assert all(frame.type == b"D" for run in runs for frame in run)
    assert sum(len(run) for run in runs) == 5
    finished = [e for e in tracker.take_events() if isinstance(e, wire.Finished)]
    assert [(e.rows, e.error) for e in finished] == [(5, "SQLSTATE 57014")]


class Later(wire.Deferred):
    __slots__ = ("rows",)

    def __init__(self, rows: bytes) -> None:
        self.rows = rows


def test_rows_a_filter_defers_come_back_in_place_among_the_bytes_around_them() -> None:
    def plan(note: Any, fields: Any, formats: tuple[int, ...]) -> wire.RowFilter | None:
        return (lambda chunk, start, end: Later(chunk[start:end])) if note == "secret0" else None

    tracker = wire.Tracker(plan_rows=plan)
    drive(tracker, enc(wire.Query("SELECT ssn FROM t; SELECT 1")), note="secret")
    rows = enc(wire.DataRow((b"123-45-6789",)), wire.DataRow((b"987-65-4321",)))
    rest = enc(
        wire.CommandComplete("SELECT 2"),
        ROW,
        wire.DataRow((b"1",)),
        wire.CommandComplete("SELECT 1"),
        wire.ReadyForQuery("I"),
    )
    out = tracker.receive_server(enc(ROW) + rows + rest)
    assert isinstance(out, list)
    assert [type(p) for p in out] == [bytes, Later, bytes]
    assert out[0] == enc(ROW) and out[1].rows == rows and out[2] == rest
    finished = [e for e in tracker.take_events() if isinstance(e, wire.Finished)]
    assert [e.rows for e in finished] == [2, 1]
    # Nothing deferred in a chunk: one bytes object, as always.
    drive(tracker, enc(wire.Query("SELECT 1")), note="plain")
    plain = enc(ROW, wire.DataRow((b"1",)), wire.CommandComplete("SELECT 1"))
    assert tracker.receive_server(plain) == plain


def each_row(rewrite: Callable[[bytes], bytes]) -> wire.RowFilter:
    """A row filter that rewrites each DataRow of a run by itself."""

    def run(chunk: bytes, start: int, end: int) -> bytes:
        return b"".join(rewrite(frame.raw) for frame in frames_of(chunk[start:end]))

    return run


def frames_of(data: bytes) -> list[wire.Frame]:
    reader = wire.MessageReader()
    reader.feed(data)
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    return out


# --------------------------------------------------------------- the answers table


def request_for(kind: Request) -> bytes:
    """Client bytes that leave ``kind`` at the head of the queue."""
    return {
        Request.PARSE: enc(wire.Parse("", "SELECT 1")),
        Request.BIND: enc(wire.Bind("", "", (), (), ())),
        Request.DESCRIBE: enc(wire.Describe("S", "")),
        Request.CLOSE: enc(wire.Close("S", "x")),
        Request.EXECUTE: enc(wire.Execute("", 0)),
        Request.STATEMENT: enc(wire.Query("SELECT 1")),
        Request.FUNCTION: enc(wire.FunctionCall(1, (), (), 0)),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "type_byte"),
    list(ANSWERS),
    ids=[f"{k.name}: {t.decode()} {a.value}" for (k, t), a in ANSWERS.items()],
)
def test_every_answer_in_the_table_is_taken(kind: Request, type_byte: bytes) -> None:
    tracker = wire.Tracker()
    drive(tracker, request_for(kind))
    before = tracker.pending
    body = {b"C": b"SELECT 1\0", b"T": b"\0\0", b"D": b"\0\0", b"t": b"\0\0"}.get(type_byte, b"")
    if type_byte in b"GHW":
        body = b"\0\0\0"
    if type_byte == b"V":
        body = b"\xff\xff\xff\xff"
    message = type_byte + (len(body) + 4).to_bytes(4, "big") + body
    assert tracker.receive_server(message) == message
    answer = ANSWERS[(kind, type_byte)]
    popped = before - tracker.pending
    assert popped == (1 if answer in (Answer.DONE, Answer.COMPLETE) else 0)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(enc(wire.CommandComplete("DELETE 9")), id="a completion"),
        pytest.param(enc(wire.DataRow((b"x",))), id="a row"),
        pytest.param(enc(ROW), id="a row description"),
        pytest.param(enc(wire.EmptyQueryResponse()), id="an empty-query answer"),
        pytest.param(enc(wire.CopyOutResponse(0, ())), id="a COPY"),
        pytest.param(enc(wire.ParseComplete()), id="a parse completion"),
    ],
)
def test_an_answer_with_nothing_pending_is_a_desync(message: bytes) -> None:
    with pytest.raises(wire.Desync):
        wire.Tracker().receive_server(message)


def test_errors_skip_to_sync_and_finish_what_was_skipped() -> None:
    tracker = wire.Tracker()
    drive(
        tracker,
        enc(
            wire.Parse("", "SELECT 1"),
            wire.Bind("", "", (), (), ()),
            wire.Execute("", 0),
            wire.Sync(),
        ),
    )
    tracker.receive_server(
        enc(wire.ErrorResponse.build("42P01", "no such table"), wire.ReadyForQuery("I"))
    )
    events = summary(tracker.take_events())
    assert events == [
        ("finished", "n", None, "SQLSTATE 42P01", b""),
        ("finished", "n", None, "not executed: an earlier message failed (SQLSTATE 42P01)", b""),
    ]
    assert tracker.pending == 0


def test_an_execute_pipelined_behind_its_describe_is_planned_when_the_layout_arrives() -> None:
    seen: list[tuple[Any, Any]] = []

    def plan(note: Any, fields: Any, formats: tuple[int, ...]) -> wire.RowFilter | None:
        seen.append((note, None if fields is None else tuple(f.name for f in fields)))
        return each_row(lambda row: wire.encode(wire.DataRow((b"masked",))))

    tracker = wire.Tracker(plan_rows=plan)
    drive(
        tracker,
        enc(
            wire.Parse("", "SELECT ssn FROM t"),
            wire.Bind("", "", (), (), ()),
            wire.Describe("P", ""),
            wire.Execute("", 0),
            wire.Parse("q", "SELECT 1"),
            wire.Bind("", "q", (), (), ()),
            wire.Execute("", 0),  # never described: planned with no columns
            wire.Sync(),
        ),
    )
    assert seen == []
    out = tracker.receive_server(
        enc(
            wire.ParseComplete(),
            wire.BindComplete(),
            ROW,
            wire.DataRow((b"123-45-6789",)),
            wire.CommandComplete("SELECT 1"),
            wire.ParseComplete(),
            wire.BindComplete(),
            wire.DataRow((b"1",)),
            wire.CommandComplete("SELECT 1"),
            wire.ReadyForQuery("I"),
        )
    )
    assert seen == [("n", ("x",)), ("n", None)]
    assert b"123-45-6789" not in out and out.count(b"masked") == 2


def test_errors_and_notices_are_screened_with_the_note_of_their_request() -> None:
    seen: list[Any] = []

    def screen(note: Any, message: bytes) -> bytes:
        seen.append((note, message[:1]))
        if note == "secret0":
            return wire.encode(wire.NoticeResponse((("S", "NOTICE"), ("M", "withheld"))))
        return message

    tracker = wire.Tracker(screen_messages=screen)
    drive(tracker, enc(wire.Query("SELECT f(ssn) FROM t")), note="secret")
    notice = wire.NoticeResponse((("S", "NOTICE"), ("M", "v=123-45-6789")))
    error = wire.ErrorResponse.build("22P02", 'invalid input syntax: "123-45-6789"')
    out = b"".join(
        tracker.receive_server(chunk)
        for chunk in (enc(ROW, notice), enc(error), enc(wire.ReadyForQuery("I")))
    )
    assert b"123-45-6789" not in out
    assert seen == [("secret0", b"N"), ("secret0", b"E")]
    events = tracker.take_events()
    assert [e.error for e in events if isinstance(e, wire.Finished)] == ["SQLSTATE 22P02"]
    # Nothing pending: the note is None and the message passes as the screen says.
    assert tracker.receive_server(enc(notice)) == enc(notice)
    assert seen[-1] == (None, b"N")
    # A notification's payload and a reported setting hold any text: screened too.
    notification = enc(wire.NotificationResponse(42, "c", "123-45-6789"))
    assert tracker.receive_server(notification) == notification
    assert seen[-1] == (None, b"A")
    setting = enc(wire.ParameterStatus("application_name", "123-45-6789"))
    assert tracker.receive_server(setting) == setting
    assert seen[-1] == (None, b"S")
    assert tracker.take_events()[-1] == wire.ParameterChanged("application_name", "123-45-6789")
    # Without a screen every asynchronous message passes as it is.
    plain = wire.Tracker()
    status = wire.ParameterStatus("TimeZone", "UTC")
    assert plain.receive_server(notification + enc(notice, status)) == notification + enc(
        notice, status
    )
    assert plain.take_events() == [wire.ParameterChanged("TimeZone", "UTC")]


@pytest.mark.parametrize(
    "body",
    [
        b"X" + b"s\x00",  # neither statement nor portal
        b"S" + b"s",  # name not NUL-terminated
        b"S" + b"s\x00junk",  # bytes after the name
        b"",  # no kind at all
        b"P",  # a kind and nothing else
    ],
)
@pytest.mark.parametrize("type_byte", [b"D", b"C"])
def test_a_malformed_describe_or_close_is_refused_as_the_codec_refuses_it(
    type_byte: bytes, body: bytes
) -> None:
    message = type_byte + (len(body) + 4).to_bytes(4, "big") + body
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode_frontend(wire.Frame(type_byte, message))
    tracker = wire.Tracker()
    tracker.receive_client(message)
    with pytest.raises(wire.RemoteProtocolError):
        tracker.next_statement()


def test_describe_and_close_name_what_they_target() -> None:
    tracker = wire.Tracker()
    drive(tracker, CLIENT)
    assert tracker.statement_note("s") == "n"
    drive(tracker, enc(wire.Close("S", "s"), wire.Sync()))
    assert tracker.statement_note("s") is None


def test_parses_binds_and_closes_the_server_did_not_run_change_no_name() -> None:
    """What a name holds follows the server: a Parse or Bind under a name in use
    fails and leaves it; anything skipped after an error leaves it too."""
    tracker = wire.Tracker()
    drive(tracker, enc(wire.Parse("s", "SELECT 1"), wire.Sync()), note="old")
    tracker.receive_server(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    assert tracker.statement_note("s") == "old"
    # A second Parse under the name fails (42P05); so does a Bind under an open portal's.
    drive(tracker, enc(wire.Parse("s", "SELECT 2"), wire.Sync()), note="new")
    assert tracker.statement_note("s") == "new"  # until the server says otherwise
    tracker.receive_server(
        enc(wire.ErrorResponse.build("42P05", "exists"), wire.ReadyForQuery("I"))
    )
    assert tracker.statement_note("s") == "old"
    # Everything after a failed Execute is skipped: two Parses, a Close.
    drive(
        tracker,
        enc(
            wire.Bind("", "s"),
            wire.Execute(""),
            wire.Parse("s", "SELECT 3"),
            wire.Close("S", "s"),
            wire.Parse("s", "SELECT 4"),
            wire.Sync(),
        ),
        note="skipped",
    )
    tracker.receive_server(
        enc(wire.BindComplete(), wire.ErrorResponse.build("22012", "x"), wire.ReadyForQuery("I"))
    )
    assert tracker.statement_notes() == [("s", "old")]
    # A failed Parse of the unnamed statement leaves none (PostgreSQL drops it first).
    drive(tracker, enc(wire.Parse("", "SELECT 5"), wire.Sync()), note="unnamed")
    tracker.receive_server(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    drive(tracker, enc(wire.Parse("", "SELECT 6"), wire.Sync()), note="bad")
    tracker.receive_server(
        enc(wire.ErrorResponse.build("42601", "syntax"), wire.ReadyForQuery("I"))
    )
    assert tracker.statement_note("") is None


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_sync_sent_during_copy_from_stdin_is_not_answered(protocol: str) -> None:
    """The server ignores Sync in COPY FROM STDIN mode (libpq sends one after an
    Execute before it knows it is a COPY): no ReadyForQuery is owed for it."""
    tracker = wire.Tracker()
    if protocol == "simple":
        start = enc(wire.Query("COPY t FROM STDIN"), wire.Sync())
        answers = enc(wire.CopyInResponse(0, ()))
    else:
        start = enc(wire.Parse("", "COPY t FROM STDIN"), wire.Bind("", ""))
        start += enc(wire.Execute(""), wire.Sync())
        answers = enc(wire.ParseComplete(), wire.BindComplete(), wire.CopyInResponse(0, ()))
    drive(tracker, start)
    tracker.receive_server(answers)
    end = enc(wire.CopyData(b"1\n"), wire.CopyDone())
    drive(tracker, end + (enc(wire.Sync()) if protocol == "extended" else b""))
    assert tracker.unsettled == 1  # the Execute's (or Query's) end is still due
    tracker.receive_server(enc(wire.CommandComplete("COPY 1"), wire.ReadyForQuery("I")))
    assert tracker.pending == 0 and tracker.unsettled == 0
    drive(tracker, enc(wire.Query("SELECT 1")))
    tracker.receive_server(enc(ROW, wire.DataRow((b"1",)), wire.CommandComplete("SELECT 1")))
    assert [e.rows for e in tracker.take_events() if isinstance(e, wire.Finished)][-1] == 1


def test_names_are_what_postgresql_keys_them_by_their_first_63_bytes() -> None:
    tracker = wire.Tracker()
    stem = "é" * 31  # 62 bytes: the 63rd is the first byte of what follows
    drive(tracker, enc(wire.Parse(stem + "é1", "SELECT 1"), wire.Sync()), note="first")
    assert tracker.statement_note(stem + "é2") == "first"
    drive(tracker, enc(wire.Close("S", stem + "éz"), wire.Sync()))
    assert tracker.statement_notes() == []


def test_layouts_of_statements_made_again_are_kept_within_a_bound_of_columns() -> None:
    """Each Parse makes a new statement, and its Describe's layout is kept: a
    client re-preparing a wide statement must not make the tracker hold every
    old one (a 20-byte Parse of a wide table is a RowDescription of 1664 columns)."""
    tracker = wire.Tracker(track_layouts=True)
    wide = wire.RowDescription(
        tuple(wire.FieldDescription(f"c{i}", type_oid=25) for i in range(1000))
    )
    answers = enc(
        wire.ParseComplete(), wire.ParameterDescription(()), wide, wire.ReadyForQuery("I")
    )
    for _ in range(300):
        drive(
            tracker, enc(wire.Parse("", "SELECT * FROM wide"), wire.Describe("S", ""), wire.Sync())
        )
        tracker.receive_server(answers)
    held = sum(len(fields) for fields in tracker._layouts.values())
    assert held <= 100_000
    tracker.take_events()
    drive(tracker, enc(wire.Bind("", ""), wire.Execute(""), wire.Sync()))
    (layout,) = [e for e in tracker.take_events() if isinstance(e, wire.RowLayout)]
    assert len(layout.fields) == 1000  # the newest is kept
