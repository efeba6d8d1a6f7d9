"""The kopf handlers: each a few lines that call the reconciler or a pure function.

:func:`make_registry` registers them into a fresh registry (tests and the
operator each get their own). Policies and masking rules are handled on
create, spec update, resume and delete; the spec field filter keeps status
writes (and kopf's own annotations) from triggering them again. Indexes hold
the policies and masking rules, so admission answers without API calls;
events of governed pods keep the reconciler's list of sidecars.

Deletions are seen as watch events, not through finalizers: nothing blocks
deleting a policy while the operator is down. Its ConfigMap is owned by the
policy, so the garbage collector removes it then; a running operator deletes
it at once. A MaskingRule deleted while the operator is down is noticed when
the policies naming it are resumed. For the same reason there are no kopf
timers (kopf gives every object with a timer a finalizer): pod counts and late
sidecars are looked after by the reconciler's own loop (see ``main``).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kopf

from steward_operator import injection
from steward_operator.metrics import ADMISSIONS
from steward_operator.push import Sidecar
from steward_operator.reconcile import Reconciler
from steward_operator.targets import (
    GROUP,
    MASKING_RULES,
    POLICIES,
    VERSION,
    admission_problems,
    policy_names_using,
)

POLICY = (GROUP, VERSION, POLICIES)
MASKING_RULE = (GROUP, VERSION, MASKING_RULES)


def document(body: kopf.Body) -> dict[str, Any]:
    """A plain, independent copy of a resource body."""
    return copy.deepcopy(dict(body))


def sidecar(body: kopf.Body) -> Sidecar:
    annotations = body.metadata.annotations
    port = annotations.get(injection.ADMIN_PORT, "")
    status = body.get("status") or {}
    return Sidecar(
        namespace=body.metadata.namespace or "",
        name=body.metadata.name or "",
        uid=body.metadata.uid or "",
        ip=status.get("podIP"),
        admin_port=int(port) if port.isdigit() else injection.DEFAULT_ADMIN_PORT,
        running=status.get("phase") == "Running" and not body.metadata.get("deletionTimestamp"),
        hash_key=annotations.get(injection.HASH_KEY, ""),
    )


def unchanged_spec(body: kopf.Body, old: kopf.Body | None) -> bool:
    """An UPDATE that leaves the spec as it was (a policy already Invalid stays editable)."""
    return old is not None and dict(old.get("spec") or {}) == dict(body.get("spec") or {})


def make_registry(settings: injection.SidecarSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    # -- indexes -------------------------------------------------------------------------

    @kopf.index(*POLICY, id="policies", registry=registry)
    def policies(body: kopf.Body, namespace: str, **_: Any) -> dict[str, Any]:
        return {namespace: document(body)}

    @kopf.index(*MASKING_RULE, id="masking_rules", registry=registry)
    def masking_rules(body: kopf.Body, namespace: str, **_: Any) -> dict[str, Any]:
        return {namespace: document(body)}

    # -- policies ------------------------------------------------------------------------

    @kopf.on.resume(*POLICY, id="policy", registry=registry)
    @kopf.on.create(*POLICY, id="policy", registry=registry)
    @kopf.on.update(*POLICY, id="policy", field="spec", registry=registry)
    async def policy_changed(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        reconciler: Reconciler = memo.reconciler
        await reconciler.policy(namespace, name)

    @kopf.on.event(*POLICY, id="policy-deleted", registry=registry)
    async def policy_deleted(
        event: kopf.RawEvent, name: str, namespace: str, memo: kopf.Memo, **_: Any
    ) -> None:
        if event["type"] == "DELETED":
            await memo.reconciler.forget(namespace, name)

    # -- governed pods -------------------------------------------------------------------

    @kopf.on.event(
        "v1",
        "pods",
        id="governed-pods",
        annotations={injection.POLICY: kopf.PRESENT},
        registry=registry,
    )
    def governed_pod(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        policy = body.metadata.annotations[injection.POLICY]
        memo.reconciler.pod_seen(policy, sidecar(body), gone=event["type"] == "DELETED")

    # -- masking rules -------------------------------------------------------------------

    async def dependents(name: str, namespace: str, memo: kopf.Memo, index: kopf.Index) -> None:
        for policy in policy_names_using(name, index.get(namespace, [])):
            await memo.reconciler.policy(namespace, policy)

    @kopf.on.resume(*MASKING_RULE, id="masking-rule", registry=registry)
    @kopf.on.create(*MASKING_RULE, id="masking-rule", registry=registry)
    @kopf.on.update(*MASKING_RULE, id="masking-rule", field="spec", registry=registry)
    async def masking_rule_changed(
        body: kopf.Body,
        name: str,
        namespace: str,
        memo: kopf.Memo,
        policies: kopf.Index,
        **_: Any,
    ) -> None:
        await memo.reconciler.masking_rule(document(body))
        await dependents(name, namespace, memo, policies)

    @kopf.on.event(*MASKING_RULE, id="masking-rule-deleted", registry=registry)
    async def masking_rule_deleted(
        event: kopf.RawEvent,
        name: str,
        namespace: str,
        memo: kopf.Memo,
        policies: kopf.Index,
        **_: Any,
    ) -> None:
        if event["type"] == "DELETED":
            await dependents(name, namespace, memo, policies)

    # -- admission ------------------------------------------------------------------------

    @kopf.on.mutate("v1", "pods", id="inject-pods", operations=["CREATE"], registry=registry)
    async def inject_pods(
        body: kopf.Body,
        patch: kopf.Patch,
        warnings: list[str],
        memo: kopf.Memo,
        policies: kopf.Index,
        **_: Any,
    ) -> None:
        pod = document(body)
        namespace = body.metadata.namespace or ""
        decision = injection.decide(pod, namespace, list(policies.get(namespace, [])), settings)
        if decision.action == "skip":
            ADMISSIONS.labels("inject-pods", "skipped").inc()
            return
        if decision.action == "refuse" or decision.policy is None:
            ADMISSIONS.labels("inject-pods", "refused").inc()
            raise kopf.AdmissionError(decision.message, code=403)
        name = decision.policy["metadata"]["name"]
        published = await memo.reconciler.published_for(namespace, name)
        if published is None:
            ADMISSIONS.labels("inject-pods", "refused").inc()
            raise kopf.AdmissionError(
                f"DatabaseAccessPolicy {namespace}/{name} has no compiled bundle yet; "
                "see its status (kubectl describe dap)",
                code=403,
            )
        ops = injection.patch(pod, namespace, decision.policy, published, settings)
        patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
        warnings.extend(decision.warnings)
        ADMISSIONS.labels("inject-pods", "injected").inc()

    @kopf.on.validate(
        *POLICY, id="validate-policies", operations=["CREATE", "UPDATE"], registry=registry
    )
    async def validate_policies(
        body: kopf.Body,
        old: kopf.Body | None,
        memo: kopf.Memo,
        masking_rules: kopf.Index,
        **_: Any,
    ) -> None:
        if unchanged_spec(body, old):
            return  # metadata only (labels, kopf's own annotations): never blocked
        namespace = body.metadata.namespace or ""
        problems = admission_problems(document(body), list(masking_rules.get(namespace, [])))
        if any("is not defined" in p for p in problems):
            # The index may not have seen a rule created a moment ago: ask the API.
            rules = await memo.reconciler.masking_rules_of(namespace)
            problems = admission_problems(document(body), rules)
        ADMISSIONS.labels("validate-policies", "refused" if problems else "allowed").inc()
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    @kopf.on.validate(
        *MASKING_RULE,
        id="validate-masking-rules",
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    def validate_masking_rules(body: kopf.Body, old: kopf.Body | None, **_: Any) -> None:
        if unchanged_spec(body, old):
            return
        problems = admission_problems(document(body), [])
        ADMISSIONS.labels("validate-masking-rules", "refused" if problems else "allowed").inc()
        if problems:
            raise kopf.AdmissionError("; ".join(problems), code=422)

    return registry
