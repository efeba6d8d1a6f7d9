"""The asyncio shell: listener, lifecycle and what all sessions share.

This module and its neighbours :mod:`.client` and :mod:`.upstream` are the only
places with sockets. :class:`ProxyServer` accepts connections (one
:class:`~steward_proxy.client.ClientProtocol` each), keeps the cancel keys and
the per-identity judges, reaps idle sessions and drains on SIGTERM. Protocols,
not streams, keep the relay free of task switches; each side pauses the
other's reading when its write buffer fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from steward_proxy import wire
from steward_proxy.client import (
    ADMIN_SHUTDOWN,
    CONNECTION_FAILURE,
    IDLE_SESSION_TIMEOUT,
    INVALID_AUTHORIZATION,
    IO_ERROR,
    ClientProtocol,
    Refusal,
)
from steward_proxy.escape import escape, has_controls
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Identity, PolicySet
from steward_proxy.session import AuditSink, Judge
from steward_proxy.upstream import UpstreamTarget

log = logging.getLogger("steward.proxy")


@dataclass
class ProxySettings:
    """Everything ``steward proxy`` is configured with."""

    listen_host: str
    listen_port: int
    upstream: UpstreamTarget
    identity: str | None = None
    """Fixed subject of every connection (sidecar mode); None: startup user name."""
    identity_groups: tuple[str, ...] = ()
    max_connections: int = 100
    idle_timeout: float = 0.0
    """Seconds a session may sit idle outside a transaction; 0 disables."""
    startup_timeout: float = 60.0
    """Seconds a client has from connecting to being signed in."""
    max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE
    connect_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    """How long SIGTERM waits for running statements before closing anyway."""
    tls_cert: str | None = None
    tls_key: str | None = None


class ProxyServer:
    """Accepts clients and governs their sessions."""

    def __init__(
        self,
        settings: ProxySettings,
        policies: PolicySet,
        audit: AuditSink,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.audit = audit
        self.metrics = metrics or ProxyMetrics()
        self.clients: set[ClientProtocol] = set()
        self.cancel_keys: dict[tuple[int, int], ClientProtocol] = {}
        self.judges: dict[Identity, Judge] = {}
        self.draining = False
        self.audit_failed = False
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.tls: ssl.SSLContext | None = None  # toward clients, when configured
        if settings.tls_cert:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(settings.tls_cert, settings.tls_key)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientProtocol(self),
            self.settings.listen_host,
            self.settings.listen_port,
            reuse_address=True,
            backlog=1024,
        )
        sockname = self._server.sockets[0].getsockname()
        self.settings.listen_port = sockname[1]
        log.info(
            "listening on %s:%d, upstream %s",
            sockname[0],
            sockname[1],
            self.settings.upstream.redacted(),
        )

    @property
    def ready(self) -> bool:
        return self._server is not None and not self.draining and not self.audit_failed

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set or SIGTERM/SIGINT arrives, then drain."""
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        reaper = asyncio.create_task(self._reap())
        await stop.wait()
        log.info("shutting down: %d sessions open", len(self.clients))
        reaper.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.drain()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.terminate(ADMIN_SHUTDOWN, "terminating connection: proxy shut down")
        if self._server is not None:
            await self._server.wait_closed()

    async def _reap(self) -> None:
        """End sessions idle too long and clients that never finish signing in."""
        idle = self.settings.idle_timeout
        startup = self.settings.startup_timeout
        period = min([1.0, *(t / 4 for t in (idle, startup) if t > 0)])
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for client in list(self.clients):
                session = client.session
                if session is None:
                    if startup > 0 and now - client.connected_at > startup:
                        client.terminate(CONNECTION_FAILURE, "canceling sign-in: it took too long")
                elif idle > 0 and not session.busy and now - session.last_activity > idle:
                    client.terminate(
                        IDLE_SESSION_TIMEOUT,
                        f"terminating connection: idle for more than {idle:g}s",
                    )

    # -- helpers for protocols -----------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short background task, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def judge_for(self, identity: Identity) -> Judge:
        judge = self.judges.get(identity)
        if judge is None:
            policies = self.policies.policies_for(identity)
            if not policies:
                raise Refusal(
                    INVALID_AUTHORIZATION,
                    f"no Steward policy covers subject {identity.subject}: access refused",
                )
            judge = self.judges[identity] = Judge(policies)
        return judge

    def identity_for(self, startup: wire.StartupMessage) -> Identity:
        if self.settings.identity:
            return Identity(self.settings.identity, self.settings.identity_groups)
        user = startup.user or ""
        if not user or has_controls(user):
            # A subject goes into log lines and audit records as it is: no control characters.
            raise Refusal(INVALID_AUTHORIZATION, f'invalid user name "{escape(user)}"')
        return Identity(f"user:{user}", ())

    def audit_failure(self, exc: Exception) -> None:
        """Fail closed: with no audit trail, no session may go on and none may start."""
        if self.audit_failed:
            return
        log.error("audit trail cannot be written; ending all sessions: %s", exc)
        self.audit_failed = True
        self.metrics.error("audit")
        for client in list(self.clients):
            client.terminate(IO_ERROR, "the audit trail cannot be written; session ended")


def install_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when it is installed, else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
