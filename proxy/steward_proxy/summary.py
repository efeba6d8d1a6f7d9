"""The line ``steward proxy`` logs once it listens: what it serves, and how.

Everything an operator checks first in one place: the listen and admin
addresses, the upstream (without its password), how clients authenticate, and
the policies loaded, each with a short hash of its compiled form so two proxies
can be compared at a glance (the ``policy.loaded`` audit record carries the
full hash of the whole set).
"""

from __future__ import annotations

import hashlib
import json

from steward_proxy import __version__
from steward_proxy.policy import PolicySet
from steward_proxy.policy.model import Policy, plain

MAX_LISTED = 20
"""Policies named one by one; more are counted."""


def policy_hash(policy: Policy) -> str:
    """12 hex digits of the SHA-256 of the policy's compiled, canonical JSON."""
    canonical = json.dumps(plain(policy), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def startup_line(
    *,
    listen: str,
    admin: str | None,
    upstream: str,
    authentication: str,
    policies: PolicySet,
) -> str:
    listed = [f"{p.key}@{policy_hash(p)}" for p in policies.policies[:MAX_LISTED]]
    more = len(policies.policies) - len(listed)
    if more > 0:
        listed.append(f"and {more} more")
    return (
        f"steward {__version__} serving: listen {listen}, admin {admin or 'off'}, "
        f"upstream {upstream}, authentication {authentication}, "
        f"{len(policies.policies)} polic{'y' if len(policies.policies) == 1 else 'ies'} "
        f"(set {policies.compiled_hash[:12]}): {', '.join(listed) or 'none'}"
    )
