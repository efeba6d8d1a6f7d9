"""Statements with the decision the guardrails of ``POLICY`` must make on each.

Shared by the table-driven test that runs every statement through ``steward
policy explain`` and through the live proxy with several clients. Each case is
one statement string (several statements where the case says so) and the
decision and rule expected for it; ``rule`` None means the policy's
``defaultAction`` decided. The evasions are the ones a governance proxy must
not be talked around by (see THREATS.md, section 2): comments inside and
between keywords, mixed case, quoted and schema-qualified identifiers,
constant-true WHERE forms, data-modifying CTEs, several statements in one
string, EXPLAIN ANALYZE, PREPARE, DO blocks, COPY to a file or program,
dangerous functions in subqueries, defaults and function bodies, functions
wired into operators, triggers, aggregates, casts and rules, functions that
run SQL text, MERGE actions. The statements that must pass read protected
tables and write with a real WHERE.

Every statement that is expected to run is valid on PostgreSQL 15 for the
upstream role of the tests, against the objects of ``SETUP``, inside a
transaction that is rolled back. Names start with ``gr_`` so they meet no
other test's objects.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: guardrails, namespace: shop}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - name: no-unbounded-writes
      match: {statements: [UPDATE, DELETE], withoutWhere: true}
      action: deny
      message: UPDATE and DELETE need a WHERE that selects rows
    - name: no-file-access
      match:
        functions: [pg_read_file, pg_read_binary_file, pg_ls_dir, pg_stat_file,
                    lo_import, lo_export]
      action: deny
    - name: no-admin-functions
      match: {functions: [pg_terminate_backend, pg_cancel_backend, pg_reload_conf]}
      action: deny
    - name: no-dynamic-sql
      match: {statements: [DYNAMIC]}
      action: deny
    - name: no-server-copy
      match: {copy: [file, program]}
      action: deny
    - name: no-untrusted-code
      match: {languages: ["pl*u", c, internal]}
      action: deny
    - name: payments-read-only
      match:
        statements: [INSERT, UPDATE, DELETE, MERGE, TRUNCATE]
        tables: [gr_payments]
      action: deny
    - name: vault-is-sealed
      match: {tables: ["gr_vault.*"]}
      action: deny
    - name: schema-changes-need-review
      match: {statements: [DROP, ALTER, TRUNCATE, GRANT, REVOKE]}
      action: review
    - name: audit-secrets
      match: {tables: [GrSecrets]}
      action: log
  approval:
    approvers: [{kind: Group, name: dba}]
"""

SUBJECT = "user:alice"

SETUP = """
CREATE TABLE gr_orders (id int PRIMARY KEY, note text);
INSERT INTO gr_orders SELECT g, 'order ' || g FROM generate_series(1, 5) AS g;
CREATE TABLE gr_payments (id int PRIMARY KEY, amount numeric, note text);
INSERT INTO gr_payments SELECT g, g * 10, 'payment ' || g FROM generate_series(1, 5) AS g;
CREATE TABLE gr_accounts (id int PRIMARY KEY, name text);
INSERT INTO gr_accounts SELECT g, 'account ' || g FROM generate_series(1, 3) AS g;
CREATE TABLE "GrSecrets" (id int PRIMARY KEY, v text);
INSERT INTO "GrSecrets" VALUES (1, 'secret');
CREATE SCHEMA gr_vault;
CREATE TABLE gr_vault.keys (id int, k text);
"""

TEARDOWN = """
DROP TABLE IF EXISTS gr_orders, gr_payments, gr_accounts, "GrSecrets";
DROP SCHEMA IF EXISTS gr_vault CASCADE;
"""

# What the database must look like after the corpus ran (it runs in transactions
# that are rolled back): the relations named gr_% and their row counts.
FINGERPRINT_QUERY = """
SELECT string_agg(c.relname || ':' || c.relkind::text, ',' ORDER BY c.relname)
       || ' orders=' || (SELECT count(*) FROM gr_orders)
       || ' payments=' || (SELECT sum(amount) FROM gr_payments)
FROM pg_class c
WHERE c.relname LIKE 'gr\\_%' OR c.relname = 'GrSecrets'
"""


@dataclass(frozen=True)
class Case:
    """One statement string and what the guardrails must decide on it.

    ``copy_stdio``: the statement copies to the client (clients need their COPY
    API to run it; asyncpg has none for a COPY statement of its own).
    """

    name: str
    sql: str
    decision: str
    rule: str | None
    copy_stdio: bool = False

    @property
    def refused(self) -> bool:
        return self.decision in ("deny", "review")


def allow(name: str, sql: str, *, copy_stdio: bool = False) -> Case:
    return Case(name, sql, "allow", None, copy_stdio)


def deny(name: str, sql: str, rule: str | None) -> Case:
    return Case(name, sql, "deny", rule)


def review(name: str, sql: str) -> Case:
    return Case(name, sql, "review", "schema-changes-need-review")


def log(name: str, sql: str) -> Case:
    return Case(name, sql, "log", "audit-secrets")


