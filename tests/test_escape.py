"""``escape``: client-supplied text as one printable, bounded, unambiguous line."""

from __future__ import annotations

import pytest

from steward_proxy.escape import escape, has_controls, has_invalid_utf8


def undecodable(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        pytest.param("alice", "alice", id="plain ASCII is unchanged"),
        pytest.param("ユーザー", "ユーザー", id="Japanese is unchanged"),
        pytest.param("👩\u200d💻", "👩\u200d💻", id="an emoji joined by ZWJ is unchanged"),
        pytest.param("e\u0301mile", "e\u0301mile", id="a combining mark is unchanged"),
        pytest.param("a b", "a b", id="a space is unchanged"),
        pytest.param("a\nb", r"a\x0ab", id="a newline is escaped"),
        pytest.param("a\r\tb", r"a\x0d\x09b", id="CR and tab are escaped"),
        pytest.param("\x00", r"\x00", id="NUL is escaped"),
        pytest.param("\x1b[31mred", r"\x1b[31mred", id="an ANSI escape is escaped"),
        pytest.param("\x7f", r"\x7f", id="DEL is escaped"),
        pytest.param("\x85", r"\u0085", id="C1 NEL is escaped as \\u"),
        pytest.param("\u2028\u2029", r"\u2028\u2029", id="line and paragraph separators"),
        pytest.param("\u202e", r"\u202e", id="a bidi override is escaped"),
        pytest.param("\u2066", r"\u2066", id="a bidi isolate is escaped"),
        pytest.param("a\\b", r"a\\b", id="a backslash is doubled"),
        pytest.param(r"\x0a", r"\\x0a", id="a written escape differs from a newline"),
        pytest.param(undecodable(b"al\xffice"), r"al\xffice", id="an undecodable byte is \\xNN"),
        pytest.param(
            undecodable(b"\xc2\x85") + undecodable(b"\x85"),
            r"\u0085\x85",
            id="C1 NEL and the raw byte 0x85 differ",
        ),
        pytest.param("\ud800", r"\ud800", id="any other lone surrogate is escaped"),
    ],
)
def test_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped
    escape(text).encode("utf-8")  # always encodable


@pytest.mark.parametrize(
    ("text", "limit", "escaped"),
    [
        pytest.param("x" * 10, 10, "x" * 10, id="exactly the limit is kept whole"),
        pytest.param("x" * 11, 10, "x" * 9 + "…", id="one over is cut with an ellipsis"),
        pytest.param("\n" * 5, 10, r"\x0a\x0a…", id="an escape is never cut in half"),
        pytest.param("x" * 10_000, 256, "x" * 255 + "…", id="the default bound is 256"),
    ],
)
def test_escape_bounds_length(text: str, limit: int, escaped: str) -> None:
    assert escape(text, limit) == escaped
    assert len(escape(text, limit)) <= limit


@pytest.mark.parametrize(
    ("text", "controls", "invalid"),
    [
        pytest.param("dom\\alice", False, False, id="a backslash is no control"),
        pytest.param("a\nb", True, False, id="a newline is a control"),
        pytest.param(undecodable(b"\xff"), True, True, id="an undecodable byte is both"),
        pytest.param("ユーザー", False, False, id="Japanese is neither"),
    ],
)
def test_has_controls_and_invalid_utf8(text: str, controls: bool, invalid: bool) -> None:
    assert has_controls(text) is controls
    assert has_invalid_utf8(text) is invalid
