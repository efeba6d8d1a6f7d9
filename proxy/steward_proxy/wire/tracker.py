"""After sign-in: which server answer belongs to which client request.

A PostgreSQL client pipelines: it may send many requests before the first
answer comes back. :class:`Tracker` follows one session's exchange in both
directions without I/O, as h11 does for HTTP: it frames what each side sends,
keeps a queue of *pending requests* in the order the server will answer them,
and ties every answer to its request. The server answers each request kind
with the messages :data:`ANSWERS` lists; anything else that would carry
results (rows, a completion, a COPY) means the server ran something the queue
does not hold, and raises :class:`Desync`. After an error the server skips to
the next Sync (extended protocol) or the end of the Query string; the queue
does the same.

Client side, pull one event at a time::

    tracker.receive_client(data)
    while (statement := tracker.next_statement()) is not NEED_DATA:
        tracker.forward(statement, notes)       # or tracker.refuse(statement, error)
    upstream_bytes = tracker.take_upstream()

Only messages that carry statement text (Query, Parse, FunctionCall) come out
as :class:`Statement` events; the caller must answer each with
:meth:`Tracker.forward` or :meth:`Tracker.refuse` before the next one comes
(until then :meth:`next_statement` returns the same event, so a caller may stop
and come back later). Everything else (Bind, Execute, Sync, Describe, Close,
COPY data, Flush, Terminate) is tracked and forwarded untouched. A *note* is
the caller's own object for a request; it comes back in the :class:`Finished`
event of that request, and a Parse's note is carried to the Executes of
portals bound to that statement.

A refused statement never reaches the server: in its place goes a *stand-in*
that fails to parse (a Query, or a Parse under the same name), and the
stand-in's error is swapped for the caller's refusal on its way back. So the
server treats it as any failed statement: a transaction becomes failed, an
extended batch is skipped up to its Sync.

Server side: :meth:`Tracker.receive_server` returns the bytes for the client
and leaves :class:`Finished`, :class:`ParameterChanged` and
:class:`RowLayout` events in :attr:`Tracker.events`. Rows are only counted:
the pass-through path for result rows reads each message's type byte alone.

Rows can be rewritten on their way (masking): a ``plan_rows`` callback is
asked, for each request that returns rows, with its note, its columns (None
when the client never had them described) and their formats, and returns a
:data:`RowFilter` (or None to pass the rows untouched). The filter gets each
run of consecutive DataRow messages of a received chunk at once (the chunk
and where the run starts and ends: one call, not one per row) and returns
the DataRows to send instead, or a :class:`Deferred`: rows the caller's
shell will have rewritten elsewhere (another process) and puts in their
place. :meth:`Tracker.receive_server` then returns a list of pieces, bytes
and deferred runs, in the order they go to the client.

Errors and notices can be rewritten too (masking: PostgreSQL quotes values
in them): a ``screen_messages`` callback gets the note of the request at the
head of the queue (None if none) and each ErrorResponse, NoticeResponse,
NotificationResponse or ParameterStatus whole, and returns the message to send
instead (a refusal's swapped error excepted: it is the proxy's own). A
``plan_copy`` callback is asked, when a COPY out starts, with the request's
note and the CopyOutResponse (whole), and returns a :data:`CopyFilter` for
each CopyData message of it (or None).
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, cast

from . import messages as m
from .codec import DEFAULT_MAX_MESSAGE_SIZE, Frame, MessageReader, decode_backend, decode_frontend
from .connection import NEED_DATA, _Sentinel
from .errors import RemoteProtocolError

__all__ = [
    "ANSWERS",
    "STAND_IN_SQL",
    "Answer",
    "CopyFilter",
    "CopyPlanner",
    "Deferred",
    "Desync",
    "Finished",
    "MessageScreen",
    "ParameterChanged",
    "Request",
    "RowFilter",
    "RowLayout",
    "RowPlanner",
    "Statement",
    "Tracker",
    "TrackerEvent",
]

# What the server runs in place of a refused statement: it fails to parse.
STAND_IN_SQL: Final = "/* statement refused by Steward */ STEWARD_REFUSED"
_STAND_IN_QUERY: Final = m.Query(STAND_IN_SQL)._body()


class Request(enum.IntEnum):
    """What the server owes an answer to."""

    PARSE = 0
    BIND = 1
    DESCRIBE = 2
    CLOSE = 3
    EXECUTE = 4
    STATEMENT = 5  # one statement of a simple Query string
    FUNCTION = 6  # a FunctionCall
    SYNC = 7
    QUERY_END = 8  # the end of a Query or FunctionCall: ReadyForQuery answers it
    REFUSAL = 9  # a stand-in whose error becomes the refusal


class Answer(enum.Enum):
    """What an answer does to the request at the head of the queue."""

    DONE = "done"  # the request is answered
    ROW = "row"  # one result row
    LAYOUT = "layout"  # the layout of the rows that follow
    COMPLETE = "complete"  # the statement completed (rows from the tag)
    KEEP = "keep"  # part of the answer; more follows


R, A = Request, Answer
ANSWERS: Final[dict[tuple[Request, bytes], Answer]] = {
    (R.PARSE, b"1"): A.DONE,  # ParseComplete
    (R.BIND, b"2"): A.DONE,  # BindComplete
    (R.CLOSE, b"3"): A.DONE,  # CloseComplete
    (R.DESCRIBE, b"t"): A.KEEP,  # ParameterDescription, then:
    (R.DESCRIBE, b"T"): A.DONE,  # RowDescription
    (R.DESCRIBE, b"n"): A.DONE,  # NoData
    (R.FUNCTION, b"V"): A.COMPLETE,  # FunctionCallResponse
    (R.EXECUTE, b"s"): A.COMPLETE,  # PortalSuspended
    **{(run, b"T"): A.LAYOUT for run in (R.STATEMENT,)},
    **{(run, b"D"): A.ROW for run in (R.STATEMENT, R.EXECUTE)},  # DataRow
    **{(run, b"C"): A.COMPLETE for run in (R.STATEMENT, R.EXECUTE)},  # CommandComplete
    **{(run, b"I"): A.COMPLETE for run in (R.STATEMENT, R.EXECUTE)},  # EmptyQueryResponse
    **{
        (run, t): A.KEEP
        for run in (R.STATEMENT, R.EXECUTE)
        for t in (b"G", b"H", b"W", b"d", b"c")  # COPY
    },
}
"""``(request at the head, backend message type) -> what it does``.

