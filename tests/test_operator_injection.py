"""The injection patch as a pure function: pod and policies in, JSON patch out.

Tables name each case as a sentence: which pods are left alone, which are
refused and why, and what an injected pod looks like after the patch is
applied (with the ``jsonpatch`` library, as the API server would).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from steward_operator.injection import (
    ADMIN_PORT,
    BUNDLE_GENERATION,
    CONTAINER,
    DATABASE_URL_ENV,
    HASH_KEY,
    INJECT,
    INJECTED,
    MASK_WORKERS,
    PORT,
    Published,
    SidecarSettings,
    decide,
    patch,
)

SETTINGS = SidecarSettings(
    image="ghcr.io/example/steward-proxy:0.1.0",
    public_key="MCowBQYDK2VwAyEAexamplexamplexamplexamplexample=",
    operator_namespace="steward-system",
    resources={"requests": {"cpu": "50m", "memory": "64Mi"}},
)
PUBLISHED = Published(hash="ab" * 32, generation=1767225600)

POLICY: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "DatabaseAccessPolicy",
    "metadata": {"name": "orders-app", "namespace": "shop"},
    "spec": {
        "subjects": [{"kind": "ServiceAccount", "name": "orders"}],
        "podSelector": {"matchLabels": {"app": "orders"}},
        "database": {
            "host": "postgres.shop.svc",
            "port": 5433,
            "name": "orders",
            "credentialsSecretRef": {"name": "orders-db", "passwordKey": "pw"},
        },
        "defaultAction": "allow",
    },
}

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "orders-1",
        "namespace": "shop",
        "labels": {"app": "orders"},
        "annotations": {INJECT: "true"},
    },
    "spec": {
        "serviceAccountName": "orders",
        "containers": [
            {"name": "app", "image": "orders:1", "env": [{"name": "PGHOST", "value": "db"}]},
            {"name": "metrics", "image": "exporter:1"},
        ],
    },
}


def pod_with(
    annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    if annotations is not None:
        pod["metadata"]["annotations"] = annotations
    if labels is not None:
        pod["metadata"]["labels"] = labels
    pod["spec"].update(spec)
    return pod


def policy_with(name: str = "orders-app", **spec: Any) -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["metadata"]["name"] = name
    policy["spec"].update(spec)
    return policy


def injected(pod: dict[str, Any], policy: dict[str, Any] = POLICY) -> dict[str, Any]:
    decision = decide(pod, "shop", [policy], SETTINGS)
    assert decision.action == "inject", decision.message
    return jsonpatch.apply_patch(pod, patch(pod, "shop", policy, PUBLISHED, SETTINGS))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- which pods -----------------------------------------------------------------------

LEFT_ALONE = [
    pytest.param(pod_with(annotations={}), "shop", id="a pod that does not ask is left alone"),
    pytest.param(pod_with(annotations={INJECT: "false"}), "shop", id="inject false opts a pod out"),
    pytest.param(
        pod_with(annotations={INJECT: "yes"}), "shop", id="only the exact value true asks"
    ),
    pytest.param(POD, "kube-system", id="kube-system is never injected"),
    pytest.param(POD, "kube-public", id="kube-public is never injected"),
    pytest.param(POD, "steward-system", id="the operator's namespace is never injected"),
    pytest.param(
        pod_with(annotations={INJECT: "true", INJECTED: "x"}),
        "shop",
        id="a pod already injected is unchanged",
    ),
    pytest.param(
        pod_with(initContainers=[{"name": CONTAINER, "image": "x"}]),
        "shop",
        id="a pod that already has the sidecar container is unchanged",
    ),
]


@pytest.mark.parametrize(("pod", "namespace"), LEFT_ALONE)
def test_pods_left_alone(pod: dict[str, Any], namespace: str) -> None:
    assert decide(pod, namespace, [POLICY], SETTINGS).action == "skip"


REFUSED = [
    pytest.param(
        pod_with(labels={"app": "billing"}),
        [POLICY],
        "no DatabaseAccessPolicy in namespace shop selects it",
        id="a pod no policy selects is refused, not run ungoverned",
    ),
    pytest.param(
        POD,
        [policy_with(podSelector=None)],
        "no DatabaseAccessPolicy in namespace shop selects it",
        id="a policy without podSelector selects no pod",
    ),
    pytest.param(
        POD,
        [policy_with(database=None)],
        "orders-app selects it but names no database",
        id="a selecting policy without a database cannot be a sidecar's",
    ),
    pytest.param(
        POD,
        [POLICY, policy_with("orders-extra")],
        "more than one DatabaseAccessPolicy with a database (orders-app, orders-extra)",
        id="two selecting policies are refused by name",
    ),
    pytest.param(
        POD,
        [policy_with(database={"host": "db", "name": "orders"})],
        "names no database.credentialsSecretRef",
        id="a policy without credentials gives the sidecar no upstream user",
    ),
    pytest.param(
        pod_with(annotations={INJECT: "true", PORT: "70000"}),
        [POLICY],
        "steward.dev/port must be a port number",
        id="a port out of range is refused",
    ),
    pytest.param(
        pod_with(annotations={INJECT: "true", PORT: "9187"}),
        [POLICY],
        "name the same port",
        id="the app port and the admin port must differ",
    ),
    pytest.param(
        pod_with(annotations={INJECT: "true", MASK_WORKERS: "17"}),
        [POLICY],
        "steward.dev/mask-workers must be a whole number from 0 to 16, not '17'",
        id="more masking workers than the bound are refused",
    ),
    pytest.param(
        pod_with(annotations={INJECT: "true", MASK_WORKERS: "two"}),
        [POLICY],
        "steward.dev/mask-workers must be a whole number",
        id="masking workers that are not a number are refused",
    ),
    pytest.param(
        pod_with(annotations={INJECT: "true", DATABASE_URL_ENV: "DATABASE URL"}),
        [POLICY],
        "must name an environment variable",
        id="a URL variable name that is not one is refused",
    ),
    pytest.param(
        pod_with(
            containers=[
                {
                    "name": "app",
                    "image": "orders:1",
                    "volumeMounts": [{"name": "steward-hash-key", "mountPath": "/keys"}],
                }
            ]
        ),
        [policy_with(masking={"hashKeySecretRef": {"name": "orders-masking", "key": "hmac"}})],
        "container 'app' mounts volume 'steward-hash-key': volume names starting with steward- "
        "are reserved for the Steward sidecar",
        id="an app container that mounts the sidecar's hash key volume is refused",
    ),
    pytest.param(
        pod_with(
            initContainers=[
                {
                    "name": "copy",
                    "image": "busybox",
                    "volumeMounts": [{"name": "steward-state", "mountPath": "/audit"}],
                }
            ]
        ),
        [POLICY],
        "container 'copy' mounts volume 'steward-state'",
        id="an init container that mounts the sidecar's audit trail volume is refused",
    ),
    pytest.param(
        pod_with(volumes=[{"name": "steward-hash-key", "secret": {"secretName": "other"}}]),
        [POLICY],
        "the pod declares volume 'steward-hash-key'",
        id="a pod that declares a reserved volume name is refused",
    ),
]


@pytest.mark.parametrize(("pod", "policies", "message"), REFUSED)
def test_pods_refused(pod: dict[str, Any], policies: list[dict[str, Any]], message: str) -> None:
    decision = decide(pod, "shop", policies, SETTINGS)
    assert decision.action == "refuse"
    assert message in decision.message


SELECTED = [
    pytest.param({"matchLabels": {"app": "orders"}}, True, id="matchLabels equal"),
    pytest.param({}, True, id="an empty selector selects every pod"),
    pytest.param({"matchLabels": {"app": "orders", "tier": "db"}}, False, id="a label missing"),
    pytest.param(
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders", "x"]}]},
        True,
        id="In",
    ),
    pytest.param(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["orders"]}]},
        False,
        id="NotIn",
    ),
    pytest.param({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True, id="Exists"),
    pytest.param(
        {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]},
        False,
        id="DoesNotExist",
    ),
]


@pytest.mark.parametrize(("selector", "selected"), SELECTED)
def test_pod_selectors_follow_kubernetes_semantics(
    selector: dict[str, Any], selected: bool
) -> None:
    decision = decide(POD, "shop", [policy_with(podSelector=selector)], SETTINGS)
    assert (decision.action == "inject") is selected


def test_a_service_account_the_policy_does_not_cover_gets_a_warning() -> None:
    decision = decide(pod_with(serviceAccountName="batch"), "shop", [POLICY], SETTINGS)
    assert decision.action == "inject"
    assert "ServiceAccount shop/batch" in decision.warnings[0]
    assert decide(POD, "shop", [POLICY], SETTINGS).warnings == ()


# -- the injected pod -------------------------------------------------------------------


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    first = pod["spec"]["initContainers"][0]
    assert first["name"] == CONTAINER
    return first


def test_the_sidecar_is_a_native_sidecar_with_the_policy_configuration() -> None:
    sidecar = sidecar_of(injected(POD))
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SETTINGS.image
    assert sidecar["args"] == [
        "--listen",
        "127.0.0.1:5432",
        "--upstream",
        "postgresql://postgres.shop.svc:5433/orders",
        "--identity",
        "system:serviceaccount:shop:orders",
        "--bundle",
        "/etc/steward/bundle/bundle.json",
        "--bundle-target",
        "shop/orders-app",
        "--bundle-poll",
        "2",
        "--admin",
        "0.0.0.0:9187",
        "--audit-log",
        "/var/lib/steward/audit.log",
    ]
    assert sidecar["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_credentials_come_from_the_secret_never_from_args() -> None:
    sidecar = sidecar_of(injected(POD))
    env = env_of(sidecar)
    assert env["STEWARD_UPSTREAM_USER"] == {
        "secretKeyRef": {"name": "orders-db", "key": "username", "optional": True}
    }
    assert env["STEWARD_UPSTREAM_PASSWORD"] == {
        "secretKeyRef": {"name": "orders-db", "key": "pw", "optional": True}
    }
    assert env["STEWARD_UPSTREAM_SECRET"] == "orders-db"
    assert env["STEWARD_BUNDLE_PUBLIC_KEY"] == SETTINGS.public_key
    assert not any("orders-db" in arg or "@" in arg for arg in sidecar["args"])


def test_the_sidecar_runs_restricted() -> None:
    context = sidecar_of(injected(POD))["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_bundle_configmap_is_mounted_read_only() -> None:
    pod = injected(POD)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["steward-bundle"]["configMap"]["name"] == "steward-bundle-orders-app"
    mounts = {m["name"]: m for m in sidecar_of(pod)["volumeMounts"]}
    assert mounts["steward-bundle"] == {
        "name": "steward-bundle",
        "mountPath": "/etc/steward/bundle",
        "readOnly": True,
    }


HASHING = policy_with(masking={"hashKeySecretRef": {"name": "orders-masking", "key": "hmac"}})


def test_the_hash_key_secret_is_mounted_read_only_into_the_sidecar_only() -> None:
    pod = injected(
        pod_with(
            initContainers=[
                {
                    "name": "migrate",
                    "image": "orders:1",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            volumes=[{"name": "data", "emptyDir": {}}],
        ),
        HASHING,
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["steward-hash-key"] == {
        "name": "steward-hash-key",
        "secret": {
            "secretName": "orders-masking",
            "items": [{"key": "hmac", "path": "hmac"}],
            "optional": True,
        },
    }
    sidecar, migrate = pod["spec"]["initContainers"]
    assert {m["name"]: m for m in sidecar["volumeMounts"]}["steward-hash-key"] == {
        "name": "steward-hash-key",
        "mountPath": "/etc/steward/hash-keys/shop/orders-masking",
        "readOnly": True,
    }
    # The pod records which key it mounts: a policy that names another later finds it outdated.
    assert pod["metadata"]["annotations"][HASH_KEY] == "orders-masking/hmac"
    # The proxy finds it as --hash-key-dir/NAMESPACE/NAME/KEY; the key is never in args or env.
    assert sidecar["args"][-2:] == ["--hash-key-dir", "/etc/steward/hash-keys"]
    assert "orders-masking" not in str(sidecar["env"])
    others = [migrate, *pod["spec"]["containers"]]
    assert all(m["name"] != "steward-hash-key" for c in others for m in c.get("volumeMounts", ()))
    assert not any("orders-masking" in str(c) for c in others)


def test_a_policy_without_a_hash_key_secret_mounts_none() -> None:
    pod = injected(POD, policy_with(masking={"rules": ["pii"]}))
    assert "steward-hash-key" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert "--hash-key-dir" not in sidecar_of(pod)["args"]
    assert HASH_KEY not in pod["metadata"]["annotations"]


def test_app_containers_point_at_the_sidecar() -> None:
    pod = injected(pod_with(annotations={INJECT: "true", DATABASE_URL_ENV: "DATABASE_URL"}))
    app, metrics = pod["spec"]["containers"]
    assert env_of(app) == {
        "PGHOST": "127.0.0.1",  # the app's own PGHOST is replaced
        "PGPORT": "5432",
        "DATABASE_URL": "postgresql://orders@127.0.0.1:5432/orders",
    }
    assert env_of(metrics)["PGHOST"] == "127.0.0.1"
    assert [e["name"] for e in app["env"]].count("PGHOST") == 1


def test_ports_come_from_annotations() -> None:
    pod = injected(pod_with(annotations={INJECT: "true", PORT: "6543", ADMIN_PORT: "15000"}))
    sidecar = sidecar_of(pod)
    assert sidecar["args"][1] == "127.0.0.1:6543"
    assert "0.0.0.0:15000" in sidecar["args"]
    assert sidecar["ports"][0]["containerPort"] == 15000
    assert env_of(pod["spec"]["containers"][0])["PGPORT"] == "6543"
    assert pod["metadata"]["annotations"][ADMIN_PORT] == "15000"


def test_masking_workers_come_from_an_annotation() -> None:
    assert "--mask-workers" not in sidecar_of(injected(POD))["args"]
    zero = injected(pod_with(annotations={INJECT: "true", MASK_WORKERS: "0"}))
    assert "--mask-workers" not in sidecar_of(zero)["args"]
    args = sidecar_of(injected(pod_with(annotations={INJECT: "true", MASK_WORKERS: "2"})))["args"]
    assert args[args.index("--mask-workers") + 1] == "2"


def test_the_pod_is_annotated_with_the_bundle() -> None:
    annotations = injected(POD)["metadata"]["annotations"]
    assert annotations[INJECTED] == PUBLISHED.hash
    assert annotations["steward.dev/policy"] == "orders-app"
    assert annotations[BUNDLE_GENERATION] == str(PUBLISHED.generation)
    assert annotations[INJECT] == "true"


def test_the_sidecar_goes_before_existing_init_containers_and_volumes_are_kept() -> None:
    pod = injected(
        pod_with(
            initContainers=[{"name": "migrate", "image": "orders:1"}],
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [CONTAINER, "migrate"]
    assert env_of(pod["spec"]["initContainers"][1])["PGHOST"] == "127.0.0.1"
    assert [v["name"] for v in pod["spec"]["volumes"]] == [
        "data",
        "steward-bundle",
        "steward-state",
        "steward-tmp",
    ]


def test_an_injected_pod_is_not_injected_again() -> None:
    pod = injected(POD)
    assert decide(pod, "shop", [POLICY], SETTINGS).action == "skip"


def test_the_default_service_account_is_the_identity_when_none_is_named() -> None:
    pod = pod_with()
    del pod["spec"]["serviceAccountName"]
    decision = decide(pod, "shop", [POLICY], SETTINGS)
    sidecar = sidecar_of(
        jsonpatch.apply_patch(pod, patch(pod, "shop", POLICY, PUBLISHED, SETTINGS))
    )
    assert "system:serviceaccount:shop:default" in sidecar["args"]
    assert decision.warnings  # the policy covers orders, not default


def test_the_patch_does_not_change_its_input() -> None:
    pod = copy.deepcopy(POD)
    patch(pod, "shop", POLICY, PUBLISHED, SETTINGS)
    assert pod == POD
