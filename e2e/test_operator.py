"""The operator against a real API server: chart, status, webhooks, sidecar, live policy.

``helm install`` puts the chart in; the operator then runs as a local process
from the chart's own Deployment arguments, with a token of the chart's
ServiceAccount (so the chart's RBAC is what it has), the chart's webhook
certificate and signing key (read from the Secrets the chart made, as the
kubelet would mount them), and the webhook configurations pointed at it by
``webhook.url``. There is no kubelet: an injected pod's sidecar runs as a local
``steward proxy`` from exactly the container's args and env (Secret values
resolved, volumes as local directories) against a local PostgreSQL, and the
pod's status is given the loopback address so the operator can push to it.

The tests run in file order and share the release and the operator; the ones
that stop the operator start it again.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from psycopg import errors as pgerr

from steward_operator.injection import INJECT, INJECTED
from steward_proxy.policy import compile_documents
from steward_proxy.policy.bundle import (
    build,
    generate_key,
    load_private_key,
    sign,
    verify,
)
from steward_testing.postgres import LocalPostgres, free_port

from e2e.conftest import _startup_report
from e2e.controlplane.harness import _die_with_parent
from e2e.controlplane.testing import Cluster, HelmRunner

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "steward"
RELEASE = "steward"  # the chart's full name is then "steward"
OPERATOR_NS = "steward-system"
GROUP, VERSION = "steward.dev", "v1alpha1"
DAPS, MRS = "databaseaccesspolicies", "maskingrules"
POD_NAME = "steward-e2e-0"
CREATE_TIMEOUT = 60.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


# -- the operator as a local process -------------------------------------------------


@dataclass
class LocalOperator:
    """The operator started from the chart's Deployment, as the kubelet would run it."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        wait_until(self.ready, "the operator to become ready", timeout=90)

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"the operator exited with {self.process.returncode}:\n{self.log()}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the operator did not stop on {sig.name}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]


@dataclass
class Release:
    """The installed chart and the operator running from it."""

    operator: LocalOperator
    webhook_port: int
    signing_key: Any
    token: str
    workdir: Path
    measurements: list[str] = field(default_factory=list)


def _service_account_token(core: client.CoreV1Api, name: str) -> str:
    request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
    answer = core.create_namespaced_service_account_token(name, OPERATOR_NS, request)
    return answer.status.token


def _kubeconfig(admin: client.ApiClient, token: str, path: Path) -> None:
    ca = Path(admin.configuration.ssl_ca_cert).read_bytes()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "e2e",
                "cluster": {
                    "server": admin.configuration.host,
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "operator"}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _mounted_secrets(
    core: client.CoreV1Api, pod_spec: client.V1PodSpec, container: client.V1Container, root: Path
) -> dict[str, Path]:
    """Write each Secret volume of the container to a local directory: mountPath -> dir."""
    volumes = {v.name: v for v in pod_spec.volumes}
    mapped: dict[str, Path] = {}
    for mount in container.volume_mounts:
        volume = volumes[mount.name]
        directory = root / mount.name
        directory.mkdir(parents=True, exist_ok=True)
        if volume.secret is not None:
            secret = core.read_namespaced_secret(volume.secret.secret_name, OPERATOR_NS)
            items = volume.secret.items or [
                client.V1KeyToPath(key=k, path=k) for k in secret.data or {}
            ]
            for item in items:
                target = directory / item.path
                target.write_bytes(base64.b64decode(secret.data[item.key]))
                target.chmod(0o600)
        mapped[mount.mount_path] = directory
    return mapped


def _local(value: str, mounts: dict[str, Path]) -> str:
    """An argument with a container path replaced by the local directory behind it."""
    for mount_path, directory in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if mount_path in value:
            return value.replace(mount_path, str(directory))
    return value


