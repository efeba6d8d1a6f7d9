"""``steward policy check`` and ``steward policy explain`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steward_proxy import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"


@pytest.fixture(autouse=True)
def only_policy_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Assemble just the ``policy`` command, independent of the other commands' modules."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("policy",))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_counts_for_valid_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "policy", "check", str(EXAMPLES))
    assert (code, err) == (0, "")
    assert out == "OK: 4 documents (3 policies, 1 masking rules)\n"


def test_check_prints_one_line_per_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: steward.dev/v1alpha1\n"
        "kind: DatabaseAccessPolicy\n"
        "metadata: {name: x, namespace: shop}\n"
        "spec:\n"
        "  subjects: [{kind: Robot, name: r}]\n"
        "  defaultAction: allow\n"
        "  guardrails: [{name: g, match: {statements: [UPDATE]}, action: block}]\n"
        "---\n"
        "apiVersion: steward.dev/v1\n"
        "kind: MaskingRule\n"
        "metadata: {name: m}\n"
        "spec: {rules: [{columns: [a.b], strategy: hash}]}\n"
    )
    code, out, err = run(capsys, "policy", "check", str(bad))
    assert code != 0
    assert out == ""
    assert err.splitlines() == [
        f"{bad}: document 1 (DatabaseAccessPolicy shop/x): "
        "spec.guardrails[0].action: 'block' is not one of allow, deny, review, log",
        f"{bad}: document 1 (DatabaseAccessPolicy shop/x): "
        "spec.subjects[0].kind: 'Robot' is not one of ServiceAccount, User, Group",
        f"{bad}: document 2 (MaskingRule m): "
        "apiVersion: must be steward.dev/v1alpha1 (got 'steward.dev/v1')",
    ]


def test_check_refuses_a_hash_key_in_the_credentials_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared.yaml"
    shared.write_text(
        "apiVersion: steward.dev/v1alpha1\n"
        "kind: DatabaseAccessPolicy\n"
        "metadata: {name: x, namespace: shop}\n"
        "spec:\n"
        "  subjects: [{kind: User, name: alice}]\n"
        "  defaultAction: allow\n"
        "  database: {host: h, name: d, credentialsSecretRef: {name: orders-db}}\n"
        "  masking: {hashKeySecretRef: {name: orders-db, key: hmac}}\n"
    )
    code, out, err = run(capsys, "policy", "check", str(shared))
    assert (code, out) == (1, "")
    assert err == (
        f"{shared}: document 1 (DatabaseAccessPolicy shop/x): spec.masking.hashKeySecretRef.name: "
        "the hash key needs a Secret of its own, not the database credentials Secret "
        "(spec.database.credentialsSecretRef)\n"
    )


def test_check_of_a_missing_path_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "check", str(tmp_path / "missing.yaml"))
    assert code != 0
    assert "missing.yaml: no such file or directory" in err


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code, out, err = run(capsys, "policy", "explain", "--policy", str(EXAMPLES), *argv)
    assert err == ""
    return code, json.loads(out)


@pytest.mark.parametrize(
    ("argv", "action", "policy", "rule"),
    [
        pytest.param(
            ["--as", "system:serviceaccount:shop:orders", "DELETE FROM orders"],
            "deny", "shop/orders-app", "no-unbounded-writes",
            id="the orders service may not DELETE without WHERE",
        ),
        pytest.param(
            ["--as", "system:serviceaccount:shop:orders", "SELECT * FROM orders WHERE id = 1"],
            "allow", "shop/orders-app", None,
            id="the orders service may read orders",
        ),
        pytest.param(
            ["--as", "user:alice@example.com", "SELECT 1; DROP TABLE orders"],
            "review", "shop/orders-app", "schema-changes-need-review",
            id="alice's DROP needs review",
        ),
        pytest.param(
            ["--as", "user:bob", "--group", "data-analysts", "SELECT * FROM vault.keys"],
            "deny", "shop/analysts-read-only", "no-secrets",
            id="an analyst may not read the vault",
        ),
        pytest.param(
            ["--as", "user:bob", "--group", "data-analysts", "INSERT INTO orders VALUES (1)"],
            "deny", "shop/analysts-read-only", None,
            id="an analyst's INSERT is denied by defaultAction",
        ),
        pytest.param(
            ["--as", "user:dev", "UPDATE t SET a = 1"],
            "deny", "dev/allow-all-dev", "no-unbounded-writes",
            id="the developer may not update every row",
        ),
    ],
)  # fmt: skip
def test_explain_prints_the_decision(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    action: str,
    policy: str,
    rule: str | None,
) -> None:
    code, result = explain(capsys, *argv)
    assert code == 0
    assert (result["decision"], result["policy"], result["rule"]) == (action, policy, rule)
    assert isinstance(result["message"], str) and result["message"]


def test_explain_lists_each_statement(capsys: pytest.CaptureFixture[str]) -> None:
    _, result = explain(
        capsys,
        "--as",
        "user:alice@example.com",
        "SELECT * FROM payments; UPDATE payments SET paid = true WHERE id = 2",
    )
    select, update = result["statements"]
    assert {k: v for k, v in select.items() if k != "fingerprint"} == {
        "command": "SELECT",
        "statement": "SELECT * FROM payments",
        "decision": "allow",
        "policy": "shop/orders-app",
        "rule": None,
        "message": "statement allowed by policy shop/orders-app (defaultAction: allow)",
        "operations": [
            {
                "command": "SELECT",
                "table": "public.payments",
                "unbounded": False,
                "copy": None,
                "language": None,
                "decision": "allow",
                "policy": "shop/orders-app",
                "rule": None,
            }
        ],
        "functions": [],
        "tables": ["public.payments"],
        "unbounded": False,
    }
    assert update["statement"] == "UPDATE payments SET paid = $1 WHERE id = $2"
    assert (update["decision"], update["rule"]) == ("deny", "payments-read-only")
    assert [(op["command"], op["table"], op["rule"]) for op in update["operations"]] == [
        ("UPDATE", "public.payments", "payments-read-only")
    ]
    assert result["message"] == (
        "statement denied by policy shop/orders-app rule payments-read-only: "
        "payments are written by the payments service only"
    )


def test_explain_shows_the_operations_a_statement_executes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, result = explain(
        capsys,
        "--as",
        "user:alice@example.com",
        "WITH d AS (DELETE FROM orders WHERE 1 = 1 RETURNING *) SELECT count(*) FROM d",
    )
    (statement,) = result["statements"]
    assert statement["command"] == "SELECT"
    assert statement["unbounded"] is True
    assert statement["functions"] == ["count"]
    assert [
        (op["command"], op["table"], op["unbounded"], op["decision"], op["rule"])
        for op in statement["operations"]
    ] == [
        ("DELETE", "public.orders", True, "deny", "no-unbounded-writes"),
        ("SELECT", "public.orders", False, "allow", None),
    ]
    assert (result["decision"], result["rule"]) == ("deny", "no-unbounded-writes")


def test_explain_for_an_ungoverned_subject_says_sign_in_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, result = explain(capsys, "--as", "user:mallory", "SELECT 1")
    assert code == 0
    assert result["decision"] == "deny"
    assert result["policies"] == []
    assert result["message"] == (
        "no policy covers subject user:mallory: sign-in is refused (SQLSTATE 28000)"
    )


def test_explain_of_sql_that_does_not_parse_is_a_denial(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "policy", "explain", "--policy", str(EXAMPLES), "--as", "user:dev", "SELEC 1"
    )
    assert code == 1
    result = json.loads(out)
    assert result["decision"] == "deny"
    assert result["message"].startswith("statement refused: it could not be analyzed")


def test_explain_rejects_a_malformed_subject(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "policy", "explain", "--policy", str(EXAMPLES), "--as", "alice", "SELECT 1"
    )
    assert code != 0
    assert out == ""
    assert "use user:NAME or system:serviceaccount:NAMESPACE:NAME" in err


def test_explain_with_an_invalid_policy_fails_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(
        "apiVersion: steward.dev/v1alpha1\nkind: DatabaseAccessPolicy\nmetadata: {name: p}\n"
        "spec: {subjects: [{kind: User, name: dev}], defaultAction: allow, extra: 1}\n"
    )
    code, out, err = run(
        capsys, "policy", "explain", "--policy", str(bad), "--as", "user:dev", "SELECT 1"
    )
    assert code != 0
    assert out == ""
    assert "spec.extra: unknown field" in err
