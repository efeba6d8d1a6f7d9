"""Validation and loading of policy documents: every bad document is named precisely."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from steward_proxy.policy import (
    PolicyError,
    compile_documents,
    load_documents,
    load_policy_set,
    parse_duration,
    validate,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"

POLICY: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "DatabaseAccessPolicy",
    "metadata": {"name": "orders-app", "namespace": "shop"},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "orders"}],
        "defaultAction": "allow",
        "guardrails": [
            {
                "name": "no-unbounded-writes",
                "match": {"statements": ["UPDATE", "DELETE"], "withoutWhere": True},
                "action": "deny",
                "message": "UPDATE/DELETE needs a WHERE clause",
            },
            {
                "name": "schema-changes-need-review",
                "match": {"statements": ["DROP", "ALTER"]},
                "action": "review",
            },
        ],
        "approval": {"approvers": [{"kind": "Group", "name": "dba"}], "ttl": "15m"},
    },
}

MASKING: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "MaskingRule",
    "metadata": {"name": "pii-default", "namespace": "shop"},
    "spec": {
        "rules": [
            {"columns": ["public.users.email"], "strategy": "email"},
            {"dataClasses": ["CREDIT_CARD"], "strategy": "partial", "keepLast": 4},
        ]
    },
}

REVIEW: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "QueryReview",
    "metadata": {"name": "qr-1", "namespace": "shop"},
    "spec": {
        "subject": {"user": "user:alice", "groups": ["dev"]},
        "database": "orders",
        "statement": "DROP TABLE orders",
        "fingerprint": "abc123",
        "policy": "shop/orders-app",
        "rule": "schema-changes-need-review",
        "requestedAt": "2024-05-01T12:00:00Z",
    },
    "status": {"state": "Pending"},
}


def edited(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``base`` with the dotted ``path`` set to ``value`` (``DELETE`` removes it)."""
    doc = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(POLICY, id="a policy as in DESIGN is valid"),
        pytest.param(MASKING, id="a masking rule with columns and data classes is valid"),
        pytest.param(REVIEW, id="a query review with status is valid"),
        pytest.param(
            edited(POLICY, "metadata.namespace", DELETE), id="a policy without namespace is valid"
        ),
        pytest.param(
            edited(POLICY, "spec.approval.ttl", "1h30m"), id="a ttl of 1h30m is a valid duration"
        ),
        pytest.param(
            edited(MASKING, "spec.rules.0.strategy", "null"),
            id="the quoted null strategy is valid",
        ),
        pytest.param(
            edited(POLICY, "spec.guardrails.0.match", {"tables": ["payments", "*.secrets"]}),
            id="table globs with and without schema are valid",
        ),
        pytest.param(
            edited(
                POLICY,
                "spec.guardrails.0.match",
                {"statements": ["DYNAMIC", "COPY"], "copy": ["file", "program"]},
            ),
            id="DYNAMIC and COPY targets are valid",
        ),
        pytest.param(
            edited(POLICY, "spec.guardrails.0.match", {"languages": ["plpython3u", "pl*u"]}),
            id="language globs are valid",
        ),
        pytest.param(
            edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "keys", "key": ".k_1"}}),
            id="a hash key Secret reference is valid",
        ),
        pytest.param(
            edited(
                edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "keys", "key": "k"}}),
                "spec.database",
                {"host": "h", "name": "d", "credentialsSecretRef": {"name": "orders-db"}},
            ),
            id="a hash key in a Secret of its own beside the credentials Secret is valid",
        ),
    ],
)
def test_valid_documents_have_no_errors(doc: dict[str, Any]) -> None:
    assert validate(doc) == []


