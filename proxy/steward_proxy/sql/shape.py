"""Statement shape: literals replaced, comments dropped, fingerprints, splitting.

Everything here goes through libpg_query (via pglast), i.e. PostgreSQL's own
scanner and grammar, never through regular expressions: a literal is whatever
PostgreSQL would read as a constant, however it is quoted.

``normalize`` is on the proxy's hot path (called once per statement string);
it costs one ``pglast.parser.normalize`` call plus a few substring checks.
Comments are removed from the normalized text because they can carry raw
values and per-request noise (trace ids), which would both leak into the audit
trail and defeat the shape cache.

Pure: no I/O.
"""

from __future__ import annotations

from pglast import parser as _pg

from steward_proxy.sql.errors import SQLSyntaxError

__all__ = ["fingerprint", "normalize", "split_statements", "syntax_error"]

_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_PG_SPACE = " \t\n\r\f\v"  # what PostgreSQL's scanner takes for whitespace


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
    pieces: list[str] = []
    last = 0
    for token in _pg.scan(text):
        if token.name not in _COMMENT_TOKENS:
            continue
        before = text[last : token.start].rstrip(_PG_SPACE)
        if before:
            pieces.append(before)
            pieces.append(" ")
        last = token.end + 1
        while last < len(text) and text[last] in _PG_SPACE:
            last += 1
    if last == 0:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


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
