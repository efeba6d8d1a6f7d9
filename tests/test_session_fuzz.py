"""Property tests for the session relay: no input crashes it, chunking never matters.

:class:`~steward_proxy.session.Session` frames and judges bytes from two peers,
so anything either side sends must end in forwarded bytes, a refusal, or a
:class:`~steward_proxy.wire.ProtocolError` (which the shell reports as a clean
protocol error); any other exception would be an internal error. Three
properties, each over a fresh session with a real Judge and a list audit sink:

* arbitrary bytes (and frames with valid headers and arbitrary bodies), in
  arbitrary chunks, fed to both sides in random order: only ``ProtocolError``
  escapes;
* well-formed frontend and backend messages with arbitrary fields, in random
  interleavings and chunkings: nothing escapes but a clean
  :class:`~steward_proxy.session.SessionEnded` (answers out of step with what
  was judged, a pinned setting reported changed), each output is whole messages,
  nothing refused or unjudged reaches the upstream, and bound parameters never
  reach the audit trail;
* a realistic exchange (a pipelined client batch, then the upstream's true
  answers in order) gives byte-identical outputs and the same audit records
  however the bytes are chunked.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from steward_proxy import wire
from steward_proxy.session import STAND_IN_SQL, Judge, Session, SessionEnded

from sessionkit import POLICY, AuditLog, enc, frames, make_session, policies_for

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

POLICIES = policies_for(POLICY)
# Without a function guardrail a FunctionCall is allowed and forwarded.
POLICIES_NO_FUNCTION_RULE = policies_for(
    POLICY.replace(
        "    - {name: no-file-access, match: {functions: [pg_read_file]}, action: deny}\n", ""
    )
)
assert len(POLICIES_NO_FUNCTION_RULE[0].guardrails) == 2

# Bound parameters (and what the upstream echoes of them) carry this marker;
# no statement text ever does, so it must never show up in the audit trail.
SECRET = "s3cr3t"

ALLOWED_SQL = [
    "SELECT 1",
    "SELECT id, name FROM users WHERE id = $1",
    "SELECT * FROM t WHERE ssn = '123-45-6789'",
    "INSERT INTO t (a, b) VALUES ($1, $2)",
    "UPDATE t SET a = 1 WHERE id = 2",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1; SELECT 2",
    "SET search_path = public",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "",
    "   ",
    "-- only a comment",
    "/* a comment */ SELECT now()",
]
DENIED_SQL = [
    "DELETE FROM t WHERE id = 1",
    "DROP TABLE t",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT 1; DELETE FROM t WHERE id = $1",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
]
BROKEN_SQL = [
    "SELEC 1",
    "SELECT (",
    "SELECT 'unterminated",
    "SELECT " + "(" * 5000 + "1" + ")" * 5000,
    "SELECT ARRAY" + "[" * 3000 + "]" * 3000,
    "SELECT '" + "x" * 200_000 + "'",
    "SELECT \udcff\udcfe",
    "SELECT 1 -- \udc80",
]
NAMES = ["", "s1", "s2", "p1"]

STAND_IN_SQLSTATE = "42601"
REFUSED_SQLSTATE = "42501"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length), no empty pieces."""
    points = sorted({c % len(data) for c in cuts} - {0}) if data else []
    pieces = []
    last = 0
    for point in [*points, len(data)]:
        if point > last:
            pieces.append(data[last:point])
        last = point
    return pieces


def interleave(
    client: list[bytes], upstream: list[bytes], order: list[bool]
) -> list[tuple[str, bytes]]:
    """Merge two chunk lists, each in its own order, as ``order`` says."""
    ci, ui, out = iter(client), iter(upstream), []
    for take_client in order:
        source, side = (ci, "client") if take_client else (ui, "upstream")
        piece = next(source, None)
        if piece is not None:
            out.append((side, piece))
    out += [("client", piece) for piece in ci]
    out += [("upstream", piece) for piece in ui]
    return out


# ------------------------------------------------------------ 1. arbitrary bytes

CLIENT_TYPES = b"QPBEDSHCdcfFXpZ"
UPSTREAM_TYPES = b"DCZEITn123VsSAKNGHWtdcRv"


