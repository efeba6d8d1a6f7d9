"""Data-class detectors: valid and invalid examples of each class, spans, overlaps,
and the cheap tests in front of the patterns, which must never hide a match."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_proxy.masking import detect as d
from steward_proxy.masking.detect import NEEDED, Match, find, iban_valid, luhn_valid, ssn_valid

FOUND = [
    ("an email in free text", b"write to jane.doe+x@mail.example.co.uk today", "EMAIL_ADDRESS"),
    ("a Visa number with spaces", b"4539 1488 0343 6467", "CREDIT_CARD"),
    ("a Mastercard number with dashes", b"5425-2334-3010-9903", "CREDIT_CARD"),
    ("an Amex number", b"371449635398431", "CREDIT_CARD"),
    ("a 13-digit Visa number", b"4222222222222", "CREDIT_CARD"),
    ("an SSN with dashes", b"SSN 536-22-8714.", "US_SSN"),
    ("an SSN with spaces", b"536 22 8714", "US_SSN"),
    ("a US phone in parentheses", b"call (212) 555-0147", "PHONE_NUMBER"),
    ("a US phone with dots", b"212.555.0147", "PHONE_NUMBER"),
    ("an international phone", b"+44 20 7946 0958", "PHONE_NUMBER"),
    ("a short international phone", b"+2 3 45 67", "PHONE_NUMBER"),
    ("an IBAN in groups", b"GB82 WEST 1234 5698 7654 32", "IBAN_CODE"),
    ("a compact IBAN", b"DE89370400440532013000", "IBAN_CODE"),
    ("an IPv4 address", b"from 192.168.10.1:", "IP_ADDRESS"),
    ("a short IPv4 address", b"1.2.3.4", "IP_ADDRESS"),
    ("an IPv6 address", b"peer 2001:db8::8a2e:370:7334 up", "IP_ADDRESS"),
]

NOT_FOUND = [
    ("a Luhn-failing 16-digit number", b"4539 1488 0343 6468"),
    ("a random digit string", b"8274619375028461"),
    ("an SSN with area 000", b"000-12-3456"),
    ("an SSN with area 666", b"666-12-3456"),
    ("an SSN with area 9xx", b"912-12-3456"),
    ("an SSN with group 00", b"536-00-8714"),
    ("an SSN with serial 0000", b"536-22-0000"),
    ("an SSN with mixed separators", b"536-22 8714"),
    ("an IBAN with a bad checksum", b"GB83 WEST 1234 5698 7654 32"),
    ("an IPv4 part over 255", b"10.300.1.1"),
    ("a time of day", b"12:30:45"),
    ("a version number", b"version 1.2.3"),
    ("a bare ten-digit number", b"2125550147"),
    ("an at sign without a domain", b"user@localhost"),
    ("plain prose", b"nothing to see here"),
]


@pytest.mark.parametrize(("case", "value", "data_class"), FOUND, ids=[c[0] for c in FOUND])
def test_detects(case: str, value: bytes, data_class: str) -> None:
    matches = find(value)
    assert [m[2] for m in matches] == [data_class]


@pytest.mark.parametrize(("case", "value"), NOT_FOUND, ids=[c[0] for c in NOT_FOUND])
def test_does_not_detect(case: str, value: bytes) -> None:
    assert find(value) == []


def test_spans_are_byte_offsets_in_utf8() -> None:
    value = "café → jane@example.com".encode()
    ((start, end, data_class),) = find(value)
    assert value[start:end] == b"jane@example.com" and data_class == "EMAIL_ADDRESS"


def test_several_classes_in_one_value_do_not_overlap() -> None:
    value = b"a@example.com 536-22-8714 4539148803436467 10.0.0.1"
    assert [m[2] for m in find(value)] == ["EMAIL_ADDRESS", "US_SSN", "CREDIT_CARD", "IP_ADDRESS"]


def test_only_the_classes_asked_for() -> None:
    assert find(b"a@example.com 536-22-8714", ["US_SSN"]) == [(14, 25, "US_SSN")]


def test_validators() -> None:
    assert luhn_valid(b"79927398713") and not luhn_valid(b"79927398710")
    assert iban_valid(b"GB82 WEST 1234 5698 7654 32") and not iban_valid(b"GB82 WEST")
    assert ssn_valid(b"536", b"22", b"8714") and not ssn_valid(b"111", b"11", b"1111")


def unscreened_find(value: bytes) -> list[Match]:
    """Each class tried as before the cheap tests: email on an ``@``, the numeric
    classes on a run of digits, IPv6 on two ``:``, every pattern with its validator."""
    found: list[Match] = []
    if b"@" in value:
        found += [(m.start(), m.end(), "EMAIL_ADDRESS") for m in d._EMAIL.finditer(value)]
    if d._DIGIT_RUN.search(value):
        found += [
            (m.start(), m.end(), "CREDIT_CARD") for m in d._CARD.finditer(value) if d._card(m[0])
        ]
        found += [
            (m.start(), m.end(), "US_SSN")
            for m in d._SSN.finditer(value)
            if ssn_valid(m[1], m[3], m[4])
        ]
        found += [(m.start(), m.end(), "PHONE_NUMBER") for m in d._PHONE.finditer(value)]
        found += [
            (m.start(), m.end(), "IBAN_CODE") for m in d._IBAN.finditer(value) if iban_valid(m[0])
        ]
        found += [
            (m.start(), m.end(), "IP_ADDRESS")
            for m in d._IPV4.finditer(value)
            if all(int(p) <= 255 for p in m[0].split(b"."))
        ]
    if value.count(b":") >= 2:
        found += [
            (m.start(), m.end(), "IP_ADDRESS") for m in d._IPV6.finditer(value) if d._ipv6(m[0])
        ]
    kept: list[Match] = []
    for match in found:
        if all(match[1] <= k[0] or match[0] >= k[1] for k in kept):
            kept.append(match)
    return sorted(kept)


PIECES = st.sampled_from([value for _, value, _ in FOUND] + [value for _, value in NOT_FOUND])
TEXT = st.text(alphabet="0123456789 .-+()@:%abzGBDEWST\n", max_size=30).map(str.encode)


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES | TEXT, min_size=1, max_size=4).map(b"".join))
def test_the_cheap_tests_never_hide_a_match(value: bytes) -> None:
    assert find(value) == unscreened_find(value)
    if 0 not in value.translate(NEEDED):
        assert find(value) == []
