"""Statement shape: literals replaced, comments dropped, fingerprints, splitting.

Everything here goes through libpg_query (via pglast), i.e. PostgreSQL's own
scanner and grammar, never through regular expressions: a literal is whatever
PostgreSQL would read as a constant, however it is quoted.

``normalize`` is on the proxy's hot path (called once per statement string);
it costs one ``pglast.parser.normalize`` call plus a few substring checks.
Comments are removed from the normalized text because they can carry raw
values and per-request noise (trace ids), which would both leak into the audit
trail and defeat the shape cache. It keeps the constants PostgreSQL's normalizer
keeps (utility statements: ``PREPARE``, ``COMMENT``, DDL, ``DO`` bodies, ...).

``scrub`` is what goes into the audit trail: every constant token the scanner
reports (``SCONST``, ``USCONST``, ``BCONST``, ``XCONST``, ``ICONST``,
``FCONST``), in every statement type, becomes ``$n``. It costs one scan, linear
in the text. ``shape_fingerprint`` hashes scrubbed text, so it cannot depend on
a literal's value either.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

from pglast import parser as _pg

from steward_proxy.sql.errors import SQLSyntaxError

__all__ = [
    "fingerprint",
    "normalize",
    "scrub",
    "scrub_parts",
    "shape_fingerprint",
    "split_statements",
    "syntax_error",
]

_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_CONSTANT_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"})
_CONSTANTS_AND_PARAMS = _CONSTANT_TOKENS | {"PARAM"}
_PG_SPACE = " \t\n\r\f\v"  # what PostgreSQL's scanner takes for whitespace


class _Token(Protocol):
    """One token of ``pglast.parser.scan``: character offsets, ``end`` inclusive."""

    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def name(self) -> str: ...


def syntax_error(exc: Exception, sql: str) -> SQLSyntaxError:
    """Convert an error raised by pglast for ``sql`` into a :class:`SQLSyntaxError`."""
    if isinstance(exc, _pg.ParseError):
        message = str(exc.args[0]) if exc.args else "syntax error"
        location = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(location, int) and location >= 0:
            return SQLSyntaxError(message, location + 1)
        if message.endswith("at end of input"):
            # PostgreSQL points just past the last character.
            return SQLSyntaxError(message, len(sql) + 1)
        return SQLSyntaxError(message)
    if isinstance(exc, UnicodeError):
        position = getattr(exc, "start", None)
        return SQLSyntaxError(
            "invalid character in statement", position + 1 if position is not None else None
        )
    return SQLSyntaxError(f"statement cannot be analysed: {exc}")


def _check_nul(sql: str) -> None:
    # libpg_query reads a C string: text after a NUL would silently vanish from the analysis.
    index = sql.find("\x00")
    if index >= 0:
        raise SQLSyntaxError("invalid message format: statement contains a NUL byte", index + 1)


def _strip_comments(text: str) -> str:
    """Replace each comment and the whitespace around it by one space."""
    return _rewrite(text, list(_pg.scan(text)))


def normalize(sql: str) -> str:
    """Return ``sql`` with every constant replaced by ``$n`` and comments removed.

    Parameters already present (``$1`` from an extended-protocol Parse) are kept;
    new ones are numbered after the highest existing one, across the whole string.
    Leading and trailing whitespace is dropped. Constants that PostgreSQL's
    normalizer deliberately keeps (type modifiers, most utility-statement options
    such as ``COPY ... FROM 'file'`` or ``COMMENT ... IS 'text'``) stay as written.

    Raises :class:`SQLSyntaxError` for SQL that does not parse.
    """
    _check_nul(sql)
    try:
        text = _pg.normalize(sql)
    except (_pg.ParseError, UnicodeError) as exc:
        raise syntax_error(exc, sql) from None
    if "--" in text or "/*" in text:
        text = _strip_comments(text)
    return text.strip()


def fingerprint(sql: str) -> str:
    """Return libpg_query's fingerprint of ``sql`` (hex); constants do not change it."""
    _check_nul(sql)
    try:
        return _pg.fingerprint(sql)
    except (_pg.ParseError, UnicodeError) as exc:
        raise syntax_error(exc, sql) from None


def _scan(sql: str) -> list[_Token]:
    _check_nul(sql)
    try:
        return list(_pg.scan(sql))
    except (_pg.ParseError, UnicodeError) as exc:
        raise syntax_error(exc, sql) from None