@st.composite
def raw_frames(draw: st.DrawFn, types: bytes) -> bytes:
    """A frame with a plausible header and an arbitrary body (or a lying length)."""
    kind = draw(st.sampled_from(types))
    body = draw(st.binary(max_size=64))
    length = draw(
        st.one_of(
            st.just(len(body) + 4),
            st.just(len(body) + 4),
            st.integers(-(2**31), 2**31 - 1),
        )
    )
    return bytes((kind,)) + struct.pack("!i", length) + body


def peer_bytes(types: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(st.binary(min_size=1), raw_frames(types)), max_size=12).map(b"".join)


@FUZZ
@given(
    client=peer_bytes(CLIENT_TYPES),
    upstream=peer_bytes(UPSTREAM_TYPES),
    client_cuts=st.lists(st.integers(0, 2**16), max_size=8),
    upstream_cuts=st.lists(st.integers(0, 2**16), max_size=8),
    order=st.lists(st.booleans(), max_size=20),
    eof=st.sampled_from([None, "client", "upstream"]),
)
# A ReadyForQuery without a valid status byte escaped as IndexError, or left
# the session with a transaction status PostgreSQL never reports.
@example(b"", b"Z\0\0\0\x04", [], [], [], None)
@example(b"", b"Z\0\0\0\x04Z\0\0\0\x05I", [], [], [], None)
@example(b"", b"Z\0\0\0\x05Q", [], [], [], None)
def test_arbitrary_bytes_raise_only_protocol_errors(
    client: bytes,
    upstream: bytes,
    client_cuts: list[int],
    upstream_cuts: list[int],
    order: list[bool],
    eof: str | None,
) -> None:
    audit = AuditLog()
    session = make_session(audit)
    steps = interleave(chunked(client, client_cuts), chunked(upstream, upstream_cuts), order)
    if eof is not None:
        steps.append((eof, b""))
    try:
        for side, piece in steps:
            if side == "client":
                session.feed_client(piece)
            else:
                session.feed_upstream(piece)
            assert isinstance(session.busy, bool)
            assert session.txn_status in "ITE"
    except wire.ProtocolError:
        pass  # the shell reports it and closes the connection
    session.abandon("connection lost")
    assert not session.running


# -------------------------------------------------- 2. well-formed messages


def _no_nul(text: str) -> str:
    return text.replace("\0", "")


# Text with arbitrary code points (no lone surrogates) or bytes that are not UTF-8.
any_text = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
).filter(lambda s: SECRET not in s)
cstring_text = any_text.map(_no_nul)
long_text = st.integers(1_000, 100_000).map(lambda n: "SELECT '" + "y" * n + "'")

sql_text = st.one_of(
    st.sampled_from(ALLOWED_SQL),
    st.sampled_from(DENIED_SQL),
    st.sampled_from(BROKEN_SQL),
    any_text,
    long_text,
)
names = st.one_of(st.sampled_from(NAMES), cstring_text)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
formats = st.lists(st.sampled_from([0, 1]) | int16, max_size=4).map(tuple)
secret_values = st.one_of(
    st.none(),
    st.binary(max_size=20).map(lambda b: SECRET.encode() + b),
    st.text(max_size=10).map(lambda t: f"'{SECRET}{t}'".encode()),
)
values = st.lists(st.one_of(secret_values, st.binary(max_size=20)), max_size=4).map(tuple)


@st.composite
def query_bytes(draw: st.DrawFn) -> bytes:
    """A Query message; its text may hold NULs, which only a raw encoding allows."""
    text = draw(sql_text)
    if "\0" not in text:
        return wire.encode(wire.Query(text))
    body = text.encode("utf-8", "surrogateescape") + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


frontend_message = st.one_of(
    query_bytes(),
    st.builds(
        wire.Parse,
        names,
        sql_text.map(_no_nul),
        st.lists(uint32, max_size=3).map(tuple),
    ).map(wire.encode),
    st.builds(wire.Bind, names, names, formats, values, formats).map(wire.encode),
    st.builds(wire.Execute, names, int32).map(wire.encode),
    st.builds(wire.Describe, st.sampled_from("SP"), names).map(wire.encode),
    st.builds(wire.Close, st.sampled_from("SP"), names).map(wire.encode),
    st.just(wire.encode(wire.Sync())),
    st.just(wire.encode(wire.Flush())),
    st.builds(wire.FunctionCall, uint32, formats, values, int16).map(wire.encode),
    st.builds(wire.CopyData, st.binary(max_size=30)).map(wire.encode),
    st.just(wire.encode(wire.CopyDone())),
    st.builds(wire.CopyFail, cstring_text).map(wire.encode),
    st.just(wire.encode(wire.Terminate())),
)

