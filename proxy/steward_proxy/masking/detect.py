"""Data-class detectors over UTF-8 bytes: where in a value a sensitive datum sits.

Each class has a candidate pattern and a validator (Presidio's entity names):

- ``EMAIL_ADDRESS``: local part, ``@``, a dotted domain with a letter TLD;
- ``CREDIT_CARD``: 13 to 19 digits (or groups of four, or Amex's 4-6-5,
  split by spaces or dashes) with a
  card issuer's leading digits and a valid Luhn check digit;
- ``US_SSN``: ``AAA-GG-SSSS`` (dashes, or spaces) with a valid area (not 000,
  666 or 900-999), group (not 00) and serial (not 0000), not all one digit;
- ``PHONE_NUMBER``: a formatted North American number (``(212) 555-0100``,
  ``212-555-0100``, ``+1 212 555 0100``) or a ``+``-prefixed international
  one; a bare run of digits is not taken for a phone number;
- ``IBAN_CODE``: a country code, two check digits and 11 to 30 letters and
  digits (spaces allowed every four) whose mod-97 checksum is 1;
- ``IP_ADDRESS``: dotted IPv4 with each part at most 255, and IPv6 as the
  ``ipaddress`` module accepts it.

Values are scanned as bytes: every pattern is ASCII, so spans are byte
offsets that can be cut out of a UTF-8 value directly. Large results pass
through here, so each class is tried only when a cheap test says it could
match (an ``@`` for email, a run of digits and as many digits as a match
needs for the numeric classes, two ``:`` for IPv6); :data:`NEEDED` rules out
most text before any of that (no digit, ``@`` or ``:`` at all).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "DATA_CLASSES",
    "NEEDED",
    "Match",
    "find",
    "iban_valid",
    "luhn_valid",
    "ssn_valid",
]

DATA_CLASSES: Final = (
    "EMAIL_ADDRESS",
    "CREDIT_CARD",
    "US_SSN",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "IP_ADDRESS",
)

Match = tuple[int, int, str]  # start, end (byte offsets), data class

_EMAIL = re.compile(
    rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_CARD = re.compile(
    rb"(?<![\d-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})(?![\d])"
)
_SSN = re.compile(rb"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_PHONE = re.compile(
    rb"(?<![\w+])(?:"
    rb"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}"
    rb"|\+(?:[2-9]\d{0,2})[ .-]?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
    rb")(?![\d])"
)
_IBAN = re.compile(rb"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IPV4 = re.compile(rb"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)")
_IPV6 = re.compile(rb"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?")
_DIGIT_RUN = re.compile(rb"\d[\d .()+-]{5,}\d")

NEEDED: Final = bytes(0 if byte in b"0123456789@:" else 0x78 for byte in range(256))
"""A translation table: digits, ``@`` and ``:`` become NUL, every other byte ``x``.

Every data class needs one of those bytes, so :func:`find` finds nothing in
a value with ``0 not in value.translate(NEEDED)``: a test cheap enough to
run on every value of a large result, or once over many values at a time."""
_DIGIT_MARKS = bytes(0 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
_ALL_CLASSES = frozenset(DATA_CLASSES)
_AT, _COLON, _PLUS, _DOT, _SPACE, _DASH = b"@:+. -"

_CARD_PREFIX = re.compile(rb"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|6(?:011|5|4[4-9]|22)|35)")


def luhn_valid(digits: bytes) -> bool:
    """Whether a string of ASCII digits passes the Luhn check."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = d - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def ssn_valid(area: bytes, group: bytes, serial: bytes) -> bool:
    """The rules the SSA issues numbers by (no 000/666/9xx area, 00 group, 0000 serial)."""
    if area in (b"000", b"666") or area[0:1] == b"9":
        return False
    if group == b"00" or serial == b"0000":
        return False
    return len(set(area + group + serial)) > 1


def iban_valid(text: bytes) -> bool:
    """Whether an IBAN (spaces allowed) has a valid mod-97 checksum."""
    compact = text.replace(b" ", b"").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(chr(c), 36)) for c in moved)
    return int(number) % 97 == 1


def _card(candidate: bytes) -> bool:
    digits = candidate.replace(b" ", b"").replace(b"-", b"")
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn_valid(digits)


def _ipv6(candidate: bytes) -> bool:
    if candidate.count(b":") < 2 or not any(c not in b":%" for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate.decode("ascii"))
    except ValueError:
        return False
    return True


def find(value: bytes, classes: Iterable[str] = DATA_CLASSES) -> list[Match]:
    """Non-overlapping matches of ``classes`` in ``value``, in order of position.

    When spans of two classes overlap, the one found first (in the order of
    :data:`DATA_CLASSES`) wins.
    """
    if len(value) < 13 and value.isdigit():
        return []  # digits alone are only ever a card number, of 13 or more
    wanted = _ALL_CLASSES if classes is DATA_CLASSES else set(classes)
    found: list[Match] = []
    if "EMAIL_ADDRESS" in wanted and _AT in value:
        found += [(m.start(), m.end(), "EMAIL_ADDRESS") for m in _EMAIL.finditer(value)]
    if _DIGIT_RUN.search(value) is not None:
        # Each pattern is tried only when the value holds what any match of it
        # needs: its least number of digits, a separator it cannot do without.
        digits = value.translate(_DIGIT_MARKS).count(0)
        separated = _SPACE in value or _DASH in value or _DOT in value
        if "CREDIT_CARD" in wanted and digits >= 13:
            found += [
                (m.start(), m.end(), "CREDIT_CARD") for m in _CARD.finditer(value) if _card(m[0])
            ]
        if "US_SSN" in wanted and digits >= 9 and separated:
            found += [
                (m.start(), m.end(), "US_SSN")
                for m in _SSN.finditer(value)
                if ssn_valid(m[1], m[3], m[4])
            ]
        if "PHONE_NUMBER" in wanted and (
            (digits >= 10 and separated) or (digits >= 6 and _PLUS in value)
        ):
            found += [(m.start(), m.end(), "PHONE_NUMBER") for m in _PHONE.finditer(value)]
        if "IBAN_CODE" in wanted and value.lower() != value:  # it starts with two of A-Z
            found += [
                (m.start(), m.end(), "IBAN_CODE") for m in _IBAN.finditer(value) if iban_valid(m[0])
            ]
        if "IP_ADDRESS" in wanted and digits >= 4 and value.count(_DOT) >= 3:
            found += [
                (m.start(), m.end(), "IP_ADDRESS")
                for m in _IPV4.finditer(value)
                if all(int(p) <= 255 for p in m[0].split(b"."))
            ]
    if "IP_ADDRESS" in wanted and value.count(_COLON) >= 2:
        found += [(m.start(), m.end(), "IP_ADDRESS") for m in _IPV6.finditer(value) if _ipv6(m[0])]
    if len(found) < 2:
        return found
    kept: list[Match] = []
    for match in found:  # earlier classes were appended first: they win overlaps
        if all(match[1] <= k[0] or match[0] >= k[1] for k in kept):
            kept.append(match)
    kept.sort()
    return kept
