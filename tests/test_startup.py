"""Startup parameters: the allow-list, the pinned settings, ``options`` as PostgreSQL reads it."""

from __future__ import annotations

import pytest

from steward_proxy.startup import (
    ALLOWED,
    PINNED,
    StartupRefused,
    check_pinned,
    invalid_utf8_parameter,
    split_options,
    upstream_parameters,
)

PIN = dict(PINNED)
WHO = {"user": "alice", "database": "orders"}

ACCEPTED = [
    pytest.param({}, PIN, id="user and database alone send only the pinned settings"),
    pytest.param(
        {"application_name": "billing", "DateStyle": "ISO, MDY", "TimeZone": "UTC"},
        {"application_name": "billing", "datestyle": "ISO, MDY", "timezone": "UTC", **PIN},
        id="harmless settings pass under their lower-case names",
    ),
    pytest.param(
        {"client_encoding": "'utf-8'"}, PIN, id="asyncpg's quoted utf-8 is UTF8 and is pinned"
    ),
    pytest.param({"client_encoding": "UTF8"}, PIN, id="libpq's UTF8 is accepted"),
    pytest.param({"client_encoding": "utf_8"}, PIN, id="utf_8 is UTF8"),
    pytest.param({"client_encoding": "Unicode"}, PIN, id="unicode is PostgreSQL's alias"),
    pytest.param({"client_encoding": "SQL_ASCII"}, PIN, id="psql in a C locale asks SQL_ASCII"),
    pytest.param(
        {"client_encoding": "utf8\u0130"},
        PIN,
        id="non-ASCII is ignored as clean_encoding_name does",
    ),
    pytest.param({"Client_Encoding": "UTF8"}, PIN, id="setting names ignore case"),
    pytest.param({"standard_conforming_strings": "on"}, PIN, id="scs on is accepted"),
    pytest.param({"standard_conforming_strings": "TRUE"}, PIN, id="scs TRUE is on"),
    pytest.param({"standard_conforming_strings": "t"}, PIN, id="scs t is on"),
    pytest.param({"standard_conforming_strings": "ye"}, PIN, id="scs ye is on"),
    pytest.param({"standard_conforming_strings": "1"}, PIN, id="scs 1 is on"),
    pytest.param(
        {"options": "-c search_path=app"},
        {"search_path": "app", **PIN},
        id="options -c name=value becomes a plain parameter",
    ),
    pytest.param(
        {"options": "-csearch_path=app"},
        {"search_path": "app", **PIN},
        id="options -cname=value is the same",
    ),
    pytest.param(
        {"options": "--statement-timeout=5s"},
        {"statement_timeout": "5s", **PIN},
        id="options --name=value maps - to _ in the name",
    ),
    pytest.param(
        {"options": "-c search-path=app"},
        {"search_path": "app", **PIN},
        id="options -c maps - to _ in the name too",
    ),
    pytest.param(
        {"options": r"-c search_path=my\ schema,public  -c lock_timeout=1s"},
        {"search_path": "my schema,public", "lock_timeout": "1s", **PIN},
        id="a backslash keeps a space inside one option",
    ),
    pytest.param(
        {"options": "-c\tsearch_path=app\n"},
        {"search_path": "app", **PIN},
        id="tabs and newlines separate options",
    ),
    pytest.param(
        {"options": "-c client_encoding=UTF8 -c standard_conforming_strings=on"},
        PIN,
        id="options may repeat the pinned values",
    ),
    pytest.param(
        {"options": "-c search_path=a", "search_path": "b"},
        {"search_path": "b", **PIN},
        id="a parameter overrides options as in PostgreSQL",
    ),
    pytest.param({"options": "   "}, PIN, id="empty options are nothing"),
    pytest.param(
        {"options": r"-c search_path=x\ -c\ role=postgres"},
        {"search_path": "x -c role=postgres", **PIN},
        id="escaped spaces keep -c role inside a search_path value",
    ),
    pytest.param(
        {"_pq_.compression": "on", "replication": "false"},
        PIN,
        id="protocol extensions and replication are left to the caller",
    ),
    pytest.param(
        {"search_path": "", "extra_float_digits": "3", "IntervalStyle": "iso_8601"},
        {"search_path": "", "extra_float_digits": "3", "intervalstyle": "iso_8601", **PIN},
        id="pgjdbc's settings pass",
    ),
    pytest.param(
        {
            "statement_timeout": "0",
            "lock_timeout": "0",
            "idle_in_transaction_session_timeout": "0",
        },
        {
            "statement_timeout": "0",
            "lock_timeout": "0",
            "idle_in_transaction_session_timeout": "0",
            **PIN,
        },
        id="node-postgres timeouts pass",
    ),
    pytest.param(
        {"application_name": "アプリ 🚀 e\u0301"},
        {"application_name": "アプリ 🚀 e\u0301", **PIN},
        id="non-ASCII application_name passes untouched",
    ),
]


