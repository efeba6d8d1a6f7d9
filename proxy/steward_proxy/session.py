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

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from steward_proxy import wire
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Decision, Identity, Policy, decide, decide_function_call
from steward_proxy.sql import ShapeCache, SQLSyntaxError, StatementInfo, analyze, normalize

SYNTAX_ERROR = "42601"
INSUFFICIENT_PRIVILEGE = "42501"

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
_ENDS_EXECUTE = frozenset(b"Is")  # EmptyQueryResponse, PortalSuspended
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


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy says about one statement string."""

    statements: tuple[StatementInfo, ...]
    decision: Decision


@dataclass(slots=True)
class _Op:
    kind: int
    statement: StatementInfo | None = None
    verdict: Verdict | None = None
    started: float = 0.0
    rows: int = 0
    payload: bytes = b""  # for REFUSAL: the ErrorResponse the client gets


class Judge:
    """Turns statement text into a cached :class:`Verdict` for one identity.

    Shared by the sessions of one identity under one policy set; analysis is
    cached by statement shape inside :func:`analyze`, decisions here.
    """

    def __init__(self, policies: Sequence[Policy], *, maxsize: int = 4096) -> None:
        self.policies = tuple(policies)
        self._cache: ShapeCache[Verdict] = ShapeCache(maxsize)

    def judge(self, sql: str) -> Verdict:
        shape = normalize(sql)
        verdict = self._cache.get(shape)
        if verdict is None:
            statements = analyze(sql)
            verdict = Verdict(statements, decide(self.policies, statements))
            self._cache.put(shape, verdict)
        return verdict


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.identity = identity
        self.database = database
        self.client = client
        self.judge = judge
        self.audit = audit
        self.metrics = metrics
        self.clock = clock
        self.started = clock()
        self.last_activity = self.started
        self.txn_status = "I"
        self.terminated = False  # the client said goodbye (Terminate)
        self.upstream_fatal: str | None = None  # SQLSTATE of a FATAL error the upstream sent
        self._from_client = wire.MessageReader(max_message_size=max_message_size)
        self._from_upstream = wire.MessageReader(max_message_size=max_message_size)
        self._ops: deque[_Op] = deque()
        self._prepared: dict[str, Verdict | None] = {}
        self._portals: dict[str, Verdict | None] = {}
        self._skipping = False  # dropping client messages until Sync after a refusal
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

    # -- client -> upstream --------------------------------------------------

    def feed_client(self, data: bytes) -> bytes:
        """Bytes from the client; returns the bytes for the upstream."""
        self.last_activity = self.clock()
        reader = self._from_client
        reader.feed(data)
        chunk, spans = reader.read_spans()
        pieces: list[bytes] | None = None  # only once a message is dropped or replaced
        cut = 0
        for kind, start, end in spans:
            replacement = self._client_message(kind, chunk, start, end)
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
        place (``b""`` drops it).
        """
        ops = self._ops
        if self._skipping:
            # As PostgreSQL after an error: discard up to Sync. Flush still goes
            # up, so answers the upstream holds reach a client waiting for them.
            if kind == _SYNC:
                self._skipping = False
                ops.append(_Op(SYNC))
            elif kind == _TERMINATE:
                self.terminated = True
            elif kind != _FLUSH:
                return b""
            return None
        if kind == _BIND:
            portal, statement_name = _names(chunk, start, end, 2)
            self._portals[portal] = self._prepared.get(statement_name)
            ops.append(_Op(BIND))
        elif kind == _EXECUTE:
            verdict = self._portals.get(_names(chunk, start, end, 1)[0])
            statement = verdict.statements[0] if verdict and verdict.statements else None
            ops.append(_Op(EXECUTE, statement, verdict, self.clock()))
        elif kind == _SYNC:
            ops.append(_Op(SYNC))
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

    def _stand_in_query(self, error: bytes) -> bytes:
        """Refuse a Query or FunctionCall: the upstream fails a stand-in instead."""
        self._ops.append(_Op(REFUSAL, payload=error))
        self._ops.append(_Op(QUERY_END))
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

    def _query(self, frame: wire.Frame) -> bytes | None:
        raw = frame.raw
        if raw[-1] != 0:
            wire.decode_frontend(frame)  # raises the precise protocol error
        # A NUL inside the text reaches analyze(), which refuses it.
        query = raw[5:-1].decode("utf-8", "surrogateescape")
        now = self.clock()
        try:
            verdict = self.judge.judge(query)
        except SQLSyntaxError as exc:
            return self._stand_in_query(self._refuse_unparseable(exc, now))
        if verdict.decision.action in ("deny", "review"):
            return self._stand_in_query(self._refuse(verdict, now))
        ops = self._ops
        if verdict.statements:
            for statement in verdict.statements:
                ops.append(_Op(STATEMENT, statement, verdict, now))
        else:
            ops.append(_Op(STATEMENT, None, verdict, now))  # answered by EmptyQueryResponse
        ops.append(_Op(QUERY_END))
        return None

    def _parse(self, frame: wire.Frame) -> bytes | None:
        parse = cast(wire.Parse, wire.decode_frontend(frame))
        now = self.clock()
        try:
            verdict = self.judge.judge(parse.query)
        except SQLSyntaxError as exc:
            return self._stand_in_parse(parse.name, self._refuse_unparseable(exc, now))
        if verdict.decision.action in ("deny", "review"):
            return self._stand_in_parse(parse.name, self._refuse(verdict, now))
        self._prepared[parse.name] = verdict
        statement = verdict.statements[0] if verdict.statements else None
        self._ops.append(_Op(PARSE, statement, verdict, now))
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
        self._ops.append(_Op(QUERY_END))
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
        message = f"statement refused: it does not parse: {exc.message}"
        # The parser quotes the text near the error, which may be a literal value:
        # the audit record keeps only the kind of error and its position.
        where = f" at character {exc.cursor_position}" if exc.cursor_position else ""
        self.audit.write(
            "statement",
            **self.who(),
            decision="deny",
            error=f"statement refused: it does not parse: "
            f"{exc.message.partition(' at or near ')[0]}{where}",
            duration_ms=0.0,
        )
        self.metrics.statement("UNKNOWN", "deny", None)
        error = wire.ErrorResponse.build(SYNTAX_ERROR, message, position=exc.cursor_position)
        return wire.encode(error)

    # -- upstream -> client ------------------------------------------------------

    def feed_upstream(self, data: bytes) -> bytes:
        """Bytes from the upstream; returns the bytes for the client."""
        reader = self._from_upstream
        reader.feed(data)
        chunk, spans = reader.read_spans()
        ops = self._ops
        pieces: list[bytes] | None = None  # only when a refusal replaces an error
        cut = 0
        for kind, start, end in spans:
            if kind == _DATA_ROW:
                if ops:
                    ops[0].rows += 1
            elif kind == _COMMAND_COMPLETE:
                if ops and ops[0].kind in (STATEMENT, EXECUTE):
                    op = ops.popleft()
                    count = chunk[start + 5 : end - 1].rpartition(b" ")[2]
                    self._finish(op, int(count) if count.isdigit() else op.rows, None)
            elif kind == _READY_FOR_QUERY:
                if end - start != 6 or chunk[start + 5] not in b"ITE":
                    wire.decode_backend(wire.Frame(b"Z", chunk[start:end]))  # raises
                    raise wire.RemoteProtocolError("malformed ReadyForQuery message")
                self.txn_status = chr(chunk[start + 5])
                while ops:
                    if ops.popleft().kind in _ENDS:
                        break
            elif kind == _ERROR_RESPONSE:
                if ops and ops[0].kind == REFUSAL:
                    # The stand-in's error becomes the refusal.
                    if pieces is None:
                        pieces = []
                    pieces += (chunk[cut:start], ops.popleft().payload)
                    cut = end
                    self._skip_after_error(_ENDS, "SQLSTATE 42501 (refused)")
                    continue
                error = wire.decode_backend(wire.Frame(b"E", chunk[start:end]))
                self._upstream_error(cast(wire.ErrorResponse, error))
            elif kind in _ENDS_EXECUTE:
                if ops and ops[0].kind in (STATEMENT, EXECUTE):
                    op = ops.popleft()
                    self._finish(op, op.rows, None)
            elif kind == _ROW_DESCRIPTION:
                if ops and ops[0].kind == DESCRIBE:
                    ops.popleft()
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
            # A statement prepared with SQL PREPARE, judged when that ran.
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
