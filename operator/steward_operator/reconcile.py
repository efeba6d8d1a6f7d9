"""Making a policy's bundle, status and sidecars match its documents.

:class:`Reconciler` is what the kopf handlers call. For one policy it reads
the policy and its namespace's MaskingRules, compiles them with the proxy's
compiler, publishes the signed bundle in the policy's ConfigMap when its
content changed (a new generation) or the ConfigMap is missing or not signed
by this operator's key, pushes it to the sidecars behind, and writes status.
Every step is idempotent: a restart re-runs it and finds nothing to change.
The ConfigMap is the record of what was published; the reconciler's memory is
only a cache of it.

A policy that does not compile becomes Invalid (with a Warning Event when the
problem is new) and its last good bundle stays published: the sidecars keep
enforcing it.

:meth:`Reconciler.run` is the periodic part: it keeps pod counts in status
true, pushes to sidecars that missed a push (a pod that was not running yet,
a restarted sidecar that loaded an older file) and republishes a bundle
ConfigMap that was deleted or overwritten.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kubernetes.client.rest import ApiException

from steward_operator.injection import Published, hash_key_annotation
from steward_operator.kube import Kube
from steward_operator.metrics import BUNDLES_PUBLISHED, INVALID
from steward_operator.push import Sidecar, bring_up_to_date, outdated
from steward_operator.targets import (
    ANNOTATION_GENERATION,
    BUNDLE_KEY,
    MASKING_RULES,
    POLICIES,
    Condition,
    admission_problems,
    conditions,
    configmap_name,
    invalid,
    invalid_reason,
    next_generation,
    ready,
    target_documents,
    target_key,
)
from steward_proxy.policy import PolicyError
from steward_proxy.policy.bundle import BundleError, build, load, sign, verify

log = logging.getLogger("steward.operator")

MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Current:
    """A target's bundle as published."""

    hash: str
    generation: int
    compiled_hash: str
    data: bytes


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