@pytest.mark.parametrize(("client", "upstream"), ACCEPTED)
def test_accepted_parameters(client: dict[str, str], upstream: dict[str, str]) -> None:
    result = upstream_parameters({**WHO, **client})
    assert result == upstream
    assert list(result)[-2:] == list(PINNED), "the pinned settings go last"


ENCODINGS = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"]

REFUSED = [
    *(
        pytest.param({"client_encoding": enc}, f'client_encoding "{enc}"', id=f"{enc} is refused")
        for enc in ENCODINGS
    ),
    *(
        pytest.param(
            {"options": f"-c client_encoding={enc}"},
            f'client_encoding "{enc}" in startup parameter "options"',
            id=f"{enc} in options -c is refused",
        )
        for enc in ENCODINGS
    ),
    *(
        pytest.param(
            {"options": f"--client-encoding={enc}"},
            f'client_encoding "{enc}" in startup parameter "options"',
            id=f"{enc} in options --client-encoding is refused",
        )
        for enc in ENCODINGS
    ),
    pytest.param({"client_encoding": "LATIN1"}, "LATIN1", id="LATIN1 is refused"),
    pytest.param({"client_encoding": ""}, 'client_encoding ""', id="an empty encoding"),
    pytest.param({"client_encoding": "utf16"}, "utf16", id="utf16 is not utf8"),
    pytest.param(
        {"standard_conforming_strings": "off"},
        'standard_conforming_strings "off"',
        id="scs off is refused",
    ),
    pytest.param({"standard_conforming_strings": "o"}, '"o"', id="scs o is ambiguous"),
    pytest.param({"standard_conforming_strings": "no"}, '"no"', id="scs no is refused"),
    pytest.param({"standard_conforming_strings": "0"}, '"0"', id="scs 0 is refused"),
    pytest.param({"standard_conforming_strings": "onn"}, '"onn"', id="scs onn is invalid"),
    pytest.param({"standard_conforming_strings": "truee"}, '"truee"', id="scs truee is invalid"),
    pytest.param({"standard_conforming_strings": ""}, '""', id="scs empty is invalid"),
    pytest.param(
        {"options": "-c standard_conforming_strings=off"},
        'standard_conforming_strings "off" in startup parameter "options"',
        id="scs off in options is refused",
    ),
    pytest.param(
        {"options": "-c role=pg_read_server_files"},
        'setting "role" in startup parameter "options" ("-c role=pg_read_server_files")',
        id="role in options is refused",
    ),
    pytest.param({"role": "postgres"}, 'startup parameter "role"', id="role is refused"),
    pytest.param(
        {"options": "--session-authorization=postgres"},
        'setting "session_authorization"',
        id="session_authorization in options is refused",
    ),
    pytest.param(
        {"default_transaction_read_only": "off"},
        '"default_transaction_read_only"',
        id="default_transaction_read_only is refused",
    ),
    pytest.param({"lc_messages": "C"}, '"lc_messages"', id="lc_messages is refused"),
    pytest.param(
        {"options": "-c lc_monetary=C"}, 'setting "lc_monetary"', id="lc_* in options is refused"
    ),
    pytest.param({"backslash_quote": "on"}, '"backslash_quote"', id="backslash_quote"),
    pytest.param({"geqo": "off"}, '"geqo"', id="an unknown parameter is refused"),
    pytest.param({"Options": "-c x=y"}, '"Options"', id="Options is a setting, not options"),
    pytest.param({"User": "bob"}, '"User"', id="User is a setting, not user"),
    pytest.param({"my.custom": "x"}, '"my.custom"', id="a custom placeholder is refused"),
    pytest.param({"options": "-E"}, 'option "-E"', id="another switch is refused"),
    pytest.param({"options": "-d 5"}, 'option "-d"', id="a debug switch is refused"),
    pytest.param({"options": "-Ec x=y"}, 'option "-Ec"', id="clustered switches are refused"),
    pytest.param({"options": "search_path=x"}, 'option "search_path=x"', id="a bare argument"),
    pytest.param({"options": "--"}, 'option "--"', id="a bare -- is refused"),
    pytest.param({"options": "-c"}, '"-c" in startup parameter "options" needs', id="-c alone"),
    pytest.param({"options": "-c search_path"}, "needs a value", id="-c name without a value"),
    pytest.param({"options": "--search_path"}, "needs a value", id="--name without a value"),
    pytest.param(
        {"options": r"-c search_path=x -c\ role=postgres"},
        'setting " role"',
        id="an escaped space makes -c role a setting named space-role",
    ),
    pytest.param(
        {"options": "-c search_path=x -c role=postgres"},
        'setting "role"',
        id="the second option is judged too",
    ),
    pytest.param({"role\n": "x"}, r'startup parameter "role\x0a"', id="a refused name is escaped"),
    pytest.param(
        {"client_encoding": "SJIS\x1b[2J"},
        r'client_encoding "SJIS\x1b[2J"',
        id="a refused value is escaped",
    ),
]


