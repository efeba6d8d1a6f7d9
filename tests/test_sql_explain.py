"""EXPLAIN runs its statement exactly when PostgreSQL would: the last ANALYZE option wins.

PostgreSQL 15's ``ExplainQuery`` reads the options in order, each ``analyze``
overwriting the one before, with ``defGetBoolean``: no value means true; 0 and 1;
true/false/on/off in any ASCII case. Anything else is an error there, and counts as
running here (fail closed). The live proxy test checks the same table against the
server itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from steward_proxy.sql import ShapeCache, analyze
from steward_testing.postgres import LocalPostgres

from conftest import ProxyFactory, direct_dsn

# (options as written after EXPLAIN, whether the statement runs)
EXPLAIN_OPTIONS: dict[str, tuple[str, bool]] = {
    "no options does not run": ("", False),
    "the ANALYZE keyword runs": ("ANALYZE", True),
    "the ANALYSE spelling runs": ("ANALYSE", True),
    "ANALYZE VERBOSE keywords run": ("ANALYZE VERBOSE", True),
    "VERBOSE alone does not run": ("VERBOSE", False),
    "other options alone do not run": ("(COSTS false, VERBOSE true)", False),
    "a bare option runs": ("(ANALYZE)", True),
    "false then true runs": ("(ANALYZE false, ANALYZE true)", True),
    "true then false does not run": ("(ANALYZE true, ANALYZE false)", False),
    "bare then off does not run": ("(ANALYZE, ANALYZE off)", False),
    "off then bare runs": ("(ANALYZE off, ANALYZE)", True),
    "0 then 1 runs": ("(ANALYZE 0, BUFFERS, ANALYZE 1)", True),
    "1 then 0 does not run": ("(ANALYZE 1, BUFFERS, ANALYZE 0)", False),
    "three times, the last is off": ("(ANALYZE off, ANALYZE on, ANALYZE off)", False),
    "three times, the last is on": ("(ANALYZE on, ANALYZE off, ANALYSE on)", True),
    "TRUE runs": ("(ANALYZE TRUE)", True),
    "ON runs": ("(ANALYZE ON)", True),
    "'True' as a string runs": ("(ANALYZE 'True')", True),
    "'oN' as a string runs": ("(ANALYZE 'oN')", True),
    "FALSE does not run": ("(ANALYZE FALSE)", False),
    "OFF does not run": ("(ANALYZE OFF)", False),
    "'False' as a string does not run": ("(ANALYZE 'False')", False),
    "'oFF' as a string does not run": ("(ANALYZE 'oFF')", False),
    "a quoted lower-case option name counts": ('("analyze" true)', True),
    "an unknown option name is not ANALYZE": ('("ANALYZE" true)', False),
    # PostgreSQL refuses these; the proxy takes them as running.
    "2 is refused, counts as running": ("(ANALYZE 2)", True),
    "-1 is refused, counts as running": ("(ANALYZE -1)", True),
    "0.0 is refused, counts as running": ("(ANALYZE 0.0)", True),
    "'0' as a string is refused, counts as running": ("(ANALYZE '0')", True),
    "yes is refused, counts as running": ("(ANALYZE yes)", True),
    "no is refused, counts as running": ("(ANALYZE no)", True),
    "'off ' with a space is refused, counts as running": ("(ANALYZE 'off ')", True),
    "a ligature that case-folds to off is refused, counts as running": (
        "(ANALYZE 'o\ufb00')",
        True,
    ),
    "a refused value before a valid off does not run": ("(ANALYZE 2, ANALYZE off)", False),
}


@pytest.mark.parametrize(
    ("options", "runs"), [pytest.param(*case, id=name) for name, case in EXPLAIN_OPTIONS.items()]
)
def test_explain_runs_its_statement_as_postgresql_reads_the_options(
    options: str, runs: bool
) -> None:
    (info,) = analyze(f"EXPLAIN {options} DELETE FROM t", cache=ShapeCache(0))
    assert info.command == "EXPLAIN"
    assert info.writes == (("public.t",) if runs else ())
    assert info.has_where is not runs


# --- against the server, and through the live proxy --------------------------------

TABLE = "explain_target"


@pytest.fixture
def target(pg: LocalPostgres) -> Iterator[str]:
    """A table of three rows, dropped afterwards."""
    pg.execute(
        f"CREATE TABLE {TABLE} (id int); INSERT INTO {TABLE} VALUES (1), (2), (3);"
        f" GRANT ALL ON {TABLE} TO {LocalPostgres.SCRAM_USER}"
    )
    yield TABLE
    pg.execute(f"DROP TABLE {TABLE}")


def rows(pg: LocalPostgres) -> int:
    return int(pg.execute(f"SELECT count(*) FROM {TABLE}"))


def test_the_table_matches_what_postgresql_does(pg: LocalPostgres, target: str) -> None:
    with psycopg.connect(direct_dsn(pg)) as conn:
        for name, (options, runs) in EXPLAIN_OPTIONS.items():
            refused = False
            try:
                conn.execute(f"EXPLAIN {options} DELETE FROM {target}")
                deleted = conn.execute(f"SELECT count(*) = 0 FROM {target}").fetchone()
            except psycopg.Error:
                refused = True
            conn.rollback()
            if "refused" in name or "unknown option" in name:
                assert refused, name
            else:
                assert not refused, name
                assert deleted == (runs,), name


POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: explain-deletes}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - name: no-unbounded-deletes
      match: {statements: [DELETE], withoutWhere: true}
      action: deny
"""


def test_a_duplicate_analyze_option_cannot_run_a_denied_delete(
    pg: LocalPostgres, target: str, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(POLICY)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(f"EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM {target}")
        assert "no-unbounded-deletes" in str(info.value)
        assert rows(pg) == 3
        # Read the other way round the DELETE is only planned: allowed, and nothing goes.
        plan = conn.execute(f"EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM {target}")
        assert "Delete on" in plan.fetchall()[0][0]
        assert rows(pg) == 3
    proxy.terminate()
    decisions = [
        (r["statement"], r["decision"]) for r in proxy.audit_records() if r["type"] == "statement"
    ]
    assert decisions == [
        (f"EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM {target}", "deny"),
        (f"EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM {target}", "allow"),
    ]
