"""What the audit trail records of a statement: no constant of any statement type survives.

``scrub`` replaces every constant token PostgreSQL's scanner reports; ``analyze``
records each statement scrubbed, with a fingerprint that no literal value changes.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg

from steward_proxy.sql import (
    ShapeCache,
    SQLSyntaxError,
    analyze,
    fingerprint,
    scrub,
    shape_fingerprint,
)
from steward_proxy.sql.shape import scrub_parts

from literal_corpus import (
    CARD,
    CONSTANT_TOKENS,
    CORPUS,
    OTHER_CARD,
    OTHER_SSN,
    SSN,
    recorded_constants,
    render,
)


def constant_tokens(text: str) -> list[str]:
    return [text[t.start : t.end + 1] for t in pg.scan(text) if t.name in CONSTANT_TOKENS]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param("SELECT 'x'", "SELECT $1", id="a plain string"),
        pytest.param("SELECT E'a\\'b'", "SELECT $1", id="an escape string with a quote"),
        pytest.param(
            "SELECT U&'d\\0061t!0061' UESCAPE '!'",
            "SELECT $1 UESCAPE $2",
            id="a Unicode string and its escape character",
        ),
        pytest.param("SELECT B'101', X'ff'", "SELECT $1, $2", id="bit and hex strings"),
        pytest.param("SELECT $$a'b$$, $t$x$$y$t$", "SELECT $1, $2", id="dollar quotes"),
        pytest.param("SELECT 42, 4.5, 1e-3, .5", "SELECT $1, $2, $3, $4", id="numbers"),
        pytest.param("SELECT -7", "SELECT -$1", id="the sign of a number stays"),
        pytest.param("SELECT 'a'\n'b'", "SELECT $1", id="adjacent strings are one constant"),
        pytest.param(
            "SELECT 'a' -- one\n 'b'", "SELECT $1", id="adjacent strings around a comment"
        ),
        pytest.param(
            "SELECT interval '1 day', 'x'::text, int4 '5', N'n'",
            "SELECT interval $1, $2::text, int4 $3, N $4",
            id="typed literals keep their type",
        ),
        pytest.param("SELECT int4'5'", "SELECT int4 $1", id="a replacement never joins a word"),
        pytest.param(
            "SELECT $2, 'a', $1",
            "SELECT $2, $3, $1",
            id="new parameters are numbered after the highest one",
        ),
        pytest.param(
            "SELECT a /* 987-65-4329 */ FROM t -- 4111\nWHERE b = 1",
            "SELECT a FROM t WHERE b = $1",
            id="comments are removed",
        ),
        pytest.param("/*a*/select/*b*/1/*c*/", "select $1", id="comments between tokens"),
        pytest.param("SELECT 'it''s -- no comment'", "SELECT $1", id="comment marks in a string"),
        pytest.param(
            "COMMENT ON TABLE t IS 'secret'", "COMMENT ON TABLE t IS $1", id="COMMENT ... IS"
        ),
        pytest.param("DO $$ BEGIN PERFORM 'x'; END $$", "DO $1", id="a DO body"),
        pytest.param(
            "COPY t TO '/tmp/out' WITH (FORMAT csv, NULL 'n')",
            "COPY t TO $1 WITH (FORMAT csv, NULL $2)",
            id="COPY target and options",
        ),
        pytest.param(
            "CREATE TABLE t (c varchar(20) DEFAULT 'x' CHECK (c <> 'y'))",
            "CREATE TABLE t (c varchar($1) DEFAULT $2 CHECK (c <> $3))",
            id="DDL: every constant, type modifiers too",
        ),
        pytest.param("SELECT 'é日本🎉'", "SELECT $1", id="non-ASCII text"),
        pytest.param("", "", id="empty"),
        pytest.param("-- only a comment", "", id="comment only"),
    ],
)
def test_scrub(sql: str, expected: str) -> None:
    assert scrub(sql) == expected


def test_scrub_parts_numbers_across_the_statements_of_one_string() -> None:
    parts = ["SELECT 'a'", "COMMENT ON TABLE t IS 'b'", "SELECT $4, 'c'"]
    assert scrub_parts(parts) == ["SELECT $5", "COMMENT ON TABLE t IS $6", "SELECT $4, $7"]


@pytest.mark.parametrize(
    ("sql", "position"),
    [
        pytest.param("SELECT 'open", 8, id="an unterminated string"),
        pytest.param("SELECT 1\x00'x'", 9, id="a NUL byte"),
        pytest.param("SELECT $99999999999", 8, id="a parameter number out of range"),
    ],
)
def test_scrub_refuses_what_the_scanner_refuses(sql: str, position: int) -> None:
    with pytest.raises(SQLSyntaxError) as info:
        scrub(sql)
    assert info.value.cursor_position == position


FRAGMENTS = [
    " ", "\n", "SELECT", "x", "'a'", "E'\\''", "$$b$$", "$t$c$t$", "U&'d'", "UESCAPE", "'!'",
    "B'1'", "X'f'", "1", "2.5", "1e3", "$1", "$7", "::", "int4", "/* c */", "-- c\n", ",", "-",
    "(", ")", ";", "n", "é",
]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS)).map("".join)))
def test_scrubbed_text_holds_no_constant(sql: str) -> None:
    with contextlib.suppress(SQLSyntaxError):
        text = scrub(sql)
        with contextlib.suppress(pg.ParseError):
            assert constant_tokens(text) == []


# --- what analyze records --------------------------------------------------------


def recorded(sql: str) -> list[tuple[str, str]]:
    return [(i.normalized, i.fingerprint) for i in analyze(sql, cache=ShapeCache(0))]


@pytest.mark.parametrize("name", list(CORPUS))
def test_no_literal_reaches_the_recorded_statement(name: str) -> None:
    for text, fp in recorded(render(CORPUS[name], "s")):
        assert SSN not in text
        assert CARD not in text
        assert recorded_constants(text) == []
        assert len(fp) == 16
        int(fp, 16)


@pytest.mark.parametrize("name", list(CORPUS))
def test_statements_that_differ_only_in_literals_are_recorded_alike(name: str) -> None:
    template = CORPUS[name]
    first = recorded(render(template, "s"))
    second = recorded(render(template, "s", OTHER_SSN, OTHER_CARD))
    assert first == second


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("COMMENT ON TABLE a IS 'x'", "COMMENT ON TABLE b IS 'x'", id="COMMENT"),
        pytest.param("SET x.a = 'v'", "SET x.b = 'v'", id="SET"),
        pytest.param("COPY a TO STDOUT (NULL 'n')", "COPY b TO STDOUT (NULL 'n')", id="COPY"),
        pytest.param("DO $$ x $$", "DO LANGUAGE plperl $$ x $$", id="DO"),
        pytest.param("CREATE VIEW a AS SELECT 'v'", "CREATE VIEW b AS SELECT 'v'", id="VIEW"),
    ],
)
def test_the_fingerprint_tells_different_statements_apart(a: str, b: str) -> None:
    assert recorded(a)[0][1] != recorded(b)[0][1]


def test_a_parsable_statement_keeps_libpg_query_fingerprint() -> None:
    sql = f"SELECT * FROM t WHERE ssn = '{SSN}' AND card = {CARD}"
    ((_, fp),) = recorded(sql)
    assert fp == fingerprint(sql)


def test_the_fingerprint_does_not_depend_on_the_parameter_numbers() -> None:
    alone = recorded("COMMENT ON TABLE t IS 'a'")
    after = recorded("SELECT 1, 2; COMMENT ON TABLE t IS 'b'")
    assert after[1][0] == "COMMENT ON TABLE t IS $3"
    assert after[1][1] == alone[0][1]
    assert shape_fingerprint("DO $1") == shape_fingerprint("DO $9")
    assert shape_fingerprint("DO $1") != shape_fingerprint("COMMENT ON TABLE t IS $1")


def test_multi_statement_text_is_numbered_across_the_string() -> None:
    # normalize() numbers the constants it replaces first, scrub() the ones it keeps.
    texts = [text for text, _ in recorded("PREPARE p AS SELECT 'a'; EXECUTE p('b'); SELECT 3")]
    assert texts == ["PREPARE p AS SELECT $2", "EXECUTE p($3)", "SELECT $1"]


def test_a_begin_atomic_body_is_scrubbed_with_its_statement() -> None:
    sql = (
        f"CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT '{SSN}'; END;"
        f" COMMENT ON FUNCTION f() IS '{SSN}'"
    )
    texts = [text for text, _ in recorded(sql)]
    assert texts == [
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT $1; END",
        "COMMENT ON FUNCTION f() IS $2",
    ]


def test_a_string_that_cannot_be_split_after_normalizing_is_scrubbed_per_statement() -> None:
    # "DO $1" does not parse and the scanner alone cannot cut BEGIN ATOMIC right.
    sql = (
        f"CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT '{SSN}'; END;"
        f" DO $$ BEGIN PERFORM {CARD}; END $$"
    )
    texts = [text for text, _ in recorded(sql)]
    assert texts == [
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT $2; END",
        "DO $$ BEGIN PERFORM $1; END $$",
    ]


def test_strings_sharing_a_cache_entry_are_recorded_alike() -> None:
    # normalize() reads "-1" as one constant, as it does "1" and "true": one cache
    # entry, so one recorded text, made from that entry's key.
    for sql in ("SELECT * FROM t WHERE a = -1", "SELECT * FROM t WHERE a = true"):
        assert recorded(sql) == recorded("SELECT * FROM t WHERE a = 1")
