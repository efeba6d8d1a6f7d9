"""One active operator: leader election through a ``coordination.k8s.io`` Lease.

Only the holder of the Lease runs the handlers and serves the webhooks; other
replicas wait, report not ready (so the webhook Service sends them nothing),
and take over when the holder lets the Lease expire or releases it on a clean
shutdown. Updates use the Lease's ``resourceVersion``, so two candidates can
never both win. A holder that cannot renew within the lease duration stops:
by then another may have taken over. kopf's own peering is not used: it
pauses operators of lower priority but does not elect one among equals.

The identity is the pod name, so a container restarted in the same pod takes
its Lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("steward.operator.leader")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro(moment: dt.datetime) -> str:
    """A MicroTime as the API server writes it."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: Any) -> dt.datetime | None:
    if isinstance(text, dt.datetime):
        return text if text.tzinfo else text.replace(tzinfo=dt.UTC)
    if not text:
        return None
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


@dataclass
class LeaseElector:
    """Acquire, renew and release one Lease."""

    api: client.ApiClient
    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        self.leases = client.CoordinationV1Api(self.api)
        self.leading = False

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is free, expired or ours; True when we hold it."""
        now = _now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": _micro(now),
        }
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0},
            }
            try:
                self.leases.create_namespaced_lease(self.namespace, body)
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False  # another candidate was faster
                raise
            self.leading = True
            return True
        held = lease.spec.holder_identity
        renewed = _parse(lease.spec.renew_time)
        length = lease.spec.lease_duration_seconds or int(self.duration)
        expired = renewed is None or (now - renewed).total_seconds() > length
        if held and held != self.identity and not expired:
            self.leading = False
            return False
        transitions = lease.spec.lease_transitions or 0
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": {
                **spec,
                "acquireTime": _micro(now)
                if held != self.identity
                else _micro(_parse(lease.spec.acquire_time) or now),
                "leaseTransitions": transitions + (1 if held != self.identity else 0),
            },
        }
        try:
            self.leases.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                self.leading = False
                return False
            raise
        if held != self.identity:
            log.info("took over lease %s/%s from %r", self.namespace, self.name, held)
        self.leading = True
        return True

    def release(self) -> None:
        """Let a successor take over at once (on a clean shutdown)."""
        if not self.leading:
            return
        try:
            lease = self.leases.read_namespaced_lease(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.renew_time = None
            self.leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, exc.reason)
        self.leading = False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we lead (True) or ``stop`` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info(
                        "leading as %s (lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return True
            except ApiException as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc.reason)
            if not waiting_logged:
                log.info(
                    "another operator leads; waiting for lease %s/%s", self.namespace, self.name
                )
                waiting_logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until ``stop``; set ``stop`` when the Lease is lost or cannot be renewed."""
        period = self.duration / 3
        last = asyncio.get_running_loop().time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period)
                return
            except TimeoutError:
                pass
            try:
                if not await asyncio.to_thread(self.try_acquire):
                    log.error(
                        "lease %s/%s lost to another operator; stopping", self.namespace, self.name
                    )
                    stop.set()
                    return
                last = asyncio.get_running_loop().time()
            except Exception as exc:
                if asyncio.get_running_loop().time() - last > self.duration:
                    log.error("lease not renewed for %.0fs (%s); stopping", self.duration, exc)
                    self.leading = False
                    stop.set()
                    return
                log.warning("lease renewal failed, retrying: %s", exc)
