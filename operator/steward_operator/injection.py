"""Sidecar injection: a pod and the namespace's policies in, a JSON patch out.

A pod asks for governance with the annotation ``steward.dev/inject: "true"``
in a namespace labelled ``steward.dev/injection=enabled``. :func:`decide`
picks the policy that governs it (exactly one DatabaseAccessPolicy whose
``podSelector`` selects the pod and that names a ``database``), or says why
the pod is left alone or refused; :func:`patch` is the JSON patch (RFC 6902)
that adds the proxy as a native sidecar (an init container with
``restartPolicy: Always``, first, so it starts before the app and any other
init container and stops after them) and points the app at it.

The sidecar gets the upstream from the policy's ``database``, its credentials
from the policy's Secret through ``secretKeyRef`` (never in args, and
optional, so the proxy itself reports a missing Secret: not ready, with the
reason), the workload identity from the pod's ServiceAccount, the bundle
ConfigMap read-only, and the operator's public key as a value (a key in a
ConfigMap of the workload's namespace could be replaced by anyone who can
write the bundle ConfigMap there, which is exactly what the signature guards).
When the policy names ``spec.masking.hashKeySecretRef``, that Secret's one key
is mounted read-only into the sidecar container alone (the app containers
never see it), under ``HASH_KEY_DIR/NAMESPACE/NAME/KEY``, where the proxy reads
it; the volume is optional, so a missing Secret is the proxy's to report (it
refuses the sign-ins its masking needs the key for). The pod is annotated with
the reference it mounts (``steward.dev/hash-key``), so a pod whose policy names
another since counts as outdated. A pod whose own containers mount a volume
name the injection reserves (``steward-*``), or that declares one, is refused:
its app container would otherwise mount the sidecar's key or audit trail.

Pure: no API calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from steward_operator.targets import (
    BUNDLE_KEY,
    configmap_name,
    selector_matches,
    target_key,
)

INJECT = "steward.dev/inject"
INJECTED = "steward.dev/injected"
POLICY = "steward.dev/policy"
BUNDLE_GENERATION = "steward.dev/bundle-generation"
PORT = "steward.dev/port"
ADMIN_PORT = "steward.dev/admin-port"
DATABASE_URL_ENV = "steward.dev/database-url-env"
HASH_KEY = "steward.dev/hash-key"
MASK_WORKERS = "steward.dev/mask-workers"
MAX_MASK_WORKERS = 16
NAMESPACE_LABEL = "steward.dev/injection"

CONTAINER = "steward-proxy"
BUNDLE_VOLUME = "steward-bundle"
STATE_VOLUME = "steward-state"
TMP_VOLUME = "steward-tmp"
HASH_KEY_VOLUME = "steward-hash-key"
RESERVED_VOLUME_PREFIX = "steward-"
BUNDLE_DIR = "/etc/steward/bundle"
HASH_KEY_DIR = "/etc/steward/hash-keys"
STATE_DIR = "/var/lib/steward"
DEFAULT_PORT = 5432
DEFAULT_ADMIN_PORT = 9187
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """What the chart configures about every injected sidecar."""

    image: str
    public_key: str
    """The operator's bundle public key, base64 of the raw 32 bytes."""
    operator_namespace: str
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = field(default_factory=dict)
    run_as_user: int = 10001
    default_port: int = DEFAULT_PORT
    default_admin_port: int = DEFAULT_ADMIN_PORT
    bundle_poll_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class Published:
    """The bundle a target's ConfigMap holds now."""

    hash: str
    generation: int


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a pod at creation.

    ``skip``: leave it as it is; ``refuse``: fail the creation with
    ``message``; ``inject``: inject the sidecar for ``policy``.
    """

    action: Literal["skip", "refuse", "inject"]
    message: str = ""
    policy: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = ()


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def service_account(pod: Mapping[str, Any]) -> str:
    spec = pod.get("spec") or {}
    return spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"


def already_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
    return INJECTED in _annotations(pod) or any(c.get("name") == CONTAINER for c in containers)


def _mask_workers(pod: Mapping[str, Any]) -> int | str:
    """The sidecar's ``--mask-workers`` (0 unless annotated), or what is wrong with it."""
    text = _annotations(pod).get(MASK_WORKERS)
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_MASK_WORKERS:
        return (
            f"annotation {MASK_WORKERS} must be a whole number from 0 to {MAX_MASK_WORKERS}, "
            f"not {text[:20]!r}"
        )
    return int(text)


