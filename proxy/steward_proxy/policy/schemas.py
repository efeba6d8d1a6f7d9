"""The JSON Schemas of Steward's resources, taken from the CRD files in ``crds/``.

The CRDs are the single source of truth. In a source checkout they are read
from the repository's ``crds/`` directory; an installed package reads the
byte-identical copies shipped as package data in ``steward_proxy/policy/crds/``
(a test keeps the copies identical).

A CRD schema cannot say ``additionalProperties: false`` next to ``properties``;
the API server instead rejects unknown fields under strict field validation
(kubectl's default). :func:`spec_schema` turns the structural schema into a JSON
Schema that does the same, so a standalone file and ``kubectl apply`` agree.

This module reads the CRD files once per process; it does no other I/O.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GROUP = "steward.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CRD_FILES: dict[str, str] = {
    "DatabaseAccessPolicy": "databaseaccesspolicies.yaml",
    "MaskingRule": "maskingrules.yaml",
    "QueryReview": "queryreviews.yaml",
}

_CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


def _checkout_crd_dir() -> Path | None:
    """``crds/`` of the source checkout this module runs from, if it does."""
    crds = _CHECKOUT_ROOT / "crds"
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file() and all(
        (crds / name).is_file() for name in CRD_FILES.values()
    ):
        return crds
    return None


def crd_text(kind: str) -> str:
    """The CRD file for ``kind`` as text (checkout first, then package data)."""
    filename = CRD_FILES[kind]
    checkout = _checkout_crd_dir()
    if checkout is not None:
        return (checkout / filename).read_text(encoding="utf-8")
    return resources.files(__package__).joinpath("crds", filename).read_text(encoding="utf-8")


@cache
def crd(kind: str) -> dict[str, Any]:
    """The parsed CustomResourceDefinition for ``kind``."""
    document = yaml.safe_load(crd_text(kind))
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise RuntimeError(f"{CRD_FILES[kind]} is not a CustomResourceDefinition")
    return document


def openapi_schema(kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served ``v1alpha1`` version of ``kind``."""
    for version in crd(kind)["spec"]["versions"]:
        if version["name"] == VERSION:
            return version["schema"]["openAPIV3Schema"]
    raise RuntimeError(f"{CRD_FILES[kind]} has no version {VERSION}")


@cache
def spec_schema(kind: str) -> dict[str, Any]:
    """A JSON Schema for ``spec`` of ``kind`` that rejects unknown fields."""
    return _closed(copy.deepcopy(openapi_schema(kind)["properties"]["spec"]))


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for sub in schema.get("properties", {}).values():
        _closed(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, ()):
            _closed(sub)
    return schema