@dataclass
class Reconciler:
    kube: Kube
    key: Ed25519PrivateKey
    push_timeout: float = 5.0
    published: dict[str, Current] = field(default_factory=dict)
    sidecars: dict[str, dict[str, Sidecar]] = field(default_factory=dict)
    """Governed pods by target, then by pod uid (kept from pod watch events)."""
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- governed pods ----------------------------------------------------------------

    def pod_seen(self, policy: str, sidecar: Sidecar, *, gone: bool = False) -> None:
        key = target_key(sidecar.namespace, policy)
        pods = self.sidecars.setdefault(key, {})
        if gone:
            pods.pop(sidecar.uid, None)
            if not pods:
                del self.sidecars[key]
        else:
            pods[sidecar.uid] = sidecar

    def sidecars_of(self, key: str) -> list[Sidecar]:
        return sorted(self.sidecars.get(key, {}).values(), key=lambda s: s.name)

    # -- policies -----------------------------------------------------------------------

    async def policy(self, namespace: str, name: str) -> None:
        """Compile, publish, push and report one policy."""
        key = target_key(namespace, name)
        async with self._lock(key):
            policy = await asyncio.to_thread(self.kube.get_policy, namespace, name)
            if policy is None or policy["metadata"].get("deletionTimestamp"):
                return
            rules = await asyncio.to_thread(self.kube.list_masking_rules, namespace)
            documents = target_documents(policy, rules)
            try:
                build(key, 1, documents)
            except PolicyError as exc:
                await self._invalid(policy, list(exc.errors))
                return
            current = await self._publish(policy, documents)
            behind = await self._bring_up_to_date(key, current, policy)
            configmap = configmap_name(name)
            message = f"bundle generation {current.generation} published in ConfigMap {configmap}"
            await self._status(policy, ready(message), current, behind)

    async def _publish(self, policy: dict[str, Any], documents: list[dict[str, Any]]) -> Current:
        metadata = policy["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        key = target_key(namespace, name)
        existing = await asyncio.to_thread(self.kube.read_bundle, namespace, name)
        found, previous = self._read(existing, key)
        unsigned = build(key, 1, documents)
        if found is not None and found.hash == unsigned.hash:
            self.published[key] = found
            return found
        generation = next_generation(previous, time.time())
        bundle = build(key, generation, documents)
        data = sign(bundle, self.key)
        try:
            await asyncio.to_thread(
                self.kube.write_bundle, policy, data, generation, bundle.hash, existing
            )
        except ApiException as exc:
            if exc.status == 409:
                raise kopf.TemporaryError(
                    f"ConfigMap {configmap_name(name)} changed meanwhile; retrying", delay=1
                ) from None
            raise
        BUNDLES_PUBLISHED.inc()
        log.info("published %s generation %d (hash %s)", key, generation, bundle.hash[:12])
        current = Current(bundle.hash, generation, bundle.compiled_hash, data)
        self.published[key] = current
        return current

    def _read(
        self, configmap: dict[str, Any] | None, key: str
    ) -> tuple[Current | None, int | None]:
        """The bundle a ConfigMap holds if this operator signed it, and its generation."""
        if configmap is None:
            return None, None
        annotations = configmap["metadata"].get("annotations") or {}
        text = (configmap.get("data") or {}).get(BUNDLE_KEY, "")
        previous: int | None = None
        if annotations.get(ANNOTATION_GENERATION, "").isdigit():
            previous = int(annotations[ANNOTATION_GENERATION])
        try:
            body, _ = load(text.encode("utf-8"))
            previous = max(previous or 0, int(body["generation"]))
            bundle = verify(text.encode("utf-8"), self.key.public_key(), target=key)
        except (BundleError, TypeError, ValueError):
            return None, previous  # replaced by hand, or signed with an earlier key
        current = Current(bundle.hash, bundle.generation, bundle.compiled_hash, text.encode())
        return current, previous

    async def _bring_up_to_date(self, key: str, current: Current, policy: dict[str, Any]) -> int:
        """Push to the target's sidecars that are behind; how many pods still are."""
        sidecars = self.sidecars_of(key)
        running = await bring_up_to_date(
            sidecars, current.data, current.generation, self.push_timeout
        )
        return outdated(sidecars, running, current.generation, hash_key_annotation(policy))

    async def _invalid(self, policy: dict[str, Any], errors: list[str]) -> None:
        INVALID.inc()
        metadata = policy["metadata"]
        key = target_key(metadata["namespace"], metadata["name"])
        reason = invalid_reason(errors)
        message = _bounded("; ".join(errors))
        current = self.published.get(key)
        if current is None:
            existing = await asyncio.to_thread(
                self.kube.read_bundle, metadata["namespace"], metadata["name"]
            )
            current = self._read(existing, key)[0]
        if current is not None:
            message = _bounded(
                f"{message} (pods keep enforcing bundle generation {current.generation})"
            )
        previous = {
            c.get("type"): c for c in (policy.get("status") or {}).get("conditions") or ()
        }.get("Invalid")
        if not (
            previous and previous.get("status") == "True" and previous.get("message") == message
        ):
            await asyncio.to_thread(self.kube.warn, policy, reason, message)
        log.warning("%s is invalid: %s", key, message)
        await self._status(policy, invalid(reason, message), None, None)

    async def _status(
        self,
        policy: dict[str, Any],
        wanted: list[Condition],
        current: Current | None,
        outdated: int | None,
    ) -> None:
        metadata = policy["metadata"]
        key = target_key(metadata["namespace"], metadata["name"])
        existing = policy.get("status") or {}
        generation = metadata.get("generation")
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": conditions(existing.get("conditions") or (), wanted, generation, _now()),
            "pods": len(self.sidecars.get(key, {})),
        }
        if outdated is not None:
            status["outdatedPods"] = outdated
        if current is not None:
            status["compiledHash"] = current.compiled_hash
            status["bundleGeneration"] = current.generation
        await asyncio.to_thread(
            self.kube.patch_status, POLICIES, metadata["namespace"], metadata["name"], status
        )

    async def refresh(self, namespace: str, name: str) -> None:
        """Keep pod counts true, push to late sidecars, restore a lost ConfigMap."""
        key = target_key(namespace, name)
        async with self._lock(key):
            policy = await asyncio.to_thread(self.kube.get_policy, namespace, name)
            if policy is None:
                return
            existing = await asyncio.to_thread(self.kube.read_bundle, namespace, name)
            current = self._read(existing, key)[0]
            known = self.published.get(key)
            stale = current is None or known is None or current.hash != known.hash
            if not stale and current is not None:
                behind = await self._bring_up_to_date(key, current, policy)
                status = policy.get("status") or {}
                counts = (len(self.sidecars.get(key, {})), behind)
                if (status.get("pods"), status.get("outdatedPods")) != counts:
                    patch = {"pods": counts[0], "outdatedPods": counts[1]}
                    await asyncio.to_thread(
                        self.kube.patch_status, POLICIES, namespace, name, patch
                    )
                return
        if condition_status(policy, "Invalid") != "True":
            await self.policy(namespace, name)

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Refresh every known target every ``interval`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            for key in sorted(set(self.published) | set(self.sidecars)):
                namespace, name = key.split("/", 1)
                try:
                    await self.refresh(namespace, name)
                except Exception:
                    log.exception("refreshing %s failed; trying again in %gs", key, interval)

    async def forget(self, namespace: str, name: str) -> None:
        """A deleted policy: remove its ConfigMap (its owner reference does too, with GC)."""
        key = target_key(namespace, name)
        async with self._lock(key):
            self.published.pop(key, None)
            if await asyncio.to_thread(self.kube.delete_bundle, namespace, name):
                log.info("deleted the bundle of %s", key)

    async def published_for(self, namespace: str, name: str) -> Published | None:
        """What the webhook annotates a pod with; None when nothing is published."""
        key = target_key(namespace, name)
        current = self.published.get(key)
        if current is None:
            existing = await asyncio.to_thread(self.kube.read_bundle, namespace, name)
            current = self._read(existing, key)[0]
        return None if current is None else Published(current.hash, current.generation)

    # -- masking rules ------------------------------------------------------------------

    async def masking_rules_of(self, namespace: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.kube.list_masking_rules, namespace)

    async def masking_rule(self, rule: dict[str, Any]) -> None:
        """Status of a MaskingRule (it validates on its own)."""
        metadata = rule["metadata"]
        problems = admission_problems(rule, [])
        if problems:
            message = _bounded("; ".join(problems))
            wanted = invalid("CompileError", message)
            await asyncio.to_thread(self.kube.warn, rule, "CompileError", message)
        else:
            wanted = [
                Condition("Ready", "True", "Valid", "the rule validates"),
                Condition("Invalid", "False", "Valid", "the rule validates"),
            ]
        generation = metadata.get("generation")
        status = {
            "observedGeneration": generation,
            "conditions": conditions(
                (rule.get("status") or {}).get("conditions") or (), wanted, generation, _now()
            ),
        }
        await asyncio.to_thread(
            self.kube.patch_status, MASKING_RULES, metadata["namespace"], metadata["name"], status
        )


def condition_status(obj: dict[str, Any], kind: str) -> str | None:
    for entry in (obj.get("status") or {}).get("conditions") or ():
        if entry.get("type") == kind:
            return entry.get("status")
    return None
