"""What content detection reads in a binary result value of a type that is not text.

The binary forms of numbers and addresses hold no digits to find (an ``int8``
card number is eight bytes), and an array's or a record's hold their
elements' binary forms. :func:`text_form` gives the value's own bytes, then
the text PostgreSQL prints for an ``int8``, ``numeric``, ``inet`` or ``cidr``
value, or for each element of an array or field of a record (each says its
type in the value), NUL between them so no datum is made up across two.
Detection reads that; a match makes the whole value NULL (a binary value
cannot be cut).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

__all__ = ["text_form"]

_I32 = struct.Struct("!i")
_NUMERIC_HEAD = struct.Struct("!hhHh")
_NUMERIC_SPECIAL = {0xC000: b"NaN", 0xD000: b"Infinity", 0xF000: b"-Infinity"}
_MAX_DEPTH = 8  # arrays of records of arrays ...


def text_form(value: bytes, type_oid: int) -> bytes:
    """The bytes detection reads in ``value`` (binary form of ``type_oid``)."""
    pieces = [value]
    _texts(value, type_oid, pieces, 0)
    return b"\0".join(pieces) if len(pieces) > 1 else value


def _int8(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("not an int8")
    return str(int.from_bytes(value, "big", signed=True)).encode()


def _numeric(value: bytes) -> bytes:
    ndigits, weight, sign, dscale = _NUMERIC_HEAD.unpack_from(value)
    if sign in _NUMERIC_SPECIAL:
        return _NUMERIC_SPECIAL[sign]
    if ndigits < 0 or len(value) != 8 + 2 * ndigits:
        raise ValueError("not a numeric")
    number = 0
    for digit in struct.unpack_from(f"!{ndigits}h", value, 8):
        number = number * 10000 + digit
    digits = str(number)
    shift = 4 * (weight - ndigits + 1)  # the decimal exponent of the last digit
    if shift >= 0:
        whole, fraction = digits + "0" * shift, ""
    else:
        digits = digits.rjust(1 - shift, "0")
        whole, fraction = digits[:shift], digits[shift:]
    fraction = (fraction + "0" * max(dscale, 0))[: max(dscale, 0)]
    text = ("-" if sign == 0x4000 else "") + whole + ("." + fraction if fraction else "")
    return text.encode()


def _inet(value: bytes) -> bytes:
    family, bits, _, size = value[:4]
    address = ipaddress.ip_address(value[4 : 4 + size])
    if len(value) != 4 + size or (family, size) not in ((2, 4), (3, 16)):
        raise ValueError("not an inet")
    return f"{address}/{bits}".encode()


_SCALARS: dict[int, Callable[[bytes], bytes]] = {20: _int8, 1700: _numeric, 869: _inet, 650: _inet}


def _texts(value: bytes, type_oid: int, pieces: list[bytes], depth: int) -> None:
    """Append the text of ``value``'s scalar, or of each element it holds, to ``pieces``."""
    scalar = _SCALARS.get(type_oid)
    try:
        if scalar is not None:
            pieces.append(scalar(value))
        elif depth < _MAX_DEPTH and len(value) >= 12:
            elements = _array(value) or _record(value)
            for element_oid, element in elements or ():
                if element_oid in _SCALARS or len(element) >= 12:
                    _texts(element, element_oid, pieces, depth + 1)
                else:
                    pieces.append(element)
    except (ValueError, IndexError, struct.error):
        pass  # not that type after all: its bytes as they are are read


def _array(value: bytes) -> list[tuple[int, bytes]] | None:
    """An array's elements (type, bytes), or None when ``value`` is not one."""
    ndim, flags, element_oid = struct.unpack_from("!iiI", value)
    if not 0 < ndim <= 6 or flags not in (0, 1):
        return None
    pos = 12 + 8 * ndim
    count = 1
    for i in range(ndim):
        count *= _I32.unpack_from(value, 12 + 8 * i)[0]
    if count < 0:
        return None
    elements = []
    for _ in range(count):
        size = _I32.unpack_from(value, pos)[0]
        pos += 4
        if size > 0:
            elements.append((element_oid, value[pos : pos + size]))
            pos += size
    return elements if pos == len(value) else None


def _record(value: bytes) -> list[tuple[int, bytes]] | None:
    """A record's fields (type, bytes), or None when ``value`` is not one."""
    count = _I32.unpack_from(value)[0]
    pos = 4
    if count < 0:
        return None
    fields = []
    for _ in range(count):
        field_oid, size = struct.unpack_from("!Ii", value, pos)
        pos += 8
        if size > 0:
            fields.append((field_oid, value[pos : pos + size]))
            pos += size
    return fields if pos == len(value) else None
