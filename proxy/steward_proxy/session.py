"""One governed session after sign-in: bytes in, bytes out, no sockets.

:class:`Session` sits between a client and its upstream connection once both
are ready for queries. It frames what each side sends, judges every statement
against policy, forwards what is allowed untouched, refuses the rest, and
writes one audit record per statement when the upstream reports how it ended.

To tie upstream responses to the statements that caused them, the session
keeps a queue of *pending operations* in the order the upstream will answer
them (one per Parse, Bind, Describe, Execute, Close, FunctionCall, per
statement of a simple Query, and one per Sync or end of Query or FunctionCall).
After an error the upstream skips to the next Sync; the queue does the same.

A refused statement never reaches the upstream. In its place the session sends
a *stand-in* that PostgreSQL rejects with a syntax error (a Query, or a Parse
under the client's statement name), and swaps that error for the refusal on
its way back. So the refusal arrives in order with the answers to earlier
pipelined messages, and the upstream treats it as PostgreSQL would treat any
failed statement: an explicit transaction becomes failed, an extended-protocol
batch is rolled back and skipped up to its Sync.

The pass-through path for result rows only reads each message's type byte.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from steward_proxy import wire
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Decision, Identity, Policy, decide, decide_function_call
from steward_proxy.policy.pinned import PINNED_PARAMETERS
from steward_proxy.sql import (
    AnalysisLimitError,
    ShapeCache,
    SQLSyntaxError,
    StatementInfo,
    analyze,
    cached,
    cached_exact,
    depends_on_literals,
    normalize,
    remember,
)

SYNTAX_ERROR = "42601"
INSUFFICIENT_PRIVILEGE = "42501"
PROGRAM_LIMIT_EXCEEDED = "54000"
FEATURE_NOT_SUPPORTED = "0A000"
PROTOCOL_VIOLATION = "08P01"

# Pending operation kinds.
PARSE, BIND, DESCRIBE, CLOSE, EXECUTE, STATEMENT, FUNCTION, SYNC, QUERY_END, REFUSAL = range(10)
_ENDS = (SYNC, QUERY_END)  # what a ReadyForQuery answers

# What the upstream runs in place of a refused statement: it fails to parse.
STAND_IN_SQL = "/* statement refused by Steward */ STEWARD_REFUSED"
_STAND_IN_QUERY = wire.encode(wire.Query(STAND_IN_SQL))
# Frontend message type bytes, as ints, for the pass-through loop.
_QUERY, _PARSE, _BIND, _EXECUTE, _SYNC, _DESCRIBE, _FUNCTION_CALL, _TERMINATE, _FLUSH = b"QPBESDFXH"
_PASSED_THROUGH = frozenset(b"dcfH")  # CopyData, CopyDone, CopyFail, Flush

# Backend message type bytes, as ints, for the pass-through loop.
_DATA_ROW, _COMMAND_COMPLETE, _READY_FOR_QUERY, _ERROR_RESPONSE, _ROW_DESCRIPTION = b"DCZET"
_PARAMETER_STATUS, _EMPTY_QUERY, _PORTAL_SUSPENDED = b"SIs"
_COPY_RESPONSES = frozenset(b"GHW")  # CopyInResponse, CopyOutResponse, CopyBothResponse

# Statement text a server could read differently from the proxy if, unseen, the
# session's client_encoding or standard_conforming_strings had been changed: a
# backslash, or a non-ASCII byte followed by a byte that SJIS, BIG5, GBK, UHC,
# GB18030 or JOHAB may take as the second half of a double-byte character.
_READS_DIFFERENTLY = re.compile(rb"\\|[\x80-\xff][\x30-\x7e]")
_COMPLETES = {
    ord("1"): PARSE,
    ord("2"): BIND,
    ord("3"): CLOSE,
    ord("n"): DESCRIBE,
    ord("V"): FUNCTION,
}


def _names(chunk: bytes, start: int, end: int, count: int) -> list[str]:
    """The first ``count`` NUL-terminated names of the message at ``chunk[start:end]``.

    Bind and Execute arrive once per statement on the prepared-statement path;
    the session needs only their portal and statement names, so it reads those
    without decoding parameters. Malformed bodies are refused as the codec would.
    """
    names = []
    pos = start + 5
    for _ in range(count):
        nul = chunk.find(b"\0", pos, end)
        if nul < 0:
            wire.decode_frontend(wire.Frame(chunk[start : start + 1], chunk[start:end]))
            raise wire.RemoteProtocolError("malformed message: name is not NUL-terminated")
        names.append(chunk[pos:nul].decode("utf-8", "surrogateescape"))
        pos = nul + 1
    return names


class AuditSink(Protocol):
    def write(self, type: str, **fields: Any) -> dict[str, Any]: ...


class SessionEnded(wire.RemoteProtocolError):
    """The upstream did something that ends the session: the shell closes it.

    ``reason`` goes into the ``session.end`` audit record; ``kind`` names it
    in metrics (``desync``, ``setting_changed``).
    """

    def __init__(self, message: str, *, reason: str, kind: str, sqlstate: str) -> None:
        super().__init__(message, sqlstate)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True, slots=True)
class AnalysisLimits:
    """Bounds on what analysing one statement string may cost."""

    max_statement_bytes: int = 1 << 20
    """Longer statement text is refused (54000) without being analysed."""
    max_statements: int = 1000
    """A query string with more statements is refused (54000)."""
    inline_bytes: int = 2048
    """Longer text is analysed off the event loop (see ``pending_analysis``)."""
    inline_budget: int = 16384
    """Text analysed inline in one call before the session yields to the loop."""


# What analysis off the event loop delivers: the statements, or why it failed.
Analysis = tuple[StatementInfo, ...] | SQLSyntaxError | AnalysisLimitError


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy says about one statement string."""

    statements: tuple[StatementInfo, ...]
    decision: Decision