ErrorResponse (any request: it fails and the server skips ahead),
ReadyForQuery (answers a SYNC or QUERY_END) and the messages a server may send
at any time (NoticeResponse, NotificationResponse, ParameterStatus) are
handled apart. Any other pairing is a :class:`Desync`.
"""
_ASYNC = frozenset(b"NAS")
# The request kinds as plain ints for the loops (an IntEnum hashes slowly).
(
    _R_PARSE,
    _R_BIND,
    _R_DESCRIBE,
    _R_CLOSE,
    _R_EXECUTE,
    _R_STATEMENT,
    _R_FUNCTION,
    _R_SYNC,
    _R_QUERY_END,
    _R_REFUSAL,
) = (int(r) for r in Request)
_RUNS = (_R_STATEMENT, _R_EXECUTE)
# The simple acknowledgements (each DONE in ANSWERS), read ahead of the table.
_COMPLETIONS = {b"1"[0]: _R_PARSE, b"2"[0]: _R_BIND, b"3"[0]: _R_CLOSE}
_ENDS = (_R_SYNC, _R_QUERY_END)
_ANSWER: dict[tuple[int, int], Answer] = {(int(k), t[0]): a for (k, t), a in ANSWERS.items()}


class Desync(RemoteProtocolError):
    """The server answered with something no pending request accounts for."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the server sent {what} that no pending request accounts for")
        self.what = what


class Statement(NamedTuple):
    """A client message with statement text: a Query, Parse or FunctionCall.

    ``text`` is the statement text as sent (UTF-8 bytes); ``name`` the
    prepared statement's name (Parse); ``function_oid`` the function
    (FunctionCall, whose ``text`` is empty).
    """

    kind: str  # "Q", "P" or "F"
    text: bytes = b""
    name: str = ""
    function_oid: int = 0


class Finished(NamedTuple):
    """The server finished a request that runs something (or skipped it).

    ``rows`` is the count from the command tag (else the rows seen; None when
    not known); ``error`` is None on success, ``SQLSTATE xxxxx`` on failure,
    or why it did not run.
    """

    note: Any
    rows: int | None
    error: str | None
    tag: bytes = b""
    started: float = 0.0
    """When the request went upstream (the tracker's clock)."""
    filter: RowFilter | None = None
    """The row filter ``plan_rows`` gave the request, if its rows went through one."""


class ParameterChanged(NamedTuple):
    """The server reported a run-time parameter's value (ParameterStatus)."""

    name: str
    value: str


class RowLayout(NamedTuple):
    """The columns of the rows a request returns, and the formats they come in.

    For a simple Query statement it comes with the server's RowDescription;
    for an Execute, when the portal or its statement was described, at the
    Execute (``formats`` from the Bind: empty means all text).
    """

    note: Any
    fields: tuple[m.FieldDescription, ...]
    formats: tuple[int, ...] = ()


TrackerEvent = Finished | ParameterChanged | RowLayout


class Deferred:
    """A row filter's answer to be computed elsewhere: the shell sends the
    rows it stands for in its place, in order (subclasses say how)."""

    __slots__ = ()


RowFilter = Callable[[bytes, int, int], "bytes | Deferred"]
"""``(chunk, start, end)``: whole DataRow messages ``chunk[start:end]`` in, the DataRows
to send in their place (or a :class:`Deferred` standing for them) out."""
CopyFilter = Callable[[bytes], bytes]
"""A CopyData message in, the CopyData message to send in its place out."""
CopyPlanner = Callable[[Any, bytes], "CopyFilter | None"]
"""``(note, CopyOutResponse) -> a filter for its CopyData messages, or None``."""
MessageScreen = Callable[[Any, bytes], bytes]
"""``(note or None, ErrorResponse, NoticeResponse, NotificationResponse or ParameterStatus)
-> the message to send``."""
RowPlanner = Callable[
    [Any, "tuple[m.FieldDescription, ...] | None", tuple[int, ...]], "RowFilter | None"
]
"""``(note, columns or None, result formats) -> RowFilter | None``."""


