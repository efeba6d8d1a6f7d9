"""Live policy from ``--policy`` files: SIGHUP, a change of the files, and ``PUT /policy``.

``steward proxy --policy PATH`` loads its policy from YAML files and
directories at start (and refuses to start if they do not load). From then on
:class:`PolicyFiles` loads them again

- on SIGHUP (:meth:`PolicyFiles.reload`),
- when a file under the paths changes, appears or goes away: :meth:`PolicyFiles.watch`
  compares each file's device, inode, modification time and size every
  ``--policy-poll`` seconds (what a rename over the file, as editors and
  Kubernetes ConfigMap volumes do it, changes too),

and ``PUT /policy`` on the admin endpoint (with the admin token) runs a set of
YAML documents sent in the request (:meth:`PolicyFiles.offer_yaml_threadsafe`)
until the files are loaded again.

A new policy replaces the running one atomically through
:meth:`ProxyServer.replace_policies <steward_proxy.server.ProxyServer.replace_policies>`:
a ``policy.loaded`` audit record, then sessions in flight judge their next
statement under it. Policy that does not load, validate or compile is refused
with the reasons logged, and the running policy stays. Files that change
while they are read are read again, so a half-written file is not taken for
the policy; write policy files by renaming a complete file over the old one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from steward_proxy.policy import PolicyError, PolicySet, compile_documents, load_policy_set
from steward_proxy.policy.loader import parse_documents, policy_files
from steward_proxy.reload import file_state
from steward_proxy.threadsafe import call_on_loop

__all__ = ["DEFAULT_POLL_INTERVAL", "PolicyFiles"]

log = logging.getLogger("steward.policy")

DEFAULT_POLL_INTERVAL = 1.0
_READ_ATTEMPTS = 3

FilesState = tuple[tuple[str, Any], ...]


def files_state(paths: Sequence[str]) -> FilesState:
    """What identifies the content under ``paths`` now: each file, and each missing path."""
    files, missing = policy_files(paths)
    return (
        *((str(f), file_state(f)) for f in files),
        *((problem, None) for problem in missing),
    )


class PolicyFiles:
    """The ``--policy`` paths of a running proxy; see the module docstring."""

    def __init__(
        self,
        server: Any,
        paths: Sequence[str],
        interval: float = DEFAULT_POLL_INTERVAL,
        *,
        seen: FilesState | None = None,
    ) -> None:
        """``seen``: the state of the files the running policy was read from (taken before)."""
        self.server = server
        self.paths = tuple(paths)
        self.interval = interval
        self.seen: FilesState = seen if seen is not None else self.state()
        self._lock: asyncio.Lock | None = None

    def state(self) -> FilesState:
        return files_state(self.paths)

    def read(self) -> tuple[FilesState, PolicySet]:
        """Load the files; again if they changed meanwhile. Raises :class:`PolicyError`."""
        for _ in range(_READ_ATTEMPTS):
            before = self.state()
            try:
                policies: PolicySet | None = load_policy_set(self.paths)
                error: PolicyError | None = None
            except PolicyError as exc:
                policies, error = None, exc
            after = self.state()
            if after != before:
                continue
            if error is not None:
                self.seen = after  # the same broken files are not reported at every poll
                raise error
            assert policies is not None
            return after, policies
        raise PolicyError(["the policy files kept changing while they were read"])

    async def reload(self, why: str) -> bool:
        """Load the files and run their policy; False when unchanged or refused (logged)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                state, policies = await asyncio.to_thread(self.read)
            except PolicyError as exc:
                self._refused(f"files {', '.join(self.paths)} ({why})", exc)
                return False
            self.seen = state
            return self.install(policies, f"files {','.join(self.paths)} ({why})")

    def install(self, policies: PolicySet, source: str) -> bool:
        """Run ``policies`` (on the event loop) unless they are what runs already."""
        server = self.server
        if server.policy_generation is None and (
            policies.compiled_hash == server.policies.compiled_hash
        ):
            log.info("policy from %s is the running policy; nothing changed", source)
            return False
        return bool(server.replace_policies(policies, source=source))

    async def watch(self) -> None:
        """Reload whenever something under the paths changes."""
        while True:
            await asyncio.sleep(self.interval)
            if await asyncio.to_thread(self.state) == self.seen:
                continue
            try:
                await self.reload("a policy file changed")
            except Exception:
                # A failed audit write has ended every session already; keep watching.
                log.exception("policy files not loaded; the running policy stays")

    def offer_yaml_threadsafe(self, data: bytes, source: str) -> dict[str, Any]:
        """Run the YAML documents of a ``PUT /policy``; raises :class:`PolicyError`."""
        try:
            policies = _compile_body(data)
        except PolicyError as exc:
            self._refused(source, exc)
            raise
        loaded = call_on_loop(self.server.loop, lambda: self.install(policies, source))
        return {
            "result": "loaded" if loaded else "unchanged",
            "compiledHash": policies.compiled_hash,
            "policies": [p.key for p in policies.policies],
        }

    def _refused(self, source: str, exc: PolicyError) -> None:
        log.warning(
            "policy from %s refused; the running policy stays:\n  %s",
            source,
            "\n  ".join(exc.errors),
        )
        self.server.metrics.error("policy_refused")


def _compile_body(data: bytes) -> PolicySet:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(["request body: not UTF-8"]) from None
    documents, error = parse_documents(text, "request body")
    if error is not None:
        raise PolicyError([error])
    if not documents:
        raise PolicyError(["request body: no policy documents"])
    return compile_documents(documents)
