"""Signed policy bundles: built, signed and verified as pure functions.

A sidecar takes a bundle only when it is signed by the operator's key, meant
for its target, not older than what it runs, and its documents compile. The
tables below name each refusal; the first tests pin the format down.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from steward_proxy.policy import PolicyError, compile_documents
from steward_proxy.policy.bundle import (
    MAX_BUNDLE_BYTES,
    Bundle,
    BundleError,
    Running,
    build,
    canonical_document,
    canonical_json,
    content_hash,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_text,
    sign,
    verify,
)

POLICY: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "DatabaseAccessPolicy",
    "metadata": {
        "name": "orders-app",
        "namespace": "shop",
        "uid": "0f8e7a52-2b1e-4c4b-9d7a-1c2d3e4f5a6b",
        "resourceVersion": "4711",
        "generation": 3,
        "labels": {"team": "orders"},
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "orders"}],
        "defaultAction": "allow",
        "guardrails": [
            {"name": "no-drops", "match": {"statements": ["DROP"]}, "action": "deny"},
        ],
        "masking": {"rules": ["pii"]},
    },
    "status": {"compiledHash": "stale"},
}

MASKING: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "MaskingRule",
    "metadata": {"name": "pii", "namespace": "shop"},
    "spec": {"rules": [{"columns": ["public.users.email"], "strategy": "email"}]},
}

TARGET = "shop/orders-app"
KEY = generate_key()
PUBLIC = KEY.public_key()


def signed(generation: int = 5, documents: list[dict[str, Any]] | None = None, **kw: Any) -> bytes:
    bundle = build(kw.get("target", TARGET), generation, documents or [POLICY, MASKING])
    return sign(bundle, kw.get("key", KEY))


def resigned(data: bytes, change: Any) -> bytes:
    """The bundle with ``change(body)`` applied, signed again with the right key."""
    body = json.loads(data)
    del body["signature"]
    change(body)
    body["signature"] = base64.b64encode(KEY.sign(canonical_json(body))).decode()
    return canonical_json(body)


# -- the format ---------------------------------------------------------------------


def test_a_signed_bundle_is_canonical_json_with_every_field() -> None:
    data = signed()
    body = json.loads(data)
    assert data == canonical_json(body)
    assert sorted(body) == [
        "apiVersion",
        "compiledHash",
        "documents",
        "generation",
        "hash",
        "kind",
        "signature",
        "target",
    ]
    assert body["kind"] == "PolicyBundle"
    assert body["target"] == TARGET
    assert body["generation"] == 5
    assert [d["kind"] for d in body["documents"]] == ["DatabaseAccessPolicy", "MaskingRule"]


def test_documents_keep_only_what_is_policy() -> None:
    assert canonical_document(POLICY) == {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "DatabaseAccessPolicy",
        "metadata": {"name": "orders-app", "namespace": "shop"},
        "spec": POLICY["spec"],
    }


def test_the_hash_is_over_the_documents_alone() -> None:
    first, later = json.loads(signed(5)), json.loads(signed(9))
    assert first["hash"] == later["hash"]
    assert first["hash"] == content_hash(first["documents"])
    relabelled = copy.deepcopy(POLICY)
    relabelled["metadata"]["labels"] = {"team": "payments"}
    relabelled["metadata"]["resourceVersion"] = "9999"
    assert json.loads(signed(5, [MASKING, relabelled]))["hash"] == first["hash"]
    changed = copy.deepcopy(POLICY)
    changed["spec"]["defaultAction"] = "deny"
    assert json.loads(signed(5, [changed, MASKING]))["hash"] != first["hash"]


def test_the_compiled_hash_is_the_policy_sets() -> None:
    body = json.loads(signed())
    assert body["compiledHash"] == compile_documents([POLICY, MASKING]).compiled_hash


def test_non_ascii_text_is_kept_as_utf8() -> None:
    policy = copy.deepcopy(POLICY)
    policy["spec"]["guardrails"][0]["message"] = "Löschen verboten"
    data = signed(documents=[policy, MASKING])
    assert "Löschen verboten".encode() in data


# -- verifying ---------------------------------------------------------------------


def test_a_valid_bundle_verifies_and_compiles() -> None:
    bundle = verify(signed(), PUBLIC)
    assert isinstance(bundle, Bundle)
    assert bundle.target == TARGET
    assert bundle.generation == 5
    assert [p.key for p in bundle.policies.policies] == ["shop/orders-app"]
    assert bundle.compiled_hash == bundle.policies.compiled_hash


@pytest.mark.parametrize(
    ("running", "generation"),
    [
        pytest.param(None, 5, id="anything signed is taken when nothing runs yet"),
        pytest.param(Running(TARGET, 4, "x"), 5, id="a newer generation is taken"),
    ],
)
def test_bundles_that_are_taken(running: Running | None, generation: int) -> None:
    assert verify(signed(generation), PUBLIC, running=running).generation == generation


def test_the_same_bundle_again_is_taken() -> None:
    data = signed(5)
    first = verify(data, PUBLIC)
    again = verify(data, PUBLIC, running=Running(TARGET, 5, first.hash))
    assert again.hash == first.hash


OTHER_KEY = generate_key()


REFUSED = [
    pytest.param(
        lambda: signed(key=OTHER_KEY),
        None,
        None,
        "signature",
        "not valid",
        id="signed with another key",
    ),
    pytest.param(
        lambda: signed().replace(b'"generation":5', b'"generation":6'),
        None,
        None,
        "signature",
        "not valid",
        id="a field changed after signing",
    ),
    pytest.param(
        lambda: json.dumps(
            {k: v for k, v in json.loads(signed()).items() if k != "signature"}
        ).encode(),
        None,
        None,
        "signature",
        "not signed",
        id="no signature at all",
    ),
    pytest.param(
        lambda: signed(4),
        Running(TARGET, 5, "x"),
        None,
        "stale",
        "older than the running generation 5",
        id="an older generation (a rollback)",
    ),
    pytest.param(
        lambda: signed(5),
        Running(TARGET, 5, "another-hash"),
        None,
        "stale",
        "already runs with other content",
        id="the running generation with other content",
    ),
    pytest.param(
        lambda: signed(6, target="shop/payments"),
        Running(TARGET, 5, "x"),
        None,
        "target",
        "is for 'shop/payments'",
        id="another target's bundle",
    ),
    pytest.param(
        lambda: signed(6, target="shop/payments"),
        None,
        TARGET,
        "target",
        "this proxy runs 'shop/orders-app'",
        id="another target than the configured one",
    ),
    pytest.param(
        lambda: resigned(signed(), lambda b: b.update(hash="0" * 64)),
        None,
        None,
        "invalid",
        "hash does not match",
        id="a hash that does not match the documents",
    ),
    pytest.param(
        lambda: resigned(
            signed(),
            lambda b: (
                b["documents"].pop(),
                b.update(hash=content_hash(b["documents"])),
            ),
        ),
        None,
        None,
        "invalid",
        "MaskingRule shop/pii is not defined",
        id="documents that do not compile",
    ),
    pytest.param(
        lambda: b"[1, 2, 3]",
        None,
        None,
        "malformed",
        "not a JSON object",
        id="JSON that is not an object",
    ),
    pytest.param(
        lambda: b"\xff\xfe",
        None,
        None,
        "malformed",
        "not UTF-8 JSON",
        id="bytes that are not UTF-8",
    ),
    pytest.param(
        lambda: b" " * (MAX_BUNDLE_BYTES + 1),
        None,
        None,
        "malformed",
        "more than",
        id="more bytes than a ConfigMap holds",
    ),
    pytest.param(
        lambda: resigned(signed(), lambda b: b.update(extra=1)),
        None,
        None,
        "malformed",
        "unknown fields 'extra'",
        id="an unknown field",
    ),
    pytest.param(
        lambda: resigned(signed(), lambda b: b.update(generation=0)),
        None,
        None,
        "malformed",
        "positive integer",
        id="generation zero",
    ),
    pytest.param(
        lambda: resigned(signed(), lambda b: b.update(generation=True)),
        None,
        None,
        "malformed",
        "positive integer",
        id="a boolean generation",
    ),
]


@pytest.mark.parametrize(("make", "running", "target", "problem", "message"), REFUSED)
def test_bundles_that_are_refused(
    make: Any, running: Running | None, target: str | None, problem: str, message: str
) -> None:
    with pytest.raises(BundleError) as refused:
        verify(make(), PUBLIC, running=running, target=target)
    assert refused.value.problem == problem
    assert message in refused.value.message


# -- building -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        pytest.param([MASKING], "at least one DatabaseAccessPolicy", id="no policy"),
        pytest.param(
            [POLICY, {**MASKING, "kind": "QueryReview"}],
            "not QueryReview",
            id="a document of another kind",
        ),
        pytest.param([POLICY], "MaskingRule shop/pii is not defined", id="a missing reference"),
    ],
)
def test_building_refuses_what_a_sidecar_could_not_run(
    documents: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        build(TARGET, 1, documents)
    assert any(message in e for e in refused.value.errors), refused.value.errors


def test_generations_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        build(TARGET, 0, [POLICY, MASKING])


# -- keys -----------------------------------------------------------------------------


def test_public_keys_load_from_pem_and_from_raw_base64() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data = signed()
    for text in (pem, public_key_text(KEY), public_key_text(PUBLIC).encode()):
        assert verify(data, load_public_key(text)).generation == 5


def test_a_private_key_loads_from_pkcs8_pem() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert public_key_text(load_private_key(pem)) == public_key_text(KEY)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not a key", id="not base64"),
        pytest.param(base64.b64encode(b"short").decode(), id="too few bytes"),
    ],
)
def test_bad_public_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        load_public_key(text)