@pytest.fixture(scope="module")
def release(
    cluster: Cluster,
    helm: HelmRunner,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    if cluster.control_plane is None:
        pytest.skip("the operator runs on the test host, which an external cluster cannot call")
    workdir = tmp_path_factory.mktemp("operator")
    webhook_port = free_port()
    helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        f"webhook.url=https://127.0.0.1:{webhook_port}",
        "--set",
        "webhook.certificate.extraIPAddresses={127.0.0.1}",
        "--set",
        f"webhook.port={webhook_port}",
        "--set",
        "operator.statusInterval=1",
        "--set-json",
        "sidecar.bundlePollSeconds=0.2",
    )
    core = client.CoreV1Api(api_client)
    try:
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment(RELEASE, OPERATOR_NS)
        pod_spec = deployment.spec.template.spec
        [container] = pod_spec.containers
        mounts = _mounted_secrets(core, pod_spec, container, workdir / "volumes")
        token = _service_account_token(core, pod_spec.service_account_name)
        kubeconfig = workdir / "kubeconfig"
        _kubeconfig(api_client, token, kubeconfig)
        health_port = free_port()
        argv = [sys.executable, "-m", "steward_operator"]
        argv += [_local(arg, mounts) for arg in container.args]
        # Loopback only, and a free health port: the test host is not a pod.
        argv += [
            f"--webhook-listen=127.0.0.1:{webhook_port}",
            f"--health-listen=127.0.0.1:{health_port}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "POD_"))}
        env.update(KUBECONFIG=str(kubeconfig), POD_NAMESPACE=OPERATOR_NS, POD_NAME=POD_NAME)
        operator = LocalOperator(argv, env, workdir / "operator.log", health_port)
        key = load_private_key((mounts["/etc/steward/signing"] / "ed25519.pem").read_bytes())
        operator.start()
        made = Release(operator, webhook_port, key, token, workdir)
        try:
            yield made
        finally:
            if operator.process and operator.process.poll() is None:
                operator.stop()
            # The e2e session's terminal summary prints these lines.
            _startup_report.extend(f"measured: {line}" for line in made.measurements)
    finally:
        helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, check=False)


# -- cluster helpers ------------------------------------------------------------------


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    plural = DAPS if doc["kind"] == "DatabaseAccessPolicy" else MRS
    body = copy.deepcopy(doc)
    body["metadata"]["namespace"] = namespace
    return custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def replace_spec(
    api: client.ApiClient, namespace: str, plural: str, name: str, spec: dict[str, Any]
) -> None:
    current = custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    current["spec"] = spec
    custom(api).replace_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, current)


def get(api: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for entry in (obj.get("status") or {}).get("conditions") or ():
        if entry["type"] == kind:
            return entry
    return {}


def wait_condition(
    api: client.ApiClient, namespace: str, plural: str, name: str, kind: str, status: str = "True"
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(api, namespace, plural, name)
        return obj if condition(obj, kind).get("status") == status else None

    return wait_until(check, f"{plural} {namespace}/{name} to have {kind}={status}")


def table(cluster: Cluster, path: str) -> dict[str, Any]:
    """GET ``path`` as a meta.k8s.io Table, as ``kubectl get`` asks for it."""
    plane = cluster.control_plane
    assert plane is not None
    request = urllib.request.Request(
        plane.server_url + path,
        headers={
            "Authorization": f"Bearer {plane.admin_token}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
        },
    )
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def app_namespace(api_client: client.ApiClient, release: Release) -> Iterator[str]:
    """A namespace opted in to injection, with the ServiceAccounts pods need."""
    core = client.CoreV1Api(api_client)
    name = f"shop-{os.urandom(3).hex()}"
    core.create_namespace(
        {"metadata": {"name": name, "labels": {"steward.dev/injection": "enabled"}}}
    )
    for account in ("default", "orders"):
        core.create_namespaced_service_account(name, {"metadata": {"name": account}})
    yield name
    core.delete_namespace(name)


MASKING_RULE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "MaskingRule",
    "metadata": {"name": "pii"},
    "spec": {"rules": [{"columns": ["public.customers.email"], "strategy": "email"}]},
}


def policy(name: str, *, database: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DatabaseAccessPolicy",
        "metadata": {"name": name},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": "orders"}],
            "podSelector": {"matchLabels": {"app": name}},
            "database": database
            or {
                "host": "postgres.example.svc",
                "name": "orders",
                "credentialsSecretRef": {"name": "orders-db"},
            },
            "defaultAction": "allow",
        },
    }
    doc["spec"].update(spec)
    return doc


def pod(name: str, app: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": app},
            "annotations": {INJECT: "true"} if annotations is None else annotations,
        },
        "spec": {
            "serviceAccountName": "orders",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/orders:1",
                    "env": [{"name": "PGHOST", "value": "postgres.example.svc"}],
                }
            ],
        },
    }


