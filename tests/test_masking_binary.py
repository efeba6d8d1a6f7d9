"""What detection reads in binary result values: the text PostgreSQL would print.

Binary forms come from psycopg's own dumpers, so they are what a server sends.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal

import pytest
from psycopg.adapt import PyFormat, Transformer

from steward_proxy.masking.binary import text_form


def binary(value: object) -> bytes:
    return bytes(Transformer().get_dumper(value, PyFormat.BINARY).dump(value))


@pytest.mark.parametrize(
    ("value", "type_oid", "printed"),
    [
        (Decimal("4716287144365186"), 1700, b"4716287144365186"),
        (Decimal("-12.50"), 1700, b"-12.50"),
        (Decimal("0.0001234"), 1700, b"0.0001234"),
        (Decimal("100000000"), 1700, b"100000000"),
        (Decimal("NaN"), 1700, b"NaN"),
        (ipaddress.ip_interface("10.20.30.40/32"), 869, b"10.20.30.40/32"),
        (ipaddress.ip_interface("2001:db8::1/64"), 869, b"2001:db8::1/64"),
        (ipaddress.ip_network("10.0.0.0/8"), 650, b"10.0.0.0/8"),
    ],
    ids=str,
)
def test_numbers_and_addresses_read_as_printed(
    value: object, type_oid: int, printed: bytes
) -> None:
    raw = binary(value)
    assert text_form(raw, type_oid) == raw + b"\0" + printed


def test_an_int8_reads_as_its_digits() -> None:
    raw = (4716287144365186).to_bytes(8, "big", signed=True)
    assert text_form(raw, 20).endswith(b"\x004716287144365186")


def test_arrays_and_records_read_element_by_element() -> None:
    array = binary([Decimal("4716287144365186"), None, Decimal("1")])
    assert text_form(array, 1231) == array + b"\x004716287144365186\x001"
    nested = binary([[ipaddress.ip_interface("10.20.30.40/32")]])
    assert b"10.20.30.40/32" in text_form(nested, 1041)


def test_other_values_read_as_their_bytes() -> None:
    assert text_form(b"\x00\x01", 25) == b"\x00\x01"
    assert text_form(b"\xff" * 20, 17) == b"\xff" * 20  # no array or record in it
    assert text_form(b"\x00\x00", 1700) == b"\x00\x00"  # malformed: its bytes
