"""Pushing a signed bundle to the sidecars that run its target.

``PUT http://POD_IP:ADMIN_PORT/policy`` with the bundle's bytes. No per-pod
secret is needed: a sidecar takes only a bundle signed by the operator's key,
for its own target, not older than what it runs. A sidecar that answers with
a generation (200, or 409 for an older offer) tells what it runs; one that
cannot be reached is not confirmed current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp

from steward_operator.metrics import PUSHES

log = logging.getLogger("steward.operator.push")


@dataclass(frozen=True, slots=True)
class Sidecar:
    """A governed pod as the pod index sees it."""

    namespace: str
    name: str
    uid: str
    ip: str | None
    admin_port: int
    running: bool  # phase Running, not being deleted
    hash_key: str = ""
    """The hash key reference the pod mounts (its ``steward.dev/hash-key``), empty for none."""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.admin_port}/policy"


async def running_generation(session: aiohttp.ClientSession, sidecar: Sidecar) -> int | None:
    """The generation the sidecar runs, or None when it does not answer."""
    try:
        async with session.get(sidecar.url) as response:
            if response.status != 200:
                return None
            answer = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    generation = answer.get("generation")
    return generation if isinstance(generation, int) else None


async def push(session: aiohttp.ClientSession, sidecar: Sidecar, data: bytes) -> int | None:
    """Offer ``data``; the generation the sidecar runs afterwards, None if unknown."""
    try:
        async with session.put(sidecar.url, data=data) as response:
            answer = await response.json(content_type=None)
            if response.status == 200:
                return int(answer["generation"])
            log.warning(
                "sidecar of pod %s/%s refused the bundle (%s): %s",
                sidecar.namespace,
                sidecar.name,
                response.status,
                str(answer.get("error", ""))[:300],
            )
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        log.info("sidecar of pod %s/%s not reached: %s", sidecar.namespace, sidecar.name, exc)
        return None
    return await running_generation(session, sidecar)


async def bring_up_to_date(
    sidecars: Iterable[Sidecar], data: bytes, generation: int, timeout: float
) -> dict[str, int | None]:
    """Ask each running sidecar what it runs and push to those behind.

    Returns the generation each pod (by uid) runs afterwards, None when unknown.
    """
    reachable = [s for s in sidecars if s.running and s.ip]
    if not reachable:
        return {}
    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limits) as session:

        async def one(sidecar: Sidecar) -> int | None:
            current = await running_generation(session, sidecar)
            if current is not None and current >= generation:
                return current
            return await push(session, sidecar, data)

        results = await asyncio.gather(*(one(s) for s in reachable))
    for result in results:
        if result is None:
            PUSHES.labels("unreachable").inc()
        else:
            PUSHES.labels("current" if result >= generation else "refused").inc()
    return {s.uid: r for s, r in zip(reachable, results, strict=True)}


def outdated(
    sidecars: Iterable[Sidecar], running: Mapping[str, int | None], generation: int, hash_key: str
) -> int:
    """How many pods are behind their policy.

    A pod is behind when its sidecar runs a bundle older than ``generation``
    (``running``: what :func:`bring_up_to_date` found, by uid), or when it
    mounts another hash key than the policy names now (``hash_key``, as
    :func:`~steward_operator.injection.hash_key_annotation` writes it): a push
    cannot change a mount, only a restart gives it the new one.
    """
    return sum(
        1
        for s in sidecars
        if (s.uid in running and (running[s.uid] or 0) < generation) or s.hash_key != hash_key
    )