def wait_for_injection(api: client.ApiClient, namespace: str, app: str) -> None:
    """The API server loads webhook configurations through an informer: wait for it."""
    core = client.CoreV1Api(api)

    def injected() -> bool:
        try:
            created = core.create_namespaced_pod(namespace, pod("probe", app), dry_run="All")
        except ApiException as exc:
            if exc.status in (403, 500):  # not loaded / operator index catching up
                return False
            raise
        return INJECTED in (created.metadata.annotations or {})

    wait_until(injected, "the injection webhook to be active")


# -- the chart ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def masking_rule(api_client: client.ApiClient, app_namespace: str) -> str:
    create(api_client, app_namespace, MASKING_RULE)
    return "pii"


def test_the_chart_installs_and_its_crds_serve_with_printer_columns(
    cluster: Cluster,
    api_client: client.ApiClient,
    release: Release,
    app_namespace: str,
    masking_rule: str,
) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    for name in (f"{DAPS}.{GROUP}", f"{MRS}.{GROUP}", f"queryreviews.{GROUP}"):
        crd = ext.read_custom_resource_definition(name)
        assert any(c.type == "Established" and c.status == "True" for c in crd.status.conditions)
    create(api_client, app_namespace, policy("columns", masking={"rules": [masking_rule]}))
    wait_condition(api_client, app_namespace, DAPS, "columns", "Ready")
    found = table(cluster, f"/apis/{GROUP}/{VERSION}/namespaces/{app_namespace}/{DAPS}")
    columns = [c["name"] for c in found["columnDefinitions"]]
    assert columns == ["Name", "Default", "Database", "Pods", "Ready", "Age"]
    [row] = [r for r in found["rows"] if r["cells"][0] == "columns"]
    assert row["cells"][1:5] == ["allow", "orders", 0, "True"]


def sar(
    api: client.ApiClient, verb: str, resource: str, namespace: str | None, group: str = ""
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{OPERATOR_NS}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "group": group,
                **({"namespace": namespace} if namespace else {}),
            },
        },
    }
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "group", "allowed"),
    [
        pytest.param("watch", DAPS, None, GROUP, True, id="watch policies everywhere"),
        pytest.param(
            "patch", "databaseaccesspolicies/status", "shop", GROUP, True, id="write status"
        ),
        pytest.param("create", "configmaps", "shop", "", True, id="create bundle ConfigMaps"),
        pytest.param("list", "pods", None, "", True, id="list pods everywhere"),
        pytest.param("create", "events", "shop", "", True, id="create events"),
        pytest.param("get", "secrets", "shop", "", False, id="not read Secrets of a workload"),
        pytest.param("get", "secrets", OPERATOR_NS, "", False, id="not read Secrets of its own"),
        pytest.param("list", "secrets", None, "", False, id="not list Secrets"),
        pytest.param("delete", "pods", "shop", "", False, id="not delete pods"),
        pytest.param("patch", "pods", "shop", "", False, id="not change pods"),
        pytest.param(
            "create",
            "clusterrolebindings",
            None,
            "rbac.authorization.k8s.io",
            False,
            id="not write RBAC",
        ),
        pytest.param(
            "update",
            "mutatingwebhookconfigurations",
            None,
            "admissionregistration.k8s.io",
            False,
            id="not change its webhooks",
        ),
        pytest.param("create", "leases", OPERATOR_NS, "coordination.k8s.io", True, id="its Lease"),
        pytest.param("create", "leases", "shop", "coordination.k8s.io", False, id="no other Lease"),
    ],
)
def test_the_charts_service_account_can_do_what_the_operator_does_and_no_more(
    api_client: client.ApiClient,
    release: Release,
    verb: str,
    resource: str,
    namespace: str | None,
    group: str,
    allowed: bool,
) -> None:
    assert sar(api_client, verb, resource, namespace, group) is allowed


# -- policies -------------------------------------------------------------------------