BAD = [
    ("wrong action enum", edited(POLICY, "spec.guardrails.0.action", "block"),
     "spec.guardrails[0].action: 'block' is not one of allow, deny, review, log"),
    ("wrong defaultAction enum", edited(POLICY, "spec.defaultAction", "review"),
     "spec.defaultAction: 'review' is not one of allow, deny"),
    ("missing subjects", edited(POLICY, "spec.subjects", DELETE),
     "spec.subjects: required field is missing"),
    ("empty subjects", edited(POLICY, "spec.subjects", []), "spec.subjects: must not be empty"),
    ("missing defaultAction", edited(POLICY, "spec.defaultAction", DELETE),
     "spec.defaultAction: required field is missing"),
    ("unknown subject kind", edited(POLICY, "spec.subjects.0.kind", "Robot"),
     "spec.subjects[0].kind: 'Robot' is not one of ServiceAccount, User, Group"),
    ("bad ttl", edited(POLICY, "spec.approval.ttl", "15 minutes"),
     "spec.approval.ttl: '15 minutes' is not valid: expected a duration such as 30s"),
    ("ttl in days", edited(POLICY, "spec.approval.ttl", "1d"), "spec.approval.ttl: '1d'"),
    ("unknown kind", edited(POLICY, "kind", "DatabasePolicy"),
     "kind: unknown kind 'DatabasePolicy'"),
    ("wrong apiVersion", edited(POLICY, "apiVersion", "steward.dev/v1"),
     "apiVersion: must be steward.dev/v1alpha1 (got 'steward.dev/v1')"),
    ("extra field in spec", edited(POLICY, "spec.owner", "me"), "spec.owner: unknown field"),
    ("extra field in a guardrail match", edited(POLICY, "spec.guardrails.0.match.where", True),
     "spec.guardrails[0].match.where: unknown field"),
    ("extra top-level field", edited(POLICY, "specs", {}), "specs: unknown field"),
    ("missing metadata.name", edited(POLICY, "metadata.name", DELETE),
     "metadata.name: required field is missing"),
    ("upper-case metadata.name", edited(POLICY, "metadata.name", "Orders"),
     "metadata.name: 'Orders' is not a valid name"),
    ("missing spec", edited(POLICY, "spec", DELETE), "spec: required field is missing"),
    ("unknown statement tag", edited(POLICY, "spec.guardrails.0.match.statements", ["UPSERT"]),
     "spec.guardrails[0].match.statements[0]: 'UPSERT' is not one of SELECT"),
    ("lower-case statement tag", edited(POLICY, "spec.guardrails.0.match.statements", ["drop"]),
     "spec.guardrails[0].match.statements[0]: 'drop' is not one of"),
    ("empty match", edited(POLICY, "spec.guardrails.0.match", {}),
     "spec.guardrails[0].match: must not be empty"),
    ("guardrail without action", edited(POLICY, "spec.guardrails.0.action", DELETE),
     "spec.guardrails[0].action: required field is missing"),
    ("an unknown COPY target", edited(POLICY, "spec.guardrails.0.match.copy", ["network"]),
     "spec.guardrails[0].match.copy[0]: 'network' is not one of stdio, file, program"),
    ("an empty COPY target list", edited(POLICY, "spec.guardrails.0.match.copy", []),
     "spec.guardrails[0].match.copy: must not be empty"),
    ("a language with a space", edited(POLICY, "spec.guardrails.0.match.languages", ["pl sql"]),
     "spec.guardrails[0].match.languages[0]: 'pl sql' is not valid: expected a language name"),
    ("withoutWhere as a string", edited(POLICY, "spec.guardrails.0.match.withoutWhere", "yes"),
     "spec.guardrails[0].match.withoutWhere: must be true or false, not a string"),
    ("bad guardrail name", edited(POLICY, "spec.guardrails.0.name", "No Writes"),
     "spec.guardrails[0].name: 'No Writes' does not match"),
    ("duplicate guardrail names", edited(POLICY, "spec.guardrails.1.name", "no-unbounded-writes"),
     "spec.guardrails[1].name: duplicate guardrail name 'no-unbounded-writes'"),
    ("review without approvers", edited(POLICY, "spec.approval", DELETE),
     "spec.guardrails[1].action: a guardrail with action review needs spec.approval.approvers"),
    ("port out of range", edited(POLICY, "spec.database", {"host": "h", "name": "d", "port": 0}),
     "spec.database.port: 0 is less than the minimum of 1"),
    ("a hash key reference without its key",
     edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "keys"}}),
     "spec.masking.hashKeySecretRef.key: required field is missing"),
    ("a hash key that climbs out of its directory",
     edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "keys", "key": "../key"}}),
     "spec.masking.hashKeySecretRef.key: '../key' is not valid: expected a key of the Secret"),
    ("a hash key Secret name that is not a DNS name",
     edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "a/b", "key": "k"}}),
     "spec.masking.hashKeySecretRef.name: 'a/b' is not valid: expected the name of a Secret"),
    ("a hash key Secret name ending in a newline",
     edited(POLICY, "spec.masking", {"hashKeySecretRef": {"name": "orders\n", "key": "k"}}),
     "spec.masking.hashKeySecretRef.name: 'orders\\n' is not valid: expected the name of a"),
    ("a ttl ending in a newline", edited(POLICY, "spec.approval.ttl", "15m\n"),
     "spec.approval.ttl: '15m\\n' is not valid: expected a duration"),
    ("a masked column ending in a newline",
     edited(MASKING, "spec.rules.0.columns", ["public.users.email\n"]),
     "spec.rules[0].columns[0]: 'public.users.email\\n' is not valid"),
    ("a metadata.name ending in a newline", edited(POLICY, "metadata.name", "orders\n"),
     "metadata.name: 'orders\\n' is not a valid name"),
    ("the hash key in the credentials Secret",
     edited(POLICY, "spec", {**POLICY["spec"],
            "database": {"host": "h", "name": "d", "credentialsSecretRef": {"name": "orders-db"}},
            "masking": {"hashKeySecretRef": {"name": "orders-db", "key": "hmac"}}}),
     "spec.masking.hashKeySecretRef.name: the hash key needs a Secret of its own, not the "
     "database credentials Secret (spec.database.credentialsSecretRef)"),
    ("negative keepLast", edited(MASKING, "spec.rules.1.keepLast", -1),
     "spec.rules[1].keepLast: -1 is less than the minimum of 0"),
    ("unknown masking strategy", edited(MASKING, "spec.rules.0.strategy", "scramble"),
     "spec.rules[0].strategy: 'scramble' is not one of redact, partial, email, hash, null"),
    ("unquoted null strategy", edited(MASKING, "spec.rules.0.strategy", None),
     'spec.rules[0].strategy: must be a string, not null (write the null strategy in quotes'),
    ("unknown data class", edited(MASKING, "spec.rules.1.dataClasses", ["CREDITCARD"]),
     "spec.rules[1].dataClasses[0]: 'CREDITCARD' is not one of EMAIL_ADDRESS"),
    ("masking rule with both columns and data classes",
     edited(MASKING, "spec.rules.0.dataClasses", ["US_SSN"]),
     "spec.rules[0]: give exactly one of columns, dataClasses"),
    ("masking rule with neither columns nor data classes",
     edited(MASKING, "spec.rules.0.columns", DELETE),
     "spec.rules[0]: give exactly one of columns, dataClasses"),
    ("single-part masking column", edited(MASKING, "spec.rules.0.columns", ["email"]),
     "spec.rules[0].columns[0]: 'email' is not valid"),
    ("query review with an unknown state is fine but missing fingerprint is not",
     edited(REVIEW, "spec.fingerprint", DELETE), "spec.fingerprint: required field is missing"),
    ("query review subject without groups", edited(REVIEW, "spec.subject.groups", DELETE),
     "spec.subject.groups: required field is missing"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "expected"),
    [pytest.param(doc, expected, id=f"{name} is an error") for name, doc, expected in BAD],
)
def test_invalid_documents_name_the_field(doc: dict[str, Any], expected: str) -> None:
    errors = validate(doc, file="policies/orders.yaml", index=3)
    assert errors, "expected a validation error"
    assert any(expected in e for e in errors), errors
    for error in errors:
        assert error.startswith("policies/orders.yaml: document 3 ")


