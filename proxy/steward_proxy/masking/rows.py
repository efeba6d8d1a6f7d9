"""Rewriting what the server sends: DataRows by a :class:`~.plan.Plan`, errors and notices.

:func:`row_filter` turns a plan into the tracker's row filter: given a run
of consecutive DataRows, it walks each row's column lengths up to its last
masked column, hands each masked value to its masker, and rebuilds the run
around the values it replaced (a new header per row, one join per run). A
value that overruns its row is a protocol error, never read as the next
row's. For plans of up to 32 masked columns the filter is code written for
the plan's shape (:mod:`.rowcode`), compiled once per shape once the general
loop has filtered enough of its rows to pay for it (a client may ask for any
number of shapes: a Bind's result formats alone change one); other plans
(and rows never described) go through one general loop.

:func:`offloading_filter` is :func:`row_filter` for a proxy with masking
workers: long runs come out as a :class:`MaskJob` (the plan's recipe and the
rows, as plain values) that the shell hands to a worker process, where
:func:`run_job` applies the same filter. The pure core stays sans-I/O; the
event loop keeps its core for framing and the sessions.

:func:`copy_filter` does the same for the rows of a text or CSV COPY out.

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
from dataclasses import dataclass, field
from typing import Any

from steward_proxy.masking import rowcode
from steward_proxy.masking.detect import find
from steward_proxy.masking.lineage import CopyOut
from steward_proxy.masking.plan import Plan, Recipe, plan_from_recipe
from steward_proxy.masking.strategies import NULL_MASKER, REDACT_MASKER, REDACTED
from steward_proxy.wire.errors import RemoteProtocolError
from steward_proxy.wire.tracker import Deferred

__all__ = [
    "WITHHELD",
    "MaskJob",
    "copy_filter",
    "looped_filter",
    "offloading_filter",
    "row_filter",
    "run_job",
    "screen_message",
    "specialized_filter",
]

_LENGTH = struct.Struct("!i")
_HEAD = struct.Struct("!iH")  # a DataRow's length and column count, after its type byte
_HEAD_AND_SIZE = struct.Struct("!iHi")  # and its first value's size
_TYPED = struct.Struct("!Bi")  # a message's type byte and length
_DATA_ROW = ord("D")
_PREFIXES = tuple(_LENGTH.pack(n) for n in range(256))  # encoded lengths of short values
_HEADERS = tuple(_TYPED.pack(_DATA_ROW, n) for n in range(1024))  # headers of short rows
_NULL = b"\xff\xff\xff\xff"

WITHHELD = (
    "message withheld by Steward: it may quote a masked value "
    "(the SQLSTATE and position are the server's)"
)
# Fields that may quote values; the others name things or say where.
_FREE_TEXT = frozenset("MDHWqp")
_KEPT = frozenset("SVCPLFRcdnst")
# Names, but RAISE ... USING COLUMN, CONSTRAINT, DATATYPE, TABLE or SCHEMA
# sets them to any text: detection reads them too.
_NAMES = frozenset("cdnst")
_READ = _FREE_TEXT | _NAMES


_MOST_SPECIALIZED = 32  # masked columns; the source written per shape grows with them
# Bytes of rows of one shape the general loop filters before the shape is
# compiled (a compile, up to 5 ms for 32 masked columns, costs about what the
# loop spends on this much), and how many shapes such counts are kept for.
_WARM_BYTES = 1 << 18
_MAX_WARMING = 4096
_warming: dict[tuple[rowcode.Kind, ...], int] = {}
_MAX_COMPILED = 256
_made: dict[tuple[rowcode.Kind, ...], Callable[..., RowFilter]] = {}

RowFilter = Callable[[bytes, int, int], bytes]


def row_filter(plan: Plan) -> RowFilter:
    """The filter that masks a run of whole DataRow messages, ``data[start:end]``, by ``plan``.

    A run is rewritten in one pass with one join: the bytes between masked
    values are sliced out of ``data`` as they are, and each row gets its
    header again with its new length.
    """
    if plan.every is None:
        masked = sum(m is not None for m in plan.maskers)
        if 0 < masked <= _MOST_SPECIALIZED:
            shape, bound = _shape(plan)
            make = _made.pop(shape, None)
            if make is not None:
                _made[shape] = make  # the newest: the last evicted
                return make(*bound)
            return _warming_filter(plan, shape, bound)
    return looped_filter(plan)


@dataclass(frozen=True, slots=True)
class MaskJob(Deferred):
    """A run of whole DataRows to mask elsewhere: :func:`run_job` gives what replaces it."""

    recipe: Recipe = field(repr=False)  # the hash key
    rows: bytes = field(repr=False)  # values not masked yet


def offloading_filter(plan: Plan, min_bytes: int) -> Callable[[bytes, int, int], bytes | MaskJob]:
    """:func:`row_filter`, except that a run of at least ``min_bytes`` comes out as a job.

    ``plan`` must have a recipe (no detection: a detector adds to the
    statement's audit labels as it finds, which must happen before the
    statement's record is written).
    """
    recipe = plan.recipe
    if recipe is None:
        raise ValueError("only a plan with a recipe can be masked elsewhere")
    local = row_filter(plan)

    def rewrite(data: bytes, start: int, end: int) -> bytes | MaskJob:
        if end - start < min_bytes:
            return local(data, start, end)
        return MaskJob(recipe, data[start:end])

    return rewrite


_jobs: dict[Recipe, RowFilter] = {}


def run_job(recipe: Recipe, rows: bytes) -> bytes:
    """What the whole DataRows ``rows`` become under the plan ``recipe`` describes.

    In a masking worker: each recipe's filter is kept (the newest 256), so a
    long result's shape is compiled once.
    """
    rewrite = _jobs.pop(recipe, None)
    if rewrite is None:
        rewrite = row_filter(plan_from_recipe(recipe))
        if len(_jobs) >= _MAX_COMPILED:
            del _jobs[next(iter(_jobs))]
    _jobs[recipe] = rewrite
    return rewrite(rows, 0, len(rows))


def _warming_filter(
    plan: Plan, shape: tuple[rowcode.Kind, ...], bound: tuple[Any, ...]
) -> RowFilter:
    """The general loop, until its rows of ``shape`` (this request's and earlier ones')
    pay for compiling the shape's filter; then that filter."""
    looped = looped_filter(plan)
    current = [looped]

    def rewrite(data: bytes, start: int, end: int) -> bytes:
        if current[0] is looped:
            seen = _warming.pop(shape, 0) + end - start
            if seen < _WARM_BYTES:
                _warming[shape] = seen
                if len(_warming) > _MAX_WARMING:
                    del _warming[next(iter(_warming))]
                return looped(data, start, end)
            current[0] = _compiled(shape)(*bound)
        return current[0](data, start, end)

    return rewrite


def specialized_filter(plan: Plan) -> RowFilter:
    """:func:`row_filter` as code written for the shape of ``plan`` (columns described)."""
    shape, bound = _shape(plan)
    return _compiled(shape)(*bound)


def _shape(plan: Plan) -> tuple[tuple[rowcode.Kind, ...], tuple[Any, ...]]:
    """The shape of ``plan`` and what its filter's ``make`` binds."""
    maskers = plan.maskers
    screens = plan.screens
    # Runs of screened columns are screened at once: by one table (others are called).
    screen = next(iter(screens.values()), None)
    shape: list[rowcode.Kind] = []
    constants: dict[int, bytes] = {}
    for i, masker in enumerate(maskers):
        constant = _constant(masker) if masker is not None else None
        if constant is not None:
            constants[i] = constant
        shape.append(_kind(masker, constant, screen is not None and screens.get(i) is screen))
    longers = {i: len(c) - 4 for i, c in constants.items()}

    def looped(data: bytes, start: int, end: int) -> bytes:
        return looped_filter(plan)(data, start, end)

    return tuple(shape), (maskers, constants, longers, screens, looped)


def _kind(masker: object, constant: bytes | None, screened: bool) -> rowcode.Kind:
    if masker is None:
        return "keep"
    if constant is not None:
        return "constant"
    return "screened" if screened else "call"


def _compiled(shape: tuple[rowcode.Kind, ...]) -> Callable[..., RowFilter]:
    """The ``make`` of the filter for ``shape``, compiled once (the newest kept)."""
    make = _made.pop(shape, None)
    if make is None:
        make = _compile(shape)
    _made[shape] = make
    if len(_made) > _MAX_COMPILED:
        del _made[next(iter(_made))]
    return make


def _compile(shape: tuple[rowcode.Kind, ...]) -> Callable[..., RowFilter]:
    namespace = {
        "head": _HEAD_AND_SIZE.unpack_from,
        "unpack": _LENGTH.unpack_from,
        "pack": _LENGTH.pack,
        "typed": _TYPED.pack,
        "prefixes": _PREFIXES,
        "headers": _HEADERS,
        "NULL": _NULL,
        "blank": _blank,
        "overrun": _overrun,
        "struct_error": struct.error,
    }
    code = compile(rowcode.source(shape), f"<row filter of {len(shape)} columns>", "exec")
    exec(code, namespace)  # the source holds column numbers only, see rowcode
    return namespace["make"]  # type: ignore[no-any-return]


def looped_filter(plan: Plan) -> RowFilter:
    """:func:`row_filter` as one loop over the plan's steps, for any plan."""
    maskers = plan.maskers
    every = plan.every
    width = len(maskers)
    # For each masked column: how many columns to step over before it, and its
    # masker, or the encoded field itself (and how much longer than a length it
    # is) when the masker gives a constant.
    steps: list[tuple[int, Callable[[bytes], bytes | None], bytes | None, int]] = []
    previous = -1
    for index, masker in enumerate(maskers):
        if masker is not None:
            constant = _constant(masker)
            steps.append((index - previous - 1, masker, constant, len(constant or b"") - 4))
            previous = index
    fill = every if every is not None else _null
    head = _HEAD.unpack_from
    unpack = _LENGTH.unpack_from
    pack = _LENGTH.pack
    typed = _TYPED.pack
    prefixes = _PREFIXES
    headers = _HEADERS

    def rewrite(data: bytes, start: int, end: int) -> bytes:
        parts: list[bytes | None] = []
        append = parts.append
        cut = pos = start
        try:
            while pos < end:
                length, count = head(data, pos + 1)
                row_end = pos + 1 + length
                append(data[cut:pos])
                if count != width or every is not None:
                    # Never described, or not the layout planned (then NULL everything).
                    append(_rewrite_all(data[pos:row_end], count, fill))
                    cut = pos = row_end
                    continue
                header = len(parts)
                append(None)  # the row's header, once its new length is known
                cut = pos + 5  # the column count stays
                p = pos + 7
                for skip, masker, constant, longer in steps:
                    while skip:
                        size = unpack(data, p)[0]
                        p += 4 + size if size > 0 else 4
                        skip -= 1
                    size = unpack(data, p)[0]
                    if size < 0:
                        p += 4
                        continue
                    value_end = p + 4 + size
                    if constant is None:
                        value = data[p + 4 : value_end]
                        new = masker(value)
                        if new is value:  # unchanged: it stays in the next slice
                            p = value_end
                            continue
                    if cut != p:
                        append(data[cut:p])
                    if constant is not None:
                        append(constant)
                        length += longer - size
                    elif new is None:
                        append(_NULL)
                        length -= size
                    else:
                        n = len(new)
                        append(prefixes[n] if n < 256 else pack(n))
                        append(new)
                        length += n - size
                    p = cut = value_end
                if p > row_end:
                    raise _overrun()
                parts[header] = headers[length] if length < 1024 else typed(_DATA_ROW, length)
                pos = row_end
        except struct.error:
            raise _overrun() from None
        append(data[cut:end])
        return b"".join(parts)  # type: ignore[arg-type]

    return rewrite


def _overrun() -> RemoteProtocolError:
    return RemoteProtocolError("malformed DataRow: its values overrun the message")


def _constant(masker: Callable[[bytes], bytes | None]) -> bytes | None:
    """The encoded field (length and value) a masker always gives, if it is one of those."""
    if masker is REDACT_MASKER:
        return _LENGTH.pack(len(REDACTED)) + REDACTED
    if masker is NULL_MASKER:
        return _NULL
    return None


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
    if pos > len(message):
        raise _overrun()
    body = b"".join(parts)
    return b"D" + _LENGTH.pack(len(body) + 4) + body


def _null(value: bytes) -> None:
    return None


def _blank(message: bytes, count: int) -> bytes:
    """A row not of the planned width, every value NULL."""
    return _rewrite_all(message, count, _null)


def screen_message(message: bytes, *, tainted: bool, detect: bool) -> bytes:
    """An ErrorResponse or NoticeResponse (whole) as the client may see it."""
    fields = _fields(message)
    if fields is None:
        return message
    quoting = tainted
    if not quoting and detect:
        quoting = any(find(value) for code, value in fields if chr(code) in _READ and value)
    if not quoting:
        return message
    kept = [
        (code, value)
        for code, value in fields
        if chr(code) in _KEPT and not (detect and chr(code) in _NAMES and find(value))
    ]
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


# -- COPY out ------------------------------------------------------------------------


def copy_filter(plan: Plan, copy: CopyOut) -> Callable[[bytes], bytes]:
    """The filter that masks each CopyData message (one row) of a text or CSV COPY out.

    Only masked fields are decoded and written again; the others keep their
    bytes. A row that does not split into the planned columns has every
    field written as NULL.
    """
    delimiter = copy.delimiter.encode()
    null = copy.null.encode()
    csv = copy.format == "csv"
    quote = copy.quote.encode()
    escape = copy.escape.encode()
    maskers = plan.maskers
    header = [copy.header]

    def rewrite(message: bytes) -> bytes:
        if header[0]:
            header[0] = False
            return message
        row = message[5:]
        end = b"\r\n" if row.endswith(b"\r\n") else b"\n" if row.endswith(b"\n") else b""
        line = row[: len(row) - len(end)]
        fields = _csv_fields(line, delimiter, quote, escape) if csv else line.split(delimiter)
        if plan.every is not None or len(fields) != len(maskers):
            masked_fields = [null] * len(fields)
        else:
            masked_fields = []
            for field, masker in zip(fields, maskers, strict=True):
                if masker is None or field == null:
                    masked_fields.append(field)
                    continue
                value = _csv_value(field, quote, escape) if csv else _text_value(field)
                new = masker(value)
                if new is None:
                    masked_fields.append(null)
                elif new is value:
                    masked_fields.append(field)
                elif csv:
                    masked_fields.append(quote + new.replace(quote, escape + quote) + quote)
                else:
                    masked_fields.append(_text_field(new, delimiter))
        body = delimiter.join(masked_fields) + end
        return b"d" + _LENGTH.pack(len(body) + 4) + body

    return rewrite


_TEXT_ESCAPES = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}


