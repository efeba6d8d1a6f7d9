"""Settings Steward pins on every session, and statements that would change them.

The proxy reads every statement as UTF-8 with ``standard_conforming_strings``
on, and signs in upstream with both set. A session whose server read statements
under another client encoding (SJIS, BIG5, GBK, UHC, GB18030 and JOHAB let a
multi-byte character swallow a backslash) or with backslash escapes in plain
strings would run text the proxy never judged. Changing the role or the session
authorization would run it with privileges the upstream sign-in did not give.
So any statement that changes one of these, in any form the parse tree shows,
is refused whatever the policy says. What the tree cannot show (a function or
DO block that changes a setting) the session catches from the server's
ParameterStatus report.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "PINNED_PARAMETERS",
    "ascii_lower",
    "clean_encoding_name",
    "is_on",
    "is_utf8",
    "pinned_violation",
]

# What the proxy asks for at sign-in and expects the server to report.
PINNED_PARAMETERS: dict[str, str] = {
    "client_encoding": "UTF8",
    "standard_conforming_strings": "on",
}
_PRIVILEGE = ("role", "session_authorization")


def ascii_lower(name: str) -> str:
    """``name`` with A-Z folded, as PostgreSQL folds names (not e.g. KELVIN SIGN)."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


def clean_encoding_name(name: str) -> str:
    """An encoding name as PostgreSQL looks it up: ASCII alphanumerics, lower case."""
    return ascii_lower("".join(c for c in name if c.isascii() and c.isalnum()))


def is_utf8(name: str) -> bool:
    """Whether PostgreSQL reads encoding ``name`` as UTF8."""
    return clean_encoding_name(name) in ("utf8", "unicode")


def is_on(value: str) -> bool:
    """PostgreSQL's ``parse_bool`` reading ``value`` as true (prefixes of true/yes, on, 1)."""
    lowered = ascii_lower(value)
    if lowered[:1] == "t":
        return "true".startswith(lowered)
    if lowered[:1] == "y":
        return "yes".startswith(lowered)
    return lowered in ("on", "1")


def pinned_violation(settings: Iterable[tuple[str, str | None]]) -> str | None:
    """Why changing these ``(name, value)`` settings is refused, or None if it is not."""
    for name, value in settings:
        if not name:
            return "set_config() with a parameter name that is not a constant"
        if name == "client_encoding" and (value is None or not is_utf8(value)):
            return "client_encoding is pinned to UTF8"
        if name == "standard_conforming_strings" and (value is None or not is_on(value)):
            return "standard_conforming_strings is pinned to on"
        if name in _PRIVILEGE:
            return f"{name} cannot be changed through Steward"
    return None
