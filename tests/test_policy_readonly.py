"""``spec.readOnly``: what a read-only policy refuses, as ``policy explain`` and the proxy see it.

The first table is statements a read-only subject must not run, with the rule
that refuses them; the second what must still pass. The live proxy's side
(PostgreSQL enforcing read-only, ParameterStatus) is in test_proxy_readonly.py.
"""

from __future__ import annotations

import pytest
import yaml

from steward_proxy.policy import compile_documents, decide
from steward_proxy.policy.readonly import READ_COMMANDS, read_only_violation, writes
from steward_proxy.sql import ShapeCache, analyze

from sessionkit import IDENTITY

READ_ONLY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: ro}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  readOnly: true
  guardrails:
    - {name: no-file-access, match: {functions: [pg_read_file]}, action: deny}
    - {name: inserts-logged, match: {statements: [INSERT]}, action: log}
    - {name: drops-reviewed, match: {statements: [DROP]}, action: review}
  approval:
    approvers: [{kind: Group, name: dba}]
"""


def verdict(sql: str, policy: str = READ_ONLY) -> tuple[str, str | None, str]:
    policies = compile_documents(list(yaml.safe_load_all(policy))).policies_for(IDENTITY)
    decision = decide(policies, analyze(sql, cache=ShapeCache(0)))
    return decision.action, decision.rule, decision.message


REFUSED: dict[str, str] = {
    "a plain DELETE": "DELETE FROM t WHERE id = 1",
    "a data-modifying CTE": "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "EXPLAIN ANALYZE of an UPDATE": "EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE id = 2",
    "a DO block that inserts": "DO $$ BEGIN INSERT INTO t VALUES (1); END $$",
    "a DO block with dynamic SQL": "DO $$ BEGIN EXECUTE 'SELECT 1'; END $$",
    "a DO block in another language": "DO LANGUAGE plperl $$ 1 $$",
    "a function that runs SQL text": "SELECT query_to_xml('SELECT 1', true, false, '')",
    "a PREPARE of a write": "PREPARE p AS DELETE FROM t",
    "COPY FROM": "COPY t FROM STDIN",
    "CREATE TEMP TABLE": "CREATE TEMP TABLE x (a int)",
    "SELECT INTO": "SELECT * INTO x FROM t",
    "TRUNCATE": "TRUNCATE t",
    "a procedure call, which may commit": "CALL p()",
    "LOCK, which blocks writers": "LOCK TABLE t",
    "VACUUM": "VACUUM t",
    "an INSERT a log rule would let through": "INSERT INTO t VALUES (1)",
    "a DROP a review rule would hold": "DROP TABLE t",
    "SET default_transaction_read_only off": "SET default_transaction_read_only = off",
    "SET it to false, quoted": "SET default_transaction_read_only TO 'false'",
    "SET LOCAL to 0": "SET LOCAL default_transaction_read_only = 0",
    "SET it in upper case": ('SET "DEFAULT_TRANSACTION_READ_ONLY" = off'),
    "SET it to DEFAULT": "SET default_transaction_read_only TO DEFAULT",
    "RESET it": "RESET default_transaction_read_only",
    "SET transaction_read_only off": "SET transaction_read_only = off",
    "SET SESSION CHARACTERISTICS ... READ WRITE": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"
    ),
    "SET SESSION CHARACTERISTICS with isolation and READ WRITE": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE"
    ),
    "SET TRANSACTION READ WRITE": "SET TRANSACTION READ WRITE",
    "BEGIN READ WRITE": "BEGIN READ WRITE",
    "BEGIN TRANSACTION ISOLATION LEVEL ... READ WRITE": (
        "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE"
    ),
    "START TRANSACTION READ WRITE": "START TRANSACTION READ WRITE",
    "set_config of default_transaction_read_only": (
        "SELECT set_config('default_transaction_read_only', 'off', false)"
    ),
    "set_config of transaction_read_only in a subquery": (
        "SELECT * FROM (SELECT set_config('transaction_read_only', 'off', true)) s"
    ),
    "set_config with a computed value": (
        "SELECT set_config('default_transaction_read_only', current_setting('x'), false)"
    ),
    "a DO block that turns it off": (
        "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); END $$"
    ),
    "a function created with it off": (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql "
        "SET default_transaction_read_only = off AS 'SELECT 1'"
    ),
    "a DO block that commits": "DO $$ BEGIN PERFORM 1; COMMIT; PERFORM 2; END $$",
    "a DO block that rolls back": "DO $$ BEGIN ROLLBACK; END $$",
    "more after COMMIT in one string": "SELECT f(); COMMIT; SELECT g()",
    "more after END in one string": "BEGIN; SELECT 1; END; SELECT 2",
    "more after ROLLBACK in one string": "SELECT 1; ROLLBACK; SELECT 2",
    "ALTER ROLE ... SET it": "ALTER ROLE alice SET default_transaction_read_only = off",
}


@pytest.mark.parametrize("sql", REFUSED.values(), ids=REFUSED.keys())
def test_a_read_only_subject_is_refused(sql: str) -> None:
    action, rule, message = verdict(sql)
    assert (action, rule) == ("deny", "readOnly"), message
    assert message.startswith("statement denied by policy default/ro rule readOnly: ")


def test_a_denying_guardrail_keeps_its_own_message() -> None:
    assert verdict("SELECT pg_read_file('x')")[:2] == ("deny", "no-file-access")


ALLOWED: dict[str, str] = {
    "a read": "SELECT * FROM t WHERE id = 1",
    "a read with a volatile function (PostgreSQL judges it)": "SELECT nextval('s')",
    "a plain EXPLAIN of a write": "EXPLAIN DELETE FROM t",
    "a transaction": "BEGIN",
    "a read-only transaction": "BEGIN READ ONLY",
    "an isolation level": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "SET TRANSACTION READ ONLY": "SET TRANSACTION READ ONLY",
    "turning read-only on again": "SET default_transaction_read_only = on",
    "SET SESSION CHARACTERISTICS ... READ ONLY": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
    ),
    "another setting": "SET statement_timeout = '5s'",
    "RESET ALL": "RESET ALL",
    "COPY TO": "COPY t TO STDOUT",
    "a DO block that only reads": "DO $$ BEGIN PERFORM count(*) FROM t; END $$",
    "a PREPARE of a read": "PREPARE p AS SELECT * FROM t",
    "EXECUTE (judged by what it runs, in the session)": "EXECUTE p",
    "a cursor": "DECLARE c CURSOR FOR SELECT * FROM t",
    "SHOW": "SHOW default_transaction_read_only",
    "COMMIT": "COMMIT",
    "a transaction in one string, ending it last": "BEGIN; SELECT 1; SELECT 2; COMMIT",
}


@pytest.mark.parametrize("sql", ALLOWED.values(), ids=ALLOWED.keys())
def test_a_read_only_subject_may_read(sql: str) -> None:
    action, _, message = verdict(sql)
    assert action == "allow", message


def test_without_read_only_the_same_writes_follow_the_guardrails() -> None:
    policy = READ_ONLY.replace("  readOnly: true\n", "")
    assert verdict("DELETE FROM t WHERE id = 1", policy)[0] == "allow"
    assert verdict("INSERT INTO t VALUES (1)", policy)[:2] == ("log", "inserts-logged")
    assert verdict("SET default_transaction_read_only = off", policy)[0] == "allow"


def test_read_only_applies_when_any_policy_of_the_subject_says_so() -> None:
    other = READ_ONLY.replace("name: ro}", "name: rw}").replace("  readOnly: true\n", "")
    assert verdict("DELETE FROM t WHERE id = 1", f"{other}---\n{READ_ONLY}")[:2] == (
        "deny",
        "readOnly",
    )


def test_dynamic_counts_as_a_write_and_reads_do_not() -> None:
    assert writes("DYNAMIC") and writes("INSERT") and writes("CALL")
    assert not any(writes(command) for command in READ_COMMANDS)


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ([("default_transaction_read_only", "off")], True),
        ([("transaction_read_only", "no")], True),
        ([("default_transaction_read_only", None)], True),
        ([("default_transaction_read_only", "on"), ("transaction_read_only", "true")], False),
        ([("statement_timeout", "0")], False),
    ],
    ids=["off", "no", "default", "on", "another"],
)
def test_settings_that_turn_read_only_off(
    settings: list[tuple[str, str | None]], refused: bool
) -> None:
    assert (read_only_violation(settings) is not None) is refused


@pytest.mark.parametrize(
    ("sql", "settings"),
    [
        ("BEGIN READ WRITE", (("transaction_read_only", "off"),)),
        ("START TRANSACTION READ ONLY", (("transaction_read_only", "on"),)),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE, DEFERRABLE",
            (
                ("transaction_isolation", "serializable"),
                ("transaction_read_only", "off"),
                ("transaction_deferrable", "on"),
            ),
        ),
        ("SET TRANSACTION READ WRITE", (("transaction_read_only", "off"),)),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            (("default_transaction_read_only", "off"),),
        ),
        ("BEGIN", ()),
    ],
)
def test_transaction_characteristics_are_settings(
    sql: str, settings: tuple[tuple[str, str], ...]
) -> None:
    (info,) = analyze(sql, cache=ShapeCache(0))
    assert info.settings == settings


def test_read_write_and_read_only_never_share_a_cache_entry() -> None:
    cache: ShapeCache[object] = ShapeCache()
    (write,) = analyze("BEGIN READ WRITE", cache=cache)  # type: ignore[arg-type]
    (read,) = analyze("BEGIN READ ONLY", cache=cache)  # type: ignore[arg-type]
    assert write.settings != read.settings


def test_the_crd_accepts_read_only_and_refuses_anything_but_a_boolean() -> None:
    assert compile_documents(list(yaml.safe_load_all(READ_ONLY))).policies[0].read_only
    from steward_proxy.policy import PolicyError

    with pytest.raises(PolicyError, match="readOnly"):
        compile_documents(list(yaml.safe_load_all(READ_ONLY.replace("true", "'yes'"))))