@pytest.mark.parametrize(("client", "named"), REFUSED)
def test_refused_parameters(client: dict[str, str], named: str) -> None:
    with pytest.raises(StartupRefused) as refused:
        upstream_parameters({**WHO, **client})
    assert refused.value.sqlstate == "08004"
    assert named in refused.value.message
    assert "\n" not in refused.value.message and "\x1b" not in refused.value.message


def test_refusal_of_a_setting_lists_what_is_allowed() -> None:
    with pytest.raises(StartupRefused) as refused:
        upstream_parameters({"role": "postgres"})
    assert refused.value.hint is not None
    assert "application_name" in refused.value.hint and "search_path" in refused.value.hint


def test_every_allowed_setting_passes_and_pinned_ones_are_replaced() -> None:
    client = {name: "0" for name in ALLOWED - set(PINNED)}
    assert upstream_parameters(client) == {**client, **PIN}


@pytest.mark.parametrize(
    ("options", "args"),
    [
        pytest.param("", [], id="nothing"),
        pytest.param("  -c  a=b  ", ["-c", "a=b"], id="runs of spaces separate"),
        pytest.param(r"-c a=b\ c", ["-c", "a=b c"], id="escaped space joins"),
        pytest.param(r"a\\b", ["a\\b"], id="escaped backslash is one backslash"),
        pytest.param(r"a\b", ["ab"], id="backslash before a letter vanishes"),
        pytest.param("a\\", ["a"], id="trailing backslash vanishes"),
        pytest.param("a\\\tb", ["a\tb"], id="escaped tab joins"),
        pytest.param("a\u00a0b", ["a\u00a0b"], id="no-break space is not a separator"),
        pytest.param("a\x0bb\x0cc\rd", ["a", "b", "c", "d"], id="vt ff cr separate"),
    ],
)
def test_split_options_as_pg_split_opts(options: str, args: list[str]) -> None:
    assert split_options(options) == args


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        pytest.param(
            {"client_encoding": "UTF8", "standard_conforming_strings": "on"}, None, id="pinned"
        ),
        pytest.param(
            {"client_encoding": "SJIS", "standard_conforming_strings": "on"},
            'client_encoding "SJIS"',
            id="another encoding breaks the pin",
        ),
        pytest.param(
            {"client_encoding": "UTF8", "standard_conforming_strings": "off"},
            'standard_conforming_strings "off"',
            id="scs off breaks the pin",
        ),
        pytest.param(
            {"client_encoding": "UTF8"},
            "standard_conforming_strings nothing",
            id="a missing report breaks the pin",
        ),
    ],
)
def test_check_pinned(status: dict[str, str], reason: str | None) -> None:
    found = check_pinned(status)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        pytest.param({"user": "alice", "database": "d"}, None, id="valid UTF-8"),
        pytest.param({"user": "ユーザー👩\u200d💻"}, None, id="non-ASCII UTF-8 is valid"),
        pytest.param({"user": b"al\xffice".decode("utf-8", "surrogateescape")}, "user", id="user"),
        pytest.param(
            {"user": "a", "database": b"\xc3(".decode("utf-8", "surrogateescape")},
            "database",
            id="database",
        ),
        pytest.param(
            {"user": "a", b"app\xfe".decode("utf-8", "surrogateescape"): "x"},
            r"app\xfe",
            id="a parameter name, escaped",
        ),
    ],
)
def test_invalid_utf8_parameter(parameters: dict[str, str], named: str | None) -> None:
    assert invalid_utf8_parameter(parameters) == named
