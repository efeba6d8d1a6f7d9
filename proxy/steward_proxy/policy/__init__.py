"""Policy: documents -> compiled policy -> decisions.

The CRD files in ``crds/`` define the documents' schemas; ``validate`` checks
documents against them, ``compile`` turns them into the frozen model of
``model``, and ``decide`` judges statements. All of that is pure: no sockets,
no asyncio, no file I/O beyond reading the package's own CRDs once. Reading
policy files from disk lives in ``loader`` alone.
"""

from steward_proxy.policy.compile import compile_documents, parse_duration
from steward_proxy.policy.decide import (
    Decision,
    decide,
    decide_each,
    decide_function_call,
    decide_one,
    decide_operation,
    decide_operations,
)
from steward_proxy.policy.loader import load_documents, load_policy_set, read_documents
from steward_proxy.policy.model import (
    ACTION_RANK,
    Guardrail,
    Identity,
    MaskingColumnRule,
    MaskingRuleSet,
    OperationLike,
    Policy,
    PolicyError,
    PolicySet,
    StatementLike,
    Subject,
    is_valid_subject,
)
from steward_proxy.policy.validate import SourceDocument, validate

__all__ = [
    "ACTION_RANK",
    "Decision",
    "Guardrail",
    "Identity",
    "MaskingColumnRule",
    "MaskingRuleSet",
    "OperationLike",
    "Policy",
    "PolicyError",
    "PolicySet",
    "SourceDocument",
    "StatementLike",
    "Subject",
    "compile_documents",
    "decide",
    "decide_each",
    "decide_function_call",
    "decide_one",
    "decide_operation",
    "decide_operations",
    "is_valid_subject",
    "load_documents",
    "load_policy_set",
    "parse_duration",
    "read_documents",
    "validate",
]