class _Pending:
    """A request the server owes an answer to.

    Not slotted: the rarely used fields stay class attributes until set, so
    making one (twice per Query) costs three assignments.
    """

    rows: int = 0
    payload: bytes = b""  # REFUSAL: the ErrorResponse the client gets
    settles: bool = False  # SYNC, QUERY_END: ends a run of executed requests
    target: tuple[str, int] | None = None  # DESCRIBE: ("S"|"P", generation)
    filter: RowFilter | None = None  # STATEMENT, EXECUTE: rewrites its rows
    copy_filter: CopyFilter | None = None  # rewrites each CopyData of a COPY out
    # EXECUTE whose layout is not known yet: its portal's and statement's
    # generations, and the result formats.
    unplanned: tuple[int, int, tuple[int, ...]] | None = None
    # PARSE, BIND, CLOSE: the name it (re)made or dropped, what the name held
    # before and holds now; put back when the server does not run it.
    undo: tuple[dict[str, Any], str, Any, Any] | None = None
    # STATEMENT, EXECUTE, SYNC: CopyDone and CopyFail messages the client had
    # sent before it (a Sync between a COPY FROM STDIN and its end is ignored).
    copy_ends: int = 0

    def __init__(self, kind: int, note: Any = None, started: float = 0.0) -> None:
        self.kind = kind  # a Request
        self.note = note
        self.started = started


def _refusal(error: bytes) -> _Pending:
    pending = _Pending(_R_REFUSAL)
    pending.payload = error
    return pending


_MAX_NAMED = 10_000  # prepared statements and portals remembered per session
# Columns of described layouts remembered per session (one may have 1664);
# an Execute whose layout was forgotten is planned as never described.
_MAX_LAYOUT_COLUMNS = 100_000
# PostgreSQL keys prepared statements and portals by their first NAMEDATALEN - 1
# bytes: longer names that share those are one name.
_NAME_BYTES = 63


def _key(name: str) -> str:
    """``name`` as PostgreSQL keys it (its first 63 bytes)."""
    if len(name) <= _NAME_BYTES // 4:
        return name
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _NAME_BYTES:
        return name
    return raw[:_NAME_BYTES].decode("utf-8", "surrogateescape")


def _UNPLANNED(chunk: bytes, start: int, end: int) -> bytes:
    raise AssertionError("an unplanned row filter is never called")


