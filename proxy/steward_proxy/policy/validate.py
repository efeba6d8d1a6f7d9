"""Validating Steward documents against the schemas in their CRDs.

Pure apart from the one-time read of the CRD files by ``schemas``. Each error
is one line naming where the document came from (file, document number counted
from 1, kind and ``namespace/name``) and the JSON path of the bad field, e.g.::

    policies/orders.yaml: document 2 (DatabaseAccessPolicy shop/orders-app):
    spec.guardrails[0].action: 'block' is not one of allow, deny, review, log

(on one line). Besides the schema, the checks that the API server makes with
``x-kubernetes-validations`` and list-map keys are repeated here so that a
standalone file and ``kubectl apply`` accept the same documents; for the same
reason a ``pattern`` is read as the API server reads it (a final ``$`` ends the
text, never a line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from steward_proxy.policy.schemas import API_VERSION, CRD_FILES, spec_schema

_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class SourceDocument:
    """A parsed document and where it came from (``index`` counts from 1)."""

    document: Any
    file: str | None = None
    index: int | None = None


@cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = spec_schema(kind)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return jsonschema.validators.extend(cls, {"pattern": _pattern})(schema)


def _pattern(
    validator: jsonschema.protocols.Validator, pattern: str, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """``pattern`` as the API server reads it (RE2): a final ``$`` ends the text.

    Python's ``$`` also matches before a final newline, so ``"orders\\n"``
    would pass ``^[a-z]+$`` here and be refused by the API server.
    """
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    body = pattern[:-1]
    if pattern.endswith("$") and (len(body) - len(body.rstrip("\\"))) % 2 == 0:
        pattern = body + r"\Z"
    return re.compile(pattern)


def location(doc: Any, file: str | None = None, index: int | None = None) -> str:
    """``file: document N (Kind namespace/name)``, leaving out what is unknown."""
    parts = [file] if file else []
    where = f"document {index}" if index is not None else "document"
    if isinstance(doc, Mapping):
        kind = doc.get("kind")
        metadata = doc.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
        label = " ".join(
            str(x) for x in (kind, f"{namespace}/{name}" if namespace and name else name) if x
        )
        if label:
            where = f"{where} ({label})"
    parts.append(where)
    return ": ".join(parts)


def validate(doc: Any, *, file: str | None = None, index: int | None = None) -> list[str]:
    """Every problem with one document, one line each; empty when it is valid."""
    prefix = location(doc, file, index)
    return [f"{prefix}: {problem}" for problem in problems(doc)]


def validate_all(documents: Iterable[SourceDocument]) -> list[str]:
    """Every problem with every document, in document order."""
    errors: list[str] = []
    for source in documents:
        errors.extend(validate(source.document, file=source.file, index=source.index))
    return errors


def problems(doc: Any) -> list[str]:
    """``path: message`` for each problem with ``doc``, without the location prefix."""
    if not isinstance(doc, Mapping):
        return [f"a document must be a mapping, not {_type_name(doc)}"]
    found: list[str] = []
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if api_version != API_VERSION:
        found.append(f"apiVersion: must be {API_VERSION} (got {api_version!r})")
    if kind not in CRD_FILES:
        known = ", ".join(CRD_FILES)
        found.append(f"kind: unknown kind {kind!r}; expected one of {known}")
    found.extend(f"{key}: unknown field" for key in sorted(set(doc) - _TOP_LEVEL, key=str))
    found.extend(_metadata_problems(doc.get("metadata")))
    if kind not in CRD_FILES:
        return found
    if "spec" not in doc:
        found.append("spec: required field is missing")
        return found
    spec = doc["spec"]
    schema_errors = sorted(_validator(kind).iter_errors(spec), key=_path_key)
    mistyped = {tuple(e.absolute_path) for e in schema_errors if e.validator == "type"}
    lines: list[str] = []
    for error in schema_errors:
        if error.validator == "enum" and tuple(error.absolute_path) in mistyped:
            continue
        lines.extend(_describe(error))
    found.extend(dict.fromkeys(lines))
    if not schema_errors and kind == "DatabaseAccessPolicy":
        found.extend(_policy_rule_problems(spec))
    return found


def _metadata_problems(metadata: Any) -> list[str]:
    if metadata is None:
        return ["metadata: required field is missing"]
    if not isinstance(metadata, Mapping):
        return [f"metadata: must be a mapping, not {_type_name(metadata)}"]
    found: list[str] = []
    name = metadata.get("name")
    if name is None or name == "":
        found.append("metadata.name: required field is missing")
    elif not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        found.append(
            f"metadata.name: {name!r} is not a valid name "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace)
    ):
        found.append(f"metadata.namespace: {namespace!r} is not a valid namespace")
    return found


def _policy_rule_problems(spec: Mapping[str, Any]) -> list[str]:
    """The rules the CRD states as ``x-kubernetes-validations`` and list-map keys."""
    found: list[str] = []
    guardrails = spec.get("guardrails", [])
    seen: dict[str, int] = {}
    for i, guardrail in enumerate(guardrails):
        name = guardrail["name"]
        if name in seen:
            found.append(
                f"spec.guardrails[{i}].name: duplicate guardrail name {name!r} "
                f"(first used by spec.guardrails[{seen[name]}])"
            )
        else:
            seen[name] = i
    approvers = spec.get("approval", {}).get("approvers", [])
    for i, guardrail in enumerate(guardrails):
        if guardrail["action"] == "review" and not approvers:
            found.append(
                f"spec.guardrails[{i}].action: a guardrail with action review "
                "needs spec.approval.approvers"
            )
            break
    ref = spec.get("masking", {}).get("hashKeySecretRef")
    credentials = (spec.get("database") or {}).get("credentialsSecretRef")
    if ref and credentials and ref["name"] == credentials["name"]:
        found.append(
            "spec.masking.hashKeySecretRef.name: the hash key needs a Secret of its own, "
            "not the database credentials Secret (spec.database.credentialsSecretRef)"
        )
    return found


def _path(parts: Iterable[Any]) -> str:
    out = "spec"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _path_key(error: ValidationError) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


_EXPECTED_TYPE = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
}


def _describe(error: ValidationError) -> list[str]:
    """Readable ``path: message`` lines for one jsonschema error."""
    path = list(error.absolute_path)
    where = _path(path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    validator = error.validator
    if validator == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [f"{_path([*path, name])}: required field is missing" for name in missing]
    if validator == "additionalProperties":
        known = set(schema.get("properties", {}))
        extra = sorted((k for k in value if k not in known), key=str)
        return [f"{_path([*path, key])}: unknown field" for key in extra]
    if validator == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return [f"{where}: {value!r} is not one of {choices}"]
    if validator == "type":
        expected = _EXPECTED_TYPE.get(str(error.validator_value), str(error.validator_value))
        message = f"{where}: must be {expected}, not {_type_name(value)}"
        if value is None and path and path[-1] == "strategy":
            message += ' (write the null strategy in quotes: strategy: "null")'
        return [message]
    if validator == "pattern":
        description = schema.get("description")
        if description:
            return [f"{where}: {value!r} is not valid: expected {description}"]
        return [f"{where}: {value!r} does not match {error.validator_value}"]
    if validator in ("oneOf", "anyOf"):
        options = [" and ".join(branch.get("required", ())) for branch in error.validator_value]
        if all(options):
            how = "exactly one" if validator == "oneOf" else "at least one"
            return [f"{where}: give {how} of {', '.join(options)}"]
    if validator == "minItems" and error.validator_value == 1:
        return [f"{where}: must not be empty"]
    if validator == "minItems":
        return [f"{where}: needs at least {error.validator_value} item(s)"]
    if validator == "minProperties":
        return [f"{where}: must not be empty"]
    if validator == "minLength" and error.validator_value == 1:
        return [f"{where}: must not be empty"]
    return [f"{where}: {error.message}"]
