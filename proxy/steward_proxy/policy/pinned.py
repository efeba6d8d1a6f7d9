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

import re
from collections.abc import Iterable

__all__ = [
    "PINNED_PARAMETERS",
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

# PostgreSQL's parse_bool: case-insensitive, unique prefixes of true/yes, and on/1.
_TRUE = frozenset({"on", "1", "t", "tr", "tru", "true", "y", "ye", "yes"})


def is_utf8(name: str) -> bool:
    """Whether PostgreSQL reads encoding ``name`` as UTF8 (it ignores case and punctuation)."""
    return re.sub(r"[^0-9a-z]", "", name.lower()) in ("utf8", "unicode")


def is_on(value: str) -> bool:
    """Whether PostgreSQL reads ``value`` as boolean true."""
    return value.lower() in _TRUE


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
