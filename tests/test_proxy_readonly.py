"""``spec.readOnly`` through the live proxy: PostgreSQL itself refuses the writes.

alice's policy is read-only. What Steward sees write (a data-modifying CTE,
EXPLAIN ANALYZE, a DO block) it refuses itself (42501, rule readOnly); what it
cannot see (a volatile function created earlier, ``nextval``) PostgreSQL
refuses, because the proxy signed the session in with
``default_transaction_read_only=on`` (25006). Every way to turn read-only off
is refused, and a session whose server reports it off is ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import DEFAULT_UPSTREAM_USER, Proxy, ProxyFactory, run_psql

pytestmark = pytest.mark.timeout(120)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: analysts}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  readOnly: true
"""

SETUP = f"""
DROP TABLE IF EXISTS ro_t CASCADE;
DROP SEQUENCE IF EXISTS ro_s;
CREATE TABLE ro_t (id int);
INSERT INTO ro_t SELECT generate_series(1, 3);
CREATE SEQUENCE ro_s;
GRANT ALL ON SEQUENCE ro_s TO {DEFAULT_UPSTREAM_USER};
CREATE OR REPLACE FUNCTION ro_write() RETURNS int LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN INSERT INTO ro_t VALUES (99); RETURN 1; END $$;
CREATE OR REPLACE FUNCTION ro_off() RETURNS text LANGUAGE sql AS
  $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
"""


@pytest.fixture(scope="module")
def read_only(pg: LocalPostgres, module_proxy_factory: ProxyFactory) -> Iterator[Proxy]:
    pg.execute(SETUP)
    yield module_proxy_factory(POLICY)


@pytest.fixture
def unchanged(pg: LocalPostgres) -> Iterator[None]:
    """Whatever the test does, the table and the sequence stay as they were."""
    before = pg.execute("SELECT (SELECT count(*) FROM ro_t), (SELECT last_value FROM ro_s)")
    yield
    after = pg.execute("SELECT (SELECT count(*) FROM ro_t), (SELECT last_value FROM ro_s)")
    assert after == before


def refusal(proxy: Proxy, sql: str, params: Any = None) -> psycopg.Error:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(sql, params)
        # The session goes on: it was one statement.
        assert conn.execute("SELECT count(*) FROM ro_t").fetchone() == (3,)
    return refused.value


def test_reads_work_and_the_server_runs_read_only(read_only: Proxy) -> None:
    with psycopg.connect(read_only.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ro_t WHERE id > %s", (0,)).fetchone() == (3,)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT current_setting('transaction_read_only')").fetchone() == ("on",)
        conn.execute("BEGIN READ ONLY")
        assert conn.execute("SELECT id FROM ro_t ORDER BY id LIMIT 1").fetchone() == (1,)
        conn.execute("COMMIT")
    out = run_psql(read_only.dsn(), "-Atc", "SELECT sum(id) FROM ro_t")
    assert out.returncode == 0 and out.stdout.strip() == "6", out.stderr


SEEN_WRITES = {
    "a data-modifying CTE": "WITH d AS (DELETE FROM ro_t RETURNING *) SELECT count(*) FROM d",
    "EXPLAIN ANALYZE": "EXPLAIN ANALYZE DELETE FROM ro_t WHERE id = 1",
    "a DO block": "DO $$ BEGIN DELETE FROM ro_t WHERE id = 1; END $$",
    "a DO block with dynamic SQL": "DO $$ BEGIN EXECUTE 'DELETE FROM ro_t'; END $$",
    "a plain UPDATE": "UPDATE ro_t SET id = id + 1 WHERE id = 1",
    "query_to_xml": "SELECT query_to_xml('DELETE FROM ro_t RETURNING id', true, false, '')",
}


@pytest.mark.parametrize("sql", SEEN_WRITES.values(), ids=SEEN_WRITES.keys())
def test_writes_steward_sees_are_refused_by_steward(
    read_only: Proxy, unchanged: None, sql: str
) -> None:
    error = refusal(read_only, sql)
    assert error.sqlstate == "42501"
    assert "by policy default/analysts rule readOnly" in str(error)