def _word_char(char: str) -> bool:
    """Whether ``char`` may continue an identifier or a number (so ``$n`` must not touch it)."""
    return char.isalnum() or char in "_$" or ord(char) > 127


def _rewrite(
    text: str,
    tokens: list[_Token],
    targets: frozenset[str] = frozenset(),
    replace: Callable[[], str] = str,
) -> str:
    """Drop comments (with the whitespace around them) and replace tokens.

    Each token whose name is in ``targets`` becomes ``replace()``; a replacement
    never touches a neighbouring word.
    """
    pieces: list[str] = []  # only non-empty strings
    last = 0
    pending_space = False  # a dropped comment separated what comes next
    for token in tokens:
        name = token.name
        if name in targets:
            if pending_space and pieces:
                pieces.append(" ")
            pending_space = False
            if token.start > last:
                pieces.append(text[last : token.start])
            if pieces and _word_char(pieces[-1][-1]):
                pieces.append(" ")
            pieces.append(replace())
            last = token.end + 1
            if last < len(text) and _word_char(text[last]):
                pieces.append(" ")
        elif name in _COMMENT_TOKENS:
            before = text[last : token.start].rstrip(_PG_SPACE)
            if before:
                if pending_space and pieces:
                    pieces.append(" ")
                pieces.append(before)
            pending_space = True
            last = token.end + 1
            while last < len(text) and text[last] in _PG_SPACE:
                last += 1
    rest = text[last:]
    if rest:
        if pending_space and pieces:
            pieces.append(" ")
        pieces.append(rest)
    return "".join(pieces).strip(_PG_SPACE)


class _Numbering:
    """Gives the next ``$n`` at each call."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        self.last = last

    def __call__(self) -> str:
        self.last += 1
        return f"${self.last}"


def _highest_param(tokens: list[_Token], text: str) -> int:
    if "$" not in text:
        return 0
    # The scanner refuses parameter numbers beyond PostgreSQL's int range.
    return max((int(text[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"), default=0)


def scrub(sql: str) -> str:
    """Return ``sql`` with every constant token replaced by ``$n`` and comments removed.

    Unlike :func:`normalize` this replaces constants in every statement type
    (utility statements, ``DO`` and function bodies, ``COMMENT ... IS``, ``COPY``
    options, type modifiers), which is what the audit trail needs. Parameters
    already present are kept; new ones are numbered after the highest existing
    one. Raises :class:`SQLSyntaxError` for text PostgreSQL's scanner refuses.
    """
    return scrub_parts([sql])[0]


def scrub_parts(parts: Sequence[str]) -> list[str]:
    """:func:`scrub` the statements of one string, numbering ``$n`` across all of them."""
    scanned = [(part, _scan(part)) for part in parts]
    numbering = _Numbering(max((_highest_param(t, part) for part, t in scanned), default=0))
    return [_rewrite(part, tokens, _CONSTANT_TOKENS, numbering) for part, tokens in scanned]


def shape_fingerprint(scrubbed: str) -> str:
    """Fingerprint (16 hex digits) of text that :func:`scrub` produced.

    libpg_query's fingerprint where the text parses (it ignores ``$n`` numbers and
    formatting, and equals the fingerprint of the unscrubbed statement for plain
    DML); where it does not (``COMMENT ... IS $1``, ``DO $1``), a BLAKE2b hash
    of the text with every constant and parameter written ``?``. Either way it
    is computed from text that holds no literal, so no value can be guessed from it.
    """
    try:
        return _pg.fingerprint(scrubbed)
    except (_pg.ParseError, UnicodeError):
        pass
    try:
        text = _rewrite(scrubbed, _scan(scrubbed), _CONSTANTS_AND_PARAMS, lambda: "?")
    except SQLSyntaxError:
        text = scrubbed
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def split_statements(sql: str) -> list[str]:
    """Split a multi-statement string into the text of each statement.

    Uses PostgreSQL's grammar, so semicolons inside strings, dollar quotes and
    ``BEGIN ATOMIC ... END`` bodies do not split. Surrounding whitespace and the
    terminating semicolons are dropped; an empty or comment-only string gives ``[]``.
    """
    _check_nul(sql)
    try:
        return list(_pg.split(sql, with_parser=True))
    except (_pg.ParseError, UnicodeError) as exc:
        raise syntax_error(exc, sql) from None