def _port(pod: Mapping[str, Any], annotation: str, default: int) -> int | str:
    """The port an annotation gives (or ``default``), or a message saying what is wrong."""
    text = _annotations(pod).get(annotation)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        return f"annotation {annotation} must be a port number (1-65535), not {text[:20]!r}"
    return int(text)


def decide(
    pod: Mapping[str, Any],
    namespace: str,
    policies: Sequence[Mapping[str, Any]],
    settings: SidecarSettings,
) -> Decision:
    """Whether and for which policy to inject ``pod``, created in ``namespace``."""
    annotations = _annotations(pod)
    if namespace in SYSTEM_NAMESPACES or namespace == settings.operator_namespace:
        return Decision("skip", f"pods in {namespace} are never injected")
    wanted = annotations.get(INJECT)
    if wanted != "true":
        return Decision("skip", f"the pod does not ask for injection ({INJECT}: {wanted!r})")
    if already_injected(pod):
        return Decision("skip", "the pod already has the Steward sidecar")
    reserved = _reserved_volume_use(pod)
    if reserved:
        return Decision(
            "refuse",
            f"{reserved}: volume names starting with {RESERVED_VOLUME_PREFIX} are reserved for "
            "the Steward sidecar (its hash key and audit trail); rename the volume",
        )
    for problem in (
        _port(pod, PORT, settings.default_port),
        _port(pod, ADMIN_PORT, settings.default_admin_port),
    ):
        if isinstance(problem, str):
            return Decision("refuse", problem)
    if _port(pod, PORT, settings.default_port) == _port(
        pod, ADMIN_PORT, settings.default_admin_port
    ):
        return Decision("refuse", f"annotations {PORT} and {ADMIN_PORT} name the same port")
    workers = _mask_workers(pod)
    if isinstance(workers, str):
        return Decision("refuse", workers)
    url_env = annotations.get(DATABASE_URL_ENV)
    if url_env is not None and not _ENV_NAME.match(url_env):
        return Decision(
            "refuse",
            f"annotation {DATABASE_URL_ENV} must name an environment variable, "
            f"not {url_env[:64]!r}",
        )

    labels = _labels(pod)
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", namespace) == namespace
        and selector_matches((p.get("spec") or {}).get("podSelector"), labels)
    ]
    with_database = [p for p in selecting if (p.get("spec") or {}).get("database")]
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
    if not with_database:
        without = [p["metadata"]["name"] for p in selecting]
        detail = f"; {', '.join(without)} selects it but names no database" if without else ""
        return Decision(
            "refuse",
            f'the pod asks for Steward governance ({INJECT}: "true") but no '
            f"DatabaseAccessPolicy in namespace {namespace} selects it with its podSelector "
            f"(pod labels: {shown}){detail}; it would run ungoverned, so it is refused",
        )
    if len(with_database) > 1:
        names = ", ".join(sorted(p["metadata"]["name"] for p in with_database))
        return Decision(
            "refuse",
            f"the pod is selected by more than one DatabaseAccessPolicy with a database "
            f"({names}); a sidecar enforces one: narrow their podSelectors",
        )
    policy = with_database[0]
    database = policy["spec"]["database"]
    if not database.get("credentialsSecretRef"):
        return Decision(
            "refuse",
            f"DatabaseAccessPolicy {policy['metadata']['name']} names no "
            "database.credentialsSecretRef: the sidecar would have no upstream user",
        )
    warnings = []
    account = service_account(pod)
    if not _covers(policy, namespace, account):
        warnings.append(
            f"DatabaseAccessPolicy {policy['metadata']['name']} does not list ServiceAccount "
            f"{namespace}/{account} among its subjects: every connection of this pod "
            "will be refused"
        )
    return Decision("inject", policy=policy, warnings=tuple(warnings))


