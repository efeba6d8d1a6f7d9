"""Signed policy bundles: what the operator publishes and a sidecar runs.

A bundle is one JSON object, written canonically (sorted keys, no spaces,
UTF-8, see :func:`canonical_json`)::

    {"apiVersion": "steward.dev/v1alpha1", "kind": "PolicyBundle",
     "target": "shop/orders-app", "generation": 1767225600,
     "documents": [...], "hash": "<hex>", "compiledHash": "<hex>",
     "signature": "<base64>"}

``documents`` are the DatabaseAccessPolicy and MaskingRule documents in their
canonical form (:func:`canonical_document`: apiVersion, kind, name, namespace
and spec; nothing the API server adds), ordered by kind, namespace and name.
``hash`` is the SHA-256 of the canonical JSON of ``documents``: the same
content gives the same hash, whatever its generation. ``compiledHash`` is the
:attr:`PolicySet.compiled_hash` the documents compile to. ``target`` names what
the bundle governs (the operator's ``namespace/policy``); a sidecar runs the
bundles of one target only. ``generation`` only ever grows for a target.
``signature`` is Ed25519 over the canonical JSON of every other field.

:func:`verify` accepts a bundle only with a valid signature, the expected
target, a matching content hash, documents that compile, and a generation not
older than the one running (equal only for the very same content): neither the
push channel nor a ConfigMap can roll policy back or forge it.

Pure: no file or network I/O; compilation is :func:`compile_documents`, the
same code the proxy's ``--policy`` loader and ``steward policy check`` use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from steward_proxy.policy.compile import compile_documents
from steward_proxy.policy.model import PolicyError, PolicySet
from steward_proxy.policy.schemas import API_VERSION

__all__ = [
    "BUNDLE_KIND",
    "MAX_BUNDLE_BYTES",
    "Bundle",
    "BundleError",
    "Running",
    "build",
    "canonical_document",
    "canonical_json",
    "content_hash",
    "generate_key",
    "load",
    "load_private_key",
    "load_public_key",
    "public_key_text",
    "sign",
    "verify",
]

BUNDLE_KIND = "PolicyBundle"
MAX_BUNDLE_BYTES = 1 << 20
"""A ConfigMap holds at most 1 MiB; nothing larger is read or parsed."""

_FIELDS = frozenset(
    {"apiVersion", "kind", "target", "generation", "documents", "hash", "compiledHash"}
)
_POLICY_KINDS = frozenset({"DatabaseAccessPolicy", "MaskingRule"})
_KIND_ORDER = {"DatabaseAccessPolicy": 0, "MaskingRule": 1}

Problem = Literal["malformed", "signature", "target", "stale", "invalid"]


class BundleError(Exception):
    """A bundle that is refused; ``problem`` says which check failed."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem: Problem = problem
        self.message = message


@dataclass(frozen=True, slots=True)
class Running:
    """What a sidecar runs now, to judge an offered bundle against."""

    target: str | None
    generation: int
    hash: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle's content, its compiled policy and (once signed) its signature."""

    target: str
    generation: int
    documents: tuple[Mapping[str, Any], ...]
    hash: str
    compiled_hash: str
    policies: PolicySet
    signature: str = ""

    def body(self) -> dict[str, Any]:
        """Every field but the signature: what the signature covers."""
        return {
            "apiVersion": API_VERSION,
            "kind": BUNDLE_KIND,
            "target": self.target,
            "generation": self.generation,
            "documents": list(self.documents),
            "hash": self.hash,
            "compiledHash": self.compiled_hash,
        }


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8 (non-ASCII characters unescaped)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a document that is policy: apiVersion, kind, name, namespace, spec.

    Labels, annotations, status and everything the API server adds (uid,
    resourceVersion, managedFields, ...) are left out, so a bundle's hash
    changes only when policy does.
    """
    metadata = document.get("metadata") or {}
    kept = {"name": metadata.get("name")}
    if metadata.get("namespace"):
        kept["namespace"] = metadata["namespace"]
    return {
        "apiVersion": document.get("apiVersion"),
        "kind": document.get("kind"),
        "metadata": kept,
        "spec": document.get("spec"),
    }


def _order(document: Mapping[str, Any]) -> tuple[int, str, str]:
    metadata = document["metadata"]
    kind = document.get("kind")
    return (
        _KIND_ORDER.get(kind, 2) if isinstance(kind, str) else 2,
        str(metadata.get("namespace") or ""),
        str(metadata.get("name") or ""),
    )


def content_hash(documents: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) of the canonical JSON of canonical documents, in bundle order."""
    return hashlib.sha256(canonical_json(list(documents))).hexdigest()


def build(target: str, generation: int, documents: Iterable[Mapping[str, Any]]) -> Bundle:
    """An unsigned bundle of ``documents``; raises :class:`PolicyError` if they do not compile."""
    if not target:
        raise ValueError("a bundle needs a target")
    if generation < 1:
        raise ValueError(f"a bundle generation counts from 1, not {generation}")
    canonical = sorted((canonical_document(d) for d in documents), key=_order)
    kinds = {d["kind"] for d in canonical}
    if not kinds <= _POLICY_KINDS:
        raise PolicyError(
            [
                f"a bundle holds DatabaseAccessPolicy and MaskingRule documents, not {k}"
                for k in sorted(kinds - _POLICY_KINDS, key=str)
            ]
        )
    if "DatabaseAccessPolicy" not in kinds:
        raise PolicyError(["a bundle needs at least one DatabaseAccessPolicy"])
    policies = compile_documents(canonical)
    return Bundle(
        target=target,
        generation=generation,
        documents=tuple(canonical),
        hash=content_hash(canonical),
        compiled_hash=policies.compiled_hash,
        policies=policies,
    )