class Tracker:
    """One session's exchange after sign-in; see the module docstring."""

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        track_layouts: bool = False,
        plan_rows: RowPlanner | None = None,
        screen_messages: MessageScreen | None = None,
        plan_copy: CopyPlanner | None = None,
        running: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.running = running
        """Called with a note as its statement goes to run (each of a Query's, an
        Execute's), before the client's next message is read: names the statement
        may make or drop (a cursor, a prepared statement) can be forgotten
        (:meth:`forget_portal`, :meth:`forget_statement`) before a Bind or Execute
        sent behind it, ahead of its answer, is taken for what they held."""
        self.plan_rows = plan_rows
        self.screen_messages = screen_messages
        self.plan_copy = plan_copy
        self.track_layouts = track_layouts or plan_rows is not None
        """Emit :class:`RowLayout` events (masking needs them; they cost a decode)."""
        self.txn_status = "I"
        self.terminated = False
        """The client said goodbye (Terminate)."""
        self.upstream_fatal: str | None = None
        """SQLSTATE of a FATAL (or PANIC) error the server sent."""
        self.forgot_statements = False
        """More statements were prepared than are remembered: the oldest were forgotten."""
        self.events: list[TrackerEvent] = []
        self._from_client = MessageReader(max_message_size=max_message_size)
        self._from_server = MessageReader(max_message_size=max_message_size)
        self._queue: deque[_Pending] = deque()
        # Names are reused (the unnamed statement and portal all the time), so
        # each Parse and Bind makes a new *generation*; a Describe's answer
        # belongs to the generation it was sent for, even when pipelined.
        self._generations = itertools.count(1)
        self._statements: dict[str, tuple[Any, int]] = {}  # name -> note, generation
        # portal name -> note, result formats, the statement it was bound from
        self._portals: dict[str, tuple[Any, tuple[int, ...], int, int]] = {}
        self._layouts: dict[tuple[str, int], tuple[m.FieldDescription, ...]] = {}
        self._layout_columns = 0  # in all of them
        self._skipping = False  # dropping client messages until Sync after a refusal
        self._dirty = False
        self._unsettled = 0
        # The client chunk being read: its bytes, frame spans, the next span,
        # and what goes upstream so far (runs of it, with replacements).
        self._chunk = b""
        self._spans: list[tuple[int, int, int, int]] = []
        self._index = 0
        self._cut = 0
        self._out: list[bytes] = []
        self._current: Statement | None = None
        self._now = 0.0  # when the client bytes being read arrived
        self._copy_ends = 0  # CopyDone and CopyFail messages from the client

    # -- state -------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests the server still owes an answer to."""
        return len(self._queue)

    @property
    def dirty(self) -> bool:
        """Something that runs code went upstream since the last Sync or Query end."""
        return self._dirty

    @property
    def unsettled(self) -> int:
        """Ends (Sync, Query end) after executed requests whose ReadyForQuery is due.

        A setting a function changed is reported with the next ReadyForQuery;
        until then the server may read new statement text differently.
        """
        return self._unsettled

    def statement_note(self, name: str) -> Any:
        """The note of prepared statement ``name`` (None if unknown)."""
        found = self._statements.get(_key(name))
        return found[0] if found is not None else None

    def statement_notes(self) -> list[tuple[str, Any]]:
        """Every prepared statement's name and note, oldest first."""
        return [(name, found[0]) for name, found in self._statements.items()]

    def remember_statement(self, name: str, note: Any) -> None:
        """Record a statement prepared outside the protocol (SQL ``PREPARE``)."""
        if _remember(self._statements, _key(name), (note, next(self._generations))):
            self.forgot_statements = True

    def forget_statement(self, name: str | None) -> None:
        """Forget one prepared statement (SQL ``DEALLOCATE``), or all with None."""
        if name is None:
            self._statements.clear()
        else:
            self._statements.pop(_key(name), None)

    def has_portal(self, name: str) -> bool:
        """Whether a Bind made portal ``name`` (it may have ended with its transaction)."""
        return _key(name) in self._portals

    def forget_portal(self, name: str) -> None:
        """Forget portal ``name``: a SQL ``DECLARE`` made a cursor under it."""
        self._portals.pop(_key(name), None)

    # -- client -> server --------------------------------------------------------

    def receive_client(self, data: bytes, now: float | None = None) -> None:
        """Bytes from the client; ``b""`` marks the end of the stream.

        ``now`` is when they arrived (the tracker's clock when not given): it
        stamps the requests they hold.
        """
        self._now = self.clock() if now is None else now
        self._from_client.feed(data)

    def next_statement(self) -> Statement | _Sentinel:
        """The next client message with statement text, or ``NEED_DATA``.

        Everything before it is tracked and queued for the server. Until it is
        answered with :meth:`forward` or :meth:`refuse`, it is returned again.
        """
        if self._current is not None:
            return self._current
        spans, index = self._spans, self._index
        while True:
            if index == len(spans):
                reader = self._from_client
                if reader.pending < 5 and not reader.at_eof:
                    return NEED_DATA  # not even a message header buffered
                if self._chunk:
                    self._flush_chunk()
                self._chunk, spans = reader.read_spans()
                self._spans, self._index, self._cut = spans, 0, 0
                index = 0
                if not spans:
                    if reader.at_eof and reader.pending:
                        raise RemoteProtocolError("connection closed in the middle of a message")
                    return NEED_DATA
            kind, start, end, _ = spans[index]
            if kind == _QUERY and not self._skipping:  # the common case, inline
                chunk = self._chunk
                if chunk[end - 1] != 0:
                    decode_frontend(Frame(b"Q", chunk[start:end]))  # raises the precise error
                statement: Statement | None = Statement("Q", chunk[start + 5 : end - 1])
            else:
                statement = self._client_message(kind, start, end)
            if statement is not None:
                self._current = statement
                return statement
            index += 1
            self._index = index

    def forward(
        self, statement: Statement, notes: Sequence[Any] | Any, now: float | None = None
    ) -> None:
        """Send ``statement`` on. ``notes``: one per statement of a Query (a sequence), else one.

        An empty Query (no statements) takes ``[]`` and is answered like one
        statement (EmptyQueryResponse), with a None note. ``now`` is when it
        went (the tracker's clock when not given).
        """
        self._answered(statement)
        queue = self._queue
        if now is None:
            now = self.clock()
        if statement.kind == "Q":
            running = self.running
            for note in notes or [None]:
                queue.append(pending := _Pending(_R_STATEMENT, note, now))
                if self._copy_ends:
                    pending.copy_ends = self._copy_ends
                if running is not None:
                    running(note)
            self._dirty = True
            self._end(_R_QUERY_END)
        elif statement.kind == "P":
            statements, name = self._statements, _key(statement.name)
            previous = statements.get(name)
            if _remember(statements, name, made := (notes, next(self._generations))):
                self.forgot_statements = True
            parse = _Pending(_R_PARSE, notes, now)
            parse.undo = (statements, name, previous, made)
            queue.append(parse)
        else:
            queue.append(_Pending(_R_FUNCTION, notes, now))
            self._dirty = True
            self._end(_R_QUERY_END)

    def refuse(self, statement: Statement, error: bytes) -> None:
        """Refuse ``statement``: the client gets ``error`` (an encoded ErrorResponse)."""
        self._answered(statement)
        _, start, end, _ = self._spans[self._index - 1]
        self._queue.append(_refusal(error))
        if statement.kind == "P":
            if not statement.name:
                # PostgreSQL drops the unnamed statement before parsing a new one,
                # but keeps a named statement when a Parse under its name fails.
                self._statements.pop("", None)
            self._skipping = True
            stand_in = m.Parse(statement.name, STAND_IN_SQL)._body()
            replacement = b"P" + (len(stand_in) + 4).to_bytes(4, "big") + stand_in
        else:
            self._end(_R_QUERY_END)
            replacement = b"Q" + (len(_STAND_IN_QUERY) + 4).to_bytes(4, "big") + _STAND_IN_QUERY
        self._out += (self._chunk[self._cut : start], replacement)
        self._cut = end

    def take_upstream(self) -> bytes:
        """The bytes for the server, up to the last message handled."""
        chunk, cut = self._chunk, self._cut
        spans, index = self._spans, self._index
        upto = len(chunk) if index == len(spans) else spans[index][1]
        out = self._out
        if not out:
            if cut == 0 and upto == len(chunk):
                self._chunk, self._spans, self._index = b"", [], 0
                return chunk
            self._cut = upto
            return chunk[cut:upto]
        out.append(chunk[cut:upto])
        self._out = []
        self._cut = upto
        return b"".join(out)

    def _flush_chunk(self) -> None:
        """Keep what the finished chunk sends upstream before reading the next."""
        if self._chunk:
            tail = self._chunk[self._cut :]
            if tail:
                self._out.append(tail)
            self._chunk, self._spans, self._index, self._cut = b"", [], 0, 0

    def _answered(self, statement: Statement) -> None:
        if statement is not self._current:
            raise ValueError("that statement is not the one awaiting an answer")
        self._current = None
        self._index += 1

    def _end(self, kind: int) -> None:
        settles = self._dirty
        if settles:
            self._unsettled += 1
            self._dirty = False
        pending = _Pending(kind)
        pending.settles = settles
        if self._copy_ends:
            pending.copy_ends = self._copy_ends
        self._queue.append(pending)

    def _client_message(self, kind: int, start: int, end: int) -> Statement | None:
        """Track one client message; a Statement when it needs an answer first."""
        if self._skipping:
            # As PostgreSQL after an error: discard up to Sync. Flush still goes
            # up, so answers the server holds reach a client waiting for them.
            if kind == _SYNC:
                self._skipping = False
                self._end(_R_SYNC)
            elif kind == _TERMINATE:
                self.terminated = True
            elif kind != _FLUSH:
                self._drop(start, end)
            return None
        chunk = self._chunk
        if kind == _BIND:
            portal, statement_name = _names(chunk, start, end, 2)
            note, statement_generation = self._statements.get(statement_name, (None, 0))
            formats: tuple[int, ...] = ()
            if self.track_layouts:
                bind = cast(m.Bind, decode_frontend(Frame(b"B", chunk[start:end])))
                formats = bind.result_formats
            portals = self._portals
            previous = portals.pop(portal, None)  # (re)made: the newest last, for the bound
            made = portals[portal] = (note, formats, statement_generation, next(self._generations))
            if len(portals) > _MAX_NAMED:
                del portals[next(iter(portals))]
            self._dirty = True  # a parameter's input function may run code
            bind = _Pending(_R_BIND)
            bind.undo = (portals, portal, previous, made)
            self._queue.append(bind)
        elif kind == _EXECUTE:
            portal = _names(chunk, start, end, 1)[0]
            note, formats, statement_generation, portal_generation = self._portals.get(
                portal, (None, (), 0, 0)
            )
            self._dirty = True
            if self.running is not None:
                self.running(note)
            pending = _Pending(_R_EXECUTE, note, self._now)
            if self._copy_ends:
                pending.copy_ends = self._copy_ends
            self._queue.append(pending)
            if self.track_layouts:
                pending.unplanned = (portal_generation, statement_generation, formats)
                self._plan(pending)
        elif kind == _SYNC:
            self._end(_R_SYNC)
        elif kind in (_DESCRIBE, _CLOSE):
            of, name = _target(chunk, start, end)
            if kind == _DESCRIBE:
                named = self._statements if of == "S" else self._portals
                found = named.get(name)
                describe = _Pending(_R_DESCRIBE)
                describe.target = (of, found[-1]) if found is not None else None
                self._queue.append(describe)
            else:
                named = self._statements if of == "S" else self._portals
                close = _Pending(_R_CLOSE)
                close.undo = (named, name, named.pop(name, None), None)
                self._queue.append(close)
        elif kind == _TERMINATE:
            self.terminated = True
        elif kind == _QUERY:
            if chunk[end - 1] != 0:
                decode_frontend(Frame(b"Q", chunk[start:end]))  # raises the precise error
            return Statement("Q", chunk[start + 5 : end - 1])
        elif kind == _PARSE:
            parse = cast(m.Parse, decode_frontend(Frame(b"P", chunk[start:end])))
            return Statement("P", parse.query.encode("utf-8", "surrogateescape"), parse.name)
        elif kind == _FUNCTION_CALL:
            call = cast(m.FunctionCall, decode_frontend(Frame(b"F", chunk[start:end])))
            return Statement("F", function_oid=call.function_oid)
        elif kind in (_COPY_DONE, _COPY_FAIL):
            self._copy_ends += 1
        elif kind not in _PASSED_THROUGH:
            decode_frontend(Frame(bytes((kind,)), chunk[start:end]))  # raises for an unknown type
        return None

    def _drop(self, start: int, end: int) -> None:
        self._out.append(self._chunk[self._cut : start])
        self._cut = end

    # -- server -> client ----------------------------------------------------------

    def receive_server(self, data: bytes) -> bytes | list[bytes | Deferred]:
        """Bytes from the server; returns the bytes for the client.

        When a row filter deferred a run, the bytes come as a list of pieces
        in order, bytes and :class:`Deferred` runs. Events land in
        :attr:`events`. Raises :class:`Desync` (nothing of ``data`` is then
        meant for the client).
        """
        reader = self._from_server
        reader.feed(data)
        chunk, spans = reader.read_spans(_DATA_ROW)
        queue = self._queue
        pieces: list[Any] | None = None  # only when a message is replaced
        deferred = False
        cut = 0
        for kind, start, end, count in spans:
            if kind == _DATA_ROW:  # a run of ``count`` rows
                if not queue or queue[0].kind not in _RUNS:
                    raise Desync("a data row")
                head = queue[0]
                head.rows += count
                if head.filter is not None:
                    if head.filter is _UNPLANNED:
                        self._plan(head, final=True)  # never described: no layout
                    if head.filter is not None:
                        if pieces is None:
                            pieces = []
                        rows = head.filter(chunk, start, end)
                        pieces += (chunk[cut:start], rows)
                        deferred = deferred or rows.__class__ is not bytes
                        cut = end
                continue
            if kind == _COMMAND_COMPLETE:  # the common answer, ahead of the table
                if not queue or queue[0].kind not in _RUNS:
                    raise Desync("a command completion")
                head = queue.popleft()
                tag = chunk[start + 5 : end - 1]
                count = tag.rpartition(b" ")[2]
                rows = int(count) if count.isdigit() else head.rows
                done = head.filter
                if done is _UNPLANNED:
                    done = None
                self.events.append(Finished(head.note, rows, None, tag, head.started, done))
                continue
            if kind == _ROW_DESCRIPTION and queue and queue[0].kind == _R_STATEMENT:
                # The layout of a simple-Query statement's rows (LAYOUT in ANSWERS).
                if self.track_layouts:
                    self._layout(queue[0], chunk, start, end)
                continue
            if kind == _READY_FOR_QUERY:
                if end - start != 6 or chunk[start + 5] not in b"ITE":
                    decode_backend(Frame(b"Z", chunk[start:end]))  # raises
                    raise RemoteProtocolError("malformed ReadyForQuery message")
                self.txn_status = chr(chunk[start + 5])
                self._ready()
                continue
            if kind == _ERROR_RESPONSE:
                error = cast(m.ErrorResponse, decode_backend(Frame(b"E", chunk[start:end])))
                if queue and queue[0].kind == _R_REFUSAL and error.severity == "ERROR":
                    # The stand-in's error becomes the refusal (a FATAL stays itself).
                    if pieces is None:
                        pieces = []
                    pieces += (chunk[cut:start], queue.popleft().payload)
                    cut = end
                    self._skip(_ENDS, "SQLSTATE 42501 (refused)")
                else:
                    if self.screen_messages is not None:
                        pieces, cut = self._screen(chunk, start, end, pieces, cut)
                    self._failed(error)
                continue
            if kind in _ASYNC:
                if kind == _PARAMETER_STATUS:
                    status = cast(m.ParameterStatus, decode_backend(Frame(b"S", chunk[start:end])))
                    self.events.append(ParameterChanged(status.name, status.value))
                if self.screen_messages is not None:
                    # A notice, a notification's payload, a reported setting
                    # (set_config) may each hold any value.
                    pieces, cut = self._screen(chunk, start, end, pieces, cut)
                continue
            if kind in _COMPLETIONS and queue and queue[0].kind == _COMPLETIONS[kind]:
                queue.popleft()  # ParseComplete, BindComplete, CloseComplete
                continue
            head = queue[0] if queue else None
            answer = _ANSWER.get((head.kind, kind)) if head is not None else None
            if answer is None or head is None:
                type_byte = _TYPE_BYTES[kind]
                raise Desync(_DESCRIBED.get(type_byte, f"a {type_byte!r} message"))
            if answer is A.COMPLETE:
                queue.popleft()
                tag = chunk[start + 5 : end - 1] if kind == _COMMAND_COMPLETE else b""
                count = tag.rpartition(b" ")[2]
                rows = int(count) if count.isdigit() else head.rows
                rows_or_none = None if kind == _FUNCTION_RESULT else rows
                self.events.append(
                    Finished(head.note, rows_or_none, None, tag, head.started, _planned(head))
                )
            elif kind == _COPY_IN:
                self._copy_in(head)
            elif answer is A.KEEP and self.plan_copy is not None:
                if kind == _COPY_OUT:
                    head.copy_filter = self.plan_copy(head.note, chunk[start:end])
                elif kind == _COPY_DATA and head.copy_filter is not None:
                    if pieces is None:
                        pieces = []
                    pieces += (chunk[cut:start], head.copy_filter(chunk[start:end]))
                    cut = end
            elif answer is A.DONE:
                queue.popleft()
                if kind == _ROW_DESCRIPTION and self.track_layouts and head.target is not None:
                    self._keep_layout(head.target, _fields(chunk, start, end))
                    for later in queue:  # Executes pipelined behind this Describe
                        if later.unplanned is not None:
                            self._plan(later)
            elif answer is A.LAYOUT and self.track_layouts:
                self._layout(head, chunk, start, end)
        if reader.at_eof and reader.pending:
            raise RemoteProtocolError("upstream closed in the middle of a message")
        if pieces is None:
            return chunk
        pieces.append(chunk[cut:])
        if deferred:
            return pieces
        return b"".join(pieces)

    def _keep_layout(self, target: tuple[str, int], fields: tuple[m.FieldDescription, ...]) -> None:
        """Remember a described layout, forgetting the oldest beyond the bounds
        (a statement made again leaves its old one behind)."""
        layouts = self._layouts
        old = layouts.pop(target, None)
        if old is not None:
            self._layout_columns -= len(old)
        layouts[target] = fields
        self._layout_columns += len(fields)
        while len(layouts) > 1 and (
            self._layout_columns > _MAX_LAYOUT_COLUMNS or len(layouts) > _MAX_NAMED
        ):
            self._layout_columns -= len(layouts.pop(next(iter(layouts))))

    def _copy_in(self, head: _Pending) -> None:
        """COPY FROM STDIN: the server ignores Syncs until the client's CopyDone or CopyFail.

        libpq sends one after the Execute, before it knows the statement is a
        COPY; those the client sent between ``head`` and its end of the COPY
        get no ReadyForQuery. What the dropped ones were to settle, the next
        end settles.
        """
        queue = self._queue
        ignored = [
            p
            for p in queue
            if p.kind == _R_SYNC and p.copy_ends == head.copy_ends and p is not head
        ]
        for sync in ignored:
            position = queue.index(sync)
            del queue[position]
            if not sync.settles:
                continue
            later = next(
                (p for p in itertools.islice(queue, position, None) if p.kind in _ENDS), None
            )
            if later is None:
                self._dirty = True  # the next end settles it
                self._unsettled -= 1
            elif later.settles:
                self._unsettled -= 1
            else:
                later.settles = True

    def _screen(
        self, chunk: bytes, start: int, end: int, pieces: list[bytes] | None, cut: int
    ) -> tuple[list[bytes] | None, int]:
        """Ask ``screen_messages`` about one message; replace it in the output if it says so."""
        assert self.screen_messages is not None
        queue = self._queue
        note = queue[0].note if queue else None
        message = chunk[start:end]
        replacement = self.screen_messages(note, message)
        if replacement == message:
            return pieces, cut
        if pieces is None:
            pieces = []
        pieces += (chunk[cut:start], replacement)
        return pieces, end

    def _layout(self, head: _Pending, chunk: bytes, start: int, end: int) -> None:
        fields = _fields(chunk, start, end)
        # All text, but for a FETCH from a BINARY cursor.
        formats = tuple(f.format for f in fields) if any(f.format for f in fields) else ()
        self.events.append(RowLayout(head.note, fields, formats))
        if self.plan_rows is not None:
            head.filter = self.plan_rows(head.note, fields, formats)

    def _plan(self, pending: _Pending, *, final: bool = False) -> None:
        """Find an Execute's layout and ask ``plan_rows`` for its filter.

        Until its portal or statement is described the layout is unknown and
        the filter is ``_UNPLANNED``; with ``final`` (rows are coming and no
        Describe answered) it is planned with no columns.
        """
        assert pending.unplanned is not None
        portal, statement, formats = pending.unplanned
        layouts = self._layouts
        layout = layouts.get(("P", portal)) or layouts.get(("S", statement))
        if layout is None and not final:
            if self.plan_rows is not None:
                pending.filter = _UNPLANNED
            return
        pending.unplanned = None
        if layout is not None:
            self.events.append(RowLayout(pending.note, layout, formats))
        if self.plan_rows is not None:
            pending.filter = self.plan_rows(pending.note, layout, formats)

    def take_events(self) -> list[TrackerEvent]:
        """The events since the last call, oldest first."""
        events, self.events = self.events, []
        return events

    def _ready(self) -> None:
        """ReadyForQuery: everything up to the next Sync or Query end is answered."""
        queue = self._queue
        undone: list[_Pending] | None = None
        while queue:
            head = queue.popleft()
            if head.kind in _ENDS:
                if head.settles:
                    self._unsettled -= 1
                break
            if head.undo is not None:
                if undone is None:
                    undone = []
                undone.append(head)
            self._unfinished(head, "not executed: no answer")
        if undone:
            _undo(undone)

    def _failed(self, error: m.ErrorResponse) -> None:
        if error.severity in ("FATAL", "PANIC"):
            self.upstream_fatal = error.sqlstate
        queue = self._queue
        if not queue or queue[0].kind in _ENDS:
            return
        failed = queue.popleft()
        # Only the SQLSTATE: PostgreSQL's messages may quote the values involved.
        code = error.sqlstate
        well_formed = len(code) == 5 and code.isascii() and code.isalnum()
        reason = f"SQLSTATE {code if well_formed else 'invalid'}"
        if failed.kind == _R_PARSE:
            self.events.append(Finished(failed.note, None, reason, started=failed.started))
        else:
            self._unfinished(failed, reason)
        if failed.kind in (_R_STATEMENT, _R_FUNCTION):
            self._skip(_ENDS, reason)  # the rest of this simple Query
        else:
            # An extended-protocol batch: the server discards everything up to
            # Sync, simple Queries sent inside the batch included.
            self._skip((_R_SYNC,), reason)
        if failed.undo is not None:
            # A Parse or Bind under a name in use fails and leaves it as it was;
            # a failed one of the unnamed statement or portal leaves none.
            named, name, _, made = failed.undo
            if failed.kind == _R_CLOSE or name:
                _undo([failed])
            elif named.get(name) is made:
                del named[name]

    def _skip(self, until: tuple[int, ...], reason: str) -> None:
        """Drop what the server will not answer after an error, up to ``until``."""
        queue = self._queue
        undone: list[_Pending] | None = None
        while queue and queue[0].kind not in until:
            skipped = queue.popleft()
            if skipped.undo is not None:
                if undone is None:
                    undone = []
                undone.append(skipped)
            self._unfinished(skipped, f"not executed: an earlier message failed ({reason})")
        if undone:
            _undo(undone)

    def abandon(self, reason: str) -> list[TrackerEvent]:
        """Finish every request still pending when either side went away."""
        queue = self._queue
        while queue:
            self._unfinished(queue.popleft(), reason)
        return self.take_events()

    def _unfinished(self, pending: _Pending, error: str) -> None:
        """A statement's request that ends without its completion: Finished with ``error``."""
        if pending.kind in _RUNS or pending.kind == _R_FUNCTION:
            self.events.append(
                Finished(
                    pending.note,
                    pending.rows or None,
                    error,
                    started=pending.started,
                    filter=_planned(pending),
                )
            )