UNBOUNDED = "no-unbounded-writes"
FILES = "no-file-access"
ADMIN = "no-admin-functions"
DYNAMIC = "no-dynamic-sql"
SERVER_COPY = "no-server-copy"
UNTRUSTED = "no-untrusted-code"
PAYMENTS = "payments-read-only"
VAULT = "vault-is-sealed"

CASES: list[Case] = [
    # --- not dangerous: reads of protected tables, writes with a real WHERE -------
    allow("a read of the payments table", "SELECT * FROM gr_payments"),
    allow("a join of payments and orders",
          "SELECT count(*) FROM gr_payments p JOIN gr_orders o ON o.id = p.id"),
    allow("an aggregate over payments", "SELECT sum(amount) FROM gr_payments WHERE id > 1"),
    allow("an update with a real WHERE", "UPDATE gr_orders SET note = 'x' WHERE id = 1"),
    allow("a delete with a real WHERE", "DELETE FROM gr_orders WHERE id = 1"),
    allow("a delete with a range", "DELETE FROM gr_orders WHERE id BETWEEN 2 AND 3"),
    allow("a delete with IN", "DELETE FROM gr_orders WHERE id IN (1, 2)"),
    allow("a delete with a subquery on the row",
          "DELETE FROM gr_orders WHERE id IN (SELECT id FROM gr_accounts)"),
    allow("a delete with a correlated EXISTS",
          "DELETE FROM gr_orders o WHERE EXISTS (SELECT 1 FROM gr_accounts a WHERE a.id = o.id)"),
    allow("a delete whose WHERE is constant false", "DELETE FROM gr_orders WHERE 1 = 2"),
    allow("a delete whose WHERE ANDs a real filter with 1=1",
          "DELETE FROM gr_orders WHERE id = 1 AND 1 = 1"),
    allow("a delete whose WHERE ORs a real filter with 1=2",
          "DELETE FROM gr_orders WHERE id = 1 OR 1 = 2"),
    allow("an insert", "INSERT INTO gr_orders (id, note) VALUES (100, 'x')"),
    allow("an insert that reads payments",
          "INSERT INTO gr_orders SELECT id + 1000, note FROM gr_payments"),
    allow("an update from payments",
          "UPDATE gr_orders o SET note = p.note FROM gr_payments p WHERE o.id = p.id"),
    allow("a delete using payments",
          "DELETE FROM gr_orders o USING gr_payments p WHERE o.id = p.id AND p.amount > 40"),
    allow("an upsert", "INSERT INTO gr_orders VALUES (1, 'x') ON CONFLICT (id) DO UPDATE "
          "SET note = EXCLUDED.note"),
    allow("a bounded delete in a CTE",
          "WITH d AS (DELETE FROM gr_orders WHERE id = 2 RETURNING *) SELECT count(*) FROM d"),
    allow("a plain EXPLAIN of an unbounded DELETE runs nothing",
          "EXPLAIN DELETE FROM gr_orders"),
    allow("EXPLAIN with ANALYZE off runs nothing", "EXPLAIN (ANALYZE false) DELETE FROM gr_orders"),
    allow("EXPLAIN ANALYZE of a read", "EXPLAIN ANALYZE SELECT * FROM gr_orders"),
    allow("EXPLAIN ANALYZE of a bounded delete",
          "EXPLAIN ANALYZE DELETE FROM gr_orders WHERE id = 4"),
    allow("a PREPARE of a bounded read",
          "PREPARE gr_p_read AS SELECT * FROM gr_orders WHERE id = $1"),
    allow("a PREPARE of a bounded update",
          "PREPARE gr_p_upd (int) AS UPDATE gr_orders SET note = 'y' WHERE id = $1"),
    allow("a literal that spells a DELETE is only text", "SELECT 'DELETE FROM gr_orders' AS t"),
    allow("a literal that names a denied function is only text", "SELECT 'pg_read_file(1)' AS t"),
    allow("a comment that spells a DELETE is only a comment",
          "SELECT 1 /* ; DELETE FROM gr_orders */ -- ; DROP TABLE gr_payments"),
    allow("a function that only looks alike", "SELECT pg_read_file_like FROM "
          "(SELECT 1 AS pg_read_file_like) AS t"),
    allow("harmless functions", "SELECT lower(note), upper(note), now() FROM gr_orders"),
    allow("a schema-qualified harmless function", "SELECT pg_catalog.lower('X')"),
    allow("SELECT 1 WHERE 1 = 1 is no write", "SELECT 1 WHERE 1 = 1"),
    allow("VALUES", "VALUES (1), (2)"),
    allow("TABLE", "TABLE gr_orders"),
    allow("FOR UPDATE", "SELECT * FROM gr_orders WHERE id = 1 FOR UPDATE"),
    allow("a cursor and WHERE CURRENT OF",
          "DECLARE gr_cur CURSOR FOR SELECT * FROM gr_orders FOR UPDATE; "
          "FETCH 1 FROM gr_cur; UPDATE gr_orders SET note = 'c' WHERE CURRENT OF gr_cur"),
    allow("CREATE TABLE", "CREATE TABLE gr_new (id int)"),
    allow("CREATE TABLE with a harmless default",
          "CREATE TABLE gr_new2 (a text DEFAULT lower('X'))"),
    allow("CREATE TABLE AS of orders", "CREATE TABLE gr_copy AS SELECT * FROM gr_orders"),
    allow("SELECT INTO", "SELECT * INTO gr_copy2 FROM gr_orders"),
    allow("a temporary table", "CREATE TEMP TABLE gr_tmp AS SELECT * FROM gr_payments"),
    allow("an index on an expression", "CREATE INDEX gr_idx ON gr_orders (lower(note))"),
    allow("a view of orders", "CREATE VIEW gr_view AS SELECT id FROM gr_orders"),
    allow("a SQL function", "CREATE FUNCTION gr_inc(i int) RETURNS int LANGUAGE sql "
          "AS 'SELECT i + 1'"),
    allow("a BEGIN ATOMIC function", "CREATE FUNCTION gr_count() RETURNS bigint LANGUAGE sql "
          "BEGIN ATOMIC SELECT count(*) FROM gr_orders; END"),
    allow("a PL/pgSQL function with a bounded write",
          "CREATE FUNCTION gr_touch(i int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
          "UPDATE gr_orders SET note = 't' WHERE id = i; END $$"),
    allow("a trigger on a harmless function",
          "CREATE FUNCTION gr_trf() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; "
          "END $$; CREATE TRIGGER gr_trg BEFORE INSERT ON gr_orders FOR EACH ROW "
          "EXECUTE FUNCTION gr_trf()"),
    allow("a rule that notifies", "CREATE RULE gr_rule AS ON INSERT TO gr_orders "
          "DO ALSO NOTIFY gr_channel"),
    allow("a comment on a table", "COMMENT ON TABLE gr_orders IS 'orders'"),
    allow("a DO block that raises a notice", "DO $$ BEGIN RAISE NOTICE 'hello'; END $$"),
    allow("a DO block that reads",
          "DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM gr_orders; "
          "RAISE NOTICE '%', n; END $$"),
    allow("a DO block with a condition on a read",
          "DO $$ BEGIN IF (SELECT count(*) FROM gr_payments) > 0 THEN "
          "UPDATE gr_orders SET note = 'p' WHERE id = 1; END IF; END $$"),
    allow("a DO block that reads payments with PERFORM",
          "DO $$ BEGIN PERFORM sum(amount) FROM gr_payments; END $$"),
    allow("COPY of a table to the client", "COPY gr_orders TO STDOUT", copy_stdio=True),
    allow("COPY of a query to the client",
          "COPY (SELECT id FROM gr_orders WHERE id < 3) TO STDOUT", copy_stdio=True),
    allow("a MERGE bounded by its join",
          "MERGE INTO gr_orders o USING (SELECT 1 AS id) s ON o.id = s.id "
          "WHEN MATCHED THEN DELETE"),
    allow("a MERGE that inserts",
          "MERGE INTO gr_orders o USING (SELECT 99 AS id) s ON o.id = s.id "
          "WHEN NOT MATCHED THEN INSERT (id, note) VALUES (s.id, 'm')"),
    allow("a MERGE that updates matched rows",
          "MERGE INTO gr_orders o USING gr_accounts a ON o.id = a.id "
          "WHEN MATCHED AND 1 = 1 THEN UPDATE SET note = a.name"),
    allow("SET LOCAL", "SET LOCAL work_mem = '8MB'"),
    allow("SHOW", "SHOW work_mem"),
    allow("set_config of a harmless setting", "SELECT set_config('application_name', 'gr', true)"),
    allow("ANALYZE", "ANALYZE gr_orders"),
    allow("LOCK", "LOCK TABLE gr_orders IN SHARE MODE"),
    allow("NOTIFY", "NOTIFY gr_channel, 'x'"),
    allow("a correlated subquery", "SELECT * FROM gr_accounts a WHERE EXISTS "
          "(SELECT 1 FROM gr_orders o WHERE o.id = a.id)"),
    allow("several harmless statements", "SELECT 1; SELECT 2; UPDATE gr_orders SET note = 'm' "
          "WHERE id = 5"),
    allow("a PREPARE then EXECUTE in one string",
          "PREPARE gr_p_exec AS SELECT * FROM gr_orders WHERE id = $1; EXECUTE gr_p_exec(1)"),
    # --- unbounded writes, in all their spellings ---------------------------------
    deny("DELETE without WHERE", "DELETE FROM gr_orders", UNBOUNDED),
    deny("UPDATE without WHERE", "UPDATE gr_orders SET note = 'x'", UNBOUNDED),
    deny("WHERE 1=1", "DELETE FROM gr_orders WHERE 1=1", UNBOUNDED),
    deny("WHERE 'a'='a'", "DELETE FROM gr_orders WHERE 'a' = 'a'", UNBOUNDED),
    deny("WHERE true", "UPDATE gr_orders SET note = 'x' WHERE true", UNBOUNDED),
    deny("WHERE NOT false", "DELETE FROM gr_orders WHERE NOT false", UNBOUNDED),
    deny("WHERE an OR with a true branch", "DELETE FROM gr_orders WHERE id = 1 OR 1 = 1",
         UNBOUNDED),
    deny("WHERE IS NOT NULL of a constant", "DELETE FROM gr_orders WHERE 1 IS NOT NULL",
         UNBOUNDED),
    deny("WHERE a cast of a constant", "DELETE FROM gr_orders WHERE 't'::boolean", UNBOUNDED),
    deny("WHERE CAST(1 AS boolean)", "DELETE FROM gr_orders WHERE CAST(1 AS boolean)", UNBOUNDED),
    deny("WHERE a string read as true", "DELETE FROM gr_orders WHERE 'yes'", UNBOUNDED),
    deny("WHERE (1=1) IS TRUE", "DELETE FROM gr_orders WHERE (1 = 1) IS TRUE", UNBOUNDED),
    deny("WHERE 1 < 2", "DELETE FROM gr_orders WHERE 1 < 2", UNBOUNDED),
    deny("WHERE NOT (1 = 2)", "UPDATE gr_orders SET note = 'x' WHERE NOT (1 = 2)", UNBOUNDED),
    deny("WHERE 1 IS DISTINCT FROM 2", "DELETE FROM gr_orders WHERE 1 IS DISTINCT FROM 2",
         UNBOUNDED),
    deny("WHERE a condition on no row", "DELETE FROM gr_orders WHERE now() > '2000-01-01'",
         UNBOUNDED),
    deny("WHERE EXISTS of a constant query", "DELETE FROM gr_orders WHERE EXISTS (SELECT 1)",
         UNBOUNDED),
    deny("WHERE only another table's column", "DELETE FROM gr_orders o USING gr_accounts a "
         "WHERE a.id = 1", UNBOUNDED),
    deny("a comment inside the statement", "DELETE /* harmless */ FROM gr_orders", UNBOUNDED),
    deny("a line comment between keywords", "DELETE -- nothing here\nFROM gr_orders", UNBOUNDED),
    deny("a comment between FROM and the table", "DELETE FROM/**/gr_orders", UNBOUNDED),
    deny("a nested comment before the statement", "/* a /* nested */ comment */ DELETE FROM "
         "gr_orders", UNBOUNDED),
    deny("mixed case keywords and names", "dElEtE fRoM GR_Orders", UNBOUNDED),
    deny("a quoted table name", 'DELETE FROM "gr_orders"', UNBOUNDED),
    deny("a schema-qualified table", "DELETE FROM public.gr_orders WHERE TRUE", UNBOUNDED),
    deny("an alias", "DELETE FROM gr_orders AS o WHERE o.id = o.id OR true", UNBOUNDED),
    deny("ONLY", "DELETE FROM ONLY gr_orders", UNBOUNDED),
    deny("a data-modifying CTE", "WITH d AS (DELETE FROM gr_orders RETURNING *) "
         "SELECT count(*) FROM d", UNBOUNDED),
    deny("an UPDATE in a CTE under an INSERT", "WITH u AS (UPDATE gr_orders SET note = 'x' "
         "RETURNING id) INSERT INTO gr_accounts SELECT id + 100, 'n' FROM u", UNBOUNDED),
    deny("a CTE named like the table", "WITH gr_orders AS (SELECT 1) DELETE FROM gr_orders",
         UNBOUNDED),
    deny("SELECT 1 then an unbounded DELETE", "SELECT 1; DELETE FROM gr_orders", UNBOUNDED),
    deny("an unbounded DELETE after a harmless one",
         "DELETE FROM gr_orders WHERE id = 1; DELETE FROM gr_orders", UNBOUNDED),
    deny("EXPLAIN ANALYZE runs the DELETE", "EXPLAIN ANALYZE DELETE FROM gr_orders", UNBOUNDED),
    deny("EXPLAIN with the last ANALYZE true", "EXPLAIN (ANALYZE false, ANALYZE true) "
         "DELETE FROM gr_orders", UNBOUNDED),
    deny("EXPLAIN ANALYZE of a CTE", "EXPLAIN (ANALYZE, COSTS off) WITH d AS "
         "(UPDATE gr_orders SET note = 'e' RETURNING 1) SELECT * FROM d", UNBOUNDED),
    deny("PREPARE of an unbounded DELETE", "PREPARE gr_p_del AS DELETE FROM gr_orders", UNBOUNDED),
    deny("PREPARE of a constant-true UPDATE",
         "PREPARE gr_p_upd2 AS UPDATE gr_orders SET note = $1 WHERE 1 = 1", UNBOUNDED),
    deny("PREPARE then EXECUTE of an unbounded DELETE",
         "PREPARE gr_p_del2 AS DELETE FROM gr_orders; EXECUTE gr_p_del2", UNBOUNDED),
    deny("a DO block that deletes everything", "DO $$ BEGIN DELETE FROM gr_orders; END $$",
         UNBOUNDED),
    deny("a DO block in lower case with an odd tag",
         "do $body$ begin delete from GR_ORDERS where TRUE; end $body$", UNBOUNDED),
    deny("a DO block hiding the DELETE in a branch",
         "DO $$ BEGIN IF true THEN UPDATE gr_orders SET note = 'x'; END IF; END $$", UNBOUNDED),
    deny("a DO block hiding the DELETE in a loop",
         "DO $$ DECLARE r record; BEGIN FOR r IN SELECT 1 LOOP DELETE FROM gr_orders WHERE 1 = 1;"
         " END LOOP; END $$", UNBOUNDED),
    deny("a DO block in an exception handler",
         "DO $$ BEGIN PERFORM 1; EXCEPTION WHEN others THEN DELETE FROM gr_orders; END $$",
         UNBOUNDED),
    deny("a DO block nested in a DO block",
         "DO $a$ BEGIN DO $b$ BEGIN DELETE FROM gr_orders; END $b$; END $a$", UNBOUNDED),
    deny("a MERGE that deletes every matched row",
         "MERGE INTO gr_orders o USING gr_orders s ON true WHEN MATCHED THEN DELETE", UNBOUNDED),
    deny("a MERGE that updates every row", "MERGE INTO gr_orders o USING (SELECT 1) s ON 1 = 1 "
         "WHEN MATCHED THEN UPDATE SET note = 'x'", UNBOUNDED),
    deny("a MERGE NOT MATCHED BY SOURCE with ON false", "MERGE INTO gr_orders o USING gr_accounts"
         " a ON false WHEN NOT MATCHED BY SOURCE THEN DELETE", UNBOUNDED),
    deny("a rule that deletes everything",
         "CREATE RULE gr_r1 AS ON INSERT TO gr_orders DO ALSO DELETE FROM gr_orders", UNBOUNDED),
    deny("a SQL function that deletes everything",
         "CREATE FUNCTION gr_wipe() RETURNS void LANGUAGE sql AS 'DELETE FROM gr_orders'",
         UNBOUNDED),
    deny("a BEGIN ATOMIC function that updates everything",
         "CREATE FUNCTION gr_wipe2() RETURNS void LANGUAGE sql BEGIN ATOMIC "
         "UPDATE gr_orders SET note = 'w'; END", UNBOUNDED),
    deny("a PL/pgSQL function that deletes everything",
         "CREATE FUNCTION gr_wipe3() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
         "DELETE FROM gr_orders; END $$", UNBOUNDED),
    # --- dangerous functions, wherever they are named ----------------------------
    deny("pg_read_file", "SELECT pg_read_file('/etc/passwd')", FILES),
    deny("pg_read_file in mixed case", "SELECT PG_Read_File('/etc/passwd')", FILES),
    deny("pg_read_file quoted", "SELECT \"pg_read_file\"('/etc/passwd')", FILES),
    deny("pg_read_file schema-qualified", "SELECT pg_catalog.pg_read_file('/etc/passwd')", FILES),
    deny("pg_read_file with a comment before its parenthesis",
         "SELECT pg_read_file /* x */ ('/etc/passwd')", FILES),
    deny("pg_read_file with named arguments", "SELECT pg_read_file(filename => '/etc/passwd')",
         FILES),
    deny("pg_read_file in a subquery", "SELECT * FROM gr_orders WHERE note IN "
         "(SELECT pg_read_file('/etc/passwd'))", FILES),
    deny("pg_ls_dir in a scalar subquery", "SELECT (SELECT pg_ls_dir('.') LIMIT 1)", FILES),
    deny("pg_ls_dir in ROWS FROM", "SELECT * FROM ROWS FROM (pg_ls_dir('.')) AS t", FILES),
    deny("pg_stat_file in a CTE", "WITH x AS (SELECT pg_stat_file('/')) SELECT 1", FILES),
    deny("lo_import in EXISTS", "SELECT count(*) FROM gr_orders WHERE EXISTS "
         "(SELECT lo_import('/etc/passwd'))", FILES),
    deny("pg_read_binary_file in a lateral join", "SELECT * FROM gr_orders, LATERAL "
         "(SELECT pg_read_binary_file('/etc/passwd')) AS f", FILES),
    deny("pg_read_file in an ORDER BY", "SELECT id FROM gr_orders ORDER BY "
         "pg_read_file('/etc/passwd')", FILES),
    deny("pg_read_file in a window", "SELECT count(*) OVER (PARTITION BY "
         "pg_read_file('/etc/passwd')) FROM gr_orders", FILES),
    deny("pg_read_file after a harmless statement", "SELECT 1; SELECT pg_read_file('/x')", FILES),
    deny("pg_read_file under EXPLAIN", "EXPLAIN SELECT pg_read_file('/etc/passwd')", FILES),
    deny("a column default", "CREATE TABLE gr_evil (a text DEFAULT pg_read_file('/etc/passwd'))",
         FILES),
    deny("a default set by ALTER", "ALTER TABLE gr_orders ALTER COLUMN note "
         "SET DEFAULT pg_read_file('/etc/passwd')", FILES),
    deny("a generated column", "CREATE TABLE gr_evil2 (a text GENERATED ALWAYS AS "
         "(pg_read_file('/etc/passwd')) STORED)", FILES),
    deny("a CHECK constraint", "CREATE TABLE gr_evil3 (a text CHECK "
         "(pg_read_file(a) IS NOT NULL))", FILES),
    deny("an index expression", "CREATE INDEX gr_evil_idx ON gr_orders "
         "((pg_read_file(note)))", FILES),
    deny("a parameter default", "CREATE FUNCTION gr_f0(a text DEFAULT pg_read_file('/x')) "
         "RETURNS text LANGUAGE sql AS 'SELECT a'", FILES),
    deny("a SQL function string body", "CREATE FUNCTION gr_f1() RETURNS text LANGUAGE sql "
         "AS $$ SELECT pg_read_file('/etc/passwd') $$", FILES),
    deny("a SQL function body quoted with quotes", "CREATE FUNCTION gr_f2() RETURNS text "
         "LANGUAGE sql AS 'SELECT pg_read_file(''/etc/passwd'')'", FILES),
    deny("a BEGIN ATOMIC body", "CREATE FUNCTION gr_f3() RETURNS text LANGUAGE sql "
         "BEGIN ATOMIC SELECT pg_read_file('/etc/passwd'); END", FILES),
    deny("a RETURN body", "CREATE FUNCTION gr_f4() RETURNS text LANGUAGE sql "
         "RETURN pg_read_file('/etc/passwd')", FILES),
    deny("a PL/pgSQL body", "CREATE FUNCTION gr_f5() RETURNS text LANGUAGE plpgsql AS $$ "
         "BEGIN RETURN pg_read_file('/etc/passwd'); END $$", FILES),
    deny("a procedure body", "CREATE PROCEDURE gr_p1() LANGUAGE sql AS $$ "
         "SELECT pg_ls_dir('.') $$", FILES),
    deny("a view", "CREATE VIEW gr_evil_view AS SELECT pg_read_file('/etc/passwd')", FILES),
    deny("a materialized view", "CREATE MATERIALIZED VIEW gr_evil_mv AS "
         "SELECT pg_ls_dir('.')", FILES),
    deny("a DO block", "DO $$ BEGIN PERFORM pg_read_file('/etc/passwd'); END $$", FILES),
    deny("a DO block assignment", "DO $$ DECLARE t text; BEGIN t := pg_read_file('/etc/passwd');"
         " END $$", FILES),
    deny("a DO block default", "DO $$ DECLARE t text := pg_read_file('/etc/passwd'); BEGIN "
         "NULL; END $$", FILES),
    deny("an operator bound to pg_read_file", "CREATE OPERATOR === (LEFTARG = text, RIGHTARG = "
         "boolean, FUNCTION = pg_read_file)", FILES),
    deny("an operator bound by its old PROCEDURE name", "CREATE OPERATOR ### (RIGHTARG = text, "
         "PROCEDURE = pg_catalog.pg_read_file)", FILES),
    deny("a trigger on pg_read_file", "CREATE TRIGGER gr_evil_trg BEFORE INSERT ON gr_orders "
         "FOR EACH ROW EXECUTE FUNCTION pg_read_file()", FILES),
    deny("an event trigger on pg_ls_dir", "CREATE EVENT TRIGGER gr_evt ON ddl_command_start "
         "EXECUTE FUNCTION pg_ls_dir()", FILES),
    deny("an aggregate whose state function is pg_read_file", "CREATE AGGREGATE gr_agg(text) "
         "(SFUNC = pg_read_file, STYPE = text)", FILES),
    deny("an aggregate whose final function is pg_read_file", "CREATE AGGREGATE gr_agg2(text) "
         "(SFUNC = textcat, STYPE = text, FINALFUNC = pg_read_file)", FILES),
    deny("a cast through pg_read_file", "CREATE CAST (text AS point) WITH FUNCTION "
         "pg_read_file(text)", FILES),
    deny("a type whose input is pg_read_file", "CREATE TYPE gr_ty (INPUT = pg_read_file, "
         "OUTPUT = textout)", FILES),
    deny("a rule action that reads a file", "CREATE RULE gr_r2 AS ON INSERT TO gr_orders "
         "DO ALSO SELECT pg_read_file('/etc/passwd')", FILES),
    deny("a policy expression", "CREATE POLICY gr_pol ON gr_orders USING "
         "(pg_read_file('/etc/passwd') IS NOT NULL)", FILES),
    deny("query_to_xml with a query that reads a file", "SELECT query_to_xml('SELECT "
         "pg_read_file(''/etc/passwd'')', true, false, '')", FILES),
    deny("pg_terminate_backend", "SELECT pg_terminate_backend(pg_backend_pid())", ADMIN),
    deny("pg_cancel_backend in a subquery", "SELECT (SELECT pg_cancel_backend(0))", ADMIN),
    deny("pg_reload_conf", "SELECT pg_catalog.pg_reload_conf()", ADMIN),
    # --- SQL run from text: DYNAMIC ---------------------------------------------
    deny("query_to_xml", "SELECT query_to_xml('SELECT 1', true, false, '')", DYNAMIC),
    deny("query_to_xml schema-qualified", "SELECT pg_catalog.query_to_xml('SELECT * FROM "
         "gr_orders', true, false, '')", DYNAMIC),
    deny("query_to_xml with built text", "SELECT query_to_xml('SELECT ' || '1', true, true, '')",
         DYNAMIC),
    deny("query_to_xml in a subquery", "SELECT * FROM gr_orders WHERE note = "
         "(SELECT query_to_xml('SELECT 1', true, true, '')::text)", DYNAMIC),
    deny("query_to_xmlschema", "SELECT query_to_xmlschema('SELECT 1', true, false, '')", DYNAMIC),
    deny("query_to_xml_and_xmlschema", "SELECT query_to_xml_and_xmlschema('SELECT 1', true, "
         "false, '')", DYNAMIC),
    deny("table_to_xml reads a table named by a value", "SELECT table_to_xml('gr_vault.keys', "
         "true, false, '')", DYNAMIC),
    deny("cursor_to_xml", "SELECT cursor_to_xml('c', 1, true, false, '')", DYNAMIC),
    deny("database_to_xml", "SELECT database_to_xml(true, false, '')", DYNAMIC),
    deny("schema_to_xml", "SELECT schema_to_xml('gr_vault', true, false, '')", DYNAMIC),
    deny("ts_stat", "SELECT * FROM ts_stat('SELECT to_tsvector(note) FROM gr_orders')", DYNAMIC),
    deny("ts_rewrite with a query", "SELECT ts_rewrite('a & b'::tsquery, 'SELECT t, s FROM "
         "gr_aliases')", DYNAMIC),
    deny("dblink", "SELECT * FROM dblink('dbname=x', 'DELETE FROM gr_orders') AS t(a int)",
         DYNAMIC),
    deny("dblink_exec", "SELECT dblink_exec('dbname=x', 'DROP TABLE gr_orders')", DYNAMIC),
    deny("a DO block with EXECUTE", "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$", DYNAMIC),
    deny("a DO block with EXECUTE of a DELETE", "DO $$ BEGIN EXECUTE 'DELETE FROM gr_orders';"
         " END $$", DYNAMIC),
    deny("a DO block with EXECUTE format", "DO $$ BEGIN EXECUTE format('TRUNCATE %I', "
         "'gr_orders'); END $$", DYNAMIC),
    deny("a DO block with FOR IN EXECUTE", "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE "
         "'SELECT 1' LOOP END LOOP; END $$", DYNAMIC),
    deny("a PL/pgSQL function with EXECUTE", "CREATE FUNCTION gr_dyn(q text) RETURNS void "
         "LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; END $$", DYNAMIC),
    deny("an operator bound to query_to_xml", "CREATE OPERATOR ~~~ (LEFTARG = text, "
         "RIGHTARG = boolean, FUNCTION = query_to_xml)", DYNAMIC),
    # --- COPY to and from the server -------------------------------------------
    deny("COPY TO PROGRAM", "COPY gr_orders TO PROGRAM 'cat > /dev/null'", SERVER_COPY),
    deny("COPY FROM PROGRAM", "COPY gr_orders FROM PROGRAM 'echo 1'", SERVER_COPY),
    deny("COPY TO a file", "COPY gr_orders TO '/tmp/gr_orders.csv'", SERVER_COPY),
    deny("COPY FROM a file", "COPY gr_orders FROM '/etc/passwd'", SERVER_COPY),
    deny("COPY of a query TO PROGRAM", "COPY (SELECT * FROM gr_orders) TO PROGRAM 'cat'",
         SERVER_COPY),
    deny("COPY in lower case", "copy gr_orders to program 'cat'", SERVER_COPY),
    deny("COPY with options", "COPY gr_orders TO PROGRAM 'cat' WITH (FORMAT csv, HEADER)",
         SERVER_COPY),
    deny("COPY TO PROGRAM in a DO block", "DO $$ BEGIN COPY gr_orders TO PROGRAM 'cat'; END $$",
         SERVER_COPY),
    deny("COPY into payments from the client is an INSERT", "COPY gr_payments FROM STDIN",
         PAYMENTS),
    # --- code in untrusted languages --------------------------------------------
    deny("a DO block in an untrusted language", "DO LANGUAGE plperlu $$ system('id') $$",
         UNTRUSTED),
    deny("a function in an untrusted language", "CREATE FUNCTION gr_py() RETURNS int "
         "LANGUAGE plpython3u AS 'return 1'", UNTRUSTED),
    deny("a C function", "CREATE FUNCTION gr_c() RETURNS int LANGUAGE c AS 'gr_lib', 'gr_sym'",
         UNTRUSTED),
    deny("a language given as a string", "CREATE FUNCTION gr_py2() RETURNS int "
         "LANGUAGE 'plpython3u' AS 'return 1'", UNTRUSTED),
    # --- a read-only table ------------------------------------------------------
    deny("INSERT into payments", "INSERT INTO gr_payments VALUES (9, 1, 'x')", PAYMENTS),
    deny("UPDATE of payments with WHERE", "UPDATE gr_payments SET amount = 0 WHERE id = 1",
         PAYMENTS),
    deny("UPDATE of payments in mixed case", "update GR_PAYMENTS set AMOUNT = 0 where ID = 1",
         PAYMENTS),
    deny("DELETE from payments quoted and qualified", 'DELETE FROM "public"."gr_payments" '
         "WHERE id = 1", PAYMENTS),
    deny("an upsert into payments", "INSERT INTO gr_accounts VALUES (1, 'a') ON CONFLICT DO "
         "NOTHING; INSERT INTO gr_payments VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET "
         "amount = 0", PAYMENTS),
    deny("a write to payments in a CTE under a SELECT", "WITH u AS (UPDATE gr_payments SET "
         "amount = 0 WHERE id = 1 RETURNING id) SELECT * FROM u", PAYMENTS),
    deny("a write to payments under a harmless CTE", "WITH x AS (SELECT 1) "
         "DELETE FROM gr_payments WHERE id IN (SELECT * FROM x)", PAYMENTS),
    deny("INSERT into payments reading orders", "INSERT INTO gr_payments SELECT id + 100, 0, note "
         "FROM gr_orders", PAYMENTS),
    deny("a MERGE into payments", "MERGE INTO gr_payments p USING gr_orders o ON p.id = o.id "
         "WHEN MATCHED THEN DELETE", PAYMENTS),
    deny("TRUNCATE of payments", "TRUNCATE gr_payments", PAYMENTS),
    deny("a DO block that writes payments", "DO $$ BEGIN UPDATE gr_payments SET amount = 0 "
         "WHERE id = 1; END $$", PAYMENTS),
    deny("a rule that writes payments", "CREATE RULE gr_r3 AS ON UPDATE TO gr_orders DO ALSO "
         "UPDATE gr_payments SET amount = 0 WHERE id = NEW.id", PAYMENTS),
    deny("a PL/pgSQL function that writes payments", "CREATE FUNCTION gr_pay() RETURNS void "
         "LANGUAGE plpgsql AS $$ BEGIN DELETE FROM gr_payments WHERE id = 1; END $$", PAYMENTS),
    deny("PREPARE of a write to payments", "PREPARE gr_p_pay AS UPDATE gr_payments SET "
         "amount = $1 WHERE id = $2", PAYMENTS),
    deny("EXPLAIN ANALYZE of a write to payments", "EXPLAIN ANALYZE UPDATE gr_payments SET "
         "amount = 0 WHERE id = 1", PAYMENTS),
    deny("a harmless read then a write to payments",
         "SELECT 1 FROM gr_orders WHERE id = 1; DELETE FROM gr_payments WHERE id = 2", PAYMENTS),
    # --- a sealed schema ---------------------------------------------------------
    deny("a read of the vault", "SELECT * FROM gr_vault.keys", VAULT),
    deny("a read of the vault, quoted", 'SELECT * FROM "gr_vault"."keys"', VAULT),
    deny("a read of the vault in a lateral subquery", "SELECT * FROM gr_orders, LATERAL "
         "(SELECT * FROM gr_vault.keys) AS k", VAULT),
    deny("COPY of the vault to the client", "COPY gr_vault.keys TO STDOUT", VAULT),
    deny("COPY of a query on the vault", "COPY (SELECT * FROM gr_vault.keys) TO STDOUT", VAULT),
    deny("a view over the vault", "CREATE VIEW gr_vault_view AS SELECT * FROM gr_vault.keys",
         VAULT),
    deny("a DO block reading the vault", "DO $$ BEGIN PERFORM * FROM gr_vault.keys; END $$",
         VAULT),
    deny("DROP of a vault table", "DROP TABLE gr_vault.keys", VAULT),
    # --- schema changes need review ------------------------------------------------
    review("DROP TABLE", "DROP TABLE gr_orders"),
    review("SELECT 1 then DROP TABLE", "SELECT 1; DROP TABLE gr_orders"),
    review("DROP after a comment", "/* cleanup */ drop table if exists gr_orders"),
    review("ALTER TABLE", "ALTER TABLE gr_orders ADD COLUMN z int"),
    review("TRUNCATE", "TRUNCATE gr_orders"),
    review("GRANT", "GRANT SELECT ON gr_orders TO PUBLIC"),
    review("REVOKE", "REVOKE SELECT ON gr_orders FROM PUBLIC"),
    review("DROP FUNCTION", "DROP FUNCTION IF EXISTS gr_nothing()"),
    # --- reads that are logged ---------------------------------------------------
    log("a read of the secrets table", 'SELECT * FROM "GrSecrets"'),
    log("a read of the secrets table, qualified", 'SELECT count(*) FROM public."GrSecrets"'),
    log("a bounded update of the secrets table", "UPDATE \"GrSecrets\" SET v = 'x' WHERE id = 1"),
    log("a DO block reading the secrets table",
        'DO $$ BEGIN PERFORM count(*) FROM "GrSecrets"; END $$'),
]  # fmt: skip