def _reserved_volume_use(pod: Mapping[str, Any]) -> str | None:
    """Where the pod itself declares or mounts a volume name the injection reserves."""
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or ():
        if str(volume.get("name", "")).startswith(RESERVED_VOLUME_PREFIX):
            return f"the pod declares volume {str(volume['name'])[:64]!r}"
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or ():
            for mount in container.get("volumeMounts") or ():
                if str(mount.get("name", "")).startswith(RESERVED_VOLUME_PREFIX):
                    return (
                        f"container {str(container.get('name'))[:64]!r} mounts volume "
                        f"{str(mount['name'])[:64]!r}"
                    )
    return None


def _covers(policy: Mapping[str, Any], namespace: str, account: str) -> bool:
    return any(
        s.get("kind") == "ServiceAccount"
        and s.get("name") == account
        and (s.get("namespace") or policy["metadata"].get("namespace", namespace)) == namespace
        for s in policy["spec"].get("subjects", ())
    )


def _pointer(text: str) -> str:
    """A JSON pointer token (RFC 6901)."""
    return text.replace("~", "~0").replace("/", "~1")


def _database_url(user: str, port: int, database: str) -> str:
    from urllib.parse import quote

    return f"postgresql://{quote(user, safe='')}@127.0.0.1:{port}/{quote(database, safe='')}"