# Message type bytes, as ints, for the loops.
_QUERY, _PARSE, _BIND, _EXECUTE, _SYNC, _DESCRIBE, _CLOSE = b"QPBESDC"
_FUNCTION_CALL, _TERMINATE, _FLUSH = b"FXH"
_PASSED_THROUGH = frozenset(b"dcfH")  # CopyData, CopyDone, CopyFail, Flush
_DATA_ROW, _COMMAND_COMPLETE, _READY_FOR_QUERY, _ERROR_RESPONSE, _ROW_DESCRIPTION = b"DCZET"
_PARAMETER_STATUS, _FUNCTION_RESULT = b"SV"
_COPY_OUT, _COPY_DATA, _COPY_IN = b"HdG"
_COPY_DONE, _COPY_FAIL = b"cf"
_TYPE_BYTES = tuple(bytes([i]) for i in range(256))
_DESCRIBED = {
    b"C": "a command completion",
    b"T": "a row description",
    b"I": "an empty-query answer",
    b"s": "a portal-suspended answer",
    b"G": "a COPY response",
    b"H": "a COPY response",
    b"W": "a COPY response",
    b"d": "COPY data",
    b"c": "a COPY end",
    b"V": "a function result",
    b"1": "a parse completion",
    b"2": "a bind completion",
    b"3": "a close completion",
    b"n": "a no-data answer",
    b"t": "a parameter description",
}