def _text_value(field: bytes) -> bytes:
    """A COPY text field's value (backslash escapes undone)."""
    if b"\\" not in field:
        return field
    out = bytearray()
    i = 0
    while i < len(field):
        c = field[i]
        if c != 0x5C or i + 1 == len(field):
            out.append(c)
            i += 1
            continue
        n = field[i + 1]
        if n in _TEXT_ESCAPES:
            out += _TEXT_ESCAPES[n]
            i += 2
        elif 0x30 <= n <= 0x37:
            j = i + 1
            while j < min(i + 4, len(field)) and 0x30 <= field[j] <= 0x37:
                j += 1
            out.append(int(field[i + 1 : j], 8) & 0xFF)
            i = j
        elif n == ord("x") and i + 2 < len(field):
            j = i + 2
            while j < min(i + 4, len(field)) and chr(field[j]) in "0123456789abcdefABCDEF":
                j += 1
            out.append(int(field[i + 2 : j], 16) if j > i + 2 else ord("x"))
            i = j
        else:
            out.append(n)
            i += 2
    return bytes(out)


def _text_field(value: bytes, delimiter: bytes) -> bytes:
    """A value written as a COPY text field."""
    value = value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return value.replace(delimiter, b"\\" + delimiter)


def _csv_fields(line: bytes, delimiter: bytes, quote: bytes, escape: bytes) -> list[bytes]:
    """A CSV line split into raw fields (quotes kept), honouring quoted delimiters."""
    fields = []
    start = 0
    i = 0
    quoted = False
    d, q, e = delimiter[0], quote[0], escape[0]
    size = len(line)
    while i < size:
        c = line[i]
        if quoted:
            if c == e and e != q and i + 1 < size:
                i += 2
                continue
            if c == q:
                if e == q and i + 1 < size and line[i + 1] == q:
                    i += 2
                    continue
                quoted = False
        elif c == q:
            quoted = True
        elif c == d:
            fields.append(line[start:i])
            start = i + 1
        i += 1
    fields.append(line[start:])
    return fields


def _csv_value(field: bytes, quote: bytes, escape: bytes) -> bytes:
    if len(field) >= 2 and field[:1] == quote and field[-1:] == quote:
        return field[1:-1].replace(escape + quote, quote)
    return field