def test_error_names_file_document_kind_and_resource() -> None:
    doc = edited(POLICY, "spec.defaultAction", "maybe")
    assert validate(doc, file="p.yaml", index=2) == [
        "p.yaml: document 2 (DatabaseAccessPolicy shop/orders-app): "
        "spec.defaultAction: 'maybe' is not one of allow, deny"
    ]


def test_every_problem_in_a_document_is_reported() -> None:
    doc = edited(edited(POLICY, "spec.defaultAction", "maybe"), "spec.subjects.0.kind", "Robot")
    assert len(validate(doc)) == 2


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param([1, 2], "a document must be a mapping, not a list", id="a list is rejected"),
        pytest.param("hello", "a document must be a mapping, not a string", id="a string is too"),
    ],
)
def test_non_mapping_documents_are_rejected(doc: Any, expected: str) -> None:
    assert validate(doc, index=1) == [f"document 1: {expected}"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2m5s", 125)],
)
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def _write(path: Path, *docs: str) -> Path:
    path.write_text("\n---\n".join(docs))
    return path


POLICY_YAML = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: dev}
spec:
  subjects: [{kind: User, name: dev}]
  defaultAction: allow
"""

MASKING_YAML = """\
apiVersion: steward.dev/v1alpha1
kind: MaskingRule
metadata: {name: pii}
spec:
  rules: [{columns: [users.email], strategy: email}]