def sign(bundle: Bundle, key: Ed25519PrivateKey) -> bytes:
    """The signed bundle as the canonical JSON bytes a sidecar loads."""
    body = bundle.body()
    signature = key.sign(canonical_json(body))
    body["signature"] = base64.b64encode(signature).decode("ascii")
    return canonical_json(body)


def load(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Parse a bundle's fields without trusting them: (body without signature, signature).

    Raises :class:`BundleError` (``malformed``) for anything that is not a
    bundle at all.
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("malformed", f"bundle is {len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError("malformed", f"bundle is not UTF-8 JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BundleError("malformed", "bundle is not a JSON object")
    signature_text = parsed.pop("signature", None)
    if not isinstance(signature_text, str) or not signature_text:
        raise BundleError("signature", "bundle is not signed")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("signature", "bundle signature is not base64") from None
    unknown = [_shown(k) for k in sorted(set(parsed) - _FIELDS)[:5]]
    missing = sorted(_FIELDS - set(parsed))
    if unknown or missing:
        detail = "; ".join(
            part
            for part in (
                f"unknown fields {', '.join(unknown)}" if unknown else "",
                f"missing fields {', '.join(missing)}" if missing else "",
            )
            if part
        )
        raise BundleError("malformed", f"not a policy bundle: {detail}")
    if parsed["apiVersion"] != API_VERSION or parsed["kind"] != BUNDLE_KIND:
        raise BundleError("malformed", f"not a policy bundle: expected {API_VERSION} {BUNDLE_KIND}")
    generation = parsed["generation"]
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise BundleError("malformed", "bundle generation must be a positive integer")
    for name in ("target", "hash", "compiledHash"):
        if not isinstance(parsed[name], str) or not parsed[name]:
            raise BundleError("malformed", f"bundle field {name} must be a non-empty string")
    documents = parsed["documents"]
    if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
        raise BundleError("malformed", "bundle documents must be a list of objects")
    return parsed, signature


def verify(
    data: bytes,
    key: Ed25519PublicKey,
    *,
    running: Running | None = None,
    target: str | None = None,
) -> Bundle:
    """The bundle in ``data`` if a sidecar running ``running`` may take it.

    Checked in this order, cheapest and most telling first: it parses
    (``malformed``), its signature is valid (``signature``), it is for
    ``target`` or, when that is None, the running target (``target``), its
    generation is not older than the running one and equal only for the same
    content (``stale``), and its content hash matches and its documents compile
    (``invalid``). Raises :class:`BundleError` naming the first that fails.
    """
    body, signature = load(data)
    try:
        key.verify(signature, canonical_json(body))
    except InvalidSignature:
        raise BundleError(
            "signature", "bundle signature is not valid for the configured public key"
        ) from None
    expected = target or (running.target if running else None)
    if expected is not None and body["target"] != expected:
        raise BundleError(
            "target", f"bundle is for {_shown(body['target'])}, this proxy runs {_shown(expected)}"
        )
    generation: int = body["generation"]
    if running is not None:
        if generation < running.generation:
            raise BundleError(
                "stale",
                f"bundle generation {generation} is older than the running "
                f"generation {running.generation}",
            )
        if generation == running.generation and body["hash"] != running.hash:
            raise BundleError(
                "stale",
                f"bundle generation {generation} already runs with other content "
                f"(hash {running.hash[:12]})",
            )
    documents = body["documents"]
    if content_hash(documents) != body["hash"]:
        raise BundleError("invalid", "bundle hash does not match its documents")
    try:
        rebuilt = build(body["target"], generation, documents)
    except PolicyError as exc:
        raise BundleError("invalid", "bundle does not compile: " + "; ".join(exc.errors)) from None
    if rebuilt.hash != body["hash"]:
        raise BundleError("invalid", "bundle documents are not in canonical form")
    return Bundle(
        target=rebuilt.target,
        generation=generation,
        documents=rebuilt.documents,
        hash=rebuilt.hash,
        compiled_hash=rebuilt.compiled_hash,
        policies=rebuilt.policies,
        signature=base64.b64encode(signature).decode("ascii"),
    )


def _shown(value: str, limit: int = 80) -> str:
    """``value`` quoted and escaped for a log line, cut at ``limit`` characters."""
    text = repr(value[:limit])
    return text + "..." if len(value) > limit else text


# -- keys -----------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM (what ``genPrivateKey "ed25519"`` gives)."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key is not an Ed25519 private key")
    return key


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, or from base64 of its 32 raw bytes."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the bundle public key is not an Ed25519 key")
        return key
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the bundle public key is neither PEM nor base64") from None
    if len(decoded) != 32:
        raise ValueError(f"a raw Ed25519 public key has 32 bytes, not {len(decoded)}")
    return Ed25519PublicKey.from_public_bytes(decoded)


def public_key_text(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Base64 of the raw 32-byte public key (fits in an environment variable)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")
