"""The Helm chart on its own: lint, render, and what the rendered objects promise.

No cluster is needed: ``helm lint`` and ``helm template`` run with the helm
binary the control-plane build caches. The chart's CRDs must stay identical to
``crds/``; the webhook certificate Helm makes must be signed by the CA the
webhook configurations carry and name the webhook Service; the Deployment's
arguments must be ones ``steward operator`` accepts.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from steward_operator.cli import build_parser

from e2e.controlplane.harness import Binaries
from e2e.controlplane.testing import unavailable

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "steward"

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="module")
def helm_path() -> Path:
    binaries = Binaries.locate()
    if binaries is not None:
        return binaries.helm
    found = shutil.which("helm")
    if found is None:
        unavailable("no helm binary: run `make controlplane` or put helm on PATH")
    return Path(found)


def helm(helm_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_path), *args], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture(scope="module")
def render(helm_path: Path) -> Render:
    def run(*sets: str) -> list[dict[str, Any]]:
        args = ["template", "steward", str(CHART), "--namespace", "steward-system"]
        for value in sets:
            args += ["--set", value]
        result = helm(helm_path, *args)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]

    return run


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def test_the_charts_crds_are_the_crds() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART / "crds" / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in (REPO / "crds").glob("*.yaml")
    )


def test_helm_lint_is_clean(helm_path: Path) -> None:
    result = helm(helm_path, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_optional_part_renders(render: Render) -> None:
    kinds = sorted(
        d["kind"]
        for d in render(
            "metrics.serviceMonitor.enabled=true",
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
        )
    )
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "MutatingWebhookConfiguration",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "ValidatingWebhookConfiguration",
        ]
    )


def test_the_values_schema_refuses_a_bad_value(helm_path: Path) -> None:
    result = helm(
        helm_path, "template", "steward", str(CHART), "--set", "webhook.failurePolicy=Maybe"
    )
    assert result.returncode != 0
    assert "failurePolicy" in result.stderr


def test_the_webhooks_are_scoped_and_fail_closed(render: Render) -> None:
    documents = render()
    [mutating] = by_kind(documents, "MutatingWebhookConfiguration")
    [hook] = mutating["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 10
    assert hook["sideEffects"] == "None"
    assert hook["namespaceSelector"]["matchLabels"] == {"steward.dev/injection": "enabled"}
    [excluded] = hook["namespaceSelector"]["matchExpressions"]
    assert {"kube-system", "kube-public", "steward-system"} <= set(excluded["values"])
    [condition] = hook["matchConditions"]
    assert "object.metadata.annotations['steward.dev/inject'] == 'true'" in condition["expression"]
    assert hook["clientConfig"]["service"]["path"] == "/inject-pods"
    [validating] = by_kind(documents, "ValidatingWebhookConfiguration")
    assert [h["clientConfig"]["service"]["path"] for h in validating["webhooks"]] == [
        "/validate-policies",
        "/validate-masking-rules",
    ]
    for h in validating["webhooks"]:
        assert (h["failurePolicy"], h["timeoutSeconds"], h["sideEffects"]) == ("Fail", 10, "None")


def _verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )


def test_the_webhook_certificate_is_signed_by_the_ca_the_configurations_carry(
    render: Render,
) -> None:
    documents = render()
    [tls] = [d for d in by_kind(documents, "Secret") if d["type"] == "kubernetes.io/tls"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    [mutating] = by_kind(documents, "MutatingWebhookConfiguration")
    ca_pem = base64.b64decode(mutating["webhooks"][0]["clientConfig"]["caBundle"])
    _verify_signed_by(cert, x509.load_pem_x509_certificate(ca_pem))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "steward-webhook.steward-system.svc" in names.get_values_for_type(x509.DNSName)
    [validating] = by_kind(documents, "ValidatingWebhookConfiguration")
    assert {h["clientConfig"]["caBundle"] for h in validating["webhooks"]} == {
        mutating["webhooks"][0]["clientConfig"]["caBundle"]
    }


def test_cert_manager_can_make_the_certificate_instead(render: Render) -> None:
    documents = render("webhook.certificate.source=cert-manager")
    assert [d["kind"] for d in documents if d["apiVersion"].startswith("cert-manager")] == [
        "Certificate",
        "Issuer",
    ]
    assert not [d for d in by_kind(documents, "Secret") if d["type"] == "kubernetes.io/tls"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        [config] = by_kind(documents, kind)
        annotation = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == "steward-system/steward-webhook"
        assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])


def test_the_operator_runs_restricted_with_arguments_it_accepts(render: Render) -> None:
    [deployment] = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.sidecar_resources == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    assert str(args.signing_key) == "/etc/steward/signing/ed25519.pem"
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/steward/webhook", "/etc/steward/signing"} <= mounts


def test_only_the_operator_mounts_the_signing_key(render: Render) -> None:
    documents = render()
    [signing] = [d for d in by_kind(documents, "Secret") if "ed25519.pem" in d.get("data", {})]
    mounting = [
        d["metadata"]["name"]
        for d in documents
        if d["kind"] == "Deployment"
        and any(
            v.get("secret", {}).get("secretName") == signing["metadata"]["name"]
            for v in d["spec"]["template"]["spec"]["volumes"]
        )
    ]
    assert mounting == ["steward"]


def test_the_cluster_role_grants_no_secrets_and_no_pod_writes(render: Render) -> None:
    [role] = by_kind(render(), "ClusterRole")
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
        assert "*" not in rule["verbs"]
