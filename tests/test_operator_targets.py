"""What a policy makes, as pure functions: its bundle's documents, admission checks, status."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_operator.push import Sidecar, outdated
from steward_operator.targets import (
    Condition,
    admission_problems,
    check_target,
    conditions,
    configmap_name,
    invalid_reason,
    next_generation,
    policy_names_using,
    target_documents,
)

POLICY: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "DatabaseAccessPolicy",
    "metadata": {"name": "orders-app", "namespace": "shop", "resourceVersion": "7"},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "orders"}],
        "defaultAction": "allow",
        "masking": {"rules": ["pii"]},
    },
}


def rule(name: str, namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "MaskingRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"rules": [{"columns": ["users.email"], "strategy": "email"}]},
    }


def test_a_bundle_holds_the_policy_and_the_rules_it_names_in_its_namespace() -> None:
    documents = target_documents(POLICY, [rule("pii"), rule("other"), rule("pii", "elsewhere")])
    assert [(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in documents] == [
        ("DatabaseAccessPolicy", "shop", "orders-app"),
        ("MaskingRule", "shop", "pii"),
    ]
    assert "resourceVersion" not in documents[0]["metadata"]


def test_a_policy_whose_rules_exist_compiles() -> None:
    assert check_target(POLICY, [rule("pii")]) == []


def test_a_policy_naming_a_missing_rule_does_not_compile() -> None:
    errors = check_target(POLICY, [rule("pii", "elsewhere")])
    assert errors == [
        "document 1 (DatabaseAccessPolicy shop/orders-app): spec.masking.rules[0]: "
        "MaskingRule shop/pii is not defined"
    ]
    assert invalid_reason(errors) == "MaskingRuleMissing"
    assert invalid_reason(["spec.x: bad"]) == "CompileError"


def test_admission_gives_the_message_steward_policy_check_gives(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    checked = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1
    [problem] = admission_problems(POLICY, [])
    # The same message; only the file name in front differs.
    assert checked.stderr.strip() == f"{path}: {problem.replace('document ', 'document 1 ', 1)}"
    assert admission_problems(POLICY, [rule("pii")]) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(
            {**rule("pii"), "spec": {"rules": [{"columns": ["a.b"], "strategy": "blur"}]}},
            "spec.rules[0].strategy: 'blur' is not one of",
            id="a masking rule with an unknown strategy",
        ),
        pytest.param(
            {**POLICY, "spec": {**POLICY["spec"], "approval": {"approvers": [], "ttl": "1d"}}},
            "spec.approval.ttl",
            id="a ttl that is no duration",
        ),
    ],
)
def test_admission_refuses_what_does_not_validate(document: dict[str, Any], message: str) -> None:
    problems = admission_problems(document, [rule("pii")])
    assert any(message in p for p in problems), problems


def test_policies_that_use_a_rule() -> None:
    other = copy.deepcopy(POLICY)
    other["metadata"]["name"] = "reports"
    other["spec"]["masking"] = {"rules": ["finance"]}
    assert policy_names_using("pii", [POLICY, other]) == ["orders-app"]


@pytest.mark.parametrize(
    ("previous", "now", "expected"),
    [
        pytest.param(None, 1_700_000_000.7, 1_700_000_000, id="a first generation is the clock"),
        pytest.param(1_700_000_000, 1_700_000_500.0, 1_700_000_500, id="later changes follow it"),
        pytest.param(
            1_700_000_000, 1_700_000_000.0, 1_700_000_001, id="two in a second still rise"
        ),
        pytest.param(
            1_800_000_000, 1_700_000_000.0, 1_800_000_001, id="a clock set back still rises"
        ),
    ],
)
def test_generations_only_rise(previous: int | None, now: float, expected: int) -> None:
    assert next_generation(previous, now) == expected


def test_configmap_names_stay_within_the_limit() -> None:
    assert configmap_name("orders-app") == "steward-bundle-orders-app"
    long = configmap_name("p" * 253)
    assert len(long) == 253
    assert long != configmap_name("p" * 252 + "q")


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    first = conditions([], [Condition("Ready", "True", "Compiled", "a")], 1, "T1")
    assert first[0]["lastTransitionTime"] == "T1"
    same = conditions(first, [Condition("Ready", "True", "Compiled", "b")], 2, "T2")
    assert same[0]["lastTransitionTime"] == "T1"
    assert same[0]["observedGeneration"] == 2
    flipped = conditions(same, [Condition("Ready", "False", "Invalid", "c")], 3, "T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def sidecar(uid: str, hash_key: str = "") -> Sidecar:
    return Sidecar("shop", f"orders-{uid}", uid, "10.0.0.1", 9187, True, hash_key)


def test_pods_behind_their_policy_are_outdated() -> None:
    pods = [sidecar("a"), sidecar("b"), sidecar("c", "orders-masking/hmac"), sidecar("d")]
    running = {"a": 7, "b": 6, "c": 7}  # d did not answer
    assert outdated(pods, running, 7, "") == 2  # b runs an older bundle; c mounts a key
    # The policy now names a key: a push cannot add the mount, so pods without it are behind.
    assert outdated(pods, running, 7, "orders-masking/hmac") == 3
    assert outdated(pods, running, 7, "orders-masking/other") == 4