# A prepared statement or portal: the statement it runs and the verdict on it.
_Judged = tuple[StatementInfo | None, Verdict]
_MAX_NAMED = 10_000  # prepared statements and portals remembered per session


@dataclass(slots=True)
class _Op:
    kind: int
    statement: StatementInfo | None = None
    verdict: Verdict | None = None
    started: float = 0.0
    rows: int = 0
    payload: bytes = b""  # for REFUSAL: the ErrorResponse the client gets
    settles: bool = False  # for SYNC and QUERY_END: ends a run of executed messages


class Judge:
    """Turns statement text into a cached :class:`Verdict` for one identity.

    Shared by the sessions of one identity under one policy set. Verdicts are
    cached by statement shape, or by exact text when the analysis depends on
    literal values (see :func:`~steward_proxy.sql.remember`).
    """

    def __init__(
        self, policies: Sequence[Policy], *, maxsize: int = 4096, max_statements: int = 0
    ) -> None:
        self.policies = tuple(policies)
        self.max_statements = max_statements
        self._cache: ShapeCache[Verdict] = ShapeCache(maxsize)

    def judge(self, sql: str, analysed: Analysis | None = None) -> Verdict:
        """The verdict on ``sql``, analysing it here unless ``analysed`` is given.

        Raises :class:`SQLSyntaxError` or :class:`AnalysisLimitError`.
        """
        if isinstance(analysed, Exception):
            raise analysed
        if analysed is not None:
            verdict = Verdict(analysed, decide(self.policies, analysed))
            remember(self._cache, sql, "", verdict, exact=True)
            return verdict
        shape = normalize(sql)
        verdict = cached(self._cache, sql, shape)
        if verdict is None:
            statements = analyze(sql, shape=shape, max_statements=self.max_statements)
            verdict = Verdict(statements, decide(self.policies, statements))
            remember(self._cache, sql, shape, verdict, depends_on_literals(statements))
        return verdict

    def recall(self, sql: str) -> Verdict | None:
        """The verdict cached for exactly ``sql``, without analysing anything."""
        return cached_exact(self._cache, sql)