def test_a_policy_becomes_ready_with_its_compiled_hash_and_a_signed_bundle(
    api_client: client.ApiClient, release: Release, app_namespace: str, masking_rule: str
) -> None:
    doc = policy("ready", masking={"rules": ["pii"]})
    create(api_client, app_namespace, doc)
    obj = wait_condition(api_client, app_namespace, DAPS, "ready", "Ready")
    status = obj["status"]
    rule = {**MASKING_RULE, "metadata": {"name": "pii", "namespace": app_namespace}}
    own = {**doc, "metadata": {"name": "ready", "namespace": app_namespace}}
    assert status["compiledHash"] == compile_documents([own, rule]).compiled_hash
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Invalid")["status"] == "False"
    configmap = client.CoreV1Api(api_client).read_namespaced_config_map(
        "steward-bundle-ready", app_namespace
    )
    [owner] = configmap.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        "DatabaseAccessPolicy",
        "ready",
        obj["metadata"]["uid"],
    )
    bundle = verify(
        configmap.data["bundle.json"].encode(),
        release.signing_key.public_key(),
        target=f"{app_namespace}/ready",
    )
    assert bundle.compiled_hash == status["compiledHash"]
    assert bundle.generation == status["bundleGeneration"]
    masking = get(api_client, app_namespace, MRS, "pii")
    assert condition(masking, "Ready")["status"] == "True"


def test_a_policy_whose_masking_rule_goes_away_becomes_invalid_with_an_event(
    api_client: client.ApiClient, release: Release, app_namespace: str
) -> None:
    rule = {**MASKING_RULE, "metadata": {"name": "short-lived"}}
    create(api_client, app_namespace, rule)
    create(api_client, app_namespace, policy("orphan", masking={"rules": ["short-lived"]}))
    good = wait_condition(api_client, app_namespace, DAPS, "orphan", "Ready")
    custom(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, app_namespace, MRS, "short-lived"
    )
    obj = wait_condition(api_client, app_namespace, DAPS, "orphan", "Invalid")
    invalid = condition(obj, "Invalid")
    assert invalid["reason"] == "MaskingRuleMissing"
    assert f"MaskingRule {app_namespace}/short-lived is not defined" in invalid["message"]
    assert "pods keep enforcing bundle generation" in invalid["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert obj["status"]["compiledHash"] == good["status"]["compiledHash"]  # the last good one
    # Still editable where the spec does not change (labels, kopf's own annotations).
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, app_namespace, DAPS, "orphan", {"metadata": {"labels": {"team": "x"}}}
    )
    core = client.CoreV1Api(api_client)
    assert core.read_namespaced_config_map("steward-bundle-orphan", app_namespace)

    def event() -> list[Any]:
        events = core.list_namespaced_event(
            app_namespace, field_selector="involvedObject.name=orphan"
        ).items
        return [e for e in events if e.reason == "MaskingRuleMissing" and e.type == "Warning"]

    [found] = wait_until(event, "a Warning event on the policy")
    assert "short-lived is not defined" in found.message


def test_the_validating_webhook_refuses_with_the_message_of_policy_check(
    api_client: client.ApiClient, release: Release, app_namespace: str, tmp_path: Path
) -> None:
    doc = policy("broken", masking={"rules": ["no-such-rule"]})
    doc["metadata"]["namespace"] = app_namespace
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    checked = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1
    problem = checked.stderr.strip().split("): ", 1)[1]
    assert problem.startswith("spec.masking.rules[0]: MaskingRule")

    def refused() -> ApiException | None:
        try:
            create(api_client, app_namespace, doc)
        except ApiException as exc:
            return exc
        custom(api_client).delete_namespaced_custom_object(
            GROUP, VERSION, app_namespace, DAPS, "broken"
        )
        return None

    exc = wait_until(refused, "the validating webhook to be active")
    assert exc.status == 422
    assert problem in api_message(exc)
    assert 'admission webhook "policies.steward.dev" denied the request' in api_message(exc)


# -- injection --------------------------------------------------------------------------