def test_a_write_with_parameters_is_refused_too(read_only: Proxy, unchanged: None) -> None:
    assert refusal(read_only, "DELETE FROM ro_t WHERE id = %s", (1,)).sqlstate == "42501"


HIDDEN_WRITES = {
    "a volatile user function": "SELECT ro_write()",
    "nextval": "SELECT nextval('ro_s')",
    "setval": "SELECT setval('ro_s', 100)",
}


@pytest.mark.parametrize("sql", HIDDEN_WRITES.values(), ids=HIDDEN_WRITES.keys())
def test_writes_steward_cannot_see_fail_inside_postgresql(
    read_only: Proxy, unchanged: None, sql: str
) -> None:
    error = refusal(read_only, sql)
    assert error.sqlstate == "25006", error  # read_only_sql_transaction
    assert "read-only transaction" in str(error)


TURNING_IT_OFF = {
    "SET": "SET default_transaction_read_only = off",
    "SET LOCAL": "SET LOCAL default_transaction_read_only TO false",
    "SET transaction_read_only": "SET transaction_read_only = off",
    "SET SESSION CHARACTERISTICS": "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE": "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE": "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SET TRANSACTION READ WRITE": "SET TRANSACTION READ WRITE",
    "set_config": "SELECT set_config('default_transaction_read_only', 'off', false)",
    "set_config of the transaction": "SELECT set_config('transaction_read_only', 'off', true)",
    "RESET": "RESET default_transaction_read_only",
}


@pytest.mark.parametrize("sql", TURNING_IT_OFF.values(), ids=TURNING_IT_OFF.keys())
def test_every_way_to_turn_read_only_off_is_refused(read_only: Proxy, sql: str) -> None:
    error = refusal(read_only, sql)
    assert error.sqlstate == "42501"
    assert "rule readOnly" in str(error) and "cannot be turned off" in str(error)


def test_set_transaction_read_write_inside_a_transaction_is_refused(
    read_only: Proxy, unchanged: None
) -> None:
    with psycopg.connect(read_only.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET TRANSACTION READ WRITE")
        conn.execute("ROLLBACK")
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ro_off(); COMMIT; SELECT ro_write()",
        "DO $$ BEGIN PERFORM ro_off(); COMMIT; PERFORM ro_write(); END $$",
    ],
    ids=["in one query string", "in a DO block"],
)
def test_a_transaction_cannot_end_before_more_statements_run(
    read_only: Proxy, unchanged: None, sql: str
) -> None:
    # The next transaction would start with the default a function just
    # turned off, before the server reports it.
    error = refusal(read_only, sql)
    assert error.sqlstate == "42501" and "rule readOnly" in str(error)


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
def test_resetting_everything_keeps_read_only_on(read_only: Proxy, reset: str) -> None:
    # What they restore is what the session signed in with: the proxy's "on".
    with psycopg.connect(read_only.dsn(), autocommit=True) as conn:
        conn.execute(reset)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("SELECT ro_write()")


def test_a_client_cannot_sign_in_with_read_only_off(read_only: Proxy) -> None:
    out = run_psql(
        read_only.dsn(),
        "-c",
        "SELECT 1",
        env={"PGOPTIONS": "-c default_transaction_read_only=off"},
    )
    assert out.returncode != 0
    assert "default_transaction_read_only" in out.stderr and "not allowed" in out.stderr


def test_a_session_whose_server_turns_read_only_off_is_ended(
    read_only: Proxy, unchanged: None
) -> None:
    with psycopg.connect(read_only.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as ended:
            conn.execute("SELECT ro_off()")  # a function created earlier: not in the parse tree
        assert ended.value.sqlstate == "42501"
        assert "default_transaction_read_only changed" in str(ended.value)
        assert conn.closed
    ends = [
        r
        for r in read_only.audit_records()
        if r["type"] == "session.end" and "default_transaction_read_only" in str(r["error"])
    ]
    assert ends
