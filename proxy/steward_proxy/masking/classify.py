"""Which columns hold which data class, from sampled values and column names.

:func:`classify_column` weighs two things: the share of sampled non-null
values in which a detector finds its class (the *confidence*), and hints in
the column's name (``email``, ``ssn``, ``phone``, ``iban``, ``card``, ``dob``,
``name``, ``address``). A class is reported when most values hold it, or when
the name hints at it and a fair share does; names alone report the classes no
detector reads (a name, a birth date, an address). :func:`masking_rule`
turns the findings into a MaskingRule document. Sampled values never leave
this module: only counts do.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from steward_proxy.masking.detect import DATA_CLASSES, find

__all__ = ["Finding", "classify_column", "masking_rule"]

THRESHOLD: Final = 0.6
"""Share of values that must hold a class when the name says nothing."""
HINTED_THRESHOLD: Final = 0.2
"""Share that suffices when the column's name hints at the class."""

# name token -> (data class or None, strategy)
HINTS: Final[dict[str, tuple[str | None, str]]] = {
    "email": ("EMAIL_ADDRESS", "email"),
    "mail": ("EMAIL_ADDRESS", "email"),
    "ssn": ("US_SSN", "redact"),
    "phone": ("PHONE_NUMBER", "partial"),
    "mobile": ("PHONE_NUMBER", "partial"),
    "iban": ("IBAN_CODE", "redact"),
    "card": ("CREDIT_CARD", "partial"),
    "pan": ("CREDIT_CARD", "partial"),
    "ip": ("IP_ADDRESS", "redact"),
    "dob": (None, "null"),
    "birth": (None, "null"),
    "birthdate": (None, "null"),
    "name": (None, "hash"),
    "fullname": (None, "hash"),
    "firstname": (None, "hash"),
    "lastname": (None, "hash"),
    "surname": (None, "hash"),
    "address": (None, "redact"),
    "street": (None, "redact"),
}
STRATEGIES: Final = {
    "EMAIL_ADDRESS": "email",
    "US_SSN": "redact",
    "PHONE_NUMBER": "partial",
    "IBAN_CODE": "redact",
    "CREDIT_CARD": "partial",
    "IP_ADDRESS": "redact",
}
# Names that carry "name" but are not a person's.
_NOT_A_PERSON = re.compile(
    r"(?:^|_)(?:user|file|host|table|column|schema|product|company|domain|type|display)_?name"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """What one column seems to hold."""

    column: str  # schema.table.column
    data_class: str | None  # None: a name hint alone (a person's name, a birth date, ...)
    confidence: float  # share of sampled non-null values that held the class
    sample_size: int
    strategy: str
    hint: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "class": self.data_class,
            "confidence": round(self.confidence, 3),
            "sampleSize": self.sample_size,
            "strategy": self.strategy,
            "nameHint": self.hint,
        }


def _hint(column: str) -> tuple[str, str | None, str] | None:
    lowered = column.lower()
    if _NOT_A_PERSON.search(lowered):
        return None
    squashed = lowered.replace("_", "")
    for token in [*re.split(r"[^a-z0-9]+|_", lowered), squashed]:
        if token in HINTS:
            data_class, strategy = HINTS[token]
            return token, data_class, strategy
    return None


def classify_column(qualified: str, values: Iterable[bytes | None]) -> Finding | None:
    """The data class of column ``schema.table.column`` from its sampled values, or None."""
    counts = dict.fromkeys(DATA_CLASSES, 0)
    size = 0
    for value in values:
        if value is None:
            continue
        size += 1
        for data_class in {m[2] for m in find(value)}:
            counts[data_class] += 1
    hint = _hint(qualified.rsplit(".", 1)[-1])
    best = max(DATA_CLASSES, key=lambda c: counts[c])
    confidence = counts[best] / size if size else 0.0
    if hint is not None and hint[1] is not None and size:
        hinted_share = counts[hint[1]] / size
        if hinted_share >= HINTED_THRESHOLD and hinted_share >= confidence / 2:
            return Finding(qualified, hint[1], hinted_share, size, hint[2], hint[0])
    if confidence >= THRESHOLD:
        return Finding(qualified, best, confidence, size, STRATEGIES[best], None)
    if hint is not None and hint[1] is None:
        return Finding(qualified, None, 0.0, size, hint[2], hint[0])
    return None


def masking_rule(
    findings: Sequence[Finding], *, name: str = "classified", namespace: str | None = None
) -> dict[str, Any]:
    """A MaskingRule document with one rule per finding (``partial`` keeps the last 4)."""
    rules = []
    for finding in findings:
        rule: dict[str, Any] = {"columns": [finding.column], "strategy": finding.strategy}
        if finding.strategy == "partial":
            rule["keepLast"] = 4
        rules.append(rule)
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "MaskingRule",
        "metadata": metadata,
        "spec": {"rules": rules},
    }
