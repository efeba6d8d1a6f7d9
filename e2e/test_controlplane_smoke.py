"""Smoke tests: the e2e cluster behaves like a real Kubernetes API server.

Schema validation of custom resources, RBAC on TokenRequest-issued tokens and
Helm installs are enforced by the server itself here, not by a mock. There are
no controllers (no kube-controller-manager), so nothing here relies on namespace
finalization, default service accounts or workloads becoming ready.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.controlplane.harness import SERVICE_ACCOUNT_ISSUER, read_versions
from e2e.controlplane.testing import FIXTURES, Cluster, HelmRunner

WIDGET_CRD = FIXTURES / "widget-crd.yaml"
TINY_CHART = FIXTURES / "tiny-chart"
GROUP, VERSION, PLURAL = "e2e.steward.dev", "v1alpha1", "widgets"


def _eventually(probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Call ``probe`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _widget(name: str, replicas: Any, colour: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "colour": colour},
    }


def test_server_is_ready_and_reports_its_version(cluster: Cluster, api_client: client.ApiClient):
    info = client.VersionApi(api_client).get_code()
    assert info.major and info.minor
    if cluster.control_plane is not None:
        assert info.git_version == read_versions()["KUBERNETES_VERSION"]
        assert cluster.control_plane.server_url.startswith("https://127.0.0.1:")


def test_namespace_can_be_created(api_client: client.ApiClient, namespace: str):
    ns = client.CoreV1Api(api_client).read_namespace(namespace)
    assert ns.status.phase == "Active"
    names = [n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items]
    assert namespace in names


@pytest.fixture(scope="module")
def widget_crd(api_client: client.ApiClient) -> Iterator[str]:
    """Install the Widget CRD from e2e/fixtures and wait until it is Established."""
    ext = client.ApiextensionsV1Api(api_client)
    body = yaml.safe_load(WIDGET_CRD.read_text())
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as err:
        if err.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(name)
        conditions = (crd.status.conditions if crd.status else None) or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    _eventually(established)
    try:
        yield name
    finally:
        ext.delete_custom_resource_definition(name)


def test_crd_schema_is_enforced_by_the_server(
    api_client: client.ApiClient, widget_crd: str, namespace: str
):
    objects = client.CustomObjectsApi(api_client)

    def create_valid() -> bool:
        try:
            objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _widget("good", 3, "red")
            )
        except ApiException as err:
            if err.status == 404:  # the new resource is not served quite yet
                return False
            raise
        return True

    _eventually(create_valid)

    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("bad", 0, "purple")
        )
    assert refused.value.status == 422
    status = json.loads(refused.value.body)
    assert status["reason"] == "Invalid"
    assert "spec.replicas" in status["message"]
    assert "spec.colour" in status["message"]
    fields = {cause["field"] for cause in status["details"]["causes"]}
    assert {"spec.replicas", "spec.colour"} <= fields

    with pytest.raises(ApiException) as wrong_type:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("worse", "many", "blue")
        )
    assert wrong_type.value.status == 422
    assert "spec.replicas" in json.loads(wrong_type.value.body)["message"]

    stored = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert [item["metadata"]["name"] for item in stored["items"]] == ["good"]


def test_token_request_token_is_bound_by_rbac(
    cluster: Cluster,
    api_client: client.ApiClient,
    token_client: Callable[[str], client.ApiClient],
    make_namespace: Callable[[str], str],
):
    namespace = make_namespace("rbac")
    elsewhere = make_namespace("other")
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)

    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader-reads-configmaps"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )
    for ns in (namespace, elsewhere):
        core.create_namespaced_config_map(
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"), data={"k": "v"}),
        )

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = core.create_namespaced_service_account_token("reader", namespace, request).status.token
    claims = _jwt_claims(token)
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reader"
    if cluster.control_plane is not None:
        assert claims["iss"] == SERVICE_ACCOUNT_ISSUER

    as_reader = token_client(token)
    review = client.AuthenticationV1Api(as_reader).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

    reader_core = client.CoreV1Api(as_reader)
    listed = reader_core.list_namespaced_config_map(namespace)
    assert "settings" in {cm.metadata.name for cm in listed.items}
    assert reader_core.read_namespaced_config_map("settings", namespace).data == {"k": "v"}

    forbidden: list[Callable[[], object]] = [
        lambda: reader_core.list_namespaced_secret(namespace),
        lambda: reader_core.list_namespaced_config_map(elsewhere),
        lambda: reader_core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
        ),
        lambda: reader_core.delete_namespaced_config_map("settings", namespace),
    ]
    for call in forbidden:
        with pytest.raises(ApiException) as denied:
            call()
        assert denied.value.status == 403

    with pytest.raises(ApiException) as bogus:
        client.CoreV1Api(token_client(token + "x")).list_namespaced_config_map(namespace)
    assert bogus.value.status == 401


def test_helm_install_and_uninstall(helm: HelmRunner, api_client: client.ApiClient, namespace: str):
    core = client.CoreV1Api(api_client)
    helm("install", "tiny", str(TINY_CHART), "--namespace", namespace)

    configmap = core.read_namespaced_config_map("tiny-tiny", namespace)
    assert configmap.data == {"greeting": "hello from tiny-chart"}
    assert configmap.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
    releases = json.loads(helm("list", "--namespace", namespace, "--output", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("tiny", "deployed")]

    helm("uninstall", "tiny", "--namespace", namespace)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("tiny-tiny", namespace)
    assert gone.value.status == 404
    assert json.loads(helm("list", "--namespace", namespace, "--output", "json").stdout) == []