# Upstream text may echo the client's parameters (PostgreSQL quotes values in messages).
echo_text = st.one_of(cstring_text, st.text(max_size=10).map(lambda t: f"bad value {SECRET}{t}"))
command_tags = st.one_of(
    st.sampled_from(
        [
            "SELECT 3",
            "INSERT 0 1",
            "UPDATE 2",
            "DELETE 0",
            "BEGIN",
            "COMMIT",
            "COPY 5",
            "SELECT -1",
            "SELECT 99999999999999999999999",
            "SELECT \u0661\u0662",
            "SELECT 1 ",
            "",
        ]
    ),
    echo_text.map(_no_nul),
)
sqlstates = st.one_of(
    st.sampled_from(["42601", "42501", "22012", "23505", "25P02", "40001", "57014"]),
    st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", max_size=7),
)
# Any field may quote a value except the SQLSTATE, which is a code (or missing).
field_codes = st.sampled_from("SVMDHPWqx\x01\xff")
error_fields = st.one_of(
    st.builds(
        lambda state, message, position: (
            wire.ErrorResponse.build(state, message, position=position).fields
        ),
        sqlstates,
        echo_text.map(_no_nul),
        st.none() | st.integers(0, 10**6),
    ),
    st.lists(
        st.tuples(field_codes, echo_text.map(_no_nul)) | st.tuples(st.just("C"), sqlstates),
        max_size=5,
    ).map(tuple),
)
field_description = st.builds(
    wire.FieldDescription, cstring_text, uint32, int16, uint32, int16, int32, int16
)

