"""Startup parameters: what a client may ask of its upstream session, and what is pinned.

Steward parses every statement as UTF-8 with ``standard_conforming_strings``
on. A client that could choose another ``client_encoding`` (SJIS, BIG5, GBK,
UHC, GB18030, JOHAB hide a backslash or quote inside a double-byte character)
or turn ``standard_conforming_strings`` off would make the server read a
statement differently from the proxy, and a ``role`` in ``options`` would run
it with other privileges. So sign-in parameters pass upstream only from an
allow-list (:data:`ALLOWED`), and the two settings the parse depends on are
pinned (:data:`PINNED`) whatever the client asked.

:func:`upstream_parameters` reads the client's parameters as PostgreSQL does:

- ``user``, ``database``, ``replication`` and ``_pq_.*`` protocol extensions
  are the caller's business and are skipped (PostgreSQL matches these names
  exactly; any other name is a setting, matched case-insensitively in ASCII);
- ``options`` is split as ``pg_split_opts`` splits it (ASCII whitespace
  separates arguments, a backslash takes the next character literally) and
  read as ``process_postgres_switches`` reads it, accepting only ``-c
  name=value``, ``-cname=value`` and ``--name=value`` (``-`` in the name
  becomes ``_``, as ``ParseLongOption`` does);
- every setting must be on :data:`ALLOWED`; ``client_encoding`` must name UTF8
  (PostgreSQL ignores case and non-alphanumerics: ``utf-8``, ``'UTF8'``,
  ``unicode``) or SQL_ASCII (what psql asks for in a C locale; the server reads
  such bytes as UTF-8 too), and ``standard_conforming_strings`` must be true in
  one of PostgreSQL's boolean spellings.

Accepted settings go upstream as plain startup parameters (PostgreSQL applies
``options`` first, then the other parameters in order; the result keeps that
order, so the last value wins as it would have). Anything else raises
:class:`StartupRefused` (08004) naming the parameter. :func:`check_pinned`
then checks what the upstream reported.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from steward_proxy.escape import escape, has_invalid_utf8
from steward_proxy.policy.pinned import (
    PINNED_PARAMETERS,
    ascii_lower,
    clean_encoding_name,
    is_on,
    is_utf8,
)
from steward_proxy.sqlstate import CONNECTION_REJECTED

__all__ = [
    "ALLOWED",
    "PINNED",
    "StartupRefused",
    "check_pinned",
    "invalid_utf8_parameter",
    "split_options",
    "upstream_parameters",
]


PINNED: Mapping[str, str] = PINNED_PARAMETERS
"""Sent upstream on every sign-in, and required in the upstream's ParameterStatus."""

ALLOWED: frozenset[str] = frozenset(
    {
        # What PostgreSQL's own documentation and the major drivers send:
        # libpq (application_name, datestyle and timezone from PGDATESTYLE/PGTZ),
        # pgjdbc (DateStyle, TimeZone, extra_float_digits, search_path),
        # node-postgres (statement_timeout, lock_timeout,
        # idle_in_transaction_session_timeout), lib/pq and pgx (any of these).
        "application_name",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "bytea_output",
        "client_min_messages",
        # Checked, then pinned.
        *PINNED,
    }
)
"""Settings a client may give at sign-in (lower case; names match case-insensitively)."""

DECIDED_BY_PROXY = frozenset({"user", "database", "replication"})
PROTOCOL_EXTENSION_PREFIX = "_pq_."

_SPACE = " \t\n\v\f\r"  # isspace() in the C locale, which pg_split_opts uses


class StartupRefused(Exception):
    """The client's startup parameters are refused with this SQLSTATE and message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = CONNECTION_REJECTED
        self.message = message
        self.hint = hint


def _allowed_hint() -> str:
    return (
        "Steward passes only these settings upstream: "
        + ", ".join(sorted(ALLOWED - set(PINNED)))
        + "; client_encoding must be UTF8 and standard_conforming_strings on."
    )


def _is_utf8(value: str) -> bool:
    # SQL_ASCII too: the upstream is pinned to UTF8 whatever the client asks, and
    # a UTF8 server reads a SQL_ASCII client's bytes as UTF-8, as the proxy does.
    return is_utf8(value) or clean_encoding_name(value) == "sqlascii"


def split_options(options: str) -> list[str]:
    """``options`` split into arguments exactly as PostgreSQL's ``pg_split_opts`` does."""
    args: list[str] = []
    pos, end = 0, len(options)
    while pos < end:
        while pos < end and options[pos] in _SPACE:
            pos += 1
        if pos == end:
            break
        arg: list[str] = []
        escaped = False
        while pos < end:
            char = options[pos]
            if char in _SPACE and not escaped:
                break
            if not escaped and char == "\\":
                escaped = True
            else:
                escaped = False
                arg.append(char)
            pos += 1
        args.append("".join(arg))
    return args


