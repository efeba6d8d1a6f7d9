"""The source of a row filter specialized to one plan's shape.

A plan's shape is, per result column, what the filter does with it: ``keep``
it, ``call`` its masker on the value, call it only when the value passes a
screen (``screened``: detection, whose masker gives most values back as they
are) or write a ``constant`` field instead (``****``, NULL). :func:`source`
writes a function that walks each DataRow of a run column by column in
straight-line code for that shape: no loop over the plan per row, no test of
what a column's step is. Per row it reads the lengths up to the last masked
column (the first with the row's header), computes each masked column's new
field, and adds the row to the output as one tuple: its new header, the kept
bytes between masked fields, the new fields and the kept rest of the row.
Where the lengths do not fit (a row too short to hold a first length, a
value past the end of the data), the rest of the run goes to the general
loop, which masks it or raises the precise error.

Only column numbers and counts reach the source, all of them ints counted
here from the shape: maskers, screens, constants and every byte of the rows
stay values the caller binds by name (``masker_<i>``, ``screen_<i>``, ``constant_<i>``,
``longer_<i>``: how much longer than a length field the constant is).
``rows.row_filter`` compiles it and caches the result per shape.

Pure: no I/O.
"""

from __future__ import annotations

from textwrap import indent
from typing import Literal, get_args

__all__ = ["Kind", "source"]

Kind = Literal["keep", "call", "screened", "constant"]

_START = """\
def make(maskers, constants, longers, screens, looped):
{bind}
    def rewrite(data, start, end):
        parts = []
        pos = start
        try:
            while pos < end:
                length, count, size = head(data, pos + 1)  # and the first value's size
                row_end = pos + 1 + length
                if count != {width}:
                    parts.append(blank(data[pos:row_end], count))
                    pos = row_end
                    continue
                p = pos + 7
"""
_READ = """\
                size = unpack(data, p)[0]
"""
_ADVANCE = """\
                p += 4 + size if size > 0 else 4
"""
_SKIP = _READ + _ADVANCE
_SKIP_MANY = """\
                for _ in range({count}):
                    size = unpack(data, p)[0]
                    p += 4 + size if size > 0 else 4
"""
_MASK = """\
new_{i} = masker_{i}(new_{i})
if new_{i} is None:
    prefix_{i} = NULL
    new_{i} = b""
    length -= size
else:
    n = len(new_{i})
    prefix_{i} = prefixes[n] if n < 256 else pack(n)
    length += n - size
"""
_VALUE = """\
                if size >= 0:
                    value_end = p + 4 + size
                    new_{i} = data[p + 4 : value_end]
"""
_NULL_VALUE = """\
                    p = value_end
                else:
                    prefix_{i} = NULL
                    new_{i} = b""
                    p += 4
"""
_CALL = _VALUE + indent(_MASK, " " * 20) + _NULL_VALUE
_SCREENED = (
    _VALUE
    + "                    if 0 in new_{i}.translate(screen_{i}):\n"
    + indent(_MASK, " " * 24)
    + "                    else:\n"
    + "                        prefix_{i} = prefixes[size] if size < 256 else pack(size)\n"
    + _NULL_VALUE
)
_CONSTANT = """\
                if size >= 0:
                    new_{i} = constant_{i}
                    length += longer_{i} - size
                    p += 4 + size
                else:
                    new_{i} = NULL
                    p += 4
"""
_END = """\
                if p > row_end:
                    raise overrun()
                parts += (
                    headers[length] if length < 1024 else typed(68, length),
{pieces}
                    data[p:row_end],
                )
                pos = row_end
        except struct_error:  # a row too short for the first size, or one that overruns
            parts.append(looped(data, pos, end))
        return b"".join(parts)

    return rewrite
"""


def source(shape: tuple[Kind, ...]) -> str:
    """The module source defining ``make(maskers, constants, longers, screens, looped)``.

    It returns ``rewrite(data, start, end)``, with the contract of
    ``rows.row_filter``'s filters. ``make`` looks each masked column's masker,
    constant, its length less four, and screen up by column number in its
    first four arguments; ``looped`` is the general filter for the same plan.
    A ``screened`` column's masker is called on a value only when its screen
    (a translation table) leaves a NUL byte in it. The source
    refers to names the caller defines: ``head`` (a DataRow's length, column
    count and first size), ``unpack``, ``pack``, ``typed`` (struct functions),
    ``prefixes``, ``headers``, ``NULL``, ``blank(message, count)``,
    ``overrun()`` and ``struct_error``.
    """
    unknown = set(shape) - set(get_args(Kind))
    if unknown:
        raise ValueError(f"not column kinds: {sorted(unknown)}")
    bind: list[str] = []
    body: list[str] = []
    pieces: list[str] = []
    skip = 0  # kept columns not yet stepped over
    kept = "pos + 5"  # where the kept bytes before the next masked field start, if any
    for i, kind in enumerate(shape):
        if kind == "keep":
            if i == 0:
                body.append(_ADVANCE)  # its size came with the row's header
            else:
                skip += 1
            continue
        if kind == "screened" and i and shape[i - 1] == "screened":
            continue  # in the run of screened columns before it
        if skip:
            if kept is None:
                body.append("                kept = p\n")
                kept = "kept"
            body.append(_SKIP * skip if skip <= 3 else _SKIP_MANY.format(count=skip))
            skip = 0
        if kept is not None:
            body.append(f"                gap_{i} = data[{kept} : p]\n")
            pieces.append(f"gap_{i}")
        kept = None
        if kind == "screened":
            run = 1
            while i + run < len(shape) and shape[i + run] == "screened":
                run += 1
            bind += _screened_run(body, i, run)
            pieces.append(f"run_{i}")
            continue
        if i:
            body.append(_READ)
        if kind == "call":
            bind.append(f"    masker_{i} = maskers[{i}]")
            body.append(_CALL.format(i=i))
            pieces += (f"prefix_{i}", f"new_{i}")
        else:
            bind += (f"    constant_{i} = constants[{i}]", f"    longer_{i} = longers[{i}]")
            body.append(_CONSTANT.format(i=i))
            pieces.append(f"new_{i}")
    if not pieces:
        raise ValueError("a shape without a masked column needs no filter")
    start = _START.format(width=len(shape), bind="\n".join(bind))
    end = _END.format(pieces="\n".join(f"                    {piece}," for piece in pieces))
    return start + "".join(body) + end


def _screened_run(body: list[str], first: int, count: int) -> list[str]:
    """Code for ``count`` screened columns from ``first`` on; returns the names it binds.

    The run's fields (lengths and values) are screened at once, by its first
    column's screen (the caller gives the columns of a run one screen): when
    it lets none of their bytes through, they are kept as they are;
    otherwise each value is screened, and masked, on its own.
    """
    columns = range(first, first + count)
    body.append("                run_start = p\n")
    for i in columns:
        body.append((_READ if i else "") + _ADVANCE)
    body.append(f"                run_{first} = data[run_start:p]\n")
    body.append(f"                if 0 in run_{first}.translate(screen_{first}):\n")
    body.append("                    p = run_start\n")
    for i in columns:
        body.append(indent(_READ + _SCREENED.format(i=i), "    "))
    each = ", ".join(f"prefix_{i}, new_{i}" for i in columns)
    body.append(f'                    run_{first} = b"".join(({each}))\n')
    bind = [f"    masker_{i} = maskers[{i}]" for i in columns]
    bind += [f"    screen_{i} = screens[{i}]" for i in columns]
    return bind
