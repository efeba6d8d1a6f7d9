"""Policy targets: what a DatabaseAccessPolicy makes, computed from plain data.

Every DatabaseAccessPolicy is one *target*: its bundle holds the policy and
the MaskingRules it names (same namespace), compiled by the proxy's own
compiler, and lives in the ConfigMap :func:`configmap_name` in the policy's
namespace, owned by the policy. A pod is governed by exactly one target, the
one policy whose ``podSelector`` selects it and that names a ``database``
(a sidecar has one upstream); see :mod:`steward_operator.injection`.

Pure: no API calls, no clock (callers pass ``now``), no asyncio.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from steward_proxy.policy import PolicyError
from steward_proxy.policy.bundle import build, canonical_document
from steward_proxy.policy.validate import SourceDocument

GROUP = "steward.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
POLICIES = "databaseaccesspolicies"
MASKING_RULES = "maskingrules"

BUNDLE_KEY = "bundle.json"
"""The ConfigMap key (and the file name in the sidecar) of the signed bundle."""
CONFIGMAP_PREFIX = "steward-bundle-"
MANAGED_BY = {"app.kubernetes.io/managed-by": "steward-operator"}
LABEL_POLICY = "steward.dev/policy"
ANNOTATION_GENERATION = "steward.dev/bundle-generation"
ANNOTATION_HASH = "steward.dev/bundle-hash"
ANNOTATION_POLICY = "steward.dev/policy"

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

Document = Mapping[str, Any]


def target_key(namespace: str, name: str) -> str:
    """``namespace/name``: a bundle's target."""
    return f"{namespace}/{name}"


def configmap_name(policy: str) -> str:
    """``steward-bundle-POLICY``, shortened with a hash suffix past 253 characters."""
    name = CONFIGMAP_PREFIX + policy
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(policy.encode()).hexdigest()[:10]
    return f"{name[: 253 - 11]}-{digest}"


def label_value(text: str) -> str | None:
    """``text`` when it is a valid label value, else None (annotations carry it then)."""
    return text if _LABEL_VALUE.match(text) else None


# -- selection --------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an absent selector selects nothing.

    ``{}`` selects every pod, as in a Deployment or NetworkPolicy.
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or ():
        key = requirement["key"]
        operator = requirement["operator"]
        values = requirement.get("values") or ()
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# -- bundles ----------------------------------------------------------------------


def target_documents(policy: Document, masking_rules: Iterable[Document]) -> list[dict[str, Any]]:
    """The policy and the MaskingRules of its namespace that it names, canonical."""
    namespace = policy["metadata"].get("namespace")
    named = set((policy.get("spec") or {}).get("masking", {}).get("rules", ()))
    rules = [
        canonical_document(m)
        for m in masking_rules
        if m["metadata"].get("namespace") == namespace and m["metadata"]["name"] in named
    ]
    return [canonical_document(policy), *rules]


def check_target(policy: Document, masking_rules: Iterable[Document]) -> list[str]:
    """What keeps the policy from compiling with what it names; empty when it compiles."""
    try:
        build(_key(policy), 1, target_documents(policy, masking_rules))
    except PolicyError as exc:
        return list(exc.errors)
    return []


def admission_problems(document: Document, masking_rules: Iterable[Document]) -> list[str]:
    """What ``steward policy check`` says about ``document`` among the namespace's rules.

    The same compiler and the same messages; the location names the document
    by kind and ``namespace/name`` as there is no file.
    """
    from steward_proxy.policy import compile_documents

    doc = canonical_document(document)
    if doc.get("kind") == "DatabaseAccessPolicy":
        others = target_documents(document, masking_rules)[1:]
    else:
        others = []
    sources = [SourceDocument(doc), *(SourceDocument(m) for m in others)]
    try:
        compile_documents(sources)
    except PolicyError as exc:
        return list(exc.errors)
    return []


def _key(policy: Document) -> str:
    metadata = policy["metadata"]
    return target_key(metadata.get("namespace") or "default", metadata["name"])


def next_generation(previous: int | None, now: float) -> int:
    """A generation above ``previous``, seeded from the clock (seconds).

    Seeding from the clock keeps generations rising even when the ConfigMap
    that remembered the last one was deleted: a sidecar still running an old
    bundle would refuse a restart from 1.
    """
    return max((previous or 0) + 1, int(now))


def policy_names_using(rule: str, policies: Iterable[Document]) -> list[str]:
    """Names of the policies that name the MaskingRule ``rule`` (same namespace assumed)."""
    return sorted(
        p["metadata"]["name"]
        for p in policies
        if rule in ((p.get("spec") or {}).get("masking", {}).get("rules") or ())
    )


# -- status -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def conditions(
    current: Sequence[Mapping[str, Any]],
    wanted: Sequence[Condition],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Status conditions, keeping ``lastTransitionTime`` where the status did not change."""
    before = {c.get("type"): c for c in current}
    out = []
    for condition in wanted:
        previous = before.get(condition.type)
        changed = previous is None or previous.get("status") != condition.status
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": now if changed else previous.get("lastTransitionTime", now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def ready(message: str) -> list[Condition]:
    return [
        Condition("Ready", "True", "Compiled", message),
        Condition("Invalid", "False", "Compiled", "the documents compile"),
    ]


def invalid(reason: str, message: str) -> list[Condition]:
    return [
        Condition("Ready", "False", reason, message),
        Condition("Invalid", "True", reason, message),
    ]


def invalid_reason(errors: Sequence[str]) -> str:
    """``MaskingRuleMissing`` when a named rule is absent, else ``CompileError``."""
    if any("MaskingRule" in e and "is not defined" in e for e in errors):
        return "MaskingRuleMissing"
    return "CompileError"
