"""The API server calls mutating and validating admission webhooks.

A small HTTPS webhook runs in the test process on 127.0.0.1, with a certificate
from a throwaway CA given to the API server as the caBundle. The mutating hook
labels new ConfigMaps; the validating hook refuses ConfigMaps labelled
``steward-e2e/deny``. Both are scoped to the test's namespace.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.controlplane.harness import ADMIN_USER, CertificateAuthority
from e2e.controlplane.testing import Cluster

DENY_LABEL = "steward-e2e/deny"
MUTATED_LABEL = "steward-e2e/mutated"
DENY_MESSAGE = "refused by the steward e2e webhook"


class _AdmissionHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        path = urlsplit(self.path).path
        self.server.seen.append((path, request))
        labels = (request.get("object") or {}).get("metadata", {}).get("labels") or {}
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if path == "/validate" and labels.get(DENY_LABEL) == "true":
            response = {
                "uid": request["uid"],
                "allowed": False,
                "status": {"code": 403, "message": DENY_MESSAGE},
            }
        elif path == "/mutate":
            if labels:
                patch = [
                    {"op": "add", "path": "/metadata/labels/steward-e2e~1mutated", "value": "true"}
                ]
            else:
                patch = [
                    {"op": "add", "path": "/metadata/labels", "value": {MUTATED_LABEL: "true"}}
                ]
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AdmissionHandler)
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.ca = CertificateAuthority.create("steward-e2e-webhook-ca")
        cert, key = self.ca.issue_server_cert("webhook", ["localhost"], ["127.0.0.1"])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tls.crt").write_bytes(cert)
            (Path(tmp) / "tls.key").write_bytes(key)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def webhook_server(cluster: Cluster) -> Iterator[_WebhookServer]:
    if cluster.control_plane is None:
        pytest.skip("a webhook on the test host is not reachable from an external cluster")
    server = _WebhookServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _hook(server: _WebhookServer, path: str, namespace: str) -> dict[str, Any]:
    return {
        "name": f"{path.strip('/')}.e2e.steward.dev",
        "clientConfig": {
            "url": f"{server.url}{path}",
            "caBundle": base64.b64encode(server.ca.cert_pem).decode(),
        },
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["configmaps"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
    }


def _configmap(name: str, labels: dict[str, str] | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels))


def test_admission_webhooks_are_called(
    api_client: client.ApiClient, webhook_server: _WebhookServer, namespace: str
):
    admission = client.AdmissionregistrationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    name = f"e2e-{namespace}"
    admission.create_mutating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [_hook(webhook_server, "/mutate", namespace)],
        }
    )
    admission.create_validating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [_hook(webhook_server, "/validate", namespace)],
        }
    )
    try:
        # Webhook configurations reach the admission chain through an informer.
        deadline = time.monotonic() + 30
        for attempt in range(1000):
            created = core.create_namespaced_config_map(namespace, _configmap(f"probe-{attempt}"))
            paths = {path for path, _ in webhook_server.seen}
            if (created.metadata.labels or {}).get(MUTATED_LABEL) and "/validate" in paths:
                break
            assert time.monotonic() < deadline, "webhooks were never called"
            time.sleep(0.2)

        plain = core.create_namespaced_config_map(namespace, _configmap("plain", {"a": "b"}))
        assert plain.metadata.labels == {"a": "b", MUTATED_LABEL: "true"}
        stored = core.read_namespaced_config_map("plain", namespace)
        assert stored.metadata.labels[MUTATED_LABEL] == "true"

        with pytest.raises(ApiException) as refused:
            core.create_namespaced_config_map(namespace, _configmap("bad", {DENY_LABEL: "true"}))
        assert refused.value.status == 403
        assert DENY_MESSAGE in json.loads(refused.value.body)["message"]
        with pytest.raises(ApiException) as missing:
            core.read_namespaced_config_map("bad", namespace)
        assert missing.value.status == 404

        requests = [r for _, r in webhook_server.seen if r["name"] == "bad"]
        assert requests, "the webhook never saw the refused ConfigMap"
        assert all(r["userInfo"]["username"] == ADMIN_USER for r in requests)
        assert all(r["namespace"] == namespace for r in requests)
    finally:
        admission.delete_mutating_webhook_configuration(name)
        admission.delete_validating_webhook_configuration(name)
