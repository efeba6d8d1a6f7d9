"""Strategies on text and binary values, and the row filter that applies them."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct

import pytest

from steward_proxy import wire
from steward_proxy.masking.plan import Plan
from steward_proxy.masking.rows import WITHHELD, row_filter, screen_message
from steward_proxy.masking.strategies import Strategies, Strategy

S = Strategies(b"test-key")
TEXT, VARCHAR, INT4, INT8, DATE, JSONB = 25, 1043, 23, 20, 1082, 3802

CASES = [
    ("redact hides a text value", Strategy("redact"), TEXT, b"536-22-8714", b"****"),
    (
        "partial keeps the last characters",
        Strategy("partial", 4),
        VARCHAR,
        b"4539 1488",
        b"****1488",
    ),
    ("partial of a short value shows nothing", Strategy("partial", 4), TEXT, b"1234", b"****"),
    (
        "email keeps the first letter and domain",
        Strategy("email"),
        TEXT,
        b"jane@ex.org",
        b"j***@ex.org",
    ),
    ("email of a non-address redacts", Strategy("email"), TEXT, b"no address", b"****"),
    ("null gives NULL", Strategy("null"), TEXT, b"x", None),
    ("redact on a date gives NULL", Strategy("redact"), DATE, b"2020-01-01", None),
    ("hash on JSON gives NULL", Strategy("hash"), JSONB, b'{"a": 1}', None),
]


@pytest.mark.parametrize(
    ("case", "strategy", "type_oid", "value", "masked"), CASES, ids=[c[0] for c in CASES]
)
def test_strategy(
    case: str, strategy: Strategy, type_oid: int, value: bytes, masked: bytes | None
) -> None:
    assert S.masker(strategy, type_oid, False, frozenset())(value) == masked


def test_hash_is_a_stable_keyed_pseudonym() -> None:
    mask = S.masker(Strategy("hash"), TEXT, False, frozenset())
    assert mask(b"Maria") == mask(b"Maria") != mask(b"Dmitri")
    assert re.fullmatch(rb"h_[0-9a-f]{16}", mask(b"Maria") or b"")
    other = Strategies(b"another key").masker(Strategy("hash"), TEXT, False, frozenset())
    assert other(b"Maria") != mask(b"Maria")


def test_a_pseudonym_is_the_keyed_hmac_whether_remembered_or_not() -> None:
    # Distinct values (remembering does not pay, so it rests a while), then repeated ones.
    strategies = Strategies(b"test-key")
    values = [b"user %d" % i for i in range(75_000)] + [b"Maria", b"Dmitri"] * 5_000
    expected = {
        v: b"h_" + hmac.new(b"test-key", v, hashlib.sha256).hexdigest()[:16].encode()
        for v in set(values)
    }
    assert [strategies.pseudonym(v) for v in values] == [expected[v] for v in values]


def test_hash_on_integers_is_the_same_in_text_and_binary() -> None:
    text = S.masker(Strategy("hash"), INT8, False, frozenset())(b"9876543210123")
    binary = S.masker(Strategy("hash"), INT8, True, frozenset())(struct.pack("!q", 9876543210123))
    assert text is not None and binary is not None
    assert int(text) == struct.unpack("!q", binary)[0] != 9876543210123
    four = S.masker(Strategy("hash"), INT4, True, frozenset())(struct.pack("!i", 7))
    assert four is not None and len(four) == 4


def test_a_catalog_text_type_keeps_its_value_masked() -> None:
    citext = 16400
    assert S.masker(Strategy("redact"), citext, False, frozenset({citext}))(b"x") == b"****"


def data_row(*values: bytes | None) -> bytes:
    return wire.encode(wire.DataRow(values))


def rewritten(plan: Plan, *rows: bytes) -> bytes:
    """The rows as one run through the plan's row filter."""
    run = b"".join(rows)
    return row_filter(plan)(run, 0, len(run))


def test_row_filter_rewrites_only_masked_columns() -> None:
    redact = S.masker(Strategy("redact"), TEXT, False, frozenset())
    plan = Plan([None, redact, None])
    assert rewritten(plan, data_row(b"1", b"secret", None)) == data_row(b"1", b"****", None)
    assert rewritten(plan, data_row(b"1", None, b"x")) == data_row(b"1", None, b"x")


def test_row_filter_without_a_layout_masks_every_value() -> None:
    assert rewritten(Plan([], every=lambda value: None), data_row(b"1", b"2")) == data_row(
        None, None
    )


def test_a_row_of_another_width_is_nulled() -> None:
    redact = S.masker(Strategy("redact"), TEXT, False, frozenset())
    assert rewritten(Plan([redact]), data_row(b"a", b"b")) == data_row(None, None)


def test_screen_message_withholds_quoted_values() -> None:
    error = wire.encode(
        wire.ErrorResponse.build("22P02", 'invalid input syntax for type integer: "Maria"')
    )
    screened = screen_message(error, tainted=True, detect=False)
    fields = dict(wire.decode_backend(wire.Frame(b"E", screened)).fields)  # type: ignore[attr-defined]
    assert fields["C"] == "22P02" and fields["M"] == WITHHELD
    assert screen_message(error, tainted=False, detect=True) == error
    notice = wire.encode(wire.NoticeResponse((("S", "NOTICE"), ("M", "v=536-22-8714"))))
    assert b"536-22-8714" not in screen_message(notice, tainted=False, detect=True)


def test_pseudonyms_remember_no_large_values() -> None:
    """Remembering pays for short repeated values (names, cities); a large value
    kept as a key would hold its whole size, up to the bound of entries."""
    import tracemalloc

    pseudonym = Strategies(b"k" * 32).pseudonym
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(64):
            assert pseudonym(i.to_bytes(4, "big") * 65536).startswith(b"h_")  # 256 KiB each
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1 << 20