def _names(chunk: bytes, start: int, end: int, count: int) -> list[str]:
    """The first ``count`` NUL-terminated names of the message at ``chunk[start:end]``.

    Bind and Execute arrive once per statement on the prepared-statement path;
    only their portal and statement names are needed, so they are read without
    decoding parameters. Malformed bodies are refused as the codec would.
    """
    names = []
    pos = start + 5
    for _ in range(count):
        nul = chunk.find(b"\0", pos, end)
        if nul < 0:
            decode_frontend(Frame(chunk[start : start + 1], chunk[start:end]))
            raise RemoteProtocolError("malformed message: name is not NUL-terminated")
        cut = nul if nul - pos <= _NAME_BYTES else pos + _NAME_BYTES
        names.append(chunk[pos:cut].decode("utf-8", "surrogateescape"))
        pos = nul + 1
    return names


def _target(chunk: bytes, start: int, end: int) -> tuple[str, str]:
    """What the Describe or Close at ``chunk[start:end]`` names: ``("S"|"P", name)``.

    A Describe comes with every execution on the prepared-statement path, so
    it is read in place; malformed bodies are refused as the codec would.
    """
    of = chunk[start + 5] if end - start > 6 else 0
    if of not in b"SP" or chunk.find(b"\0", start + 6, end) != end - 1:
        decode_frontend(Frame(chunk[start : start + 1], chunk[start:end]))
        raise RemoteProtocolError("malformed message: invalid target")
    name_end = min(end - 1, start + 6 + _NAME_BYTES)
    return chr(of), chunk[start + 6 : name_end].decode("utf-8", "surrogateescape")


def _fields(chunk: bytes, start: int, end: int) -> tuple[m.FieldDescription, ...]:
    return cast(m.RowDescription, decode_backend(Frame(b"T", chunk[start:end]))).fields


def _planned(pending: _Pending) -> RowFilter | None:
    return pending.filter if pending.filter is not _UNPLANNED else None


def _undo(pending: list[_Pending]) -> None:
    """Put back what Parses, Binds and Closes the server did not run changed, newest first."""
    for request in reversed(pending):
        assert request.undo is not None
        named, name, previous, made = request.undo
        if named.get(name) is not made:
            continue  # changed again since
        if previous is None:
            named.pop(name, None)
        else:
            _remember(named, name, previous)


def _remember(named: dict[Any, Any], name: Any, value: Any) -> bool:
    """Keep ``value`` under ``name``, forgetting the oldest beyond the bound (then True)."""
    named.pop(name, None)
    named[name] = value
    if len(named) > _MAX_NAMED:
        del named[next(iter(named))]
        return True
    return False
