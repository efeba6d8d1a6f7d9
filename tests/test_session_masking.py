"""The session with masking, without sockets: masked rows whatever the chunking,
refusals audited as masking's, what was masked in each record."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_proxy import wire
from steward_proxy.engine import Judge
from steward_proxy.masking.catalog import Catalog
from steward_proxy.masking.plan import Masker, MaskingConfig
from steward_proxy.masking.strategies import Strategies
from steward_proxy.policy import compile_documents
from steward_proxy.session import SessionEnded
from tests.sessionkit import IDENTITY, AuditLog, KitSession, enc, frames

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: unit}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  masking: {rules: [pii], detect: true}
---
apiVersion: steward.dev/v1alpha1
kind: MaskingRule
metadata: {name: pii}
spec:
  rules:
    - {columns: [public.users.ssn], strategy: redact}
    - {columns: [public.users.email], strategy: email}
"""
USERS = 16384
CATALOG = Catalog.from_rows(
    [(USERS, "public", "users", "r")],
    [(USERS, 1, "id", 23), (USERS, 2, "email", 25), (USERS, 3, "ssn", 25), (USERS, 4, "note", 25)],
)


def make_masked_session(audit: AuditLog) -> KitSession:
    policy_set = compile_documents(list(yaml.safe_load_all(POLICY)))
    policies = policy_set.policies_for(IDENTITY)
    config = MaskingConfig.for_identity(policy_set, policies, IDENTITY)
    judge = Judge(policies, masker=Masker(config, Strategies(b"k"), CATALOG))
    return KitSession(
        audit=audit,
        session_id="s1",
        identity=IDENTITY,
        database="app",
        client="127.0.0.1:5555",
        judge=judge,
    )


LAYOUT = wire.RowDescription(
    (
        wire.FieldDescription("id", USERS, 1, 23),
        wire.FieldDescription("email", USERS, 2, 25),
        wire.FieldDescription("ssn", USERS, 3, 25),
        wire.FieldDescription("note", USERS, 4, 25),
    )
)
ANSWER = enc(
    LAYOUT,
    wire.DataRow((b"1", b"ann@example.org", b"536-22-8714", b"call 212-555-0147")),
    wire.DataRow((b"2", None, b"412-71-3390", b"nothing")),
    wire.NoticeResponse((("S", "NOTICE"), ("C", "00000"), ("M", "saw 412-71-3390"))),
    wire.CommandComplete("SELECT 2"),
    wire.ReadyForQuery("I"),
)


def run(chunks: list[bytes]) -> tuple[bytes, list[dict[str, Any]]]:
    audit = AuditLog()
    session = make_masked_session(audit)
    session.feed_client(enc(wire.Query("SELECT id, email, ssn, note FROM users")))
    out = b"".join(session.feed_upstream(chunk) for chunk in chunks)
    return out, audit.statements()


def test_rows_are_masked_and_the_record_lists_what() -> None:
    out, records = run([ANSWER])
    rows = [wire.decode_backend(f) for f in frames(out) if f.type == b"D"]
    assert [r.values for r in rows] == [  # type: ignore[attr-defined]
        (b"1", b"a***@example.org", b"****", b"call ****"),
        (b"2", None, b"****", b"nothing"),
    ]
    assert b"412-71-3390" not in out
    assert records[-1]["masked"] == [
        "PHONE_NUMBER:redact",
        "public.users.email:email",
        "public.users.ssn:redact",
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(ANSWER) - 1), max_size=12, unique=True))
def test_any_chunking_gives_the_same_bytes_and_records(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(ANSWER)]
    chunks = [ANSWER[a:b] for a, b in itertools.pairwise(edges)]
    expected_out, expected_records = run([ANSWER])
    out, records = run(chunks)
    assert out == expected_out
    strip = lambda rs: [{k: v for k, v in r.items() if k != "duration_ms"} for r in rs]  # noqa: E731
    assert strip(records) == strip(expected_records)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT id FROM users WHERE ssn LIKE '5%'", "filters, joins, groups or orders by"),
        ("INSERT INTO t SELECT email FROM users", "would write values of masked column"),
        ("DO $$ BEGIN END $$", "run code Steward cannot trace"),
    ],
    ids=["a predicate", "data movement", "a DO block"],
)
def test_refusals_are_audited_as_masking(sql: str, message: str) -> None:
    audit = AuditLog()
    session = make_masked_session(audit)
    upstream = session.feed_client(enc(wire.Query(sql)))
    assert sql.encode() not in upstream  # a stand-in went instead
    record = audit.statements()[-1]
    assert record["decision"] == "deny" and record["rule"] == "masking"
    assert message in record["error"]