def sidecar_container(
    pod: Mapping[str, Any],
    namespace: str,
    policy: Mapping[str, Any],
    settings: SidecarSettings,
) -> dict[str, Any]:
    """The proxy's container: a native sidecar (an init container that keeps running)."""
    port = _port(pod, PORT, settings.default_port)
    admin_port = _port(pod, ADMIN_PORT, settings.default_admin_port)
    name = policy["metadata"]["name"]
    database = policy["spec"]["database"]
    secret = database["credentialsSecretRef"]
    upstream = f"postgresql://{database['host']}:{database.get('port', 5432)}/{database['name']}"
    probe_port = "steward-admin"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": [
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            upstream,
            "--identity",
            f"system:serviceaccount:{namespace}:{service_account(pod)}",
            "--bundle",
            f"{BUNDLE_DIR}/{BUNDLE_KEY}",
            "--bundle-target",
            target_key(namespace, name),
            "--bundle-poll",
            f"{settings.bundle_poll_seconds:g}",
            "--admin",
            f"0.0.0.0:{admin_port}",
            "--audit-log",
            f"{STATE_DIR}/audit.log",
        ],
        "env": [
            _secret_env("STEWARD_UPSTREAM_USER", secret["name"], secret.get("usernameKey")),
            _secret_env("STEWARD_UPSTREAM_PASSWORD", secret["name"], secret.get("passwordKey")),
            {"name": "STEWARD_UPSTREAM_SECRET", "value": secret["name"]},
            {"name": "STEWARD_BUNDLE_PUBLIC_KEY", "value": settings.public_key},
        ],
        "ports": [{"name": probe_port, "containerPort": admin_port, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": probe_port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "volumeMounts": [
            {"name": BUNDLE_VOLUME, "mountPath": BUNDLE_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    workers = _mask_workers(pod)
    if isinstance(workers, int) and workers:
        container["args"] += ["--mask-workers", str(workers)]
    hash_key = hash_key_ref(policy)
    if hash_key is not None:
        container["args"] += ["--hash-key-dir", HASH_KEY_DIR]
        container["volumeMounts"].append(
            {
                "name": HASH_KEY_VOLUME,
                "mountPath": f"{HASH_KEY_DIR}/{namespace}/{hash_key['name']}",
                "readOnly": True,
            }
        )
    if settings.resources:
        container["resources"] = dict(settings.resources)
    return container


def hash_key_ref(policy: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The policy's ``spec.masking.hashKeySecretRef`` (``name``, ``key``), if it names one."""
    return ((policy.get("spec") or {}).get("masking") or {}).get("hashKeySecretRef")


def hash_key_annotation(policy: Mapping[str, Any]) -> str:
    """What the pod records of the hash key it mounts: ``NAME/KEY``, empty for none."""
    ref = hash_key_ref(policy)
    return "" if ref is None else f"{ref['name']}/{ref['key']}"


def hash_key_volume(ref: Mapping[str, str]) -> dict[str, Any]:
    """The Secret volume with the one key ``ref`` names (optional: the proxy reports it)."""
    return {
        "name": HASH_KEY_VOLUME,
        "secret": {
            "secretName": ref["name"],
            "items": [{"key": ref["key"], "path": ref["key"]}],
            "optional": True,
        },
    }


def _secret_env(name: str, secret: str, key: str | None) -> dict[str, Any]:
    default = "username" if name.endswith("USER") else "password"
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key or default, "optional": True}},
    }


def app_env(
    pod: Mapping[str, Any], policy: Mapping[str, Any], settings: SidecarSettings
) -> list[dict[str, str]]:
    """What app containers get: PGHOST, PGPORT and, if asked for, a URL to the sidecar."""
    port = _port(pod, PORT, settings.default_port)
    env = [{"name": "PGHOST", "value": "127.0.0.1"}, {"name": "PGPORT", "value": str(port)}]
    url_env = _annotations(pod).get(DATABASE_URL_ENV)
    if url_env:
        database = policy["spec"]["database"]["name"]
        env.append(
            {"name": url_env, "value": _database_url(service_account(pod), int(port), database)}
        )
    return env


def patch(
    pod: Mapping[str, Any],
    namespace: str,
    policy: Mapping[str, Any],
    published: Published,
    settings: SidecarSettings,
) -> list[dict[str, Any]]:
    """The JSON patch that injects the sidecar for ``policy`` into ``pod``.

    Environment variables first (container indexes do not move), then the
    sidecar at the head of ``initContainers``, the volumes and the annotations.
    A variable the app already sets is replaced: PGHOST must point at the
    sidecar.
    """
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    env = app_env(pod, policy, settings)
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or ()):
            ops.extend(_env_ops(f"/spec/{kind}/{i}/env", container.get("env"), env))

    sidecar = sidecar_container(pod, namespace, policy, settings)
    if spec.get("initContainers"):
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})

    volumes = [
        {
            "name": BUNDLE_VOLUME,
            "configMap": {
                "name": configmap_name(policy["metadata"]["name"]),
                "items": [{"key": BUNDLE_KEY, "path": BUNDLE_KEY}],
            },
        },
        {"name": STATE_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    hash_key = hash_key_ref(policy)
    if hash_key is not None:
        volumes.append(hash_key_volume(hash_key))
    if spec.get("volumes"):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})

    admin_port = _port(pod, ADMIN_PORT, settings.default_admin_port)
    added = {
        INJECTED: published.hash,
        POLICY: policy["metadata"]["name"],
        BUNDLE_GENERATION: str(published.generation),
        ADMIN_PORT: str(admin_port),
    }
    if hash_key is not None:
        added[HASH_KEY] = hash_key_annotation(policy)
    annotations = _annotations(pod)
    if not (pod.get("metadata") or {}).get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": added})
    else:
        for key, value in added.items():
            op = "replace" if key in annotations else "add"
            ops.append({"op": op, "path": f"/metadata/annotations/{_pointer(key)}", "value": value})
    return ops


def _env_ops(
    path: str, current: Sequence[Mapping[str, Any]] | None, wanted: Sequence[Mapping[str, str]]
) -> list[dict[str, Any]]:
    if not current:
        return [{"op": "add", "path": path, "value": [dict(e) for e in wanted]}]
    index = {e.get("name"): i for i, e in enumerate(current)}
    ops: list[dict[str, Any]] = []
    for entry in wanted:
        if entry["name"] in index:
            ops.append(
                {"op": "replace", "path": f"{path}/{index[entry['name']]}", "value": dict(entry)}
            )
        else:
            ops.append({"op": "add", "path": f"{path}/-", "value": dict(entry)})
    return ops
