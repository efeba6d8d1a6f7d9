"""Statement shape: literals and comments removed by PostgreSQL's scanner, errors, splitting."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_proxy.sql import SQLSyntaxError, fingerprint, normalize, split_statements

SSN = "123-45-6789"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            f"SELECT * FROM users WHERE ssn = '{SSN}'",
            "SELECT * FROM users WHERE ssn = $1",
            id="a string literal in WHERE becomes $1",
        ),
        pytest.param(
            "SELECT * FROM t WHERE a = 42 AND b = 4.5e3 AND c = -7",
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3",
            id="integer, float and negative numbers become params",
        ),
        pytest.param(
            "SELECT E'a\\nb', $$dollar$$, X'ff', B'101', true, null",
            "SELECT $1, $2, $3, $4, $5, $6",
            id="escape, dollar, hex and bit strings, booleans and NULL",
        ),
        pytest.param(
            "SELECT * FROM t WHERE a = $1 AND b = 'x' AND c = $2",
            "SELECT * FROM t WHERE a = $1 AND b = $3 AND c = $2",
            id="existing params are kept and new ones do not collide",
        ),
        pytest.param(
            "SELECT * FROM t WHERE id IN (1, 2, 3) LIMIT 10",
            "SELECT * FROM t WHERE id IN ($1, $2, $3) LIMIT $4",
            id="IN lists and LIMIT",
        ),
        pytest.param(
            "select a /* traceparent='00-abc-01' */ from t -- owner 'bob'\n where x = 1",
            "select a from t where x = $1",
            id="comments are removed with the whitespace around them",
        ),
        pytest.param(
            "  select 1 ;  ",
            "select $1 ;",
            id="surrounding whitespace is dropped",
        ),
        pytest.param(
            "ALTER ROLE app PASSWORD 'hunter2'",
            "ALTER ROLE app PASSWORD $1",
            id="a password in ALTER ROLE is replaced",
        ),
        pytest.param(
            "SELECT 'it''s -- not a comment' AS c",
            "SELECT $1 AS c",
            id="comment markers inside a string are part of the string",
        ),
        pytest.param("", "", id="empty string"),
        pytest.param("-- nothing here", "", id="comment only"),
        pytest.param("/*a*/ /*b*/select/*c*/1/*d*/", "select $1", id="adjacent comments"),
    ],
)
def test_normalize(sql: str, expected: str) -> None:
    assert normalize(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(f"SELECT * FROM users WHERE ssn = '{SSN}'", id="plain literal"),
        pytest.param(f"UPDATE users SET note = 'x' WHERE ssn = E'{SSN}'", id="escape string"),
        pytest.param(f"SELECT * FROM users WHERE ssn = $tag${SSN}$tag$", id="dollar quoted"),
        pytest.param(f"SELECT * FROM users WHERE ssn IN ('{SSN}', 'x')", id="in a list"),
        pytest.param(f"SELECT 1; DELETE FROM users WHERE ssn = '{SSN}'", id="second statement"),
        pytest.param(f"SELECT * FROM users /* {SSN} */ WHERE true", id="in a comment"),
    ],
)
def test_normalized_text_never_contains_the_value(sql: str) -> None:
    assert SSN not in normalize(sql)
    assert "123" not in normalize(sql)


def test_same_shape_with_different_literals_normalizes_the_same() -> None:
    a = normalize("SELECT * FROM users WHERE id = 1 AND name = 'ann'")
    b = normalize("SELECT * FROM users WHERE id = 987 AND name = 'bob'")
    assert a == b


def test_fingerprint_ignores_constants_and_is_hex() -> None:
    fp = fingerprint("SELECT * FROM t WHERE a = 1")
    assert fp == fingerprint("SELECT * FROM t WHERE a = 'x'")
    assert fp == fingerprint("SELECT * FROM t WHERE a = $1")
    assert fp != fingerprint("SELECT * FROM u WHERE a = 1")
    int(fp, 16)


@pytest.mark.parametrize(
    ("sql", "position"),
    [
        pytest.param("SELEC 1", 1, id="misspelled keyword at the start"),
        pytest.param("SELECT * FROM WHERE x", 15, id="missing table name"),
        pytest.param("SELECT 'unterminated", 8, id="unterminated string"),
        pytest.param("SELECT 'ä' FROM WHERE", 17, id="position counts characters, not bytes"),
        pytest.param("SELECT 1\x00; DROP TABLE t", 9, id="a NUL byte is refused"),
        pytest.param("SELECT '\ud800'", 9, id="a lone surrogate is refused"),
    ],
)
@pytest.mark.parametrize("function", [normalize, fingerprint, split_statements])
def test_syntax_errors_carry_a_position(sql: str, position: int, function: object) -> None:
    with pytest.raises(SQLSyntaxError) as info:
        function(sql)  # type: ignore[operator]
    assert info.value.cursor_position == position
    assert info.value.message
    assert str(position) in str(info.value)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param("SELECT 1", ["SELECT 1"], id="one statement"),
        pytest.param("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"], id="two statements"),
        pytest.param("SELECT 'a;b'; SELECT $$;$$", ["SELECT 'a;b'", "SELECT $$;$$"], id="quoted"),
        pytest.param(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2",
            ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END", "SELECT 2"],
            id="BEGIN ATOMIC body is one statement",
        ),
        pytest.param("", [], id="empty"),
        pytest.param("   \n\t ", [], id="whitespace"),
        pytest.param("-- just a comment\n/* and another */", [], id="comments only"),
        pytest.param(";;", [], id="empty statements"),
    ],
)
def test_split_statements(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_only_raises_sqlsyntaxerror(sql: str) -> None:
    with contextlib.suppress(SQLSyntaxError):
        normalize(sql)
