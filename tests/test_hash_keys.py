"""Which key the ``hash`` strategy uses for a subject, and what happens without it.

``MaskingConfig.for_identity`` says, from plain policy data, which Secret key
each policy of a subject hashes under; :class:`HashKeys` reads that key from
``DIR/NAME/KEY`` (or says why masking cannot run), and a masker that cannot
run refuses every statement.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from steward_proxy.hashkeys import MAX_KEY_BYTES, HashKeyError, HashKeys, read_key
from steward_proxy.masking.catalog import Catalog
from steward_proxy.masking.lineage import analyze
from steward_proxy.masking.plan import Masker, MaskingConfig
from steward_proxy.masking.strategies import Strategies, Strategy
from steward_proxy.policy import Identity, compile_documents
from steward_proxy.policy.bundle import build, generate_key, sign, verify
from steward_proxy.policy.model import HashKeySecretRef

ALICE = Identity("user:alice")
ONE = HashKeySecretRef("team-a", "hash-key")
TWO = HashKeySecretRef("team-b", "hash-key")


def rule(name: str, strategy: str) -> dict[str, Any]:
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "MaskingRule",
        "metadata": {"name": name},
        "spec": {"rules": [{"columns": ["public.users.name"], "strategy": strategy}]},
    }


def policy(
    name: str, rules: list[str], ref: HashKeySecretRef | None = None, exempt: bool = False
) -> dict[str, Any]:
    masking: dict[str, Any] = {"rules": rules}
    if ref is not None:
        masking["hashKeySecretRef"] = {"name": ref.name, "key": ref.key}
    if exempt:
        masking["exemptSubjects"] = [{"kind": "User", "name": "alice"}]
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "DatabaseAccessPolicy",
        "metadata": {"name": name},
        "spec": {
            "subjects": [{"kind": "User", "name": "alice"}],
            "defaultAction": "allow",
            "masking": masking,
        },
    }


def config_of(*policies: dict[str, Any]) -> MaskingConfig:
    policy_set = compile_documents([rule("hashing", "hash"), rule("hiding", "redact"), *policies])
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
    path = root / ref.name / ref.key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key)
    return path


def pseudonym(key: bytes, value: bytes) -> bytes:
    return b"h_" + hmac.new(key, value, hashlib.sha256).hexdigest()[:16].encode()


def test_the_key_is_read_from_dir_name_key_without_surrounding_whitespace(tmp_path: Path) -> None:
    mount(tmp_path, ONE, b"  secret one\n")
    strategies, unavailable = HashKeys(b"own", str(tmp_path)).for_config(
        config_of(policy("a", ["hashing"], ONE))
    )
    assert unavailable is None
    assert strategies.pseudonym(b"Maria") == pseudonym(b"secret one", b"Maria")
    assert strategies.text(Strategy("hash"), b"Maria") == pseudonym(b"secret one", b"Maria")


def test_a_policy_without_a_secret_uses_the_proxys_own_key(tmp_path: Path) -> None:
    keys = HashKeys(b"own", str(tmp_path))
    strategies, unavailable = keys.for_config(config_of(policy("a", ["hashing"])))
    assert unavailable is None and strategies is keys.default
    assert strategies.pseudonym(b"Maria") == pseudonym(b"own", b"Maria")


def test_a_missing_key_makes_masking_unavailable_until_it_appears(tmp_path: Path) -> None:
    keys = HashKeys(b"own", str(tmp_path))
    config = config_of(policy("a", ["hashing"], ONE))
    _, unavailable = keys.for_config(config)
    assert unavailable == (
        "the hash masking key of policy default/a (Secret team-a, key hash-key) is not "
        f"available: {tmp_path / 'team-a' / 'hash-key'} does not exist"
    )
    mount(tmp_path, ONE, b"late")
    strategies, unavailable = keys.for_config(config)
    assert unavailable is None
    assert strategies.pseudonym(b"x") == pseudonym(b"late", b"x")


def test_different_keys_for_one_subject_make_masking_unavailable(tmp_path: Path) -> None:
    mount(tmp_path, ONE, b"one")
    mount(tmp_path, TWO, b"two")
    config = config_of(policy("a", ["hashing"], ONE), policy("b", ["hashing"], TWO))
    _, unavailable = HashKeys(None, str(tmp_path)).for_config(config)
    assert unavailable is not None
    assert "default/a (Secret team-a, key hash-key)" in unavailable
    assert "default/b (Secret team-b, key hash-key)" in unavailable


def test_a_masker_whose_key_is_unavailable_refuses_every_statement() -> None:
    config = config_of(policy("a", ["hashing"], ONE))
    masker = Masker(config, Strategies(b"unused"), Catalog(), unavailable="the key is missing")
    for sql in ("SELECT 1", "SELECT name FROM users", "SHOW search_path"):
        assert masker.refusal(analyze(sql)[0]) == "statement refused: the key is missing"
    exempt = config_of(policy("a", ["hashing"], ONE, exempt=True))
    assert Masker(exempt, Strategies(b"unused"), Catalog()).refusal(analyze("SELECT 1")[0]) is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(b"", "is empty", id="an empty file"),
        pytest.param(b" \n\t", "is empty", id="whitespace only"),
        pytest.param(b"k" * (MAX_KEY_BYTES + 1), "is larger than", id="a file too large"),
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
