"""The session keeps what the server runs equal to what it judged.

Pure session tests (protocol bytes in, bytes and audit records out):

* the desync tripwire: answers the judged statements do not account for end
  the session before any of them reaches the client;
* the ParameterStatus watch: a server report that a pinned setting (or the
  signed-in privilege) changed ends the session;
* text that a silently changed encoding could make the server read otherwise
  waits until the upstream has answered what might have changed it, and is
  refused inside an open extended-protocol batch;
* statement text over the size bound is refused, text above the inline bound
  is handed to the shell for analysis off the event loop, and a run of inline
  analyses yields to the loop;
* a protocol-level Bind of a statement made with SQL ``PREPARE`` is audited
  with that statement.
"""

from __future__ import annotations

import pytest

from steward_proxy import wire
from steward_proxy.session import (
    AnalysisLimits,
    Session,
    SessionEnded,
)
from steward_proxy.sql import AnalysisLimitError, analyze

from sessionkit import AuditLog, enc, frames, make_session
from test_session import POLICY, backend, errors, ready, rows_reply

# The SJIS exploit: U+0081 is C2 81 in UTF-8; SJIS reads 81 5C as one character.
RISKY = "SELECT E'\x81\\'; DELETE FROM t; -- '"
JAPANESE_THEN_LETTER = "SELECT '日本x'"
SAFE_NON_ASCII = "SELECT '日本', 'é', '🙂'"


def session_with(
    audit: AuditLog | None = None,
    limits: AnalysisLimits | None = None,
    parameters: dict[str, str] | None = None,
) -> Session:
    return make_session(audit, POLICY, limits=limits, parameters=parameters)


def sent(data: bytes) -> list[wire.Message]:
    return [wire.decode_frontend(frame) for frame in frames(data)]


# ------------------------------------------------------------- desync tripwire

ONE_ROW = enc(wire.RowDescription((wire.FieldDescription("c"),)), wire.DataRow((b"1",)))


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(
            ONE_ROW + enc(wire.CommandComplete("SELECT 1")) + ONE_ROW,
            id="a second row description after the judged statement completed",
        ),
        pytest.param(
            ONE_ROW + enc(wire.CommandComplete("SELECT 1"), wire.CommandComplete("DELETE 3")),
            id="a second command completion",
        ),
        pytest.param(
            ONE_ROW + enc(wire.CommandComplete("SELECT 1"), wire.DataRow((b"secret",))),
            id="a data row after completion",
        ),
        pytest.param(
            ONE_ROW + enc(wire.CommandComplete("SELECT 1"), wire.EmptyQueryResponse()),
            id="an extra empty-query answer",
        ),
        pytest.param(
            ONE_ROW + enc(wire.CommandComplete("SELECT 1"), wire.CopyOutResponse(0, ())),
            id="a COPY that nothing judged",
        ),
    ],
)
def test_answers_beyond_the_judged_statements_end_the_session(reply: bytes) -> None:
    audit = AuditLog()
    session = session_with(audit)
    session.feed_client(enc(wire.Query("SELECT 1")))
    with pytest.raises(SessionEnded) as ended:
        session.feed_upstream(reply + ready())
    assert ended.value.kind == "desync"
    assert ended.value.sqlstate == "08P01"
    assert ended.value.reason.startswith("desync")


def test_the_tripwire_fires_before_any_byte_of_the_chunk_reaches_the_client() -> None:
    session = session_with()
    session.feed_client(enc(wire.Query("SELECT 1")))
    # First the true answer, alone: it passes.
    assert types_of(session.feed_upstream(ONE_ROW)) == "TD"
    with pytest.raises(SessionEnded):
        session.feed_upstream(enc(wire.CommandComplete("SELECT 1")) + ONE_ROW)


def test_an_execute_answered_twice_ends_the_session() -> None:
    session = session_with()
    session.feed_client(
        enc(
            wire.Parse("", "SELECT 1"),
            wire.Bind("", "", (), (), ()),
            wire.Execute("", 0),
            wire.Sync(),
        )
    )
    with pytest.raises(SessionEnded):
        session.feed_upstream(
            enc(
                wire.ParseComplete(),
                wire.BindComplete(),
                wire.DataRow((b"1",)),
                wire.CommandComplete("SELECT 1"),
                wire.CommandComplete("SELECT 1"),
                wire.ReadyForQuery("I"),
            )
        )


