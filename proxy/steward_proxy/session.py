"""The governor of one session after sign-in: bytes in, bytes and records out, no sockets.

:class:`Session` drives a :class:`~steward_proxy.wire.Tracker`, which follows
the protocol and ties every server answer to its request, and decides what
the tracker asks about: each Query, Parse and FunctionCall is judged by the
session's :class:`~steward_proxy.engine.Judge` and forwarded or refused. It
also keeps the server reading exactly what was judged (see docs/proxy.md,
"What the server reads is what Steward judged"):

* statement text over a size bound is refused; text that costs too much to
  analyse inline is handed to the shell to analyse off the event loop
  (:attr:`Session.pending_analysis`);
* text a silently changed encoding could make the server read otherwise waits
  until the server has answered what might have changed it;
* a server report that a pinned setting changed, or an answer no judged
  statement accounts for, ends the session (:class:`SessionEnded`).

When the judge's :class:`~steward_proxy.masking.plan.Masker` masks results
for this subject, the session also refuses what masking forbids (filtering
by or moving masked values), gives the tracker a row planner that masks
result rows, screens errors and notices, and lists what was masked in each
statement's audit record (see docs/masking.md).

Effects are data: :meth:`Session.feed_client` and :meth:`Session.feed_upstream`
return the bytes for the other side, and the audit records and metric events
wait in :meth:`Session.take_effects` for the shell, which writes the records
before it forwards the bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from steward_proxy import wire
from steward_proxy.engine import Analysis, Judge, Note, Verdict
from steward_proxy.masking import rows as masking_rows
from steward_proxy.masking.detect import NEEDED, find
from steward_proxy.masking.lineage import StatementLineage
from steward_proxy.policy import Decision
from steward_proxy.policy.pinned import PINNED_PARAMETERS
from steward_proxy.policy.readonly import READ_ONLY_PARAMETER
from steward_proxy.prepared import as_run, policy_refuses
from steward_proxy.review import ReviewBook, held_message
from steward_proxy.sql import AnalysisLimitError, SQLSyntaxError, StatementInfo
from steward_proxy.sqlstate import (
    FEATURE_NOT_SUPPORTED,
    INSUFFICIENT_PRIVILEGE,
    PROGRAM_LIMIT_EXCEEDED,
    PROTOCOL_VIOLATION,
    SYNTAX_ERROR,
)

__all__ = ["STAND_IN_SQL", "AnalysisLimits", "Judge", "Session", "SessionEnded", "Verdict"]

STAND_IN_SQL = wire.STAND_IN_SQL

# Statement text a server could read differently from the proxy if, unseen, the
# session's client_encoding or standard_conforming_strings had been changed: a
# backslash, or a non-ASCII byte followed by a byte that SJIS, BIG5, GBK, UHC,
# GB18030 or JOHAB may take as the second half of a double-byte character.
_READS_DIFFERENTLY = re.compile(rb"\\|[\x80-\xff][\x30-\x7e]")

_MAX_CURSORS = 10_000  # DECLAREd cursors whose rows the session remembers


def _changed_tables(statement: StatementInfo) -> tuple[str, ...]:
    """The relations a schema change alters: what a DROP names, else what it is on."""
    return statement.tables if statement.command == "DROP" else statement.tables[:1]


# Statements after which the catalog masking resolves columns with may differ.
_CATALOG_CHANGES = frozenset({"CREATE", "ALTER", "DROP", "COMMENT", "IMPORT", "REFRESH"})

Record = tuple[str, dict[str, Any]]


def _screen_notification(message: bytes, *, detect: bool, withhold: bool) -> bytes:
    """A NotificationResponse as a masked subject may see it.

    Its payload is any text (``pg_notify``) and reaches whoever listens: a
    trigger, or another session, can put a masked column's value in it, which
    no content test recognises (a name). So with ``withhold`` (the subject has
    column rules) every payload is withheld; with detection on, one holding a
    detected datum is. The channel and the sender stay (a listener had to name
    the channel, and a wake-up still wakes).
    """
    body = message[9:]  # the channel and the payload, NUL after each
    if not withhold and (not detect or 0 not in body.translate(NEEDED) or not find(body)):
        return message
    channel = body.partition(b"\0")[0]
    out = message[5:9] + channel + b"\0" + masking_rows.WITHHELD.encode() + b"\0"
    return b"A" + (len(out) + 4).to_bytes(4, "big") + out


def _screen_setting(message: bytes, *, detect: bool) -> bytes:
    """A ParameterStatus as a masked subject may see it: ``set_config`` puts any value
    in a setting the server reports (application_name); with detection on, one
    holding a detected datum is reported as ``****``."""
    body = message[5:]  # the name and the value, NUL after each
    if not detect or 0 not in body.translate(NEEDED) or not find(body):
        return message
    out = body.partition(b"\0")[0] + b"\0****\0"
    return b"S" + (len(out) + 4).to_bytes(4, "big") + out


def _withhold_copy_data(message: bytes) -> bytes:
    """COPY rows whose format the session cannot read: an empty row in their place."""
    return b"d\x00\x00\x00\x05\n"


# an audit record: type, fields
MetricEvent = tuple[str, str, float | None]  # command, decision, seconds


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
    max_pending: int = 100_000
    """Requests the server may owe answers to before client input is held
    (``backlog``) until it owes half as many: each costs memory, and a 5-byte
    Sync is one."""
    mask_offload_bytes: int = 0
    """Runs of rows at least this long, masked by strategies alone, come out of
    :meth:`Session.feed_upstream` as jobs for masking workers; 0: never."""


class Session:
    """Governs one ready session; see the module docstring."""

    def __init__(
        self,
        *,
        session_id: str,
        identity: Any,
        database: str,
        client: str,
        judge: Judge,
        application: str | None = None,
        backend_pid: int | None = None,
        max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE,
        limits: AnalysisLimits = AnalysisLimits(),
        parameters: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reviews: ReviewBook | None = None,
    ) -> None:
        self.session_id = session_id
        self.identity = identity
        self.judge = judge
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self.last_activity = self.started
        masker = judge.masker
        self._masker = masker if masker is not None and masker.config.active else None
        # What masking this session was set up for (its tracker's hooks are fixed).
        self._masking = masker.config if masker is not None else None
        self._exempt = masker is not None and masker.config.exempt
        self._cursors: dict[str, StatementLineage | None] = {}  # DECLAREd cursors' rows
        # Each row filter's audit labels, until its request finishes.
        self._labels: dict[wire.RowFilter, set[str]] = {}
        # Schema changes sent and not yet run: their notes and the names they mark.
        self._changes: dict[int, tuple[Note, list[str]]] = {}
        self.tracker = wire.Tracker(
            max_message_size=max_message_size,
            clock=clock,
            plan_rows=self._plan_rows if self._masker is not None else None,
            screen_messages=self._screen_message if self._masker is not None else None,
            plan_copy=self._plan_copy if self._masker is not None else None,
            running=self._running if self._masker is not None else None,
        )
        # What the server must keep reporting: the pinned settings, and the
        # privilege it signed in with.
        self._watched = dict(PINNED_PARAMETERS)
        for name in ("session_authorization", "is_superuser"):
            if parameters and name in parameters:
                self._watched[name] = parameters[name]
        # spec.readOnly: the server signed in read-only, and must stay so.
        self.read_only = (parameters or {}).get(READ_ONLY_PARAMETER) == "on"
        if self.read_only:
            self._watched[READ_ONLY_PARAMETER] = "on"
        self.reviews = reviews
        """Approvals shared by the proxy's sessions; None: ``review`` only refuses."""
        self._generation = -1  # of the judge's policies; checked at the first input
        # Why client input is held: "settle", "analysis" or "yield"; None: not held.
        self._stall: str | None = None
        self._analysed: tuple[str, Analysis] | None = None
        self._inline_spent = 0
        self._records: list[Record] = []
        self._metrics: list[MetricEvent] = []
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
        return self.tracker.pending > 0

    @property
    def busy(self) -> bool:
        """True while the upstream owes answers or a transaction is open."""
        return self.tracker.pending > 0 or self.tracker.txn_status != "I"

    @property
    def txn_status(self) -> str:
        return self.tracker.txn_status

    @property
    def terminated(self) -> bool:
        """The client said goodbye (Terminate)."""
        return self.tracker.terminated

    @property
    def upstream_fatal(self) -> str | None:
        """SQLSTATE of a FATAL error the upstream sent."""
        return self.tracker.upstream_fatal

    @property
    def stalled(self) -> str | None:
        """Why client input is held (``settle``, ``backlog``, ``analysis``, ``yield``), or None.

        While it is held, :meth:`feed_client` only buffers: the shell should
        stop reading from the client. ``settle`` and ``backlog`` (the server
        owes more answers than ``limits.max_pending``) end by themselves when the
        upstream answers (then :attr:`resumable` is set); ``analysis`` when the
        shell delivers :meth:`analysed`; ``yield`` (the session analysed enough
        inline for one turn) as soon as the shell calls :meth:`resume`.
        """
        return self._stall

    def who(self) -> dict[str, Any]:
        """The audit fields that name this session's subject and place."""
        return self._who

    def take_effects(self) -> tuple[list[Record], list[MetricEvent]] | None:
        """Audit records and metric events since the last call, or None when there are none.

        One call for the shell's hot path; :meth:`take_records` and
        :meth:`take_metrics` take each kind alone.
        """
        records, events = self._records, self._metrics
        if not records and not events:
            return None
        self._records, self._metrics = [], []
        return records, events

    def take_records(self) -> list[Record]:
        """Audit records made since the last call, in order: the shell writes them."""
        records, self._records = self._records, []
        return records

    def take_metrics(self) -> list[MetricEvent]:
        """Statement metric events since the last call: the shell counts them."""
        events, self._metrics = self._metrics, []
        return events

    # -- client -> upstream --------------------------------------------------

    def feed_client(self, data: bytes) -> bytes:
        """Bytes from the client; returns the bytes for the upstream."""
        now = self.last_activity = self.clock()
        self.tracker.receive_client(data, now)
        if self._stall is not None:
            return b""
        return self._pump(now)

    def resume(self) -> bytes:
        """Go on with held client input; returns the bytes for the upstream."""
        self.resumable = False
        if self._stall == "yield":
            self._stall = None
        if self._stall is not None:
            return b""
        return self._pump()

    def analysed(self, sql: str, result: Analysis) -> None:
        """Deliver the analysis of :attr:`pending_analysis`, done off the event loop."""
        if self._stall != "analysis" or sql != self.pending_analysis:
            raise ValueError("no analysis of this text is pending")
        self._analysed = (sql, result)
        self.pending_analysis = None
        self._stall = None
        self.resumable = True

    def _pump(self, now: float | None = None) -> bytes:
        if self.judge.generation != self._generation:
            self._policy_changed()
        tracker = self.tracker
        next_statement = tracker.next_statement
        if now is None:
            now = self.clock()
        self._inline_spent = 0
        while self._stall is None:
            statement = next_statement()
            if statement is wire.NEED_DATA:
                break
            self._govern(statement, now)  # type: ignore[arg-type]
        if self._stall is None and tracker.pending > self.limits.max_pending:
            self._stall = "backlog"
        return tracker.take_upstream()

    def _policy_changed(self) -> None:
        """The policies changed since the last client input: does what the session holds still hold?

        A session signed in read-write that a policy now makes read-only ends,
        and so does one holding a prepared statement the new policy refuses
        (its Bind and Execute are not judged again), and one whose subject now
        gets other masking (its row hooks are set up at sign-in), and one that
        prepared more statements than the tracker remembers.
        """
        judge = self.judge
        self._generation = judge.generation
        masker = judge.masker
        if (masker.config if masker is not None else None) != self._masking:
            raise SessionEnded(
                "terminating connection: the masking this subject gets has changed; sign in again",
                reason="a policy changed the masking of the subject",
                kind="policy_changed",
                sqlstate=INSUFFICIENT_PRIVILEGE,
            )
        if judge.read_only and not self.read_only:
            raise SessionEnded(
                "terminating connection: a policy now makes this subject read-only; sign in again",
                reason="a policy made the subject read-only",
                kind="read_only",
                sqlstate=INSUFFICIENT_PRIVILEGE,
            )
        if self.tracker.forgot_statements:
            raise SessionEnded(
                "terminating connection: the policy changed, and this session prepared more "
                "statements than Steward remembers to judge again; sign in again",
                reason="a policy changed and the session holds statements Steward forgot",
                kind="policy_changed",
                sqlstate=INSUFFICIENT_PRIVILEGE,
            )
        refused = policy_refuses(self.tracker.statement_notes(), judge.policies)
        if refused is not None:
            raise SessionEnded(
                f'terminating connection: the policy now refuses statement "{refused}" '
                "that this session prepared; sign in again",
                reason=f'the policy now refuses prepared statement "{refused}"',
                kind="policy_changed",
                sqlstate=INSUFFICIENT_PRIVILEGE,
            )

    def _govern(self, statement: wire.Statement, now: float) -> None:
        """Judge one statement and tell the tracker; or hold it (``_stall``)."""
        if statement.kind == "F":
            verdict = self.judge.judge_function_call(statement.function_oid)
            if self._masker is not None:
                # Its result is one opaque value Steward could not mask or scan.
                verdict = Verdict(
                    verdict.statements,
                    Decision(
                        "deny",
                        None,
                        "masking",
                        "statement refused: a FunctionCall message's result cannot be masked; "
                        "call the function with SELECT",
                    ),
                )
            if verdict.decision.action in ("deny", "review"):
                self.tracker.refuse(statement, self._refuse(verdict, now))
            else:
                self.tracker.forward(statement, verdict.notes[0], now)
            return
        judged = self._judge(statement.text, now, statement.kind)
        if judged is None:
            return  # held
        if isinstance(judged, bytes):
            self.tracker.refuse(statement, judged)
            return
        notes = self._notes(judged)
        if isinstance(notes, bytes):
            self.tracker.refuse(statement, notes)
        elif statement.kind == "Q":
            # An empty string is answered as one statement (EmptyQueryResponse).
            self.tracker.forward(statement, notes or [Note(None, judged)], now)
        else:
            self.tracker.forward(statement, notes[0] if notes else Note(None, judged), now)

    def _notes(self, verdict: Verdict) -> tuple[Note, ...] | list[Note] | bytes:
        """One note per statement; or, when masking refuses one, the ErrorResponse."""
        masker = self._masker
        if masker is None:
            return verdict.notes  # made once per verdict: nothing changes them
        traced = verdict.lineage
        notes = []
        changes: list[tuple[Note, list[str]]] = []
        for i, statement in enumerate(verdict.statements):
            if traced is not None:
                lineage = traced[i]
            else:  # too large to trace inline
                lineage = masker.untraced(
                    statement.tables, bool(statement.writes), statement.command
                )
            reason = masker.refusal(self._effective(lineage) or lineage)
            if (
                reason is None
                and traced is None
                and statement.command == "DECLARE"
                and masker.tainted(masker.untraced(statement.tables, False))
            ):
                # Its cursor's name is not known: a FETCH from it would be
                # masked by an older cursor of that name.
                reason = (
                    "statement refused: a DECLARE too long to trace inline may not read "
                    "masked columns"
                )
            if reason is not None:
                for _, names in changes:  # none of it runs
                    masker.changed(names, ran=False)
                refusal = Verdict(verdict.statements, Decision("deny", None, "masking", reason))
                return self._refuse(refusal, self.clock())
            note = Note(statement, verdict, lineage, set())
            notes.append(note)
            if statement.command in _CATALOG_CHANGES and statement.tables:
                # What follows (in this string, in the pipeline, until the
                # catalog is reloaded) is judged as after the change.
                changes.append((note, masker.changing(_changed_tables(statement))))
        for note, names in changes:
            self._changes[id(note)] = (note, names)
        return notes

    def _judge(self, text: bytes, now: float, kind: str = "Q") -> Verdict | bytes | None:
        """Screen and judge statement text (of a Query, or a Parse: ``kind``).

        Returns the verdict to go on with, an ErrorResponse for the client (the
        refusal is audited), or None when the text is held (``_stall``).
        """
        tracker = self.tracker
        if len(text) > self.limits.max_statement_bytes or (
            (tracker.dirty or tracker.unsettled) and _READS_DIFFERENTLY.search(text)
        ):
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
        for statement in verdict.statements:
            if statement.prepared_name is not None:  # EXECUTE p: judged by what p holds
                verdict = as_run(verdict, self.tracker.statement_note, self.judge.policies)
                break
        action = verdict.decision.action
        if action == "review" and self.reviews is not None:
            return self._review(verdict, now, usable=kind == "Q")
        if action in ("deny", "review"):
            return self._refuse(verdict, now)
        return verdict

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
        tracker = self.tracker
        if (tracker.dirty or tracker.unsettled) and _READS_DIFFERENTLY.search(text):
            # An earlier statement may have changed how the server reads text
            # (a function or DO block can); the report of that comes with the
            # next ReadyForQuery, so this text must wait for it.
            if tracker.dirty:
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

    # -- refusals --------------------------------------------------------------

    def _review(self, verdict: Verdict, now: float, *, usable: bool) -> Verdict | bytes:
        """A statement held for review: the verdict to run it on an approval, else a refusal.

        An approval is used only by a simple Query (``usable``): a prepared
        statement could be executed again and again. A new review is audited
        (``review.requested``).
        """
        decision = verdict.decision
        assert self.reviews is not None
        policy = next((p for p in self.judge.policies if p.key == decision.policy), None)
        admitted = self.reviews.admit(
            identity=self.identity,
            database=self._who["database"],
            statements=verdict.statements,
            policy=policy,
            rule=decision.rule,
            session=self.session_id,
            usable=usable,
        )
        if admitted.outcome == "used":
            return verdict
        review = admitted.review
        if admitted.outcome == "requested" and review is not None:
            self._records.append(
                (
                    "review.requested",
                    {
                        **self._who,
                        "command": review.command,
                        "statement": review.statement,
                        "fingerprint": review.fingerprint,
                        "decision": "review",
                        "policy": review.policy,
                        "rule": review.rule,
                        "error": f"review {review.id} pending until {review.as_json()['expires']}",
                    },
                )
            )
        return self._refuse(verdict, now, held_message(decision.message, admitted))

    def _refuse(self, verdict: Verdict, now: float, message: str | None = None) -> bytes:
        """Audit a refused statement; return the ErrorResponse for the client."""
        decision = verdict.decision
        if message is None:
            message = decision.message
            if decision.action == "review" and self.reviews is None:
                message = f"{message} (approval workflow is not enabled on this proxy)"
            elif decision.action == "review":
                message = f"{message} (a FunctionCall message cannot be approved; call it in SQL)"
        for statement in verdict.statements:
            self._record(statement, verdict, now, rows=None, error=message, decision="deny")
        return wire.encode(wire.ErrorResponse.build(INSUFFICIENT_PRIVILEGE, message))

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
        self._records.append(
            (
                "statement",
                {
                    **self._who,
                    "decision": "deny",
                    "error": audited or message,
                    "duration_ms": round((self.clock() - now) * 1000, 3),
                },
            )
        )
        self._metrics.append(("UNKNOWN", "deny", None))
        return wire.encode(wire.ErrorResponse.build(sqlstate, message, position=position))

    # -- upstream -> client ------------------------------------------------------

    def feed_upstream(self, data: bytes) -> bytes | list[bytes | wire.Deferred]:
        """Bytes from the upstream; returns the bytes for the client.

        With ``mask_offload_bytes`` they may come as a list of pieces in order:
        bytes and :class:`~steward_proxy.masking.rows.MaskJob` runs, each to be
        replaced by :func:`~steward_proxy.masking.rows.run_job`'s answer.

        Raises :class:`SessionEnded` when the upstream's answers do not match
        what was judged (``desync``) or the server reports a pinned setting
        changed; nothing of ``data`` may reach the client then.
        """
        tracker = self.tracker
        try:
            out = tracker.receive_server(data)
        except wire.Desync as exc:
            raise SessionEnded(
                "terminating connection: the server's answers do not match the "
                "statements Steward judged",
                reason=f"desync: the upstream sent {exc.what} that no judged statement "
                "accounts for",
                kind="desync",
                sqlstate=PROTOCOL_VIOLATION,
            ) from None
        if tracker.events:
            self._events(tracker.take_events())
        if self._changes and not tracker.pending:
            self._release_changes()  # prepared, never run
        if (self._stall == "settle" and not tracker.unsettled) or (
            self._stall == "backlog" and tracker.pending <= self.limits.max_pending // 2
        ):
            self._stall = None
            self.resumable = True
        return out

    def _events(self, events: list[wire.TrackerEvent]) -> None:
        for event in events:
            if isinstance(event, wire.Finished):
                self._finished(event)
            elif isinstance(event, wire.ParameterChanged):
                expected = self._watched.get(event.name)
                if expected is not None and event.value != expected:
                    if event.name == READ_ONLY_PARAMETER and not self.judge.read_only:
                        # No policy asks for read-only (any more): nothing to keep.
                        del self._watched[event.name]
                        self.read_only = False
                        continue
                    raise SessionEnded(
                        f"terminating connection: the server reports {event.name} changed; "
                        "Steward pins it for the whole session",
                        reason=f"server setting changed: {event.name}",
                        kind="setting_changed",
                        sqlstate=INSUFFICIENT_PRIVILEGE,
                    )

    def _finished(self, event: wire.Finished) -> None:
        note = event.note
        # What this request's rows had masked (one statement's executions each
        # have their own filter, planned maybe before an earlier one ended).
        labels = self._labels.pop(event.filter, None) if event.filter is not None else None
        if not isinstance(note, Note):
            # A portal whose statement the session does not know (forgotten).
            fields = {**self._who, "rows": event.rows, "error": event.error}
            self._records.append(("statement", fields))
            return
        statement = note.statement
        ddl = statement is not None and statement.command in _CATALOG_CHANGES
        change = self._changes.pop(id(note), None) if self._changes else None
        if change is not None:
            assert self._masker is not None
            self._masker.changed(change[1], ran=event.error is None)  # reloads if it ran
        elif ddl and event.error is None and statement is not None:
            masker = self.judge.masker
            if masker is not None:
                # Judged long before (a prepared statement): what follows until
                # the reload is judged as after the change.
                masker.changed(masker.changing(_changed_tables(statement)), ran=True)
        lineage = note.lineage
        if lineage is not None and lineage.declares is not None and event.error is None:
            # A DECLARE under an open cursor's name fails and leaves that one:
            # a cursor's rows are known only once its DECLARE succeeded.
            # A cursor is a portal a protocol Execute can run: not one a Bind made.
            self.tracker.forget_portal(lineage.declares)
            cursors = self._cursors
            cursors.pop(lineage.declares, None)
            cursors[lineage.declares] = lineage
            if len(cursors) > _MAX_CURSORS:
                del cursors[next(iter(cursors))]  # its rows are then masked as unknown
        if statement is not None and event.error is None and statement.prepared_name is not None:
            # SQL PREPARE and DEALLOCATE share the protocol's statement names.
            if statement.command == "PREPARE":
                self.tracker.remember_statement(statement.prepared_name, note)
            elif statement.command in ("DEALLOCATE", "DISCARD"):
                self.tracker.forget_statement(statement.prepared_name or None)
        masked = note.masked | labels if labels else note.masked
        self._record(
            statement,
            note.verdict,
            event.started,
            rows=event.rows,
            error=event.error,
            masked=sorted(masked) if masked else None,
        )
        if note.masked:
            note.masked.clear()

    # -- masking -------------------------------------------------------------------

    def _running(self, note: Any) -> None:
        """A statement goes to run: what a Bind or Execute sent behind it names is not
        what its name held before (the tracker's ``running``)."""
        if not isinstance(note, Note):
            return
        lineage = note.lineage
        if lineage is not None and lineage.declares is not None:
            self.tracker.forget_portal(lineage.declares)
        statement = note.statement
        if (
            statement is not None
            and statement.prepared_name is not None
            and statement.command in ("PREPARE", "DEALLOCATE", "DISCARD")
        ):
            self.tracker.forget_statement(statement.prepared_name or None)

    def _catch_up(self) -> None:
        """Handle the answers before the one being planned or screened, which came in
        the same bytes: a DECLARE's completion before its FETCH's rows."""
        if self.tracker.events:
            self._events(self.tracker.take_events())

    def _effective(self, lineage: StatementLineage | None) -> StatementLineage | None:
        """The lineage of the rows a statement returns (a cursor's, a prepared statement's)."""
        if lineage is None:
            return None
        if lineage.fetches is not None:
            if self.tracker.has_portal(lineage.fetches):
                # A portal a Bind made (FETCH reads those too), or one that
                # ended while a cursor took its name: not told apart.
                return None
            return self._cursors.get(lineage.fetches)
        if lineage.executes is not None:
            note = self.tracker.statement_note(lineage.executes)
            return note.lineage if isinstance(note, Note) else None
        return lineage

    def _plan_rows(
        self, note: Any, fields: tuple[Any, ...] | None, formats: tuple[int, ...]
    ) -> wire.RowFilter | None:
        assert self._masker is not None
        self._catch_up()
        known = isinstance(note, Note)
        lineage = self._effective(note.lineage) if known else None
        if fields is None and not known:
            formats = (1,)  # an Execute of a portal no Bind made: a cursor, maybe BINARY
        labels: set[str] = set()
        plan = self._masker.plan(lineage, fields, formats, labels=labels)
        if plan is None:
            return None
        offload = self.limits.mask_offload_bytes
        if offload and plan.recipe is not None:
            rows: wire.RowFilter = masking_rows.offloading_filter(plan, offload)
        else:
            rows = masking_rows.row_filter(plan)
        self._labels[rows] = labels
        return rows

    def _plan_copy(self, note: Any, response: bytes) -> wire.CopyFilter | None:
        assert self._masker is not None
        self._catch_up()
        known = isinstance(note, Note)
        lineage = self._effective(note.lineage) if known else None
        columns = int.from_bytes(response[6:8], "big")
        if lineage is None or lineage.copy is None:
            # A COPY the session did not see as one (inside a function): nothing to read.
            plan = self._masker.plan_copy(None, columns)
            copy = None
        else:
            plan = self._masker.plan_copy(lineage, columns, labels=note.masked if known else None)
            copy = lineage.copy
        if plan is None:
            return None
        if copy is None:
            return _withhold_copy_data
        return masking_rows.copy_filter(plan, copy)

    def _screen_message(self, note: Any, message: bytes) -> bytes:
        masker = self._masker
        assert masker is not None
        self._catch_up()
        if message[:1] == b"A":
            config = masker.config
            return _screen_notification(message, detect=config.detect, withhold=config.column_rules)
        if message[:1] == b"S":
            return _screen_setting(message, detect=masker.config.detect)
        lineage = self._effective(note.lineage) if isinstance(note, Note) else None
        return masking_rows.screen_message(
            message, tainted=masker.tainted(lineage), detect=masker.config.detect
        )

    def abandon(self, reason: str) -> None:
        """Record statements still pending when either side went away."""
        for event in self.tracker.abandon(reason):
            if isinstance(event, wire.Finished):
                self._finished(event)
        self._release_changes()

    def _release_changes(self) -> None:
        """Schema changes this session sent that did not run: their names resolve again."""
        changes, self._changes = self._changes, {}
        if self._masker is not None:
            for _, names in changes.values():
                self._masker.changed(names, ran=False)

    # -- audit -------------------------------------------------------------------

    def _record(
        self,
        statement: StatementInfo | None,
        verdict: Verdict,
        started: float,
        *,
        rows: int | None,
        error: str | None,
        decision: str | None = None,
        masked: list[str] | None = None,
    ) -> None:
        d = verdict.decision
        action = decision or d.action
        elapsed = self.clock() - started
        command = statement.command if statement else None
        self._records.append(
            (
                "statement",
                {
                    **self._who,
                    "command": command,
                    "statement": statement.normalized if statement else "",
                    "fingerprint": statement.fingerprint if statement else None,
                    "decision": action,
                    "policy": d.policy,
                    "rule": d.rule,
                    "masked": ["exempt"] if self._exempt else masked or [],
                    "rows": rows,
                    "duration_ms": round(elapsed * 1000, 3),
                    "error": error,
                },
            )
        )
        self._metrics.append((command or "EMPTY", action, elapsed))
