"""Masking strategies on result values, in the text and binary forms of their types.

A value masker takes a column's value as it comes in a DataRow (bytes, never
NULL: NULL stays NULL) and returns the value to send instead, or None for
NULL. Which masker a column gets depends on its strategy, its type and its
format code:

- text-like types (``text``, ``varchar``, ``bpchar``, ``name``, ``unknown``
  and whatever the catalog adds: ``citext``, domains over them) keep their
  type, and their text and binary forms are the same UTF-8 bytes:
  ``redact`` -> ``****``; ``partial`` -> ``****`` and the last ``keepLast``
  characters (only ``****`` when the value is not longer than that);
  ``email`` -> first character, ``***@``, the domain; ``hash`` -> ``h_`` and
  16 hex digits of HMAC-SHA256 under the proxy's key; ``null`` -> NULL;
- integers (``int2``, ``int4``, ``int8``) under ``hash`` map to a stable
  integer of the same width (text or binary form), derived from the same HMAC
  of the value's text form, so a text and a binary client see one pseudonym;
- every other type, and every other strategy on a non-text type: NULL. A
  masked value of a type the client decodes (a date, JSON, an array) could
  not be both valid and safe.
"""

from __future__ import annotations

import hashlib
import hmac
from binascii import hexlify
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "INT_WIDTHS",
    "NULL_MASKER",
    "REDACTED",
    "REDACT_MASKER",
    "TEXT_LIKE_OIDS",
    "Strategies",
    "Strategy",
    "ValueMasker",
]

StrategyName = Literal["redact", "partial", "email", "hash", "null"]
ValueMasker = Callable[[bytes], "bytes | None"]

REDACTED: Final = b"****"
TEXT_LIKE_OIDS: Final = frozenset({25, 1043, 1042, 19, 705})
"""text, varchar, bpchar, name, unknown (a literal's type)."""
INT_WIDTHS: Final = {21: 2, 23: 4, 20: 8}
_REMEMBERED = 65536  # pseudonyms kept per key (repeated values are common)
_REMEMBERED_BYTES = 256  # longer values are not kept: each would hold its whole size
_TRIAL = 4096  # values looked up before judging whether remembering pays
_REST = 65536  # values then computed without remembering, when it did not


@dataclass(frozen=True, slots=True)
class Strategy:
    """A strategy and its parameter; ``label`` goes into the audit trail."""

    name: StrategyName
    keep_last: int = 4

    @property
    def label(self) -> str:
        return self.name


REDACT: Final = Strategy("redact")


def _null(value: bytes) -> None:
    return None


def _redact(value: bytes) -> bytes:
    return REDACTED


NULL_MASKER: Final[ValueMasker] = _null
"""The masker that gives NULL (row filters write it without calling it)."""
REDACT_MASKER: Final[ValueMasker] = _redact
"""The masker that gives ``****`` (row filters write it without calling it)."""


class Strategies:
    """Value maskers under one HMAC key (``hash``)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the hash key must not be empty")
        self._key = key
        self.pseudonym: ValueMasker = _pseudonymizer(key)
        """``h_`` and 16 hex digits: a stable, keyed stand-in for a value."""

    @property
    def key(self) -> bytes:
        return self._key

    def digest(self, value: bytes) -> bytes:
        return hmac.digest(self._key, value, "sha256")

    def text(self, strategy: Strategy, value: bytes) -> bytes | None:
        """``strategy`` applied to a text value (UTF-8 bytes)."""
        name = strategy.name
        if name == "redact":
            return REDACTED
        if name == "null":
            return None
        if name == "hash":
            return self.pseudonym(value)
        if name == "partial":
            return _partial(value, strategy.keep_last)
        return _email(value)

    def masker(
        self, strategy: Strategy, type_oid: int, binary: bool, text_like: frozenset[int]
    ) -> ValueMasker:
        """The value masker for a column of ``type_oid`` in text or binary form."""
        name = strategy.name
        if type_oid in text_like or type_oid in TEXT_LIKE_OIDS:
            if name == "redact":
                return _redact
            if name == "null":
                return _null
            if name == "hash":
                return self.pseudonym
            if name == "email":
                return _email
            keep = strategy.keep_last
            return lambda value: _partial(value, keep)
        width = INT_WIDTHS.get(type_oid)
        if name == "hash" and width is not None:
            return self._integer(width, binary)
        return _null

    def _integer(self, width: int, binary: bool) -> ValueMasker:
        def mask(value: bytes) -> bytes:
            if binary:
                value = str(int.from_bytes(value, "big", signed=True)).encode()
            number = int.from_bytes(self.digest(value)[:width], "big", signed=True)
            if binary:
                return number.to_bytes(width, "big", signed=True)
            return str(number).encode()

        return mask


def _pseudonymizer(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 under ``key`` as a pseudonym function, remembering recent values.

    The HMAC is its two padded hashes, copied per value: with OpenSSL 3 that
    is faster than ``hmac.new`` or the one-shot ``hmac.digest``. Remembering
    pays for repeated values (names, cities) and costs for distinct ones
    (keys, addresses): when fewer than one lookup in nine found its value
    over a trial, values are computed without it for a while. Values longer
    than 256 bytes are never kept (65,536 of them could hold gigabytes).
    """
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block)).copy
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block)).copy
    remembered: dict[bytes, bytes] = {}
    recall = remembered.get
    found = missed = resting = 0

    def pseudonym(value: bytes) -> bytes:
        nonlocal found, missed, resting
        if not resting:
            known = recall(value)
            if known is not None:
                found += 1
                return known
        first = inner()
        first.update(value)
        second = outer()
        second.update(first.digest())
        known = b"h_" + hexlify(second.digest()[:8])
        if resting:
            resting -= 1
            return known
        missed += 1
        if missed == _TRIAL:
            if found * 8 < missed:
                resting = _REST
            found = missed = 0
        if len(value) <= _REMEMBERED_BYTES:
            if len(remembered) >= _REMEMBERED:
                remembered.clear()
            remembered[value] = known
        return known

    return pseudonym


def _partial(value: bytes, keep_last: int) -> bytes:
    text = value.decode("utf-8", "replace")
    if keep_last <= 0 or len(text) <= keep_last:
        return REDACTED
    return REDACTED + text[-keep_last:].encode()


def _email(value: bytes) -> bytes:
    local, _, domain = value.rpartition(b"@")
    if not local or not domain:
        return REDACTED
    if value[0] < 0x80:
        return value[:1] + b"***@" + domain
    return local.decode("utf-8", "replace")[0].encode() + b"***@" + domain
