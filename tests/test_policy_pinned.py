"""Statements that would change a setting Steward pins are refused, whatever the policy.

Each case is real SQL, analysed by :func:`steward_proxy.sql.analyze` and judged by
:func:`steward_proxy.policy.decide` under a policy that allows everything, so only
the pinned-settings rule can refuse it. The second table holds what must still
pass: the pinned values themselves, other settings, ``RESET ALL``.
"""

from __future__ import annotations

import pytest

from steward_proxy.policy import decide
from steward_proxy.policy.pinned import is_on, is_utf8
from steward_proxy.session import Judge
from steward_proxy.sql import analyze

from sessionkit import policies_for

ALLOW_ALL = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: open}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""
POLICIES = policies_for(ALLOW_ALL)
ENCODINGS = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "LATIN1", "SQL_ASCII"]

REFUSED = [
    *(
        pytest.param(f"SET client_encoding = '{e}'", id=f"SET client_encoding {e}")
        for e in ENCODINGS
    ),
    *(pytest.param(f"SET NAMES '{e}'", id=f"SET NAMES {e}") for e in ENCODINGS),
    *(
        pytest.param(f"SELECT set_config('client_encoding', '{e}', false)", id=f"set_config {e}")
        for e in ENCODINGS
    ),
    pytest.param("SET LOCAL client_encoding TO sjis", id="SET LOCAL"),
    pytest.param("SET SESSION client_encoding = 'SJIS'", id="SET SESSION"),
    pytest.param("SET Client_Encoding = 'SJIS'", id="a parameter name in mixed case"),
    pytest.param("SET client_encoding TO DEFAULT", id="SET TO DEFAULT"),
    pytest.param("RESET client_encoding", id="RESET client_encoding"),
    pytest.param("SET client_encoding = 'UTF8', 'SJIS'", id="a list of values"),
    pytest.param("SELECT 1; SET NAMES 'GBK'; SELECT 2", id="inside a multi-statement string"),
    pytest.param(
        "SELECT pg_catalog.set_config('CLIENT_ENCODING'::text, 'BIG5'::text, true)",
        id="set_config schema-qualified, upper case, with casts",
    ),
    pytest.param(
        "SELECT * FROM set_config('client_encoding', 'SJIS', false)", id="set_config in FROM"
    ),
    pytest.param(
        "WITH x AS (SELECT set_config('client_encoding', 'UHC', false)) SELECT * FROM x",
        id="set_config in a CTE",
    ),
    pytest.param(
        "SELECT (SELECT set_config('client_encoding', 'JOHAB', false))",
        id="set_config in a scalar subquery",
    ),
    pytest.param(
        "SELECT set_config(lower('CLIENT_ENCODING'), 'SJIS', false)",
        id="set_config of a computed name",
    ),
    pytest.param(
        "SELECT set_config(name, 'SJIS', false) FROM pg_settings",
        id="set_config of a column",
    ),
    pytest.param(
        "SELECT set_config('client_encoding', current_setting('x.y'), false)",
        id="set_config of a computed value",
    ),
    pytest.param("SET standard_conforming_strings = off", id="scs off"),
    pytest.param("SET standard_conforming_strings TO false", id="scs false"),
    pytest.param("SET standard_conforming_strings = 0", id="scs 0"),
    pytest.param("SET standard_conforming_strings = 'no'", id="scs no"),
    pytest.param("RESET standard_conforming_strings", id="RESET scs"),
    pytest.param(
        "SELECT set_config('standard_conforming_strings', 'off', false)", id="set_config scs off"
    ),
    pytest.param("SET ROLE pg_read_server_files", id="SET ROLE"),
    pytest.param("SET LOCAL ROLE pg_read_server_files", id="SET LOCAL ROLE"),
    pytest.param("RESET ROLE", id="RESET ROLE"),
    pytest.param("SET SESSION AUTHORIZATION postgres", id="SET SESSION AUTHORIZATION"),
    pytest.param("SET SESSION AUTHORIZATION DEFAULT", id="SET SESSION AUTHORIZATION DEFAULT"),
    pytest.param("SELECT set_config('role', 'pg_read_server_files', false)", id="set_config role"),
    pytest.param("ALTER ROLE CURRENT_USER SET client_encoding = 'SJIS'", id="ALTER ROLE ... SET"),
    pytest.param("ALTER ROLE CURRENT_USER SET role = 'pg_read_server_files'", id="a default role"),
    pytest.param("ALTER DATABASE app SET standard_conforming_strings = off", id="ALTER DATABASE"),
    pytest.param("ALTER SYSTEM SET client_encoding = 'SJIS'", id="ALTER SYSTEM"),
    pytest.param(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = 'SJIS' AS 'SELECT 1'",
        id="a function's SET clause",
    ),
    pytest.param("ALTER FUNCTION f() SET standard_conforming_strings = off", id="ALTER FUNCTION"),
    pytest.param("PREPARE p AS SELECT set_config('client_encoding', 'SJIS', false)", id="PREPARE"),
    pytest.param(
        "EXPLAIN ANALYZE SELECT set_config('client_encoding', 'SJIS', false)", id="EXPLAIN ANALYZE"
    ),
    pytest.param("DO $$ BEGIN SET client_encoding = 'SJIS'; END $$", id="SET in a DO block"),
    pytest.param(
        "DO $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); END $$",
        id="set_config in a DO block",
    ),
    pytest.param(
        "DO $$ DECLARE x text := set_config('role', 'pg_read_server_files', false); BEGIN END $$",
        id="set_config in a DO block's declarations",
    ),
    pytest.param(
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET client_encoding = 'SJIS' $$",
        id="SET in a SQL function body",
    ),
    pytest.param(
        "SELECT query_to_xml('SELECT set_config(''client_encoding'', ''SJIS'', false)', "
        "true, false, '')",
        id="set_config in a query given to query_to_xml",
    ),
]

