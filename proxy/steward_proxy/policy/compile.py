"""Documents in, a :class:`PolicySet` out.

Pure apart from the one-time read of the CRD files by ``schemas``: no file or
network I/O; the operator calls :func:`compile_documents` with objects read from
the cluster, the proxy through ``loader`` with objects read from files.
Compilation fails closed: if any document is invalid, or a policy names a
MaskingRule that is not there, or two documents share a kind, namespace and
name, :class:`PolicyError` lists every problem and nothing is compiled.
Defaults are the CRD's (``namespace: default``, ``ttl: 15m``, ``port: 5432``,
``keepLast: 4``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from steward_proxy.policy.model import (
    CredentialsSecretRef,
    DatabaseRef,
    Guardrail,
    HashKeySecretRef,
    LabelSelector,
    LabelSelectorRequirement,
    MaskingColumnRule,
    MaskingRuleSet,
    Policy,
    PolicyError,
    PolicySet,
    Subject,
    qualify_table,
)
from steward_proxy.policy.validate import SourceDocument, location, validate_all

DEFAULT_NAMESPACE = "default"
DEFAULT_TTL = "15m"
DEFAULT_KEEP_LAST = 4

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> int:
    """``"1h30m"`` -> 5400 seconds; accepts the CRD's ``h``/``m``/``s`` forms."""
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 15m, 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def as_sources(documents: Iterable[SourceDocument | Mapping[str, Any]]) -> list[SourceDocument]:
    """Wrap bare documents, numbering them from 1."""
    return [
        d if isinstance(d, SourceDocument) else SourceDocument(d, None, i)
        for i, d in enumerate(documents, start=1)
    ]


def compile_documents(documents: Iterable[SourceDocument | Mapping[str, Any]]) -> PolicySet:
    """Validate and compile every document, or raise :class:`PolicyError` listing all problems.

    QueryReview documents are valid input but carry no policy; they are skipped.
    """
    sources = as_sources(documents)
    errors = validate_all(sources)
    if errors:
        raise PolicyError(errors)

    policies: list[tuple[SourceDocument, Policy]] = []
    masking: list[MaskingRuleSet] = []
    seen: dict[tuple[str, str, str], str] = {}
    for source in sources:
        doc = source.document
        kind = doc["kind"]
        name = doc["metadata"]["name"]
        namespace = doc["metadata"].get("namespace") or DEFAULT_NAMESPACE
        here = location(doc, source.file, source.index)
        key = (kind, namespace, name)
        if key in seen:
            errors.append(
                f"{here}: metadata.name: {kind} {namespace}/{name} is also defined by {seen[key]}"
            )
            continue
        seen[key] = here
        if kind == "DatabaseAccessPolicy":
            policies.append((source, compile_policy(name, namespace, doc["spec"])))
        elif kind == "MaskingRule":
            masking.append(compile_masking_rule(name, namespace, doc["spec"]))

    available = {(m.namespace, m.name) for m in masking}
    for source, policy in policies:
        for i, rule_name in enumerate(policy.masking_rule_names):
            if (policy.namespace, rule_name) not in available:
                errors.append(
                    f"{location(source.document, source.file, source.index)}: "
                    f"spec.masking.rules[{i}]: MaskingRule {policy.namespace}/{rule_name} "
                    "is not defined"
                )
    if errors:
        raise PolicyError(errors)
    return PolicySet(policies=tuple(p for _, p in policies), masking_rules=tuple(masking))


def _subjects(entries: Iterable[Mapping[str, Any]], namespace: str) -> tuple[Subject, ...]:
    return tuple(
        Subject(
            kind=e["kind"],
            name=e["name"],
            namespace=(e.get("namespace") or namespace) if e["kind"] == "ServiceAccount" else None,
        )
        for e in entries
    )


def compile_policy(name: str, namespace: str, spec: Mapping[str, Any]) -> Policy:
    """A :class:`Policy` from a validated DatabaseAccessPolicy spec."""
    guardrails = tuple(
        Guardrail(
            name=g["name"],
            statements=tuple(g["match"].get("statements", ())),
            tables=tuple(qualify_table(t) for t in g["match"].get("tables", ())),
            functions=tuple(f.lower() for f in g["match"].get("functions", ())),
            without_where=bool(g["match"].get("withoutWhere", False)),
            copy=tuple(g["match"].get("copy", ())),
            languages=tuple(lang.lower() for lang in g["match"].get("languages", ())),
            action=g["action"],
            message=g.get("message", ""),
        )
        for g in spec.get("guardrails", ())
    )
    masking = spec.get("masking", {})
    approval = spec.get("approval", {})
    return Policy(
        name=name,
        namespace=namespace,
        subjects=_subjects(spec["subjects"], namespace),
        default_action=spec["defaultAction"],
        guardrails=guardrails,
        masking_rule_names=tuple(masking.get("rules", ())),
        detect=bool(masking.get("detect", False)),
        masking_predicates=masking.get("predicates", "deny"),
        exempt_subjects=_subjects(masking.get("exemptSubjects", ()), namespace),
        approvers=_subjects(approval.get("approvers", ()), namespace),
        approval_ttl_seconds=parse_duration(approval.get("ttl", DEFAULT_TTL)),
        database=_database(spec.get("database")),
        pod_selector=_selector(spec.get("podSelector")),
        read_only=bool(spec.get("readOnly", False)),
        hash_key_secret_ref=_hash_key_ref(masking.get("hashKeySecretRef"), namespace),
    )


def _hash_key_ref(spec: Mapping[str, Any] | None, namespace: str) -> HashKeySecretRef | None:
    if spec is None:
        return None
    return HashKeySecretRef(namespace=namespace, name=spec["name"], key=spec["key"])


def _database(spec: Mapping[str, Any] | None) -> DatabaseRef | None:
    if spec is None:
        return None
    secret = spec.get("credentialsSecretRef")
    return DatabaseRef(
        host=spec["host"],
        name=spec["name"],
        port=spec.get("port", 5432),
        credentials_secret_ref=None
        if secret is None
        else CredentialsSecretRef(
            name=secret["name"],
            username_key=secret.get("usernameKey", "username"),
            password_key=secret.get("passwordKey", "password"),
        ),
    )


def _selector(spec: Mapping[str, Any] | None) -> LabelSelector | None:
    if spec is None:
        return None
    return LabelSelector(
        match_labels=tuple(sorted(spec.get("matchLabels", {}).items())),
        match_expressions=tuple(
            LabelSelectorRequirement(e["key"], e["operator"], tuple(e.get("values", ())))
            for e in spec.get("matchExpressions", ())
        ),
    )


def qualify_column(pattern: str) -> str:
    """``users.email`` -> ``public.users.email``; three-part patterns unchanged."""
    return pattern if pattern.count(".") >= 2 else f"public.{pattern}"


def compile_masking_rule(name: str, namespace: str, spec: Mapping[str, Any]) -> MaskingRuleSet:
    """A :class:`MaskingRuleSet` from a validated MaskingRule spec."""
    return MaskingRuleSet(
        name=name,
        namespace=namespace,
        rules=tuple(
            MaskingColumnRule(
                strategy=r["strategy"],
                columns=tuple(qualify_column(c) for c in r.get("columns", ())),
                data_classes=tuple(r.get("dataClasses", ())),
                keep_last=r.get("keepLast", DEFAULT_KEEP_LAST)
                if r["strategy"] == "partial"
                else None,
            )
            for r in spec["rules"]
        ),
    )