class Session:
    """Relays one ready session; see the module docstring."""

    def __init__(
        self,
        *,
        session_id: str,
        identity: Identity,
        database: str,
        client: str,
        judge: Judge,
        audit: AuditSink,
        metrics: ProxyMetrics,
        application: str | None = None,
        backend_pid: int | None = None,
        max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE,
        limits: AnalysisLimits = AnalysisLimits(),
        parameters: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.identity = identity
        self.database = database
        self.client = client
        self.judge = judge
        self.audit = audit
        self.metrics = metrics
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self.last_activity = self.started
        self.txn_status = "I"
        self.terminated = False  # the client said goodbye (Terminate)
        self.upstream_fatal: str | None = None  # SQLSTATE of a FATAL error the upstream sent
        self._from_client = wire.MessageReader(max_message_size=max_message_size)
        self._from_upstream = wire.MessageReader(max_message_size=max_message_size)
        self._ops: deque[_Op] = deque()
        self._prepared: dict[str, _Judged] = {}
        self._portals: dict[str, _Judged] = {}
        self._skipping = False  # dropping client messages until Sync after a refusal
        # What the server must keep reporting: the pinned settings, and the
        # privilege it signed in with.
        self._watched = dict(PINNED_PARAMETERS)
        for name in ("session_authorization", "is_superuser"):
            if parameters and name in parameters:
                self._watched[name] = parameters[name]
        # Executed messages forwarded since the last Sync or Query end (dirty),
        # and ends forwarded after executed messages whose ReadyForQuery (with
        # any ParameterStatus reports) has not come back (unsettled).
        self._dirty = False
        self._unsettled = 0
        # Why client input is held: "settle", "analysis" or "yield"; None: not held.
        self._stall: str | None = None
        self._analysed: tuple[str, Analysis] | None = None
        self._inline_spent = 0
        self.pending_analysis: str | None = None
        """Statement text the shell must analyse off the event loop, then call
        :meth:`analysed` and :meth:`resume`."""
        self.resumable = False
        """Held client input may go on: the shell calls :meth:`resume`."""
        self._who = {
            "session": session_id,
            "identity": identity.subject,
            "groups": list(identity.groups),
            "database": database,
            "client": client,
            "application": application,
            "backend_pid": backend_pid,
        }

    # -- state seen by the shell ---------------------------------------------

    @property
    def running(self) -> bool:
        """True while the upstream owes answers."""
        return bool(self._ops)

    @property
    def busy(self) -> bool:
        """True while the upstream owes answers or a transaction is open."""
        return bool(self._ops) or self.txn_status != "I"

    @property
    def stalled(self) -> str | None:
        """Why client input is held (``settle``, ``analysis``, ``yield``), or None.

        While it is held, :meth:`feed_client` only buffers: the shell should
        stop reading from the client. ``settle`` ends by itself when the
        upstream answers (then :attr:`resumable` is set); ``analysis`` when the
        shell delivers :meth:`analysed`; ``yield`` (the session analysed enough
        inline for one turn) as soon as the shell calls :meth:`resume`.
        """
        return self._stall

    def analysed(self, sql: str, result: Analysis) -> None:
        """Deliver the analysis of :attr:`pending_analysis`, done off the event loop."""
        if self._stall != "analysis" or sql != self.pending_analysis:
            raise ValueError("no analysis of this text is pending")
        self._analysed = (sql, result)
        self.pending_analysis = None
        self._stall = None
        self.resumable = True

    # -- client -> upstream --------------------------------------------------

    def feed_client(self, data: bytes) -> bytes:
        """Bytes from the client; returns the bytes for the upstream."""
        self.last_activity = self.clock()
        self._from_client.feed(data)
        if self._stall is not None:
            return b""
        return self._pump()

    def resume(self) -> bytes:
        """Go on with held client input; returns the bytes for the upstream."""
        self.resumable = False
        if self._stall == "yield":
            self._stall = None
        if self._stall is not None:
            return b""
        return self._pump()

    def _pump(self) -> bytes:
        reader = self._from_client
        chunk, spans = reader.read_spans()
        self._inline_spent = 0
        pieces: list[bytes] | None = None  # only once a message is dropped or replaced
        cut = 0
        for kind, start, end in spans:
            replacement = self._client_message(kind, chunk, start, end)
            if self._stall is not None:
                # Held: this message and the rest wait in the reader.
                reader.unread(len(chunk) - start)
                if pieces is None:
                    return chunk[:start]
                pieces.append(chunk[cut:start])
                return b"".join(pieces)
            if replacement is not None:
                if pieces is None:
                    pieces = []
                pieces += (chunk[cut:start], replacement)
                cut = end
        if reader.at_eof and reader.pending:
            raise wire.RemoteProtocolError("connection closed in the middle of a message")
        if pieces is None:
            return chunk
        pieces.append(chunk[cut:])
        return b"".join(pieces)

    def _client_message(self, kind: int, chunk: bytes, start: int, end: int) -> bytes | None:
        """Judge and track one client message.

        Returns None to forward it unchanged, else what goes upstream in its
        place (``b""`` drops it). May instead set ``_stall``, with no other
        effect: the message is then handled again when the session resumes.
        """
        ops = self._ops
        if self._skipping:
            # As PostgreSQL after an error: discard up to Sync. Flush still goes
            # up, so answers the upstream holds reach a client waiting for them.
            if kind == _SYNC:
                self._skipping = False
                self._end(SYNC)
            elif kind == _TERMINATE:
                self.terminated = True
            elif kind != _FLUSH:
                return b""
            return None
        if kind == _BIND:
            portal, statement_name = _names(chunk, start, end, 2)
            judged = self._prepared.get(statement_name)
            if judged is None:
                self._portals.pop(portal, None)
            else:
                _remember(self._portals, portal, judged)
            self._dirty = True  # a parameter's input function may run code
            ops.append(_Op(BIND))
        elif kind == _EXECUTE:
            judged = self._portals.get(_names(chunk, start, end, 1)[0])
            statement, verdict = judged if judged is not None else (None, None)
            self._dirty = True
            ops.append(_Op(EXECUTE, statement, verdict, self.clock()))
        elif kind == _SYNC:
            self._end(SYNC)
        elif kind == _DESCRIBE:
            ops.append(_Op(DESCRIBE))
        elif kind == _TERMINATE:
            self.terminated = True
        elif kind not in _PASSED_THROUGH:
            frame = wire.Frame(bytes((kind,)), chunk[start:end])
            if kind == _QUERY:
                return self._query(frame)
            if kind == _PARSE:
                return self._parse(frame)
            if kind == _FUNCTION_CALL:
                return self._function_call(frame)
            message = wire.decode_frontend(frame)  # raises for an unknown type
            if isinstance(message, wire.Close):
                if message.kind == "S":
                    self._prepared.pop(message.name, None)
                else:
                    self._portals.pop(message.name, None)
                ops.append(_Op(CLOSE))
        return None

    def _end(self, kind: int) -> None:
        """Queue a Sync or the end of a Query, which ReadyForQuery answers."""
        settles = self._dirty
        if settles:
            self._unsettled += 1
            self._dirty = False
        self._ops.append(_Op(kind, settles=settles))

    def _stand_in_query(self, error: bytes) -> bytes:
        """Refuse a Query or FunctionCall: the upstream fails a stand-in instead."""
        self._ops.append(_Op(REFUSAL, payload=error))
        self._end(QUERY_END)
        return _STAND_IN_QUERY

    def _stand_in_parse(self, name: str, error: bytes) -> bytes:
        """Refuse a Parse: the upstream fails a stand-in Parse under the same name."""
        self._ops.append(_Op(REFUSAL, payload=error))
        if not name:
            # PostgreSQL drops the unnamed statement before parsing a new one, but
            # keeps a named statement when a Parse under its name fails.
            self._prepared.pop(name, None)
        self._skipping = True
        return wire.encode(wire.Parse(name, STAND_IN_SQL))

    def _screen(self, text: bytes, now: float) -> bytes | None:
        """Checks on statement text before it is analysed.

        Returns an ErrorResponse to refuse it, None to go on (or, with
        ``_stall`` set, to hold it until the upstream has settled).
        """
        limits = self.limits
        if len(text) > limits.max_statement_bytes:
            return self._refuse_unjudged(
                PROGRAM_LIMIT_EXCEEDED,
                f"statement refused: its text is {len(text)} bytes, more than the limit "
                f"of {limits.max_statement_bytes} bytes that Steward analyses",
                now,
            )
        if (self._dirty or self._unsettled) and _READS_DIFFERENTLY.search(text):
            # An earlier statement may have changed how the server reads text
            # (a function or DO block can); the report of that comes with the
            # next ReadyForQuery, so this text must wait for it.
            if self._dirty:
                return self._refuse_unjudged(
                    FEATURE_NOT_SUPPORTED,
                    "statement refused: text with backslashes or non-ASCII characters "
                    "cannot follow an executed statement in the same pipeline; "
                    "send Sync first",
                    now,
                )
            self._stall = "settle"
        return None

    def _verdict(self, query: str) -> Verdict | None:
        """The verdict on ``query``; None when it must first be analysed off the loop.

        Raises :class:`SQLSyntaxError` or :class:`AnalysisLimitError`.
        """
        analysed = self._analysed
        if analysed is not None and analysed[0] == query:
            self._analysed = None
            return self.judge.judge(query, analysed[1])
        limits = self.limits
        if len(query) > limits.inline_bytes:
            verdict = self.judge.recall(query)
            if verdict is None:
                self._stall = "analysis"
                self.pending_analysis = query
            return verdict
        if self._inline_spent > limits.inline_budget:
            self._stall = "yield"
            return None
        self._inline_spent += len(query)
        return self.judge.judge(query)

    def _judge(self, text: bytes, now: float) -> Verdict | bytes | None:
        """Screen and judge statement text.

        Returns the verdict to go on with, an ErrorResponse for the client (the
        refusal is audited), or None when the message is held (``_stall``).
        """
        refusal = self._screen(text, now)
        if refusal is not None or self._stall is not None:
            return refusal
        try:
            verdict = self._verdict(text.decode("utf-8", "surrogateescape"))
        except SQLSyntaxError as exc:
            return self._refuse_unparseable(exc, now)
        except AnalysisLimitError as exc:
            return self._refuse_unjudged(PROGRAM_LIMIT_EXCEEDED, exc.message, now)
        if verdict is None:
            return None
        if verdict.decision.action in ("deny", "review"):
            return self._refuse(verdict, now)
        return verdict

    def _query(self, frame: wire.Frame) -> bytes | None:
        raw = frame.raw
        if raw[-1] != 0:
            wire.decode_frontend(frame)  # raises the precise protocol error
        # A NUL inside the text reaches analyze(), which refuses it.
        now = self.clock()
        judged = self._judge(raw[5:-1], now)
        if judged is None:
            return None  # held
        if isinstance(judged, bytes):
            return self._stand_in_query(judged)
        ops = self._ops
        if judged.statements:
            for statement in judged.statements:
                ops.append(_Op(STATEMENT, statement, judged, now))
        else:
            ops.append(_Op(STATEMENT, None, judged, now))  # answered by EmptyQueryResponse
        self._dirty = True
        self._end(QUERY_END)
        return None

    def _parse(self, frame: wire.Frame) -> bytes | None:
        parse = cast(wire.Parse, wire.decode_frontend(frame))
        now = self.clock()
        judged = self._judge(parse.query.encode("utf-8", "surrogateescape"), now)
        if judged is None:
            return None  # held
        if isinstance(judged, bytes):
            return self._stand_in_parse(parse.name, judged)
        statement = judged.statements[0] if judged.statements else None
        _remember(self._prepared, parse.name, (statement, judged))
        self._ops.append(_Op(PARSE, statement, judged, now))
        return None

    def _function_call(self, frame: wire.Frame) -> bytes | None:
        call = cast(wire.FunctionCall, wire.decode_frontend(frame))
        statement = StatementInfo(
            command="FUNCTION CALL",
            normalized=f"<function call oid {call.function_oid}>",
            fingerprint=f"fcall-{call.function_oid}",
            tables=(),
            functions=(str(call.function_oid),),
            has_where=True,
            writes=(),
        )
        verdict = Verdict((statement,), decide_function_call(self.judge.policies, statement))
        now = self.clock()
        # Like a simple Query, a FunctionCall is answered up to its own ReadyForQuery.
        if verdict.decision.action in ("deny", "review"):
            return self._stand_in_query(self._refuse(verdict, now))
        self._ops.append(_Op(FUNCTION, statement, verdict, now))
        self._dirty = True
        self._end(QUERY_END)
        return None

    # -- refusals --------------------------------------------------------------

    def _refuse(self, verdict: Verdict, now: float) -> bytes:
        """Audit a refused statement; return the ErrorResponse for the client."""
        decision = verdict.decision
        message = decision.message
        if decision.action == "review":
            message = f"{message} (approval workflow is not enabled on this proxy)"
        error = wire.ErrorResponse.build(INSUFFICIENT_PRIVILEGE, message)
        for statement in verdict.statements:
            self._record(statement, verdict, now, rows=None, error=message, decision="deny")
        return wire.encode(error)

    def _refuse_unparseable(self, exc: SQLSyntaxError, now: float) -> bytes:
        """Audit SQL that does not parse; return the ErrorResponse for the client."""
        # The parser quotes the text near the error, which may be a literal value:
        # the audit record keeps only the kind of error and its position.
        where = f" at character {exc.cursor_position}" if exc.cursor_position else ""
        return self._refuse_unjudged(
            SYNTAX_ERROR,
            f"statement refused: it does not parse: {exc.message}",
            now,
            audited=f"statement refused: it does not parse: "
            f"{exc.message.partition(' at or near ')[0]}{where}",
            position=exc.cursor_position,
        )

    def _refuse_unjudged(
        self,
        sqlstate: str,
        message: str,
        now: float,
        *,
        audited: str | None = None,
        position: int | None = None,
    ) -> bytes:
        """Audit statement text refused before a verdict; return the ErrorResponse."""
        self.audit.write(
            "statement",
            **self.who(),
            decision="deny",
            error=audited or message,
            duration_ms=round((self.clock() - now) * 1000, 3),
        )
        self.metrics.statement("UNKNOWN", "deny", None)
        return wire.encode(wire.ErrorResponse.build(sqlstate, message, position=position))

    # -- upstream -> client ------------------------------------------------------

    def feed_upstream(self, data: bytes) -> bytes:
        """Bytes from the upstream; returns the bytes for the client.

        Raises :class:`SessionEnded` when the upstream's answers do not match
        what was judged (``desync``) or the server reports a pinned setting
        changed; nothing of ``data`` reaches the client then.
        """
        reader = self._from_upstream
        reader.feed(data)
        chunk, spans = reader.read_spans()
        ops = self._ops
        pieces: list[bytes] | None = None  # only when a refusal replaces an error
        cut = 0
        for kind, start, end in spans:
            if kind == _DATA_ROW:
                if not ops or ops[0].kind not in _RUNS:
                    raise self._desync("a data row")
                ops[0].rows += 1
            elif kind == _COMMAND_COMPLETE:
                if not ops or ops[0].kind not in _RUNS:
                    raise self._desync("a command completion")
                op = ops.popleft()
                count = chunk[start + 5 : end - 1].rpartition(b" ")[2]
                self._completed(op, chunk[start + 5 : end - 1])
                self._finish(op, int(count) if count.isdigit() else op.rows, None)
            elif kind == _READY_FOR_QUERY:
                if end - start != 6 or chunk[start + 5] not in b"ITE":
                    wire.decode_backend(wire.Frame(b"Z", chunk[start:end]))  # raises
                    raise wire.RemoteProtocolError("malformed ReadyForQuery message")
                self.txn_status = chr(chunk[start + 5])
                self._ready()
            elif kind == _ERROR_RESPONSE:
                error = cast(
                    wire.ErrorResponse, wire.decode_backend(wire.Frame(b"E", chunk[start:end]))
                )
                if ops and ops[0].kind == REFUSAL and error.severity == "ERROR":
                    # The stand-in's error becomes the refusal (a FATAL stays itself).
                    if pieces is None:
                        pieces = []
                    pieces += (chunk[cut:start], ops.popleft().payload)
                    cut = end
                    self._skip_after_error(_ENDS, "SQLSTATE 42501 (refused)")
                    continue
                self._upstream_error(error)
            elif kind in (_EMPTY_QUERY, _PORTAL_SUSPENDED):
                if not ops or ops[0].kind not in _RUNS:
                    raise self._desync("an empty-query or portal-suspended answer")
                op = ops.popleft()
                self._finish(op, op.rows, None)
            elif kind == _ROW_DESCRIPTION:
                if ops and ops[0].kind == DESCRIBE:
                    ops.popleft()
                elif not ops or ops[0].kind not in _RUNS:
                    raise self._desync("a row description")
            elif kind == _PARAMETER_STATUS:
                self._check_parameter(wire.Frame(b"S", chunk[start:end]))
            elif kind in _COPY_RESPONSES:
                if not ops or ops[0].kind not in _RUNS:
                    raise self._desync("a COPY response")
            else:
                expected = _COMPLETES.get(kind)
                if expected is not None and ops and ops[0].kind == expected:
                    op = ops.popleft()
                    if expected == FUNCTION:
                        self._finish(op, None, None)
        if reader.at_eof and reader.pending:
            raise wire.RemoteProtocolError("upstream closed in the middle of a message")
        if pieces is None:
            return chunk
        pieces.append(chunk[cut:])
        return b"".join(pieces)

    def _ready(self) -> None:
        """ReadyForQuery: everything up to the next Sync or Query end is answered."""
        ops = self._ops
        while ops:
            op = ops.popleft()
            if op.kind in _ENDS:
                if op.settles:
                    self._unsettled -= 1
                break
        if self._stall == "settle" and not self._unsettled:
            self._stall = None
            self.resumable = True

    def _completed(self, op: _Op, tag: bytes) -> None:
        """Remember what SQL PREPARE and DEALLOCATE did to the prepared statements."""
        statement = op.statement
        if statement is None or op.verdict is None or not tag.startswith((b"PREPARE", b"DEALL")):
            return
        if statement.command == "PREPARE" and statement.prepared_name is not None:
            _remember(self._prepared, statement.prepared_name, (statement, op.verdict))
        elif statement.command == "DEALLOCATE":
            if statement.prepared_name is None:
                self._prepared.clear()
            else:
                self._prepared.pop(statement.prepared_name, None)

    def _check_parameter(self, frame: wire.Frame) -> None:
        status = cast(wire.ParameterStatus, wire.decode_backend(frame))
        expected = self._watched.get(status.name)
        if expected is not None and status.value != expected:
            raise SessionEnded(
                f"terminating connection: the server reports {status.name} changed; "
                "Steward pins it for the whole session",
                reason=f"server setting changed: {status.name}",
                kind="setting_changed",
                sqlstate=INSUFFICIENT_PRIVILEGE,
            )

    def _desync(self, what: str) -> SessionEnded:
        return SessionEnded(
            "terminating connection: the server's answers do not match the "
            "statements Steward judged",
            reason=f"desync: the upstream sent {what} that no judged statement accounts for",
            kind="desync",
            sqlstate=PROTOCOL_VIOLATION,
        )

    def _upstream_error(self, error: wire.ErrorResponse) -> None:
        if error.severity in ("FATAL", "PANIC"):
            self.upstream_fatal = error.sqlstate
        ops = self._ops
        if not ops or ops[0].kind in _ENDS:
            return
        failed = ops.popleft()
        # Only the SQLSTATE: PostgreSQL's messages may quote the values involved.
        code = error.sqlstate
        well_formed = len(code) == 5 and code.isascii() and code.isalnum()
        reason = f"SQLSTATE {code if well_formed else 'invalid'}"
        if failed.kind in (STATEMENT, EXECUTE, FUNCTION, PARSE):
            self._finish(failed, failed.rows or None, reason)
        if failed.kind in (STATEMENT, FUNCTION):
            self._skip_after_error(_ENDS, reason)  # the rest of this simple Query
        else:
            # An extended-protocol batch: the upstream discards everything up to
            # Sync, simple Queries sent inside the batch included.
            self._skip_after_error((SYNC,), reason)

    def _skip_after_error(self, until: tuple[int, ...], reason: str) -> None:
        """Drop what the upstream will not answer after an error, up to ``until``."""
        ops = self._ops
        while ops and ops[0].kind not in until:
            skipped = ops.popleft()
            if skipped.kind in (STATEMENT, EXECUTE, FUNCTION):
                self._finish(skipped, None, f"not executed: an earlier message failed ({reason})")

    # -- audit -------------------------------------------------------------------

    def who(self) -> dict[str, Any]:
        """The audit fields that name this session's subject and place."""
        return self._who

    def _finish(self, op: _Op, rows: int | None, error: str | None) -> None:
        if op.verdict is None:
            # A portal whose statement the session does not know (evicted).
            self.audit.write("statement", **self.who(), rows=rows, error=error)
            return
        self._record(op.statement, op.verdict, op.started, rows=rows, error=error)

    def _record(
        self,
        statement: StatementInfo | None,
        verdict: Verdict,
        started: float,
        *,
        rows: int | None,
        error: str | None,
        decision: str | None = None,
    ) -> None:
        d = verdict.decision
        action = decision or d.action
        elapsed = self.clock() - started
        command = statement.command if statement else None
        self.audit.write(
            "statement",
            **self.who(),
            command=command,
            statement=statement.normalized if statement else "",
            fingerprint=statement.fingerprint if statement else None,
            decision=action,
            policy=d.policy,
            rule=d.rule,
            rows=rows,
            duration_ms=round(elapsed * 1000, 3),
            error=error,
        )
        self.metrics.statement(command or "EMPTY", action, elapsed)

    def abandon(self, reason: str) -> None:
        """Record statements still pending when either side went away."""
        ops = self._ops
        while ops:
            op = ops.popleft()
            if op.kind in (STATEMENT, EXECUTE, FUNCTION):
                self._finish(op, op.rows or None, reason)


_RUNS = frozenset({STATEMENT, EXECUTE})  # what rows and completions answer


def _remember(named: dict[str, _Judged], name: str, judged: _Judged) -> None:
    """Keep ``judged`` under ``name``, forgetting the oldest beyond the bound."""
    named.pop(name, None)
    named[name] = judged
    if len(named) > _MAX_NAMED:
        del named[next(iter(named))]
