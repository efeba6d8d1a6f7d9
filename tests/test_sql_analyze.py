"""Statement analysis: command tags, tables, functions, writes, WHERE, shape cache."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import ast

from steward_proxy.sql import (
    ShapeCache,
    SQLSyntaxError,
    StatementInfo,
    analyze,
    fingerprint,
)
from steward_proxy.sql import analysis as analyze_module
from steward_proxy.sql.commands import command_tag


def one(sql: str) -> StatementInfo:
    (info,) = analyze(sql, cache=ShapeCache(0))
    return info


COMMANDS = [
    ("SELECT * FROM t", "SELECT"),
    ("TABLE t", "SELECT"),
    ("VALUES (1), (2)", "SELECT"),
    ("SELECT 1 UNION SELECT 2", "SELECT"),
    ("SELECT * INTO t2 FROM t", "CREATE"),
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("UPDATE t SET a = 1 WHERE id = 2", "UPDATE"),
    ("DELETE FROM t", "DELETE"),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE"),
    ("COPY t FROM STDIN", "COPY"),
    ("COPY (SELECT 1) TO STDOUT", "COPY"),
    ("TRUNCATE t", "TRUNCATE"),
    ("DROP TABLE t", "DROP"),
    ("DROP ROLE bob", "DROP"),
    ("DROP DATABASE d", "DROP"),
    ("DROP OWNED BY bob", "DROP"),
    ("ALTER TABLE t ADD COLUMN c int", "ALTER"),
    ("ALTER TABLE t RENAME TO u", "ALTER"),
    ("ALTER ROLE bob PASSWORD 'x'", "ALTER"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER"),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", "ALTER"),
    ("CREATE TABLE t (a int)", "CREATE"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("CREATE MATERIALIZED VIEW v AS SELECT 1", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("CREATE INDEX ON t (a)", "CREATE"),
    ("CREATE DATABASE d", "CREATE"),
    ("CREATE ROLE bob", "CREATE"),
    ("CREATE EXTENSION dblink", "CREATE"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "CREATE"),
    ("CREATE TYPE mood AS ENUM ('sad')", "CREATE"),
    ("CREATE AGGREGATE a (int) (sfunc = f, stype = int)", "CREATE"),
    ("CREATE RULE r AS ON INSERT TO t DO NOTHING", "CREATE"),
    ("GRANT SELECT ON t TO bob", "GRANT"),
    ("GRANT admin TO bob", "GRANT"),
    ("REVOKE SELECT ON t FROM bob", "REVOKE"),
    ("REVOKE admin FROM bob", "REVOKE"),
    ("CALL p(1)", "CALL"),
    ("DO $$ BEGIN END $$", "DO"),
    ("SET work_mem = '64MB'", "SET"),
    ("SET LOCAL search_path TO app", "SET"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET"),
    ("SET CONSTRAINTS ALL DEFERRED", "SET"),
    ("RESET work_mem", "RESET"),
    ("RESET ALL", "RESET"),
    ("SHOW work_mem", "SHOW"),
    ("BEGIN", "BEGIN"),
    ("START TRANSACTION", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("END", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("ABORT", "ROLLBACK"),
    ("SAVEPOINT s", "SAVEPOINT"),
    ("RELEASE SAVEPOINT s", "RELEASE"),
    ("ROLLBACK TO SAVEPOINT s", "ROLLBACK"),
    ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
    ("COMMIT PREPARED 'x'", "COMMIT PREPARED"),
    ("ROLLBACK PREPARED 'x'", "ROLLBACK PREPARED"),
    ("LISTEN ch", "LISTEN"),
    ("NOTIFY ch, 'payload'", "NOTIFY"),
    ("UNLISTEN *", "UNLISTEN"),
    ("PREPARE p (int) AS SELECT $1", "PREPARE"),
    ("EXECUTE p (1)", "EXECUTE"),
    ("DEALLOCATE p", "DEALLOCATE"),
    ("DEALLOCATE ALL", "DEALLOCATE"),
    ("EXPLAIN SELECT 1", "EXPLAIN"),
    ("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN"),
    ("VACUUM t", "VACUUM"),
    ("VACUUM ANALYZE t", "VACUUM"),
    ("ANALYZE t", "ANALYZE"),
    ("DECLARE c CURSOR FOR SELECT 1", "DECLARE"),
    ("FETCH 10 FROM c", "FETCH"),
    ("MOVE NEXT IN c", "MOVE"),
    ("CLOSE c", "CLOSE"),
    ("DISCARD ALL", "DISCARD"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK"),
    ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
    ("SECURITY LABEL ON TABLE t IS 'x'", "SECURITY LABEL"),
    ("CLUSTER t USING i", "CLUSTER"),
    ("REINDEX TABLE t", "REINDEX"),
    ("CHECKPOINT", "CHECKPOINT"),
    ("LOAD 'auto_explain'", "LOAD"),
    ("REFRESH MATERIALIZED VIEW v", "REFRESH"),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public", "IMPORT"),
    ("REASSIGN OWNED BY bob TO alice", "REASSIGN"),
]


@pytest.mark.parametrize(("sql", "tag"), [pytest.param(s, t, id=s) for s, t in COMMANDS])
def test_command_tag(sql: str, tag: str) -> None:
    assert one(sql).command == tag


def test_every_statement_node_has_a_tag() -> None:
    # Statement nodes that only occur inside other statements or outside plain SQL.
    not_top_level = {"RawStmt", "SetOperationStmt", "PLAssignStmt", "ReturnStmt"}
    statement_nodes = {n for n in dir(ast) if n.endswith("Stmt")} - not_top_level
    guessed = {
        name
        for name in statement_nodes
        if command_tag(name, {}) == name.removesuffix("Stmt").upper()
        and name.removesuffix("Stmt").upper() not in {t for _, t in COMMANDS}
    }
    assert not guessed, f"statement nodes without an explicit command tag: {sorted(guessed)}"


# (sql, tables, functions, has_where, writes)
ANALYSES = {
    "a join names both tables, unqualified means public": (
        "SELECT * FROM users u JOIN app.orders o ON o.user_id = u.id WHERE u.id = 1",
        ("public.users", "app.orders"),
        (),
        True,
        (),
    ),
    "a subquery in WHERE and a function in WHERE": (
        "SELECT * FROM t WHERE lower(name) = 'x' AND id IN (SELECT t_id FROM audit.s)",
        ("public.t", "audit.s"),
        ("lower",),
        True,
        (),
    ),
    "a CTE name is not a table but its body's tables are": (
        "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent JOIN users ON true",
        ("public.orders", "public.users"),
        (),
        True,
        (),
    ),
    "a schema-qualified name is never a CTE": (
        "WITH orders AS (SELECT 1) SELECT * FROM orders, public.orders",
        ("public.orders",),
        (),
        True,
        (),
    ),
    "a CTE name only hides tables inside its own query": (
        "SELECT * FROM (WITH p AS (SELECT 1) SELECT * FROM p) x JOIN p ON true",
        ("public.p",),
        (),
        True,
        (),
    ),
    "a non-recursive CTE body sees only earlier CTEs": (
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM b",
        ("public.b",),
        (),
        True,
        (),
    ),
    "a recursive CTE references itself": (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
        "SELECT * FROM r",
        (),
        (),
        True,
        (),
    ),
    "a DML target is a table even when a CTE has its name": (
        "WITH payments AS (SELECT 1) DELETE FROM payments",
        ("public.payments",),
        (),
        False,
        ("public.payments",),
    ),
    "a DELETE inside WITH is a write without WHERE": (
        "WITH gone AS (DELETE FROM payments RETURNING *) SELECT count(*) FROM gone",
        ("public.payments",),
        ("count",),
        False,
        ("public.payments",),
    ),
    "UPDATE with WHERE and FROM": (
        "UPDATE accounts a SET balance = b.total FROM billing.totals b WHERE a.id = b.account_id",
        ("public.accounts", "billing.totals"),
        (),
        True,
        ("public.accounts",),
    ),
    "UPDATE without WHERE": (
        "UPDATE accounts SET balance = 0",
        ("public.accounts",),
        (),
        False,
        ("public.accounts",),
    ),
    "DELETE ... WHERE CURRENT OF has a WHERE": (
        "DELETE FROM t WHERE CURRENT OF c",
        ("public.t",),
        (),
        True,
        ("public.t",),
    ),
    "INSERT ... SELECT reads one table and writes another": (
        "INSERT INTO archive.events SELECT * FROM events WHERE created < now()",
        ("archive.events", "public.events"),
        ("now",),
        True,
        ("archive.events",),
    ),
    "MERGE writes its target and reads its source": (
        "MERGE INTO stock s USING deliveries d ON s.item = d.item "
        "WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty",
        ("public.stock", "public.deliveries"),
        (),
        True,
        ("public.stock",),
    ),
    "a schema-qualified function is listed bare and qualified": (
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        (),
        ("pg_read_file", "pg_catalog.pg_read_file"),
        True,
        (),
    ),
    "a function in FROM, upper-case name folded": (
        "SELECT * FROM DBLINK('host=x', 'select 1') AS t(a int)",
        (),
        ("dblink",),
        True,
        (),
    ),
    "functions nested in arguments": (
        "SELECT lo_export(lo_import('/etc/passwd'), '/tmp/x')",
        (),
        ("lo_export", "lo_import"),
        True,
        (),
    ),
    "CALL names its procedure": ("CALL app.refresh(1)", (), ("refresh", "app.refresh"), True, ()),
    "TRUNCATE writes every table": (
        "TRUNCATE a, s.b",
        ("public.a", "s.b"),
        (),
        True,
        ("public.a", "s.b"),
    ),
    "COPY FROM writes": ("COPY t (a) FROM STDIN", ("public.t",), (), True, ("public.t",)),
    "COPY TO only reads": ("COPY t TO STDOUT", ("public.t",), (), True, ()),
    "COPY of a query reads its tables": (
        "COPY (SELECT * FROM secrets) TO STDOUT",
        ("public.secrets",),
        (),
        True,
        (),
    ),
    "SELECT INTO writes the new table": (
        "SELECT * INTO copy_of_users FROM users",
        ("public.copy_of_users", "public.users"),
        (),
        True,
        ("public.copy_of_users",),
    ),
    "CREATE TABLE AS writes the new table": (
        "CREATE TABLE s.t AS SELECT * FROM u",
        ("public.u", "s.t"),
        (),
        True,
        ("s.t",),
    ),
    "DROP TABLE names its tables": (
        "DROP TABLE IF EXISTS s.a, b",
        ("s.a", "public.b"),
        (),
        True,
        (),
    ),
    "ALTER TABLE names its table": ("ALTER TABLE s.a ADD COLUMN c int", ("s.a",), (), True, ()),
    "GRANT on a table names it": (
        "GRANT SELECT ON payments TO bob",
        ("public.payments",),
        (),
        True,
        (),
    ),
    "EXPLAIN without ANALYZE does not write": (
        "EXPLAIN DELETE FROM t",
        ("public.t",),
        (),
        True,
        (),
    ),
    "EXPLAIN ANALYZE runs its statement": (
        "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
        ("public.t",),
        (),
        False,
        ("public.t",),
    ),
    "EXPLAIN with ANALYZE off does not write": (
        "EXPLAIN (ANALYZE off) DELETE FROM t",
        ("public.t",),
        (),
        True,
        (),
    ),
    "PREPARE describes what EXECUTE will do": (
        "PREPARE p AS UPDATE t SET a = $1",
        ("public.t",),
        (),
        False,
        ("public.t",),
    ),
    "CREATE RULE defines its action (an unbounded DELETE) but does not run it now": (
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM q",
        ("public.t", "public.q"),
        (),
        False,
        (),
    ),
    "a view's query tables are listed": (
        "CREATE VIEW v AS SELECT pg_read_file('x') FROM secrets",
        ("public.v", "public.secrets"),
        ("pg_read_file",),
        True,
        (),
    ),
    "a quoted identifier keeps its case": (
        'SELECT * FROM "Users" JOIN "App"."Orders" ON true',
        ("public.Users", "App.Orders"),
        (),
        True,
        (),
    ),
    "a table named twice is listed once": (
        "SELECT * FROM t a JOIN t b ON a.id = b.id WHERE a.x IN (SELECT x FROM t)",
        ("public.t",),
        (),
        True,
        (),
    ),
    "a statement without tables": ("SELECT 1", (), (), True, ()),
}


@pytest.mark.parametrize(
    ("sql", "tables", "functions", "has_where", "writes"),
    [pytest.param(*case, id=name) for name, case in ANALYSES.items()],
)
def test_tables_functions_where_writes(
    sql: str,
    tables: tuple[str, ...],
    functions: tuple[str, ...],
    has_where: bool,
    writes: tuple[str, ...],
) -> None:
    info = one(sql)
    assert info.tables == tables
    assert info.functions == functions
    assert info.has_where is has_where
    assert info.writes == writes


def test_multi_statement_string_gives_one_info_per_statement() -> None:
    infos = analyze(
        "BEGIN; UPDATE t SET a = 'x' WHERE id = 5; DELETE FROM u; COMMIT", cache=ShapeCache(0)
    )
    assert [i.command for i in infos] == ["BEGIN", "UPDATE", "DELETE", "COMMIT"]
    assert [i.normalized for i in infos] == [
        "BEGIN",
        "UPDATE t SET a = $1 WHERE id = $2",
        "DELETE FROM u",
        "COMMIT",
    ]
    assert [i.has_where for i in infos] == [True, True, False, True]
    assert infos[1].fingerprint == fingerprint("UPDATE t SET a = 'y' WHERE id = 6")


def test_multi_statement_parts_whose_normalized_text_does_not_parse() -> None:
    infos = analyze("DO $$ BEGIN END $$; NOTIFY ch, 'secret'; SELECT 7", cache=ShapeCache(0))
    assert [i.command for i in infos] == ["DO", "NOTIFY", "SELECT"]
    # A PL/pgSQL DO is recorded with its body, whose literals are numbered on their own.
    assert [i.normalized for i in infos] == ["DO $$ BEGIN END $$", "NOTIFY ch, $2", "SELECT $3"]


def test_extended_protocol_params_are_kept() -> None:
    info = one("SELECT * FROM users WHERE id = $1 AND ssn = '123-45-6789'")
    assert info.normalized == "SELECT * FROM users WHERE id = $1 AND ssn = $2"


@pytest.mark.parametrize("sql", ["", "   ", "-- comment only", ";"], ids=repr)
def test_empty_strings_have_no_statements(sql: str) -> None:
    assert analyze(sql, cache=ShapeCache(0)) == ()


@pytest.mark.parametrize(
    "sql",
    ["SELEC 1", "SELECT 1; SELEC 2", "DELETE FROM", "SELECT 'open"],
    ids=repr,
)
def test_syntax_errors_raise(sql: str) -> None:
    with pytest.raises(SQLSyntaxError) as info:
        analyze(sql, cache=ShapeCache(0))
    assert info.value.cursor_position is not None


def test_statement_info_is_immutable() -> None:
    info = one("SELECT 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.command = "DELETE"  # type: ignore[misc]


def test_cache_hit_returns_the_same_result_without_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    real = analyze_module.parse_sql_json

    def counting(sql: str) -> str:
        calls.append(sql)
        return real(sql)

    monkeypatch.setattr(analyze_module, "parse_sql_json", counting)
    cache: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache()
    first = analyze("SELECT * FROM users WHERE ssn = '123-45-6789'", cache=cache)
    second = analyze("SELECT * FROM users WHERE ssn = '987-65-4321'", cache=cache)
    assert second is first
    assert len(calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    with_comment = analyze("SELECT * FROM users /* trace=42 */ WHERE ssn = 'x'", cache=cache)
    assert with_comment is first
    other_shape = analyze("select * from users where ssn = 'x'", cache=cache)
    assert other_shape[0].tables == first[0].tables
    assert len(calls) == 2


def test_cache_is_bounded_and_least_recently_used() -> None:
    cache: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache(maxsize=2)
    analyze("SELECT * FROM a", cache=cache)
    analyze("SELECT * FROM b", cache=cache)
    analyze("SELECT * FROM a", cache=cache)  # a is now the most recent
    analyze("SELECT * FROM c", cache=cache)  # evicts b
    assert len(cache) == 2
    assert "SELECT * FROM a" in cache
    assert "SELECT * FROM b" not in cache
    assert "SELECT * FROM c" in cache


def test_cache_skips_huge_keys() -> None:
    cache: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache(max_key_chars=20)
    analyze("SELECT * FROM a_table_with_a_long_name", cache=cache)
    assert len(cache) == 0


def test_deeply_nested_expression_fails_closed() -> None:
    sql = "SELECT " + "1 + " * 2000 + "1"
    try:
        infos = analyze(sql, cache=ShapeCache(0))
    except SQLSyntaxError as exc:
        assert exc.message
    else:
        assert infos[0].command == "SELECT"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "SELECT",
                "*",
                "FROM",
                "t",
                "s.u",
                "WHERE",
                "a",
                "=",
                "1",
                "'x'",
                "(",
                ")",
                ",",
                ";",
                "WITH",
                "AS",
                "DELETE",
                "UPDATE",
                "SET",
                "JOIN",
                "ON",
                "f(1)",
                "$1",
                "--",
                "/*",
                "*/",
                "\n",
            ]
        ),
        max_size=25,
    ).map(" ".join)
    | st.text(max_size=60)
)
def test_analyze_only_raises_sqlsyntaxerror(sql: str) -> None:
    try:
        infos = analyze(sql, cache=ShapeCache(0))
    except SQLSyntaxError:
        return
    for info in infos:
        assert info.command
        assert all("." in table for table in info.tables)
        assert set(info.writes) <= set(info.tables)
