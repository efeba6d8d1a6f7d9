"""The CRD files: shipped copies identical, and structural as far as can be checked offline.

A real API server checks them again in e2e; these tests catch what the API
server would reject (a missing type, properties next to additionalProperties,
types inside anyOf/oneOf, a bad default) without one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from steward_proxy.policy import schemas

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"
PACKAGE_CRD_DIR = ROOT / "proxy" / "steward_proxy" / "policy" / "crds"

EXPECTED = {
    "databaseaccesspolicies.yaml": ("DatabaseAccessPolicy", "databaseaccesspolicies", "dap"),
    "maskingrules.yaml": ("MaskingRule", "maskingrules", "mr"),
    "queryreviews.yaml": ("QueryReview", "queryreviews", "qr"),
}

# The fields of apiextensions.k8s.io/v1 JSONSchemaProps; anything else is a typo.
SCHEMA_KEYS = {
    "type", "format", "title", "description", "default", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties", "required", "items",
    "allOf", "oneOf", "anyOf", "not", "properties", "additionalProperties", "nullable",
    "example", "externalDocs", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node that describes a value (not the anyOf/oneOf branches)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


CRDS = [pytest.param(name, id=f"{name} is checked") for name in EXPECTED]


def test_the_package_reads_the_one_copy_of_the_crds() -> None:
    """The package's CRD directory is a link to crds/: one copy, read in the wheel too."""
    assert PACKAGE_CRD_DIR.is_symlink()
    assert PACKAGE_CRD_DIR.resolve() == CRD_DIR.resolve()


@pytest.mark.parametrize("name", CRDS)
def test_the_package_sees_every_crd(name: str) -> None:
    assert (PACKAGE_CRD_DIR / name).read_bytes() == (CRD_DIR / name).read_bytes()


def test_the_package_ships_exactly_the_crds() -> None:
    assert sorted(p.name for p in PACKAGE_CRD_DIR.glob("*.yaml")) == sorted(EXPECTED)
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", CRDS)
def test_names_versions_and_subresources(name: str) -> None:
    kind, plural, short = EXPECTED[name]
    crd = load(CRD_DIR / name)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.steward.dev"
    spec = crd["spec"]
    assert spec["group"] == "steward.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert schemas.CRD_FILES[kind] == name


@pytest.mark.parametrize("name", CRDS)
def test_printer_columns_are_well_formed(name: str) -> None:
    (version,) = load(CRD_DIR / name)["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert columns
    for column in columns:
        assert column["jsonPath"].startswith(".")
        assert column["type"] in {"integer", "number", "string", "boolean", "date"}
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@pytest.mark.parametrize("name", CRDS)
def test_schema_is_structural(name: str) -> None:
    root = root_schema(load(CRD_DIR / name))
    assert root["type"] == "object"
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}
    for path, node in nodes(root):
        assert set(node) <= SCHEMA_KEYS, f"{path}: unknown keys {set(node) - SCHEMA_KEYS}"
        assert node.get("type") in TYPES, f"{path}: every value needs a type"
        if "properties" in node:
            assert node["type"] == "object", path
            assert "additionalProperties" not in node, (
                f"{path}: properties and additionalProperties"
            )
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), f"{path}: an array needs items"
        for key in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(key, ()):
                assert not FORBIDDEN_IN_JUNCTORS & set(branch), f"{path}.{key}"
                assert set(branch.get("properties", {})) <= set(node.get("properties", {}))
                assert set(branch.get("required", ())) <= set(node.get("properties", {}))
        for required in node.get("required", ()):
            assert required in node.get("properties", {}), f"{path}: required {required}"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", ())), path
        if "pattern" in node:
            assert "(?" not in node["pattern"], f"{path}: RE2 has no lookaround"
            re.compile(node["pattern"])
        if "default" in node:
            jsonschema.Draft202012Validator(node).validate(node["default"])
        for rule in node.get("x-kubernetes-validations", ()):
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}
            assert rule["rule"].strip() and rule["message"]


def test_query_review_spec_is_immutable() -> None:
    spec = root_schema(load(CRD_DIR / "queryreviews.yaml"))["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable"} in spec[
        "x-kubernetes-validations"
    ]
    status = root_schema(load(CRD_DIR / "queryreviews.yaml"))["properties"]["status"]
    assert status["properties"]["state"]["enum"] == ["Pending", "Approved", "Denied", "Expired"]


@pytest.mark.parametrize("kind", list(schemas.CRD_FILES))
def test_the_validation_schema_rejects_unknown_fields_everywhere(kind: str) -> None:
    for path, node in nodes(schemas.spec_schema(kind)):
        if "properties" in node:
            assert node["additionalProperties"] is False, path


def test_schemas_come_from_the_checkout_when_run_from_one() -> None:
    assert schemas._checkout_crd_dir() == CRD_DIR


@pytest.mark.parametrize("kind", list(schemas.CRD_FILES))
def test_an_installed_package_reads_its_own_copies(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schemas, "_checkout_crd_dir", lambda: None)
    assert schemas.crd_text(kind) == (CRD_DIR / schemas.CRD_FILES[kind]).read_text()
