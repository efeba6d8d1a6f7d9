"""Text a client supplied, made safe for one log line or one audit field.

:func:`escape` turns whatever a client sent (a user or database name, an
application_name, a startup parameter) into printable text that cannot start a
new log line, move the cursor, reorder a line on screen, or fail to encode:

- control characters (C0, DEL, C1), line and paragraph separators (U+2028,
  U+2029) and the bidirectional embedding, override and isolate controls become
  ``\\xNN`` (C0 and DEL) or ``\\uNNNN`` (the rest);
- bytes that were not valid UTF-8, which the wire codec keeps as lone
  surrogates (``surrogateescape``), become ``\\xNN`` of the original byte (always
  0x80 or more, so never confused with an escaped C0 character);
- a backslash becomes ``\\\\``, so the escaping is unambiguous;
- the result is cut at ``limit`` characters, ending in ``…`` when something was
  left off.

Everything else, Japanese, emoji with joiners, combining marks, passes unchanged.
Pure: no I/O.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LIMIT", "escape", "has_controls", "has_invalid_utf8"]

DEFAULT_LIMIT = 256
"""Characters of escaped text kept, ellipsis included."""

ELLIPSIS = "…"

_BIDI_CONTROLS = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
        return f"\\x{code - 0xDC00:02x}"
    if 0x80 <= code <= 0x9F or code in (0x2028, 0x2029) or code in _BIDI_CONTROLS:
        return f"\\u{code:04x}"
    if 0xD800 <= code <= 0xDFFF:  # any other lone surrogate
        return f"\\u{code:04x}"
    return char


def escape(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` as one printable, encodable, unambiguous line of at most ``limit`` chars."""
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = _escape_char(char)
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            break
    else:
        return "".join(pieces)
    room = max(limit - len(ELLIPSIS), 0)
    while pieces and size > room:
        size -= len(pieces.pop())
    return "".join(pieces) + ELLIPSIS


def has_invalid_utf8(text: str) -> bool:
    """Whether ``text`` holds bytes that were not valid UTF-8 (kept as lone surrogates)."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def has_controls(text: str) -> bool:
    """Whether :func:`escape` would change ``text`` for anything but a backslash or its length."""
    return any(c != "\\" and _escape_char(c) != c for c in text)