def test_a_function_call_message_is_refused() -> None:
    audit = AuditLog()
    session = make_masked_session(audit)
    session.feed_client(enc(wire.FunctionCall(1234, (), (), 0)))
    assert audit.statements()[-1]["rule"] == "masking"


def test_a_session_whose_masking_a_policy_changes_ends_at_its_next_statement() -> None:
    """A reload that adds masking must reach open sessions: their row hooks are fixed."""
    policy_set = compile_documents(list(yaml.safe_load_all(POLICY)))
    policies = policy_set.policies_for(IDENTITY)
    config = MaskingConfig.for_identity(policy_set, policies, IDENTITY)

    class Reloaded(Judge):
        generation = 0

    judge = Reloaded(policies)  # no masking yet
    session = KitSession(
        audit=AuditLog(), session_id="s1", identity=IDENTITY, database="app",
        client="127.0.0.1:5555", judge=judge,
    )  # fmt: skip
    session.feed_client(enc(wire.Query("SELECT 1")))
    judge.generation += 1  # a reload that leaves the masking as it was
    session.feed_client(enc(wire.Query("SELECT 2")))
    judge.masker = Masker(config, Strategies(b"k"), CATALOG)
    judge.generation += 1
    with pytest.raises(SessionEnded) as ended:
        session.feed_client(enc(wire.Query("SELECT ssn FROM users")))
    assert ended.value.kind == "policy_changed"


def test_each_execution_of_a_prepared_statement_lists_what_it_masked() -> None:
    """Executions pipelined behind one Describe are planned before either ends:
    each record still lists what its own rows had masked."""
    audit = AuditLog()
    session = make_masked_session(audit)
    layout = wire.RowDescription(LAYOUT.fields[1:3])
    session.feed_client(
        enc(wire.Parse("s", "SELECT email, ssn FROM users"), wire.Describe("S", "s"), wire.Sync())
    )
    session.feed_upstream(
        enc(wire.ParseComplete(), wire.ParameterDescription(()), layout, wire.ReadyForQuery("I"))
    )
    execute = enc(wire.Bind("", "s"), wire.Execute(""))
    session.feed_client(execute + execute + enc(wire.Sync()))
    done = enc(
        wire.BindComplete(),
        wire.DataRow((b"ann@example.org", b"536-22-8714")),
        wire.CommandComplete("SELECT 1"),
    )
    out = session.feed_upstream(done + done + enc(wire.ReadyForQuery("I")))
    assert b"536-22-8714" not in out
    executed = [r for r in audit.statements() if r["rows"] == 1]
    assert [r["masked"] for r in executed] == [
        ["public.users.email:email", "public.users.ssn:redact"]
    ] * 2
    # An execution skipped after an error lists what its plan would mask, and
    # leaves nothing behind.
    session.feed_client(enc(wire.Bind("", "nope"), wire.Execute("")) + execute + enc(wire.Sync()))
    session.feed_upstream(
        enc(wire.ErrorResponse.build("26000", "no such statement"), wire.ReadyForQuery("I"))
    )
    skipped = [r for r in audit.statements() if "earlier message failed" in (r["error"] or "")]
    assert [r.get("masked") for r in skipped] == [  # the first's statement is unknown
        None,
        ["public.users.email:email", "public.users.ssn:redact"],
    ]
    assert session._labels == {}


def test_cursors_are_remembered_once_declared_and_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("steward_proxy.session._MAX_CURSORS", 3)
    session = make_masked_session(AuditLog())
    declares = "; ".join(f"DECLARE c{i} CURSOR FOR SELECT email FROM users" for i in range(5))
    session.feed_client(enc(wire.Query(declares)))
    assert session._cursors == {}  # not before the server ran them
    session.feed_upstream(enc(*[wire.CommandComplete("DECLARE CURSOR")] * 5))
    assert list(session._cursors) == ["c2", "c3", "c4"]


def test_a_schema_change_prepared_and_never_run_lets_go_of_its_names() -> None:
    session = make_masked_session(AuditLog())
    session.feed_client(enc(wire.Parse("d", "DROP VIEW other"), wire.Sync()))
    assert session._masker is not None and session._masker._changing == {"other": 1 << 62}
    session.feed_upstream(enc(wire.ParseComplete(), wire.ReadyForQuery("I")))
    assert session._changes == {} and session._masker._changing == {}
