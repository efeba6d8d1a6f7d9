"""The operator's calls to the Kubernetes API, as plain dicts in and out.

Blocking calls of the ``kubernetes`` client; the reconciler runs them in
threads. Only what the chart's ClusterRole grants: policies and masking rules
(read, status), ConfigMaps (the bundles), pods (read), Leases (the operator's
own namespace), Events. Never Secrets.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from steward_operator.targets import (
    ANNOTATION_GENERATION,
    ANNOTATION_HASH,
    ANNOTATION_POLICY,
    BUNDLE_KEY,
    GROUP,
    LABEL_POLICY,
    MANAGED_BY,
    MASKING_RULES,
    POLICIES,
    VERSION,
    configmap_name,
    label_value,
)


def api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere the kubeconfig (``KUBECONFIG``)."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


class Kube:
    """Typed helpers over one :class:`ApiClient`."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    # -- policies and masking rules ------------------------------------------------

    def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, POLICIES, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_masking_rules(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MASKING_RULES)
        return list(listed.get("items", ()))

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise

    # -- bundle ConfigMaps -----------------------------------------------------------

    def read_bundle(self, namespace: str, policy: str) -> dict[str, Any] | None:
        try:
            found = self.core.read_namespaced_config_map(configmap_name(policy), namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._plain(found)

    def write_bundle(
        self,
        owner: dict[str, Any],
        data: bytes,
        generation: int,
        bundle_hash: str,
        existing: dict[str, Any] | None,
    ) -> None:
        """Create or replace the policy's bundle ConfigMap (409 if someone else wrote it)."""
        metadata = owner["metadata"]
        namespace, policy = metadata["namespace"], metadata["name"]
        labels = dict(MANAGED_BY)
        if label_value(policy):
            labels[LABEL_POLICY] = policy
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(policy),
                "namespace": namespace,
                "labels": labels,
                "annotations": {
                    ANNOTATION_POLICY: policy,
                    ANNOTATION_GENERATION: str(generation),
                    ANNOTATION_HASH: bundle_hash,
                },
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": policy,
                        "uid": metadata["uid"],
                        "controller": True,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "data": {BUNDLE_KEY: data.decode("utf-8")},
        }
        if existing is None:
            self.core.create_namespaced_config_map(namespace, body)
        else:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            self.core.replace_namespaced_config_map(configmap_name(policy), namespace, body)

    def delete_bundle(self, namespace: str, policy: str) -> bool:
        try:
            self.core.delete_namespaced_config_map(configmap_name(policy), namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- events ------------------------------------------------------------------------

    def warn(self, obj: dict[str, Any], reason: str, message: str) -> None:
        """A Warning Event on ``obj`` (what ``kubectl describe`` shows)."""
        metadata = obj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.create_namespaced_event(
            metadata["namespace"],
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "generateName": f"{metadata['name']}.",
                    "namespace": metadata["namespace"],
                },
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "name": metadata["name"],
                    "namespace": metadata["namespace"],
                    "uid": metadata.get("uid"),
                    "resourceVersion": metadata.get("resourceVersion"),
                },
                "type": "Warning",
                "reason": reason,
                "message": message,
                "source": {"component": "steward-operator"},
                "reportingComponent": "steward-operator",
                "reportingInstance": os.environ.get("POD_NAME", "steward-operator"),
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )


def api_error_message(exc: ApiException) -> str:
    """The API server's own message from an error response, else its reason."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)
