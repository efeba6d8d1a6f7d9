"""No literal reaches the audit trail or the log, whatever the statement type.

Every statement of the literal corpus (DDL with WHERE, CHECK and DEFAULT clauses,
PREPARE/EXECUTE, CREATE TABLE AS, views, policies, rules, triggers, COMMENT, DO,
COPY options, function bodies, ...) runs through an allow-all proxy with a fake
SSN and card number in every literal position, by the simple protocol and, where
a statement can run twice, by the extended one. PostgreSQL runs them all; the
values appear nowhere in the audit file or in the proxy's log.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pglast import parser as pg_parser

from steward_testing.postgres import LocalPostgres

from conftest import ALLOW_ALL_POLICY, ProxyFactory, run_psql
from literal_corpus import CARD, CORPUS, SSN, recorded_constants, render

pytestmark = pytest.mark.timeout(120)

SCHEMA = "scrub_corpus"
# Statements that can run a second time, by the extended protocol (one statement each).
RERUN = [
    "INSERT ON CONFLICT",
    "SELECT with every constant kind",
    "SELECT with adjacent string constants",
    "UPDATE",
    "ALTER TABLE SET DEFAULT",
    "CALL",
    "COMMENT ON TABLE",
    "DO",
    "set_config",
    "EXPLAIN",
    "VALUES",
]


@pytest.fixture
def schema(pg: LocalPostgres) -> Iterator[str]:
    yield SCHEMA
    pg.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def test_no_literal_reaches_the_audit_trail_or_the_log(
    start_proxy: ProxyFactory, schema: str
) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--log-level", "debug")
    statements = [render(template, schema) for template in CORPUS.values()]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for sql in statements:
            if sql.startswith("COPY"):
                with conn.cursor().copy(sql) as copy:
                    assert b"".join(copy)
            else:
                conn.execute(sql)
        for name in RERUN:
            conn.execute(render(CORPUS[name], schema), prepare=True)
        params = conn.execute(
            f"SELECT %s::text = '{SSN}' AND %s::bigint = {CARD}", (SSN, int(CARD))
        )
        assert params.fetchone() == (True,)
    result = run_psql(proxy.dsn(), "-c", f"SELECT '{SSN}' AS ssn, {CARD} AS card")
    assert result.returncode == 0, result.stderr
    proxy.terminate()

    audit = proxy.audit_log.read_text() if proxy.audit_log else ""
    records = [r for r in proxy.audit_records() if r["type"] == "statement"]
    ran = sum(len(pg_parser.split(sql)) for sql in statements) + len(RERUN) + 2
    assert len(records) == ran
    assert all(r["decision"] == "allow" and r["error"] is None for r in records), records
    for record in records:
        statement = str(record["statement"])
        assert statement
        assert recorded_constants(statement) == [], statement
    log = proxy.log()
    assert "signed in" in log
    for value in (SSN, CARD):
        assert value not in audit
        assert value not in log
