"""Whether the proxy can sign in upstream: what ``/readyz`` reports.

:class:`UpstreamCheck` signs in upstream with the proxy's own credentials
(exactly as for a client: TLS as the URL asks, the pinned settings checked)
when the proxy starts (before it listens, waiting a few seconds at most) and
then every ``readiness_interval`` seconds, and
remembers the outcome. Sign-ins of real clients count too, so a recovered or
broken upstream shows at once. The same loop fetches OIDC keys that are
missing or stale, and reads again the hash masking keys policies name that
could not be read (see :mod:`steward_proxy.hashkeys`). ``/readyz`` only reads
the outcome: a scrape
never opens a connection. A change is logged once; the reason (a wrong
password, an unreachable host) is in the log line of the failed sign-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from steward_proxy import startup as startup_rules
from steward_proxy import wire
from steward_proxy.admission import Refusal
from steward_proxy.upstream import UpstreamProtocol, sign_in_upstream

if TYPE_CHECKING:
    from steward_proxy.server import ProxyServer

log = logging.getLogger("steward.proxy")

START_WAIT = 3.0
"""Seconds the proxy waits for the first check before it listens (an upstream that
hangs must not hold the start up for the whole connect timeout)."""


class _Listener:
    """Stands in for the client an :class:`UpstreamProtocol` reports to: a check has none."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def from_upstream(self, data: bytes) -> None:
        return

    def upstream_lost(self, exc: Exception | None) -> None:
        return

    def pause_reading(self) -> None:
        return

    def resume_reading(self) -> None:
        return


class UpstreamCheck:
    """The outcome of the latest upstream sign-in, and the task that renews it."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.ok: bool | None = None  # None: not checked yet
        self.problem = "the upstream sign-in has not been checked yet"
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.server.settings.readiness_interval > 0

    async def check(self) -> bool:
        """Sign in upstream once and record the outcome."""
        if self.server.problems:  # not ready anyway (/readyz says why): nothing to try
            return False
        upstream = UpstreamProtocol(_Listener(self.server))  # type: ignore[arg-type]
        settings = self.server.settings
        try:
            await sign_in_upstream(
                upstream,
                settings.upstream,
                startup_rules.upstream_parameters({}),
                timeout=settings.connect_timeout,
                session="readiness-check",
            )
        except Refusal as refusal:
            self.observed(False, refusal.message)
        except Exception as exc:  # never let the check die
            log.warning("readiness check failed: %r", exc)
            self.observed(False, "the readiness check failed")
        else:
            self.observed(True)
        finally:
            transport = upstream.transport
            if transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    if upstream.conn.state is wire.State.READY:
                        transport.write(wire.encode(wire.Terminate()))
                transport.close()
        return bool(self.ok)

    def observed(self, ok: bool, problem: str = "") -> None:
        """Record a sign-in upstream (the check's or a client's); log a change."""
        if ok and self.ok is not True:
            if self.ok is False:
                log.info("upstream sign-in works again: ready")
        elif not ok and self.ok is not False:
            log.warning("upstream sign-in fails (%s): /readyz reports not ready", problem)
        self.ok = ok
        self.problem = "" if ok else problem

    async def start(self, wait: float = START_WAIT) -> None:
        """Start checking; wait up to ``wait`` seconds for the first outcome."""
        if not self.enabled or self._task is not None:
            return
        first = asyncio.get_running_loop().create_future()
        self._task = asyncio.ensure_future(self._run(first))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(first), wait)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, first: asyncio.Future[None]) -> None:
        interval = self.server.settings.readiness_interval
        await self.check()
        first.set_result(None)
        while True:
            await asyncio.sleep(interval)
            await self.check()
            await self._refresh_keys()
            self.server.hash_keys.retry()  # a Secret volume the kubelet filled in late

    async def _refresh_keys(self) -> None:
        """Fetch OIDC keys missing or too old, so no sign-in has to wait for them."""
        keys = self.server.settings.key_source
        if keys is not None and keys.cache.stale(time.monotonic()):
            await keys.refresh()  # at most as often as the cache allows

    @property
    def ready(self) -> bool:
        """False while the latest sign-in upstream failed (always True when disabled)."""
        return self.ok is True or not self.enabled