def test_true_answers_never_trip_it() -> None:
    session = session_with()
    session.feed_client(enc(wire.Query("SELECT 1; SELECT 2; ;")))
    out = session.feed_upstream(
        rows_reply("SELECT 1", (b"1",))[:-6] + rows_reply("SELECT 1", (b"2",))
    )
    assert types_of(out) == "TDCTDCZ"
    assert not session.running


def types_of(data: bytes) -> str:
    return "".join(type(m).TYPE.decode() for m in backend(data))


# ---------------------------------------------------------- ParameterStatus watch


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("client_encoding", "SJIS"),
        ("client_encoding", "GB18030"),
        ("standard_conforming_strings", "off"),
        ("session_authorization", "postgres"),
        ("is_superuser", "on"),
    ],
)
def test_a_reported_change_of_a_watched_setting_ends_the_session(name: str, value: str) -> None:
    session = session_with(parameters={"session_authorization": "app", "is_superuser": "off"})
    session.feed_client(enc(wire.Query("DO $$BEGIN NULL; END$$")))
    with pytest.raises(SessionEnded) as ended:
        session.feed_upstream(
            enc(
                wire.CommandComplete("DO"),
                wire.ParameterStatus(name, value),
                wire.ReadyForQuery("I"),
            )
        )
    assert ended.value.kind == "setting_changed"
    assert name in ended.value.reason


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
        ("application_name", "anything"),
        ("TimeZone", "Asia/Tokyo"),
    ],
)
def test_other_reports_pass_through(name: str, value: str) -> None:
    session = session_with()
    session.feed_client(enc(wire.Query("SET TimeZone = 'Asia/Tokyo'")))
    out = session.feed_upstream(
        enc(wire.CommandComplete("SET"), wire.ParameterStatus(name, value), wire.ReadyForQuery("I"))
    )
    assert types_of(out) == "CSZ"


# ------------------------------------------------- text that could read differently


@pytest.mark.parametrize("text", [RISKY, "SELECT 'a\\'", JAPANESE_THEN_LETTER])
def test_risky_text_waits_until_the_upstream_has_answered(text: str) -> None:
    audit = AuditLog()
    session = session_with(audit)
    first = enc(wire.Query("SELECT f()"))
    out = session.feed_client(first + enc(wire.Query(text)))
    assert out == first
    assert session.stalled == "settle"
    assert session.feed_client(enc(wire.Query("SELECT 2"))) == b"", "later input waits too"
    session.feed_upstream(rows_reply("SELECT 1", (b"1",)))
    assert session.resumable and session.stalled is None
    resumed = sent(session.resume())
    assert [m.query for m in resumed] == [text, "SELECT 2"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["SELECT 2", SAFE_NON_ASCII])
def test_text_that_reads_the_same_in_every_encoding_is_not_held(text: str) -> None:
    session = session_with()
    data = enc(wire.Query("SELECT f()"), wire.Query(text))
    assert session.feed_client(data) == data
    assert session.stalled is None


def test_risky_text_on_an_idle_session_goes_at_once() -> None:
    session = session_with()
    data = enc(wire.Query("SELECT 'a\\'"))
    assert session.feed_client(data) == data


def test_risky_parse_after_an_execute_in_the_same_batch_is_refused() -> None:
    audit = AuditLog()
    session = session_with(audit)
    out = session.feed_client(
        enc(
            wire.Parse("", "SELECT f()"),
            wire.Bind("", "", (), (), ()),
            wire.Execute("", 0),
            wire.Parse("", "SELECT 'a\\'"),
            wire.Bind("", "", (), (), ()),
            wire.Execute("", 0),
            wire.Sync(),
        )
    )
    upstream = sent(out)
    assert [type(m).__name__ for m in upstream] == ["Parse", "Bind", "Execute", "Parse", "Sync"]
    assert "STEWARD_REFUSED" in upstream[3].query  # type: ignore[attr-defined]
    reply = session.feed_upstream(
        enc(
            wire.ParseComplete(),
            wire.BindComplete(),
            wire.DataRow((b"1",)),
            wire.CommandComplete("SELECT 1"),
            wire.ErrorResponse.build("42601", "syntax error"),
            wire.ReadyForQuery("I"),
        )
    )
    (error,) = errors(reply)
    assert error.sqlstate == "0A000"
    assert "send Sync first" in error.message
    assert [r["decision"] for r in audit.statements()] == ["deny", "allow"]