def _option_settings(options: str) -> Iterator[tuple[str, str, str]]:
    """``(name, value, as written)`` for each setting in ``options``; refuses anything else."""
    args = split_options(options)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-c":
            index += 1
            if index == len(args):
                raise StartupRefused('"-c" in startup parameter "options" needs name=value')
            body, written = args[index], f"-c {args[index]}"
        elif arg.startswith("-c") or (arg.startswith("--") and arg != "--"):
            body, written = arg[2:], arg
        else:
            raise StartupRefused(
                f'option "{escape(arg)}" in startup parameter "options" is not allowed '
                "through Steward: only -c name=value and --name=value are",
                hint=_allowed_hint(),
            )
        name, equals, value = body.partition("=")
        if not equals:
            raise StartupRefused(
                f'option "{escape(written)}" in startup parameter "options" needs a value'
            )
        yield name.replace("-", "_"), value, written
        index += 1


def _judge(name: str, value: str, option: str | None) -> str:
    """The setting's canonical (lower-case) name, or a refusal naming it.

    ``option`` is the argument of ``options`` that gave the setting, if it came from there.
    """
    canonical = ascii_lower(name)
    where = f' in startup parameter "options" ("{escape(option)}")' if option else ""
    if canonical not in ALLOWED:
        what = f'setting "{escape(name)}"' if option else f'startup parameter "{escape(name)}"'
        raise StartupRefused(
            f"{what}{where} is not allowed through Steward",
            hint=_allowed_hint(),
        )
    if canonical == "client_encoding" and not _is_utf8(value):
        raise StartupRefused(
            f'client_encoding "{escape(value)}"{where} is not allowed through Steward: '
            "it reads every statement as UTF8",
            hint="Connect with client_encoding=UTF8.",
        )
    if canonical == "standard_conforming_strings" and not is_on(value):
        raise StartupRefused(
            f'standard_conforming_strings "{escape(value)}"{where} is not allowed through '
            "Steward: it reads every statement with standard_conforming_strings on",
            hint="Leave standard_conforming_strings on.",
        )
    return canonical


def upstream_parameters(client: Mapping[str, str]) -> dict[str, str]:
    """The settings to send upstream for ``client``'s startup parameters, pinned ones last.

    The result holds neither ``user`` nor ``database``: the caller adds its own.
    Raises :class:`StartupRefused` for the first parameter that is not allowed.
    """
    settings: dict[str, str] = {}
    options = client.get("options")
    if options is not None:
        for name, value, written in _option_settings(options):
            settings[_judge(name, value, written)] = value
    for key, value in client.items():
        if key in DECIDED_BY_PROXY or key == "options":
            continue
        if key.startswith(PROTOCOL_EXTENSION_PREFIX):
            continue
        settings[_judge(key, value, None)] = value
    for name in PINNED:
        settings.pop(name, None)
    settings.update(PINNED)
    return settings


def check_pinned(status: Mapping[str, str]) -> str | None:
    """Why the upstream's reported parameters break the pin, or None when they hold it."""
    for name, expected in PINNED.items():
        reported = status.get(name)
        if reported != expected:
            shown = "nothing" if reported is None else f'"{escape(reported)}"'
            return f"the upstream reported {name} {shown}, not {expected}"
    return None


def invalid_utf8_parameter(parameters: Mapping[str, str]) -> str | None:
    """The (escaped) name of the first startup parameter whose name or value is not UTF-8."""
    for key, value in parameters.items():
        if has_invalid_utf8(key) or has_invalid_utf8(value):
            return escape(key)
    return None