"""


def test_a_directory_loads_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.yml", MASKING_YAML)
    _write(tmp_path / "a.yaml", POLICY_YAML, POLICY_YAML.replace("name: dev}", "name: dev2}"))
    _write(tmp_path / "notes.txt", "not: policy")
    _write(tmp_path / ".hidden.yaml", "this is: [not loaded")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "c.yaml", "not: [loaded")
    docs = load_documents([tmp_path])
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("DatabaseAccessPolicy", "dev"),
        ("DatabaseAccessPolicy", "dev2"),
        ("MaskingRule", "pii"),
    ]
    policy_set = load_policy_set([str(tmp_path)])
    assert [p.key for p in policy_set.policies] == ["default/dev", "default/dev2"]
    assert [m.key for m in policy_set.masking_rules] == ["default/pii"]
    assert policy_set.masking_rules[0].rules[0].columns == ("public.users.email",)


def test_empty_documents_are_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "", POLICY_YAML, "# just a comment\n")
    assert len(load_documents([path])) == 1


def test_one_invalid_document_fails_the_whole_load(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.yaml", POLICY_YAML)
    bad = _write(tmp_path / "bad.yaml", POLICY_YAML.replace("allow", "allwo"))
    with pytest.raises(PolicyError) as caught:
        load_policy_set([good, bad])
    assert caught.value.errors == (
        f"{bad}: document 1 (DatabaseAccessPolicy dev): "
        "spec.defaultAction: 'allwo' is not one of allow, deny",
    )


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file or directory"):
        load_policy_set([tmp_path / "nope.yaml"])


def test_a_directory_with_no_documents_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no policy documents found"):
        load_policy_set([tmp_path])


def test_yaml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "broken.yaml", "spec: [unclosed")
    with pytest.raises(PolicyError) as caught:
        load_documents([path])
    (error,) = caught.value.errors
    assert error.startswith(f"{path}: not valid YAML: ")
    assert "\n" not in error


def test_a_missing_masking_rule_fails_closed() -> None:
    doc = edited(POLICY, "spec.masking", {"rules": ["pii-default", "nope"]})
    with pytest.raises(PolicyError) as caught:
        compile_documents([doc, MASKING])
    assert caught.value.errors == (
        "document 1 (DatabaseAccessPolicy shop/orders-app): "
        "spec.masking.rules[1]: MaskingRule shop/nope is not defined",
    )


def test_a_masking_rule_in_another_namespace_does_not_count() -> None:
    doc = edited(POLICY, "spec.masking", {"rules": ["pii-default"]})
    with pytest.raises(PolicyError, match="MaskingRule shop/pii-default is not defined"):
        compile_documents([doc, edited(MASKING, "metadata.namespace", "other")])


def test_two_documents_with_one_name_are_an_error() -> None:
    with pytest.raises(PolicyError, match="is also defined by document 1"):
        compile_documents([POLICY, POLICY])


def test_query_reviews_validate_but_compile_to_nothing() -> None:
    policy_set = compile_documents([POLICY, REVIEW])
    assert [p.key for p in policy_set.policies] == ["shop/orders-app"]


def test_the_examples_load() -> None:
    policy_set = load_policy_set([EXAMPLES])
    assert {p.key for p in policy_set.policies} >= {"shop/orders-app", "dev/allow-all-dev"}
    assert [m.key for m in policy_set.masking_rules] == ["shop/pii-default"]
