"""Live policy for a sidecar: the signed bundle it runs, from its file and from pushes.

``steward proxy --bundle FILE`` runs the policy of a signed bundle (see
:mod:`steward_proxy.policy.bundle`). Two channels bring a newer one: the file
itself, which :meth:`BundleUpdater.watch` polls (a Kubernetes ConfigMap volume
changes by swapping a symlink, so the watcher compares what the path resolves
to, not the name), and ``PUT /policy`` on the admin endpoint, which the
operator uses so a change need not wait for the kubelet to sync the volume.

Both go through :meth:`BundleUpdater.offer`: the bundle is verified off the
event loop (signature, target, generation, compilation), then swapped in on
the loop by :meth:`ProxyServer.replace_policies`, which checks the generation
again so two channels racing cannot roll policy back. A refused bundle is
logged with its reason and the running policy stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from steward_proxy.policy.bundle import MAX_BUNDLE_BYTES, Bundle, BundleError, Running, verify

if TYPE_CHECKING:
    from steward_proxy.server import ProxyServer

log = logging.getLogger("steward.policy")

DEFAULT_POLL_INTERVAL = 2.0
SWAP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an offered bundle that was not refused."""

    loaded: bool  # False: the very bundle already runs
    target: str
    generation: int
    hash: str
    compiled_hash: str

    def as_json(self) -> dict[str, Any]:
        return {
            "result": "loaded" if self.loaded else "unchanged",
            "target": self.target,
            "generation": self.generation,
            "hash": self.hash,
            "compiledHash": self.compiled_hash,
        }


def read_bundle_file(path: Path) -> bytes:
    """The bytes of a bundle file; a file larger than a bundle may be is refused."""
    with path.open("rb") as file:
        data = file.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("malformed", f"{path} is larger than {MAX_BUNDLE_BYTES} bytes")
    return data


def file_state(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when the file behind ``path`` is replaced; None when it is gone."""
    try:
        st = os.stat(path)  # follows the ConfigMap's ..data symlink
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class BundleUpdater:
    """Verifies offered bundles and swaps them into a :class:`ProxyServer`."""

    def __init__(
        self, server: ProxyServer, key: Ed25519PublicKey, target: str | None = None
    ) -> None:
        self.server = server
        self.key = key
        self.target = target
        """The target this proxy runs; None: whatever the first bundle names."""

    def running(self) -> Running | None:
        server = self.server
        if server.policy_generation is None or server.bundle_hash is None:
            return None
        return Running(server.bundle_target, server.policy_generation, server.bundle_hash)

    def check(self, data: bytes) -> Bundle:
        """Verify ``data`` against what runs now; raises :class:`BundleError`."""
        return verify(data, self.key, running=self.running(), target=self.target)

    def install(self, bundle: Bundle, source: str) -> Outcome:
        """Swap a verified bundle in (on the event loop); raises :class:`BundleError`."""
        from steward_proxy.server import PolicyRefused

        try:
            loaded = self.server.replace_policies(
                bundle.policies,
                source=source,
                bundle_hash=bundle.hash,
                generation=bundle.generation,
                target=bundle.target,
            )
        except PolicyRefused as exc:
            raise BundleError("stale", str(exc)) from None
        self.target = self.target or bundle.target
        return _outcome(bundle, loaded)

    async def offer(self, data: bytes, source: str) -> Outcome:
        """Verify off the loop, swap on it; refusals are logged and raised."""
        try:
            bundle = await asyncio.to_thread(self.check, data)
            return self.install(bundle, source)
        except BundleError as exc:
            _log_refusal(source, exc)
            raise

    def offer_threadsafe(self, data: bytes, source: str) -> Outcome:
        """:meth:`offer` from a thread other than the event loop's (the admin server)."""
        from steward_proxy.server import PolicyRefused

        try:
            bundle = self.check(data)
            future = self.server.replace_policies_threadsafe(
                bundle.policies,
                source=source,
                bundle_hash=bundle.hash,
                generation=bundle.generation,
                target=bundle.target,
            )
            try:
                loaded = future.result(timeout=SWAP_TIMEOUT)
            except PolicyRefused as exc:
                raise BundleError("stale", str(exc)) from None
        except BundleError as exc:
            _log_refusal(source, exc)
            raise
        self.target = self.target or bundle.target
        return _outcome(bundle, loaded)

    async def watch(self, path: Path, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Offer the file's content whenever the file behind ``path`` changes."""
        seen = await asyncio.to_thread(file_state, path)
        while True:
            await asyncio.sleep(interval)
            state = await asyncio.to_thread(file_state, path)
            if state == seen:
                continue
            seen = state
            if state is None:
                log.warning("bundle file %s is gone; the running policy stays", path)
                continue
            source = f"file {path}"
            try:
                data = await asyncio.to_thread(read_bundle_file, path)
            except BundleError as exc:
                _log_refusal(source, exc)
                continue
            except OSError as exc:
                log.warning(
                    "bundle file %s cannot be read: %s; the running policy stays", path, exc
                )
                continue
            try:
                await self.offer(data, source)
            except BundleError:
                pass  # logged by offer()
            except Exception:
                # A failed audit write has ended every session already; keep watching.
                log.exception("bundle from %s not loaded; the running policy stays", source)


def _outcome(bundle: Bundle, loaded: bool) -> Outcome:
    return Outcome(loaded, bundle.target, bundle.generation, bundle.hash, bundle.compiled_hash)


def _log_refusal(source: str, exc: BundleError) -> None:
    log.warning(
        "bundle from %s refused (%s): %s; the running policy stays",
        source,
        exc.problem,
        exc.message,
    )