backend_message = st.one_of(
    st.just(wire.ParseComplete()),
    st.just(wire.BindComplete()),
    st.just(wire.CloseComplete()),
    st.builds(wire.RowDescription, st.lists(field_description, max_size=3).map(tuple)),
    st.builds(wire.DataRow, values),
    st.builds(wire.CommandComplete, command_tags),
    st.just(wire.EmptyQueryResponse()),
    st.just(wire.PortalSuspended()),
    st.builds(wire.ErrorResponse, error_fields),
    st.builds(wire.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(wire.NoticeResponse, error_fields),
    st.builds(wire.NotificationResponse, int32, cstring_text, echo_text.map(_no_nul)),
    st.builds(wire.ParameterStatus, cstring_text, cstring_text),
    st.builds(wire.CopyInResponse, st.sampled_from([0, 1]), formats),
    st.builds(wire.CopyOutResponse, st.sampled_from([0, 1]), formats),
    st.builds(wire.CopyData, st.binary(max_size=30)),
    st.just(wire.CopyDone()),
    st.just(wire.NoData()),
    st.builds(wire.ParameterDescription, st.lists(uint32, max_size=4).map(tuple)),
    st.builds(
        wire.FunctionCallResponse, st.none() | values.map(lambda v: b"".join(filter(None, v)))
    ),
).map(wire.encode)


def check_upstream_bound(data: bytes, judge: Judge) -> None:
    """What the session sends upstream is whole, valid, and judged allowed."""
    for frame in frames(data):
        message = wire.decode_frontend(frame)
        if isinstance(message, wire.FunctionCall):
            assert judge.policies != POLICIES, "the function rule denies every FunctionCall"
        if isinstance(message, wire.Query | wire.Parse):
            if message.query == STAND_IN_SQL:
                continue
            verdict = judge.judge(message.query)  # raises if unparseable text got through
            assert verdict.decision.action == "allow", message.query


def check_client_bound(data: bytes) -> list[wire.Message]:
    """What the session sends the client is whole, valid backend messages."""
    decoded = [wire.decode_backend(frame) for frame in frames(data)]
    for message in decoded:
        if isinstance(message, wire.ErrorResponse):
            assert "STEWARD_REFUSED" not in message.message
    return decoded


@FUZZ
@given(
    client=st.lists(frontend_message, max_size=12),
    upstream=st.lists(backend_message, max_size=16),
    client_cuts=st.lists(st.integers(0, 2**20), max_size=6),
    upstream_cuts=st.lists(st.integers(0, 2**20), max_size=6),
    order=st.lists(st.booleans(), max_size=24),
    policies=st.sampled_from([POLICIES, POLICIES_NO_FUNCTION_RULE]),
)
def test_well_formed_messages_never_raise(
    client: list[bytes],
    upstream: list[bytes],
    client_cuts: list[int],
    upstream_cuts: list[int],
    order: list[bool],
    policies: tuple[Any, ...],
) -> None:
    audit = AuditLog()
    session = make_session(audit, policies)
    judge = Judge(policies)
    steps = interleave(
        chunked(b"".join(client), client_cuts), chunked(b"".join(upstream), upstream_cuts), order
    )
    steps += [("client", b""), ("upstream", b"")]  # both sides close after whole messages
    run = 0
    for side, piece in steps:
        if side == "client":
            check_upstream_bound(session.feed_client(piece), judge)
        else:
            try:
                check_client_bound(session.feed_upstream(piece))
            except SessionEnded as ended:
                # Answers out of step with what was judged end the session cleanly.
                assert ended.kind in ("desync", "setting_changed")
                break
        assert isinstance(session.busy, bool)
        assert session.txn_status in "ITE"
        assert len(audit.records) >= run
        run = len(audit.records)
    session.abandon("connection lost")
    assert not session.running
    for record in audit.records:
        assert record["session"] == "s1"
        assert record.get("decision") in (None, "allow", "deny")
    assert SECRET not in json.dumps(audit.records, default=str)


# ------------------------------------------------------ 3. chunking consistency

SELECTS = ["SELECT id FROM t WHERE id = 1", "SELECT name FROM users WHERE id = $1"]
DENIED = ["DELETE FROM t WHERE id = 1", "DROP TABLE t", "SELECT pg_read_file('/etc/hosts')"]
ERROR_STATES = ["22012", "23505", "40001", "57014"]


class Script:
    """A client batch and the answers PostgreSQL gives to what the session forwards."""

    def __init__(self) -> None:
        self.client: list[wire.Message] = []
        self.answers: list[wire.Message] = []
        self.status = "I"
        self.units = 0
        self.refusals = 0

    def _aborted(self) -> bool:
        """In a failed transaction every statement gets 25P02 until it ends."""
        if self.status != "E":
            return False
        self.answers += [wire.ErrorResponse.build("25P02", "transaction is aborted")]
        return True

    def _fail(self, sqlstate: str) -> None:
        self.answers.append(wire.ErrorResponse.build(sqlstate, f"failed {SECRET}"))
        if self.status == "T":
            self.status = "E"

    def _ready(self) -> None:
        self.answers.append(wire.ReadyForQuery(self.status))
        self.units += 1

    def simple(self, sql: str, count: int) -> None:
        self.client.append(wire.Query(sql))
        if not self._aborted():
            self.answers += [
                wire.RowDescription((wire.FieldDescription("c"),)),
                *[wire.DataRow((b"1",))] * count,
                wire.CommandComplete(f"SELECT {count}"),
            ]
        self._ready()

    def simple_denied(self, sql: str) -> None:
        self.client.append(wire.Query(sql))
        self.refusals += 1
        if not self._aborted():
            self._fail(STAND_IN_SQLSTATE)
        self._ready()

    def simple_error(self, sqlstate: str) -> None:
        self.client.append(wire.Query("UPDATE t SET a = 1 WHERE id = 2"))
        if not self._aborted():
            self._fail(sqlstate)
        self._ready()

    def empty(self) -> None:
        self.client.append(wire.Query(""))
        self.answers.append(wire.EmptyQueryResponse())  # even in a failed transaction
        self._ready()

    def transaction(self, command: str) -> None:
        self.client.append(wire.Query(command))
        if command == "BEGIN":
            if not self._aborted():
                self.answers.append(wire.CommandComplete("BEGIN"))
                self.status = "T" if self.status == "I" else self.status
        else:
            tag = "ROLLBACK" if self.status == "E" or command == "ROLLBACK" else "COMMIT"
            self.answers.append(wire.CommandComplete(tag))
            self.status = "I"
        self._ready()

    def extended(
        self,
        name: str,
        sql: str,
        params: tuple[bytes | None, ...],
        count: int,
        describe: bool,
        sqlstate: str | None,
    ) -> None:
        self.client += [
            wire.Parse(name, sql),
            wire.Bind("", name, (), params, ()),
            *([wire.Describe("P", "")] if describe else []),
            wire.Execute("", 0),
            wire.Sync(),
        ]
        if not self._aborted():
            self.answers += [wire.ParseComplete(), wire.BindComplete()]
            if describe:
                self.answers.append(wire.RowDescription((wire.FieldDescription("c"),)))
            if sqlstate is None:
                self.answers += [
                    *[wire.DataRow((params[0] if params else b"1",))] * count,
                    wire.CommandComplete(f"SELECT {count}"),
                ]
            else:
                self._fail(sqlstate)
        self._ready()
        if name:
            # Drop the named statement again (Close works in a failed transaction too).
            self.client += [wire.Close("S", name), wire.Sync()]
            self.answers.append(wire.CloseComplete())
            self._ready()

    def extended_denied(self, name: str, sql: str, params: tuple[bytes | None, ...]) -> None:
        self.client += [
            wire.Parse(name, sql),
            wire.Bind("", name, (), params, ()),
            wire.Execute("", 0),
            wire.Sync(),
        ]
        self.refusals += 1
        if not self._aborted():
            self._fail(STAND_IN_SQLSTATE)
        self._ready()


units = st.one_of(
    st.tuples(st.just("simple"), st.sampled_from(SELECTS[:1]), st.integers(0, 3)),
    st.tuples(st.just("simple_denied"), st.sampled_from(DENIED)),
    st.tuples(st.just("simple_error"), st.sampled_from(ERROR_STATES)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("transaction"), st.sampled_from(["BEGIN", "COMMIT", "ROLLBACK"])),
    st.tuples(
        st.just("extended"),
        st.sampled_from(["", "s1"]),
        st.sampled_from(SELECTS[1:]),
        st.tuples(secret_values),
        st.integers(0, 3),
        st.booleans(),
        st.none() | st.sampled_from(ERROR_STATES),
    ),
    st.tuples(
        st.just("extended_denied"),
        st.sampled_from(["", "s2"]),
        st.sampled_from(DENIED),
        st.tuples(secret_values),
    ),
)


def run_exchange(
    client: bytes, answers: bytes, client_cuts: list[int], answer_cuts: list[int]
) -> tuple[bytes, bytes, list[dict[str, Any]], Session]:
    audit = AuditLog()
    session = make_session(audit, clock=lambda: 1.0)
    upstream_bound = b"".join(session.feed_client(p) for p in chunked(client, client_cuts))
    client_bound = b"".join(session.feed_upstream(p) for p in chunked(answers, answer_cuts))
    return upstream_bound, client_bound, audit.records, session


@settings(FUZZ, max_examples=250)
@given(
    plan=st.lists(units, min_size=1, max_size=8),
    client_cuts=st.lists(st.integers(0, 2**16), min_size=1, max_size=12),
    answer_cuts=st.lists(st.integers(0, 2**16), min_size=1, max_size=12),
)
def test_chunking_does_not_change_the_exchange(
    plan: list[tuple[Any, ...]], client_cuts: list[int], answer_cuts: list[int]
) -> None:
    script = Script()
    for kind, *args in plan:
        getattr(script, kind)(*args)
    client, answers = enc(*script.client), enc(*script.answers)

    whole = run_exchange(client, answers, [], [])
    pieces = run_exchange(client, answers, client_cuts, answer_cuts)
    bytewise = run_exchange(client, answers, list(range(len(client))), list(range(len(answers))))
    for other in (pieces, bytewise):
        assert other[0] == whole[0]
        assert other[1] == whole[1]
        assert other[2] == whole[2]

    upstream_bound, client_bound, records, session = whole
    check_upstream_bound(upstream_bound, Judge(POLICIES))
    replies = check_client_bound(client_bound)
    assert sum(isinstance(m, wire.ReadyForQuery) for m in replies) == script.units
    refused = [
        m for m in replies if isinstance(m, wire.ErrorResponse) and m.sqlstate == REFUSED_SQLSTATE
    ]
    assert len(refused) == script.refusals
    assert not session.running, "every pending operation was answered"
    assert session.txn_status == script.status
    assert SECRET not in json.dumps(records, default=str)