ALLOWED = [
    pytest.param("SET client_encoding = 'UTF8'", id="client_encoding UTF8"),
    pytest.param("SET client_encoding TO 'utf-8'", id="client_encoding utf-8"),
    pytest.param("SET NAMES 'unicode'", id="SET NAMES unicode"),
    pytest.param("SET standard_conforming_strings = on", id="scs on"),
    pytest.param("SET standard_conforming_strings = true", id="scs true"),
    pytest.param("SELECT set_config('client_encoding', 'UTF8', false)", id="set_config UTF8"),
    pytest.param("SET search_path = app, public", id="search_path"),
    pytest.param("SELECT set_config('application_name', 'x', false)", id="set_config other"),
    pytest.param("RESET ALL", id="RESET ALL"),
    pytest.param("DISCARD ALL", id="DISCARD ALL"),
    pytest.param("SELECT current_setting('client_encoding')", id="reading a setting"),
]


def judged(sql: str) -> str:
    return decide(POLICIES, analyze(sql)).action


@pytest.mark.parametrize("sql", REFUSED)
def test_changing_a_pinned_setting_is_refused(sql: str) -> None:
    decision = decide(POLICIES, analyze(sql))
    assert decision.action == "deny"
    assert decision.message.startswith("statement refused: ")
    assert decision.policy is None


@pytest.mark.parametrize("sql", ALLOWED)
def test_keeping_a_pinned_setting_or_changing_another_is_allowed(sql: str) -> None:
    assert judged(sql) == "allow"


def test_no_policy_still_names_the_pinned_setting() -> None:
    decision = decide((), analyze("SET NAMES 'SJIS'"))
    assert decision.message == "statement refused: client_encoding is pinned to UTF8"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            "SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'", id="SET values"
        ),
        pytest.param(
            "SELECT set_config('search_path', 'public', false)",
            "SELECT set_config('client_encoding', 'SJIS', false)",
            id="set_config arguments",
        ),
        pytest.param(
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings = off",
            id="scs values",
        ),
    ],
)
def test_a_cached_verdict_is_never_reused_for_other_literals(first: str, second: str) -> None:
    """Both strings have one shape; the verdict on the first must not serve the second."""
    judge = Judge(POLICIES)
    assert judge.judge(first).decision.action == "allow"
    assert judge.judge(second).decision.action == "deny"
    assert judge.judge(first).decision.action == "allow"


@pytest.mark.parametrize(
    ("name", "utf8"),
    [("UTF8", True), ("utf-8", True), ("Utf_8", True), ("unicode", True), ("SJIS", False)],
)
def test_encoding_names_are_read_as_postgresql_reads_them(name: str, utf8: bool) -> None:
    assert is_utf8(name) is utf8


@pytest.mark.parametrize(
    ("value", "on"),
    [("on", True), ("TRUE", True), ("t", True), ("yes", True), ("1", True), ("off", False)],
)
def test_booleans_are_read_as_postgresql_reads_them(value: str, on: bool) -> None:
    assert is_on(value) is on
