"""Rewriting what the server sends: DataRows by a :class:`~.plan.Plan`, errors and notices.

:func:`row_filter` turns a plan into the tracker's row filter: it walks a
DataRow's column lengths, hands each value of a masked column to its masker,
and rebuilds the message only around the values it replaced.

:func:`screen_message` handles an ErrorResponse or NoticeResponse for a
masked subject. PostgreSQL quotes values in messages (a failing cast prints
the value, a constraint violation the failing row, ``RAISE NOTICE`` whatever
it is given): when the statement read masked columns, or its text fields
hold a detected datum, the message keeps its severity, SQLSTATE and position
and its text becomes a generic one.

Pure: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from steward_proxy.masking.detect import find
from steward_proxy.masking.plan import Plan

__all__ = ["WITHHELD", "row_filter", "screen_message"]

_LENGTH = struct.Struct("!i")
_NULL = b"\xff\xff\xff\xff"

WITHHELD = (
    "message withheld by Steward: it may quote a masked value "
    "(the SQLSTATE and position are the server's)"
)
# Fields that may quote values; the others name things or say where.
_FREE_TEXT = frozenset("MDHWqp")
_KEPT = frozenset("SVCPLFRcdnst")


def row_filter(plan: Plan) -> Callable[[bytes], bytes]:
    """The filter that masks each DataRow message (whole, type byte included) by ``plan``."""
    maskers = plan.maskers
    every = plan.every
    width = len(maskers)
    # For each masked column: how many columns to step over before it, its masker.
    steps = []
    previous = -1
    for index, masker in enumerate(maskers):
        if masker is not None:
            steps.append((index - previous - 1, masker))
            previous = index
    unpack = _LENGTH.unpack_from
    pack = _LENGTH.pack

    def rewrite(message: bytes) -> bytes:
        count = (message[5] << 8) | message[6]
        if every is not None or count != width:
            # Never described, or not the layout planned (then NULL everything).
            fill = every if every is not None else _null
            return _rewrite_all(message, count, fill)
        pieces: list[bytes] = []
        pos = cut = 7
        for skip, masker in steps:
            while skip:
                size = unpack(message, pos)[0]
                pos += 4 + size if size > 0 else 4
                skip -= 1
            size = unpack(message, pos)[0]
            if size < 0:
                pos += 4
                continue
            end = pos + 4 + size
            value = message[pos + 4 : end]
            new = masker(value)
            if new is not value:
                pieces += (message[cut:pos], _NULL if new is None else pack(len(new)) + new)
                cut = end
            pos = end
        if not pieces:
            return message
        pieces.append(message[cut:])
        body = b"".join(pieces)
        return b"D" + pack(len(body) + 6) + message[5:7] + body

    return rewrite


def _rewrite_all(message: bytes, count: int, masker: Callable[[bytes], bytes | None]) -> bytes:
    parts = [message[5:7]]
    pos = 7
    for _ in range(count):
        size = _LENGTH.unpack_from(message, pos)[0]
        if size < 0:
            parts.append(_NULL)
            pos += 4
            continue
        new = masker(message[pos + 4 : pos + 4 + size])
        parts.append(_NULL if new is None else _LENGTH.pack(len(new)) + new)
        pos += 4 + size
    body = b"".join(parts)
    return b"D" + _LENGTH.pack(len(body) + 4) + body


def _null(value: bytes) -> None:
    return None


def screen_message(message: bytes, *, tainted: bool, detect: bool) -> bytes:
    """An ErrorResponse or NoticeResponse (whole) as the client may see it."""
    fields = _fields(message)
    if fields is None:
        return message
    quoting = tainted
    if not quoting and detect:
        quoting = any(find(value) for code, value in fields if chr(code) in _FREE_TEXT and value)
    if not quoting:
        return message
    kept = [(code, value) for code, value in fields if chr(code) in _KEPT]
    kept.append((ord("M"), WITHHELD.encode()))
    body = b"".join(bytes((code,)) + value + b"\0" for code, value in kept) + b"\0"
    return message[:1] + _LENGTH.pack(len(body) + 4) + body


def _fields(message: bytes) -> list[tuple[int, bytes]] | None:
    fields = []
    pos = 5
    end = len(message)
    while pos < end and message[pos] != 0:
        nul = message.find(b"\0", pos + 1)
        if nul < 0:
            return None
        fields.append((message[pos], message[pos + 1 : nul]))
        pos = nul + 1
    return fields
