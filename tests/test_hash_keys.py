"""Which key the ``hash`` strategy uses for a subject, and what happens without it.

``MaskingConfig.for_identity`` says, from plain policy data, which Secret key
each policy of a subject hashes under (the Secret in the policy's namespace);
:class:`HashKeys` reads that key from ``DIR/NAMESPACE/NAME/KEY`` (or says why
masking cannot run, and then gives no key to hash with), and a masker that
cannot run refuses every statement.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

import pytest

from steward_proxy.hashkeys import (
    MAX_KEY_BYTES,
    MIN_KEY_BYTES,
    HashKeyError,
    HashKeys,
    fingerprint,
    read_key,
)
from steward_proxy.masking.catalog import Catalog
from steward_proxy.masking.lineage import analyze
from steward_proxy.masking.plan import Masker, MaskingConfig
from steward_proxy.masking.strategies import Strategies, Strategy
from steward_proxy.policy import Identity, compile_documents
from steward_proxy.policy.bundle import build, generate_key, sign, verify
from steward_proxy.policy.model import HashKeySecretRef

ALICE = Identity("user:alice")
ONE = HashKeySecretRef("default", "team-a", "hash-key")
TWO = HashKeySecretRef("default", "team-b", "hash-key")
KEY_ONE = b"the first key, 32 bytes of it..."
KEY_TWO = b"the second key, as long as it..."
OWN = b"the proxy's own key, long enough"


def rule(name: str, strategy: str) -> dict[str, Any]:
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "MaskingRule",
        "metadata": {"name": name},
        "spec": {"rules": [{"columns": ["public.users.name"], "strategy": strategy}]},
    }


def policy(
    name: str,
    rules: list[str],
    ref: HashKeySecretRef | None = None,
    exempt: bool = False,
    namespace: str | None = None,
) -> dict[str, Any]:
    masking: dict[str, Any] = {"rules": rules}
    if ref is not None:
        masking["hashKeySecretRef"] = {"name": ref.name, "key": ref.key}
    if exempt:
        masking["exemptSubjects"] = [{"kind": "User", "name": "alice"}]
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "DatabaseAccessPolicy",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {
            "subjects": [{"kind": "User", "name": "alice"}],
            "defaultAction": "allow",
            "masking": masking,
        },
    }


def config_of(*policies: dict[str, Any]) -> MaskingConfig:
    namespaces = {p["metadata"].get("namespace") for p in policies}
    rules = [
        {**r, "metadata": {**r["metadata"], "namespace": n}}
        for n in namespaces
        if n
        for r in (rule("hashing", "hash"), rule("hiding", "redact"))
    ]
    if None in namespaces:
        rules += [rule("hashing", "hash"), rule("hiding", "redact")]
    policy_set = compile_documents([*rules, *policies])
    return MaskingConfig.for_identity(policy_set, policy_set.policies_for(ALICE), ALICE)


KEY_CHOICES = [
    pytest.param([policy("a", ["hashing"], ONE)], (ONE,), id="a policy naming a Secret uses it"),
    pytest.param([policy("a", ["hashing"])], (None,), id="a policy naming none uses the proxy's"),
    pytest.param(
        [policy("a", ["hashing"], ONE), policy("b", ["hashing"], ONE)],
        (ONE,),
        id="two policies naming one Secret agree",
    ),
    pytest.param(
        [policy("a", ["hashing"], ONE), policy("b", ["hashing"], TWO)],
        (ONE, TWO),
        id="two policies naming different Secrets conflict",
    ),
    pytest.param(
        [policy("a", ["hashing"], ONE), policy("b", ["hashing"])],
        (ONE, None),
        id="a policy naming a Secret and one using the proxy's key conflict",
    ),
    pytest.param(
        [policy("a", ["hiding"], ONE), policy("b", ["hashing"])],
        (None,),
        id="the Secret of a policy that hashes nothing does not count",
    ),
    pytest.param(
        [policy("a", ["hiding"], ONE)], (), id="a subject masked without hash needs no key"
    ),
    pytest.param(
        [policy("a", ["hashing"], ONE, exempt=True)], (), id="an exempt subject needs no key"
    ),
]


@pytest.mark.parametrize(("policies", "keys"), KEY_CHOICES)
def test_the_key_a_subject_hashes_under(
    policies: list[dict[str, Any]], keys: tuple[HashKeySecretRef | None, ...]
) -> None:
    assert config_of(*policies).hash_keys == keys


def test_a_changed_secret_reference_changes_the_masking_config() -> None:
    # Sessions compare configs after a policy swap: a new key ends them.
    assert config_of(policy("a", ["hashing"], ONE)) != config_of(policy("a", ["hashing"], TWO))


def mount(root: Path, ref: HashKeySecretRef, key: bytes) -> Path:
    path = root / ref.namespace / ref.name / ref.key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key)
    return path


def pseudonym(key: bytes, value: bytes) -> bytes:
    return b"h_" + hmac.new(key, value, hashlib.sha256).hexdigest()[:16].encode()


def test_the_key_is_read_from_dir_namespace_name_key_without_surrounding_whitespace(
    tmp_path: Path,
) -> None:
    mount(tmp_path, ONE, b"  " + KEY_ONE + b"\n")
    strategies, unavailable = HashKeys(OWN, str(tmp_path)).for_config(
        config_of(policy("a", ["hashing"], ONE))
    )
    assert unavailable is None and strategies is not None
    assert strategies.pseudonym(b"Maria") == pseudonym(KEY_ONE, b"Maria")
    assert strategies.text(Strategy("hash"), b"Maria") == pseudonym(KEY_ONE, b"Maria")


def test_a_policy_without_a_secret_uses_the_proxys_own_key(tmp_path: Path) -> None:
    keys = HashKeys(OWN, str(tmp_path))
    strategies, unavailable = keys.for_config(config_of(policy("a", ["hashing"])))
    assert unavailable is None and strategies is keys.default
    assert strategies.pseudonym(b"Maria") == pseudonym(OWN, b"Maria")


def test_a_missing_key_makes_masking_unavailable_until_it_appears(tmp_path: Path) -> None:
    keys = HashKeys(OWN, str(tmp_path))
    config = config_of(policy("a", ["hashing"], ONE))
    strategies, unavailable = keys.for_config(config)
    # No key at all to hash with, never the proxy's own in its place.
    assert strategies is None
    assert unavailable == (
        "the hash masking key of policy default/a (Secret default/team-a, key hash-key) is not "
        f"available: {tmp_path / 'default' / 'team-a' / 'hash-key'} does not exist"
    )
    mount(tmp_path, ONE, KEY_ONE)
    strategies, unavailable = keys.for_config(config)
    assert unavailable is None and strategies is not None
    assert strategies.pseudonym(b"x") == pseudonym(KEY_ONE, b"x")


def test_different_keys_for_one_subject_make_masking_unavailable(tmp_path: Path) -> None:
    mount(tmp_path, ONE, KEY_ONE)
    mount(tmp_path, TWO, KEY_TWO)
    config = config_of(policy("a", ["hashing"], ONE), policy("b", ["hashing"], TWO))
    strategies, unavailable = HashKeys(None, str(tmp_path)).for_config(config)
    assert strategies is None and unavailable is not None
    assert "default/a (Secret default/team-a, key hash-key)" in unavailable
    assert "default/b (Secret default/team-b, key hash-key)" in unavailable


def test_one_secret_name_in_two_namespaces_is_two_keys(tmp_path: Path) -> None:
    # Policies of team-a and team-b both name {name: masking, key: hash-key}: each its own.
    ref = {"name": "masking", "key": "hash-key"}
    team_a = policy("a", ["hashing"], namespace="team-a")
    team_b = policy("b", ["hashing"], namespace="team-b")
    for doc in (team_a, team_b):
        doc["spec"]["masking"]["hashKeySecretRef"] = ref
    in_a, in_b = config_of(team_a).hash_keys, config_of(team_b).hash_keys
    assert in_a == (HashKeySecretRef("team-a", "masking", "hash-key"),)
    assert in_b == (HashKeySecretRef("team-b", "masking", "hash-key"),)
    mount(tmp_path, in_a[0], KEY_ONE)
    mount(tmp_path, in_b[0], KEY_TWO)
    keys = HashKeys(None, str(tmp_path))
    strategies_a, _ = keys.for_config(config_of(team_a))
    strategies_b, _ = keys.for_config(config_of(team_b))
    assert strategies_a is not None and strategies_b is not None
    assert strategies_a.pseudonym(b"x") == pseudonym(KEY_ONE, b"x")
    assert strategies_b.pseudonym(b"x") == pseudonym(KEY_TWO, b"x")
    # A subject both cover would hash under two keys: refused, not merged.
    _, unavailable = keys.for_config(config_of(team_a, team_b))
    assert unavailable is not None and "different keys" in unavailable


def test_a_policy_file_without_a_namespace_names_a_secret_in_default() -> None:
    assert config_of(policy("a", ["hashing"], ONE)).hash_keys[0].namespace == "default"


def test_a_masker_whose_key_is_unavailable_refuses_every_statement() -> None:
    config = config_of(policy("a", ["hashing"], ONE))
    masker = Masker(config, None, Catalog(), unavailable="the key is missing")
    for sql in ("SELECT 1", "SELECT name FROM users", "SHOW search_path"):
        assert masker.refusal(analyze(sql)[0]) == "statement refused: the key is missing"
    with pytest.raises(RuntimeError, match="the key is missing"):
        masker.strategies  # noqa: B018 (no key to hash with)
    with pytest.raises(ValueError, match="needs the reason"):
        Masker(config, None, Catalog())
    exempt = config_of(policy("a", ["hashing"], ONE, exempt=True))
    assert Masker(exempt, Strategies(b"unused"), Catalog()).refusal(analyze("SELECT 1")[0]) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "is empty", id="an empty file"),
        pytest.param(b" \n\t", "is empty", id="whitespace only"),
        pytest.param(b"k" * (MAX_KEY_BYTES + 1), "is larger than", id="a file too large"),
        pytest.param(
            b" 123456789012345\n", "holds 15 bytes; a key needs at least 16", id="a short key"
        ),
    ],
)
def test_key_files_that_hold_no_usable_key(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(HashKeyError, match=problem):
        read_key(str(path))


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(HashKeyError, match="cannot be read"):
        read_key(str(tmp_path))


def test_a_signed_bundle_carries_the_reference_and_the_sidecar_compiles_it() -> None:
    key = generate_key()
    documents = [policy("a", ["hashing"], ONE), rule("hashing", "hash")]
    data = sign(build("default/a", 1, documents), key)
    assert b'"hashKeySecretRef":{"key":"hash-key","name":"team-a"}' in data
    running = verify(data, key.public_key(), target="default/a").policies
    assert running.policies[0].hash_key_secret_ref == ONE


def test_a_key_of_the_minimum_length_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"k" * MIN_KEY_BYTES + b"\n")
    assert read_key(str(path)) == b"k" * MIN_KEY_BYTES


def test_a_loaded_key_is_logged_by_its_fingerprint_never_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mount(tmp_path, ONE, KEY_ONE)
    caplog.set_level(logging.INFO, logger="steward.proxy")
    keys = HashKeys(OWN, str(tmp_path))
    keys.for_config(config_of(policy("a", ["hashing"], ONE)))
    keys.for_config(config_of(policy("a", ["hashing"], ONE)))  # loaded once, logged once
    expected = hmac.new(KEY_ONE, b"steward-key-id", hashlib.sha256).hexdigest()[:8]
    assert fingerprint(KEY_ONE) == expected
    assert [r.getMessage() for r in caplog.records] == [
        f"the proxy's own hash masking key: fingerprint {fingerprint(OWN)}",
        f"hash masking key Secret default/team-a, key hash-key loaded: fingerprint {expected}",
    ]
    assert KEY_ONE.decode() not in caplog.text and OWN.decode() not in caplog.text


def test_policies_held_up_by_a_missing_key_are_named_until_a_retry_reads_it(
    tmp_path: Path,
) -> None:
    documents = [
        rule("hashing", "hash"),
        rule("hiding", "redact"),
        policy("a", ["hashing"], ONE),
        policy("b", ["hiding"], TWO),  # hashes nothing: needs no key
        policy("c", ["hashing"]),
    ]
    policy_set = compile_documents(documents)
    keys = HashKeys(OWN, str(tmp_path))
    keys.check(policy_set)
    missing = tmp_path / "default" / "team-a" / "hash-key"
    assert keys.blocked(policy_set) == {
        "default/a": "the hash masking key of policy default/a (Secret default/team-a, key "
        f"hash-key) is not available: {missing} does not exist"
    }
    keys.retry()
    assert list(keys.blocked(policy_set)) == ["default/a"]
    mount(tmp_path, ONE, KEY_ONE)
    keys.retry()
    assert keys.blocked(policy_set) == {}