def stored_pod(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created = client.CoreV1Api(api).create_namespaced_pod(namespace, body)
    return api.sanitize_for_serialization(created)


def without_token_mounts(pod_dict: dict[str, Any]) -> dict[str, Any]:
    """The pod's spec and Steward annotations, minus what differs between any two pods."""
    spec = copy.deepcopy(pod_dict["spec"])
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        container["volumeMounts"] = [
            m
            for m in container.get("volumeMounts", [])
            if not m["name"].startswith("kube-api-access")
        ]
    spec["volumes"] = [v for v in spec["volumes"] if not v["name"].startswith("kube-api-access")]
    annotations = {
        k: v for k, v in pod_dict["metadata"]["annotations"].items() if k.startswith("steward.dev/")
    }
    return {"spec": spec, "annotations": annotations}


@pytest.fixture(scope="module")
def injection_policy(api_client: client.ApiClient, release: Release, app_namespace: str) -> str:
    create(api_client, app_namespace, policy("orders"))
    wait_condition(api_client, app_namespace, DAPS, "orders", "Ready")
    wait_for_injection(api_client, app_namespace, "orders")
    return "orders"


def test_an_annotated_pod_is_stored_with_the_sidecar(
    api_client: client.ApiClient, app_namespace: str, injection_policy: str
) -> None:
    first = stored_pod(
        api_client,
        app_namespace,
        pod("orders-1", "orders", {INJECT: "true", "steward.dev/database-url-env": "DATABASE_URL"}),
    )
    sidecar = first["spec"]["initContainers"][0]
    assert sidecar["name"] == "steward-proxy"
    assert sidecar["restartPolicy"] == "Always"
    assert "--identity" in sidecar["args"]
    assert f"system:serviceaccount:{app_namespace}:orders" in sidecar["args"]
    env = {e["name"]: e for e in first["spec"]["containers"][0]["env"]}
    assert env["PGHOST"]["value"] == "127.0.0.1"
    assert env["DATABASE_URL"]["value"] == "postgresql://orders@127.0.0.1:5432/orders"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["steward-bundle"]["readOnly"] is True
    annotations = first["metadata"]["annotations"]
    dap = get(api_client, app_namespace, DAPS, "orders")
    bundle_cm = client.CoreV1Api(api_client).read_namespaced_config_map(
        "steward-bundle-orders", app_namespace
    )
    assert annotations[INJECTED] == bundle_cm.metadata.annotations["steward.dev/bundle-hash"]
    assert annotations["steward.dev/bundle-generation"] == str(dap["status"]["bundleGeneration"])

    again = stored_pod(
        api_client,
        app_namespace,
        pod("orders-2", "orders", {INJECT: "true", "steward.dev/database-url-env": "DATABASE_URL"}),
    )
    assert without_token_mounts(again) == without_token_mounts(first)


def test_pods_that_do_not_ask_or_live_elsewhere_are_untouched(
    api_client: client.ApiClient,
    app_namespace: str,
    injection_policy: str,
    make_namespace: Callable[[str], str],
) -> None:
    plain = stored_pod(api_client, app_namespace, pod("plain", "orders", {}))
    opted_out = stored_pod(api_client, app_namespace, pod("opted-out", "orders", {INJECT: "false"}))
    other = make_namespace("elsewhere")
    client.CoreV1Api(api_client).create_namespaced_service_account(
        other, {"metadata": {"name": "orders"}}
    )
    elsewhere = stored_pod(api_client, other, pod("elsewhere", "orders"))
    for stored in (plain, opted_out, elsewhere):
        assert not stored["spec"].get("initContainers")
        assert INJECTED not in (stored["metadata"].get("annotations") or {})
        assert stored["spec"]["containers"][0]["env"] == [
            {"name": "PGHOST", "value": "postgres.example.svc"}
        ]


def test_a_pod_no_policy_selects_is_refused_with_the_reason(
    api_client: client.ApiClient, app_namespace: str, injection_policy: str
) -> None:
    with pytest.raises(ApiException) as refused:
        stored_pod(api_client, app_namespace, pod("stray", "billing"))
    message = api_message(refused.value)
    assert refused.value.status == 403
    assert f"no DatabaseAccessPolicy in namespace {app_namespace} selects it" in message
    assert "it would run ungoverned, so it is refused" in message


# -- the sidecar, live policy ---------------------------------------------------------


@dataclass
class Sidecar:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    database: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/policy", timeout=5) as r:
            return json.loads(r.read())

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname=self.database, user="app", autocommit=True
        )


