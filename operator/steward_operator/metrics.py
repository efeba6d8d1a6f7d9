"""The operator's Prometheus metrics, served on ``/metrics`` of the health port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

BUNDLES_PUBLISHED = Counter(
    "steward_operator_bundles_published",
    "Policy bundles signed and published (a new generation of a target).",
    registry=REGISTRY,
)
PUSHES = Counter(
    "steward_operator_pushes",
    "Bundles offered to sidecars, by outcome (current, refused, unreachable).",
    ["result"],
    registry=REGISTRY,
)
ADMISSIONS = Counter(
    "steward_operator_admissions",
    "Admission requests answered, by webhook and outcome.",
    ["webhook", "result"],
    registry=REGISTRY,
)
INVALID = Counter(
    "steward_operator_invalid_policies",
    "Times a policy was found not to compile.",
    registry=REGISTRY,
)