# ------------------------------------------------------------------ analysis bounds


def test_statement_text_over_the_bound_is_refused_with_54000() -> None:
    audit = AuditLog()
    session = session_with(audit, AnalysisLimits(max_statement_bytes=100))
    out = session.feed_client(enc(wire.Query("SELECT " + "1," * 60 + "1")))
    assert "STEWARD_REFUSED" in sent(out)[0].query  # type: ignore[attr-defined]
    (error,) = errors(session.feed_upstream(enc(wire.ErrorResponse.build("42601", "x")) + ready()))
    assert error.sqlstate == "54000"
    assert "more than the limit of 100 bytes" in error.message
    assert audit.statements()[-1]["decision"] == "deny"


def test_too_many_statements_in_one_string_are_refused_with_54000() -> None:
    session = session_with(limits=AnalysisLimits(max_statements=10))
    out = session.feed_client(enc(wire.Query("SELECT 1;" * 11)))
    assert "STEWARD_REFUSED" in sent(out)[0].query  # type: ignore[attr-defined]
    (error,) = errors(session.feed_upstream(enc(wire.ErrorResponse.build("42601", "x")) + ready()))
    assert error.sqlstate == "54000"


def test_large_text_is_analysed_off_the_loop_then_judged() -> None:
    session = session_with(limits=AnalysisLimits(inline_bytes=20))
    sql = "SELECT 1, 2, 3, 4, 5, 6"
    message = enc(wire.Query(sql))
    assert session.feed_client(message) == b""
    assert session.stalled == "analysis"
    assert session.pending_analysis == sql
    session.analysed(sql, analyze(sql))
    assert session.resume() == message
    # The verdict is remembered for this exact text: no second analysis.
    assert session.feed_client(message) == message


def test_denied_large_text_analysed_off_the_loop_is_refused() -> None:
    session = session_with(limits=AnalysisLimits(inline_bytes=10))
    sql = "DELETE FROM t WHERE id = 1"
    session.feed_client(enc(wire.Query(sql)))
    session.analysed(sql, analyze(sql))
    assert "STEWARD_REFUSED" in sent(session.resume())[0].query  # type: ignore[attr-defined]


def test_an_analysis_over_its_budget_is_refused_with_54000() -> None:
    session = session_with(limits=AnalysisLimits(inline_bytes=10))
    sql = "SELECT 1, 2, 3, 4, 5"
    session.feed_client(enc(wire.Query(sql)))
    session.analysed(sql, AnalysisLimitError("statement refused: analysing it took too long"))
    assert "STEWARD_REFUSED" in sent(session.resume())[0].query  # type: ignore[attr-defined]
    (error,) = errors(session.feed_upstream(enc(wire.ErrorResponse.build("42601", "x")) + ready()))
    assert (error.sqlstate, error.message) == (
        "54000",
        "statement refused: analysing it took too long",
    )


def test_a_long_run_of_inline_analyses_yields_and_resumes_to_the_same_bytes() -> None:
    data = b"".join(enc(wire.Query(f"SELECT {i}, 'x{i}'")) for i in range(200))
    session = session_with(limits=AnalysisLimits(inline_budget=100))
    out = session.feed_client(data)
    yields = 0
    while session.stalled == "yield":
        yields += 1
        out += session.resume()
    assert yields > 5
    assert out == data


# --------------------------------------------------------- SQL PREPARE, protocol Bind


def test_a_protocol_bind_of_an_sql_prepared_statement_is_audited_with_it() -> None:
    audit = AuditLog()
    session = session_with(audit)
    session.feed_client(enc(wire.Query("PREPARE p AS SELECT * FROM t WHERE id = $1")))
    session.feed_upstream(enc(wire.CommandComplete("PREPARE"), wire.ReadyForQuery("I")))
    session.feed_client(enc(wire.Bind("", "p", (), (b"7",), ()), wire.Execute("", 0), wire.Sync()))
    session.feed_upstream(
        enc(
            wire.BindComplete(),
            wire.DataRow((b"7",)),
            wire.CommandComplete("SELECT 1"),
            wire.ReadyForQuery("I"),
        )
    )
    record = audit.statements()[-1]
    assert record["command"] == "PREPARE"
    assert record["statement"].startswith("PREPARE p AS SELECT")
    assert record["rows"] == 1
    assert record["decision"] == "allow"