def run_sidecar(
    api: client.ApiClient,
    namespace: str,
    stored: dict[str, Any],
    root: Path,
    *,
    wait_ready: bool = True,
) -> Sidecar:
    """Start the injected container's command as the kubelet would, volumes as directories."""
    core = client.CoreV1Api(api)
    [container] = [c for c in stored["spec"]["initContainers"] if c["name"] == "steward-proxy"]
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = root / mount["name"]
        directory.mkdir(parents=True)
        if "configMap" in volume:
            data = core.read_namespaced_config_map(volume["configMap"]["name"], namespace).data
            version = directory / "..2026_01"
            version.mkdir()
            for item in volume["configMap"]["items"]:
                (version / item["path"]).write_text(data[item["key"]])
                (directory / item["path"]).symlink_to(f"..data/{item['path']}")
            (directory / "..data").symlink_to(version.name)
        mounts[mount["mountPath"]] = directory
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "STEWARD_"))}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        try:
            secret = core.read_namespaced_secret(ref["name"], namespace)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                continue  # as the kubelet does: an optional reference to nothing sets nothing
            raise
        if secret.data and ref["key"] in secret.data:
            env[entry["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
        elif not ref.get("optional"):
            pytest.fail(f"the kubelet would not start the sidecar: no key {ref['key']}")
    args = [_local(arg, mounts) for arg in container["args"]]
    log_path = root / "sidecar.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "steward_proxy", "proxy", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            preexec_fn=_die_with_parent(),
        )
    listen = args[args.index("--listen") + 1]
    admin = args[args.index("--admin") + 1]
    upstream = args[args.index("--upstream") + 1]
    sidecar = Sidecar(
        process,
        int(listen.rsplit(":", 1)[1]),
        int(admin.rsplit(":", 1)[1]),
        upstream.rsplit("/", 1)[1],
        log_path,
    )

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the sidecar exited with {process.returncode}:\n{sidecar.log()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{sidecar.admin_port}/readyz", timeout=2
            ) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    if wait_ready:
        wait_until(ready, "the sidecar to become ready")
    return sidecar


@pytest.fixture(scope="module")
def database() -> Iterator[LocalPostgres]:
    with LocalPostgres(fast=True) as server:
        server.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);"
            "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) g;"
        )
        yield server


@pytest.fixture(scope="module")
def governed(
    api_client: client.ApiClient,
    release: Release,
    app_namespace: str,
    database: LocalPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Sidecar, dict[str, Any]]]:
    """A pod of the ``live`` policy, injected, its sidecar running against PostgreSQL."""
    core = client.CoreV1Api(api_client)
    user = LocalPostgres.SCRAM_USER
    core.create_namespaced_secret(
        app_namespace,
        {
            "metadata": {"name": "live-db"},
            "stringData": {"username": user, "password": database.passwords[user]},
        },
    )
    doc = policy(
        "live",
        database={
            "host": database.host,
            "port": database.port,
            "name": database.dbname,
            "credentialsSecretRef": {"name": "live-db"},
        },
    )
    create(api_client, app_namespace, doc)
    wait_condition(api_client, app_namespace, DAPS, "live", "Ready")
    wait_for_injection(api_client, app_namespace, "live")
    annotations = {
        INJECT: "true",
        "steward.dev/port": str(free_port()),
        "steward.dev/admin-port": str(free_port()),
    }
    stored = stored_pod(api_client, app_namespace, pod("live-1", "live", annotations))
    sidecar = run_sidecar(api_client, app_namespace, stored, tmp_path_factory.mktemp("sidecar"))
    # No kubelet: report the pod running at the loopback address, where its sidecar is.
    core.patch_namespaced_pod_status(
        "live-1", app_namespace, {"status": {"phase": "Running", "podIP": "127.0.0.1"}}
    )
    try:
        yield sidecar, stored
    finally:
        sidecar.process.send_signal(signal.SIGTERM)
        sidecar.process.wait(timeout=30)


