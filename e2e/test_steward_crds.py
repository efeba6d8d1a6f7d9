"""Steward's CustomResourceDefinitions in a real API server.

The files in ``crds/`` are the single source of the resource schemas: the
proxy validates standalone policy files against them, and here the API server
installs them as they are and enforces them, CEL rules included. The same bad
documents must be refused by both.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from steward_proxy.policy import validate

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "steward.dev", "v1alpha1"
PLURALS = {
    "DatabaseAccessPolicy": "databaseaccesspolicies",
    "MaskingRule": "maskingrules",
    "QueryReview": "queryreviews",
}


@pytest.fixture(scope="module")
def steward_crds(api_client: client.ApiClient) -> Iterator[list[str]]:
    """Install every CRD in crds/ and wait until each is Established."""
    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.append(body["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as err:
            if err.status != 409:
                raise
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conditions = (crd.status.conditions if crd.status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"{name} not Established"
            time.sleep(0.1)
    try:
        yield names
    finally:
        for name in names:
            ext.delete_custom_resource_definition(name)


def create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(doc)
    body["metadata"] = {**body.get("metadata", {}), "namespace": namespace}
    objects = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 30
    while True:
        try:
            return objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS[doc["kind"]], body
            )
        except ApiException as err:
            # A CRD just Established may take a moment before its resource is served.
            if err.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def example_documents() -> list[dict[str, Any]]:
    paths = sorted((REPO / "examples" / "policies").glob("*.yaml"))
    paths.append(REPO / "examples" / "demo" / "policy.yaml")
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_example_is_accepted_by_the_server(
    api_client: client.ApiClient, steward_crds: list[str], namespace: str
) -> None:
    docs = example_documents()
    assert docs
    for doc in docs:
        assert validate(doc) == [], doc["metadata"]["name"]
        created = create(api_client, namespace, doc)
        assert created["spec"] == doc["spec"]


BASE_POLICY: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "DatabaseAccessPolicy",
    "metadata": {"name": "p"},
    "spec": {
        "subjects": [{"kind": "User", "name": "alice@example.com"}],
        "defaultAction": "allow",
    },
}


def policy_with(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE_POLICY)
    doc["spec"].update(spec)
    return doc


BAD_POLICIES = [
    pytest.param(
        policy_with(defaultAction="maybe"), "defaultAction", id="an unknown defaultAction"
    ),
    pytest.param(
        policy_with(
            guardrails=[{"name": "g", "match": {"statements": ["DELETE"]}, "action": "block"}]
        ),
        "action",
        id="an unknown guardrail action",
    ),
    pytest.param(
        policy_with(subjects=[{"kind": "Robot", "name": "r2"}]),
        "kind",
        id="an unknown subject kind",
    ),
    pytest.param(
        policy_with(approval={"approvers": [{"kind": "Group", "name": "dba"}], "ttl": "soon"}),
        "ttl",
        id="a ttl that is not a duration",
    ),
    pytest.param(
        policy_with(
            guardrails=[{"name": "g", "match": {"statements": ["DROP"]}, "action": "review"}]
        ),
        "approvers",
        id="a review guardrail without approvers (a CEL rule)",
    ),
    pytest.param(
        policy_with(masking={"hashKeySecretRef": {"name": "keys", "key": "../key"}}),
        "hashKeySecretRef.key",
        id="a hash key that climbs out of its directory",
    ),
    pytest.param(
        policy_with(masking={"hashKeySecretRef": {"name": "Team_Keys", "key": "k"}}),
        "hashKeySecretRef.name",
        id="a hash key Secret name that is not a DNS name",
    ),
    pytest.param(
        policy_with(masking={"hashKeySecretRef": {"name": "keys"}}),
        "hashKeySecretRef.key",
        id="a hash key reference without its key",
    ),
    pytest.param(
        policy_with(masking={"hashKeySecretRef": {"name": "keys\n", "key": "k"}}),
        "hashKeySecretRef.name",
        id="a hash key Secret name ending in a newline",
    ),
    pytest.param(
        policy_with(
            database={"host": "h", "name": "d", "credentialsSecretRef": {"name": "orders-db"}},
            masking={"hashKeySecretRef": {"name": "orders-db", "key": "hmac"}},
        ),
        "the hash key needs a Secret of its own",
        id="a hash key in the credentials Secret (a CEL rule)",
    ),
]


def test_a_hash_key_secret_reference_is_stored_as_given(
    api_client: client.ApiClient, steward_crds: list[str], namespace: str
) -> None:
    doc = policy_with(
        masking={"rules": [], "hashKeySecretRef": {"name": "orders.masking", "key": ".hmac_1"}},
        database={"host": "h", "name": "d", "credentialsSecretRef": {"name": "orders-db"}},
    )
    doc["metadata"]["name"] = "hashing"
    assert validate(doc) == []
    created = create(api_client, namespace, doc)
    assert created["spec"]["masking"]["hashKeySecretRef"] == {
        "name": "orders.masking",
        "key": ".hmac_1",
    }


@pytest.mark.parametrize(("doc", "field"), BAD_POLICIES)
def test_the_server_and_steward_policy_check_refuse_the_same_documents(
    api_client: client.ApiClient,
    steward_crds: list[str],
    namespace: str,
    doc: dict[str, Any],
    field: str,
) -> None:
    local = validate(doc)
    assert local and any(field in problem for problem in local), local
    with pytest.raises(ApiException) as refused:
        create(api_client, namespace, doc)
    assert refused.value.status == 422
    assert field in json.loads(refused.value.body)["message"]


def test_a_query_review_spec_cannot_be_changed(
    api_client: client.ApiClient, steward_crds: list[str], namespace: str
) -> None:
    review = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "QueryReview",
        "metadata": {"name": "r1"},
        "spec": {
            "subject": {"user": "user:alice", "groups": []},
            "database": "orders",
            "statement": "DROP TABLE $1",
            "fingerprint": "abc123",
            "policy": "shop/orders-app",
            "rule": "schema-changes-need-review",
            "requestedAt": "2026-11-26T04:00:00Z",
        },
    }
    assert validate(review) == []
    created = create(api_client, namespace, review)
    created["spec"]["statement"] = "DROP TABLE everything"
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api_client).replace_namespaced_custom_object(
            GROUP, VERSION, namespace, "queryreviews", "r1", created
        )
    assert refused.value.status == 422
    assert "immutable" in json.loads(refused.value.body)["message"]