def deletes_everything(conn: psycopg.Connection[Any]) -> bool:
    """Whether DELETE without WHERE passes (in a rolled-back transaction)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("DELETE FROM orders")
    except pgerr.InsufficientPrivilege as exc:
        assert "needs a WHERE clause" in str(exc)
        return False
    return True


NO_UNBOUNDED_DELETES = {
    "name": "no-unbounded-deletes",
    "match": {"statements": ["DELETE"], "withoutWhere": True},
    "action": "deny",
    "message": "DELETE needs a WHERE clause",
}


def test_the_sidecar_enforces_a_changed_policy_without_a_restart(
    api_client: client.ApiClient,
    release: Release,
    app_namespace: str,
    governed: tuple[Sidecar, dict[str, Any]],
) -> None:
    sidecar, _ = governed
    before = get(api_client, app_namespace, DAPS, "live")
    assert sidecar.running()["generation"] == before["status"]["bundleGeneration"]
    wait_until(
        lambda: get(api_client, app_namespace, DAPS, "live")["status"].get("pods") == 1,
        "the policy to count its pod",
    )
    with sidecar.connect() as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (100,)
        assert deletes_everything(conn)
        spec = copy.deepcopy(before["spec"])
        spec["guardrails"] = [NO_UNBOUNDED_DELETES]
        applied = time.monotonic()
        replace_spec(api_client, app_namespace, DAPS, "live", spec)
        while deletes_everything(conn):  # the same session, statement after statement
            assert time.monotonic() - applied < 60, sidecar.log()[-3000:]
        enforced = time.monotonic() - applied
        conn.execute("DELETE FROM orders WHERE id = 0")  # bounded writes still pass
    release.measurements.append(
        f"apply of a changed policy -> enforced by the running sidecar: {enforced:.2f}s "
        "(operator push to PUT /policy)"
    )
    after = wait_until(
        lambda: (
            obj
            if (obj := get(api_client, app_namespace, DAPS, "live"))["status"].get(
                "bundleGeneration"
            )
            != before["status"]["bundleGeneration"]
            else None
        ),
        "the new generation in status",
    )
    assert sidecar.running()["generation"] == after["status"]["bundleGeneration"]
    assert sidecar.process.poll() is None  # never restarted
    wait_until(
        lambda: get(api_client, app_namespace, DAPS, "live")["status"].get("outdatedPods") == 0,
        "no outdated pods",
    )
    audit = [
        json.loads(line)
        for line in (Path(sidecar.log_path.parent / "steward-state" / "audit.log"))
        .read_text()
        .splitlines()
    ]
    loads = [r for r in audit if r["type"] == "policy.loaded"]
    assert loads[-1]["client"] == "push from 127.0.0.1"
    assert loads[-1]["fingerprint"] == after["status"]["compiledHash"]


def push(sidecar: Sidecar, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{sidecar.admin_port}/policy", data=data, method="PUT"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_forged_or_older_pushed_bundle_is_refused_and_the_policy_stays(
    api_client: client.ApiClient,
    release: Release,
    app_namespace: str,
    governed: tuple[Sidecar, dict[str, Any]],
) -> None:
    sidecar, _ = governed
    running = sidecar.running()
    dap = get(api_client, app_namespace, DAPS, "live")
    own = {**dap, "metadata": {"name": "live", "namespace": app_namespace}}
    relaxed = copy.deepcopy(own)
    relaxed["spec"]["guardrails"] = []
    target = f"{app_namespace}/live"
    forged = sign(build(target, running["generation"] + 1000, [relaxed]), generate_key())
    older = sign(build(target, running["generation"] - 1, [relaxed]), release.signing_key)
    for data, status, problem in ((forged, 403, "signature"), (older, 409, "stale")):
        code, answer = push(sidecar, data)
        assert (code, answer["problem"]) == (status, problem)
        assert f"refused ({problem})" in sidecar.log()
    assert sidecar.running() == running
    with sidecar.connect() as conn:
        assert not deletes_everything(conn)


def test_a_pod_without_the_hash_key_its_policy_now_names_is_outdated(
    api_client: client.ApiClient,
    app_namespace: str,
    governed: tuple[Sidecar, dict[str, Any]],
) -> None:
    sidecar, stored = governed
    assert "steward.dev/hash-key" not in stored["metadata"]["annotations"]

    def outdated_pods() -> int | None:
        return get(api_client, app_namespace, DAPS, "live")["status"].get("outdatedPods")

    wait_until(lambda: outdated_pods() == 0, "no outdated pods")
    before = get(api_client, app_namespace, DAPS, "live")["spec"]
    spec = copy.deepcopy(before)
    ref = {"name": "live-masking", "key": "hash-key"}
    spec["masking"] = {**spec.get("masking", {}), "hashKeySecretRef": ref}
    replace_spec(api_client, app_namespace, DAPS, "live", spec)
    try:
        # The sidecar takes the new bundle, but a push cannot add the Secret's mount:
        # the pod stays outdated until it is restarted.
        wait_until(lambda: outdated_pods() == 1, "the pod to count as outdated")
        assert sidecar.process.poll() is None
    finally:
        replace_spec(api_client, app_namespace, DAPS, "live", before)
    wait_until(lambda: outdated_pods() == 0, "the pod to be current again")


def test_a_sidecar_whose_secret_is_missing_says_so_and_refuses_sign_in(
    api_client: client.ApiClient,
    app_namespace: str,
    injection_policy: str,
    tmp_path: Path,
) -> None:
    annotations = {
        INJECT: "true",
        "steward.dev/port": str(free_port()),
        "steward.dev/admin-port": str(free_port()),
    }
    stored = stored_pod(api_client, app_namespace, pod("no-secret", "orders", annotations))
    sidecar = run_sidecar(api_client, app_namespace, stored, tmp_path, wait_ready=False)
    try:

        def unready() -> str | None:
            try:
                url = f"http://127.0.0.1:{sidecar.admin_port}/readyz"
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as err:
                return err.read().decode() if err.code == 503 else None
            except OSError:
                return None  # not listening yet
            return None

        reason = wait_until(unready, "the sidecar to report itself not ready")
        assert "Secret orders-db gave no user" in reason
        assert "Secret orders-db gave no password" in reason

        def listening() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(
                    ("127.0.0.1", int(annotations["steward.dev/port"])), timeout=1
                ),
            ):
                return True
            return False

        # The admin endpoint answers before the proxy listens (its first
        # upstream check runs first).
        wait_until(listening, "the sidecar to listen")
        with pytest.raises(psycopg.OperationalError) as refused:
            sidecar.connect()
        assert "Secret orders-db gave no user" in str(refused.value)
        assert "not ready, every sign-in is refused" in sidecar.log()
    finally:
        sidecar.process.send_signal(signal.SIGTERM)
        sidecar.process.wait(timeout=30)


# -- operator outages and restarts -----------------------------------------------------


def test_with_the_operator_down_annotated_pods_are_refused_and_others_created(
    api_client: client.ApiClient, release: Release, app_namespace: str, injection_policy: str
) -> None:
    assert release.operator.stop(signal.SIGTERM) == 0
    try:
        with pytest.raises(ApiException) as refused:
            stored_pod(api_client, app_namespace, pod("while-down", "orders"))
        assert refused.value.status == 500
        assert "inject.pods.steward.dev" in api_message(refused.value)
        plain = stored_pod(api_client, app_namespace, pod("plain-while-down", "orders", {}))
        assert not plain["spec"].get("initContainers")
    finally:
        release.operator.start()


def bundle_configmaps(api: client.ApiClient, namespace: str) -> list[str]:
    listed = client.CoreV1Api(api).list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/managed-by=steward-operator"
    )
    return sorted(c.metadata.name for c in listed.items)


def test_an_operator_killed_midway_resumes_without_duplicates_or_lost_status(
    api_client: client.ApiClient, release: Release, app_namespace: str, injection_policy: str
) -> None:
    create(api_client, app_namespace, policy("resume"))
    first = wait_condition(api_client, app_namespace, DAPS, "resume", "Ready")
    configmaps = bundle_configmaps(api_client, app_namespace)
    spec = copy.deepcopy(first["spec"])
    spec["guardrails"] = [NO_UNBOUNDED_DELETES]
    replace_spec(api_client, app_namespace, DAPS, "resume", spec)
    # Whatever it was doing, no clean shutdown. (While it is down, the validating
    # webhook refuses policy changes: failurePolicy Fail.)
    release.operator.stop(signal.SIGKILL)
    release.operator.start()  # the same pod name takes its Lease back at once

    def resumed() -> dict[str, Any] | None:
        obj = get(api_client, app_namespace, DAPS, "resume")
        status = obj.get("status") or {}
        done = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if done and condition(obj, "Ready").get("status") == "True" else None

    after = wait_until(resumed, "the policy change to be handled after the restart")
    own = {**after, "metadata": {"name": "resume", "namespace": app_namespace}}
    assert after["status"]["compiledHash"] == compile_documents([own]).compiled_hash
    assert after["status"]["bundleGeneration"] > first["status"]["bundleGeneration"]
    assert (
        condition(after, "Ready")["lastTransitionTime"]
        == condition(first, "Ready")["lastTransitionTime"]
    )
    assert bundle_configmaps(api_client, app_namespace) == configmaps
    assert not after["metadata"].get("finalizers")  # deleting it never waits for the operator
    others = get(api_client, app_namespace, DAPS, "orders")
    assert condition(others, "Ready")["status"] == "True"


def test_deleting_a_policy_removes_its_bundle(
    api_client: client.ApiClient, release: Release, app_namespace: str
) -> None:
    create(api_client, app_namespace, policy("doomed"))
    wait_condition(api_client, app_namespace, DAPS, "doomed", "Ready")
    assert "steward-bundle-doomed" in bundle_configmaps(api_client, app_namespace)
    custom(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, app_namespace, DAPS, "doomed"
    )
    wait_until(
        lambda: "steward-bundle-doomed" not in bundle_configmaps(api_client, app_namespace),
        "the bundle ConfigMap to be deleted",
    )
