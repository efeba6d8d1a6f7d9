"""The asyncio shell: listener, lifecycle and what all sessions share.

This module and its neighbours :mod:`.client` and :mod:`.upstream` are the only
places with sockets. :class:`ProxyServer` accepts connections (one
:class:`~steward_proxy.client.ClientProtocol` each), keeps the cancel keys and
the per-identity judges, reaps idle sessions and drains on SIGTERM.
:meth:`ProxyServer.replace_policies` swaps the policy set while sessions run:
each session holds a :class:`LiveJudge`, which asks the server for the current
judge of its identity, so its next statement meets the new policy. Protocols,
not streams, keep the relay free of task switches; each side pauses the
other's reading when its write buffer fills.

Connections that have not yet sent a complete startup packet (silent ones,
and those in their TLS handshake) are *pending*. At most
``max_pending_connections`` are kept: a new one beyond the bound closes the
oldest pending one, so a flood of silent sockets can neither exhaust the
process's file descriptors nor lock out a client that signs in promptly.
Connections whose startup packet has arrived are never evicted; they count
against ``max_connections`` instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import math
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from steward_proxy import wire
from steward_proxy.admission import Admission, Refusal
from steward_proxy.analyzer import AnalysisPool
from steward_proxy.audit import AuditSink
from steward_proxy.auth import Authenticator, FixedIdentity, Trust
from steward_proxy.auth.jwks import JwksSource
from steward_proxy.catalog_fetch import CatalogKeeper
from steward_proxy.client import ClientProtocol
from steward_proxy.engine import Analysis, Judge, Verdict
from steward_proxy.escape import escape, has_controls
from steward_proxy.hashkeys import DEFAULT_HASH_KEY_DIR, HashKeys
from steward_proxy.masking.plan import Masker, MaskingConfig
from steward_proxy.maskworkers import MaskPool
from steward_proxy.metrics import ProxyMetrics
from steward_proxy.policy import Identity, Policy, PolicySet
from steward_proxy.readiness import UpstreamCheck
from steward_proxy.review import ReviewBook
from steward_proxy.reviewdesk import ReviewDesk
from steward_proxy.session import AnalysisLimits
from steward_proxy.sqlstate import (
    ADMIN_SHUTDOWN,
    CONNECTION_FAILURE,
    CONNECTION_REJECTED,
    IDLE_SESSION_TIMEOUT,
    INVALID_AUTHORIZATION,
    IO_ERROR,
    TOO_MANY_CONNECTIONS,
)
from steward_proxy.upstream import UpstreamTarget

log = logging.getLogger("steward.proxy")

MASK_OFFLOAD_BYTES = 16384
"""With masking workers, runs of rows at least this long are masked by one."""

EVICTION_LOG_INTERVAL = 5.0
"""Seconds between two log lines about pending connections closed at the bound."""


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
    max_pending_connections: int = 256
    """Connections without a complete startup packet kept open; beyond it the oldest closes."""
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
    analysis_limits: AnalysisLimits = field(default_factory=AnalysisLimits)
    """Bounds on statement text and on analysing it inline."""
    analysis_workers: int = 1
    analysis_timeout: float = 5.0
    """Seconds an analysis off the event loop may take, waiting for a worker included."""
    analysis_memory: int = 1 << 30
    """Bytes of address space an analysis worker may use."""
    mask_workers: int = 0
    """Processes that mask long results; 0: sessions mask rows on the event loop."""
    hash_key: bytes | None = field(default=None, repr=False)
    """Key of the ``hash`` masking strategy; None: a random key per process."""
    hash_key_dir: str = DEFAULT_HASH_KEY_DIR
    """Where the Secret keys policies name for ``hash`` are mounted (``DIR/NAME/KEY``)."""
    catalog_ttl: float = 300.0
    """Seconds between reloads of the catalog masking resolves columns with."""
    # -- client authentication (steward_proxy.auth) --
    authenticator: Authenticator | None = None
    """How clients prove who they are; None: ``identity`` when set, else trust."""
    key_source: JwksSource | None = None
    """Where the OIDC keys come from (oidc only)."""
    tls_client_ca: str | None = None
    """CA file client certificates are verified against (asked for in the handshake)."""
    readiness_interval: float = 10.0
    """Seconds between two upstream sign-in checks behind /readyz; 0 disables them."""


class PolicyRefused(Exception):
    """A policy swap that would roll the running policy back; nothing changed."""


class LiveJudge(Judge):
    """The judge of one identity under whatever policy set the server runs now.

    A session keeps the judge it got at sign-in for its whole life; this one
    forwards each call to the server's current :class:`Judge` for the identity,
    so a swapped policy set reaches sessions in flight at their next statement.
    Statements already parsed (prepared statements, portals) keep the verdict
    they were given when they were parsed, unless the new policy refuses one:
    the session then ends (see ``Session``, "policy changes").
    """

    def __init__(self, server: ProxyServer, identity: Identity) -> None:
        # No Judge.__init__: this judge has no cache of its own.
        self._server = server
        self.identity = identity
        self._seen: dict[Identity, Judge] | None = None
        self._judge: Judge | None = None

    @property
    def current(self) -> Judge:
        judges = self._server.judges
        if judges is not self._seen or self._judge is None:
            # The server replaces its judges dict on every swap.
            self._judge = self._server.current_judge(self.identity)
            self._seen = judges
        return self._judge

    @property  # type: ignore[override]
    def policies(self) -> tuple[Policy, ...]:
        return self.current.policies

    @property  # type: ignore[override]
    def max_statements(self) -> int:
        return self.current.max_statements

    @property  # type: ignore[override]
    def read_only(self) -> bool:
        return self.current.read_only

    @property  # type: ignore[misc]
    def generation(self) -> int:
        return self._server.policy_swaps

    def judge(self, sql: str, analysed: Analysis | None = None) -> Verdict:
        return self.current.judge(sql, analysed)

    def recall(self, sql: str) -> Verdict | None:
        return self.current.recall(sql)

    def __getattr__(self, name: str) -> Any:
        # Anything else a session asks of its judge comes from the current one.
        if name.startswith("__") or name in ("_server", "_seen", "_judge", "identity"):
            raise AttributeError(name)
        return getattr(self.current, name)


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
        self.pending: dict[ClientProtocol, None] = {}  # oldest first
        self._evicted_unlogged = 0
        self._evicted_logged_at = -math.inf
        self.cancel_keys: dict[tuple[int, int], ClientProtocol] = {}
        self.judges: dict[Identity, Judge] = {}
        self.policy_swaps = 0
        """How many times the policy set was replaced (see :meth:`replace_policies`)."""
        self._no_access = Judge((), max_statements=settings.analysis_limits.max_statements)
        self.policy_source = "startup"
        self.policy_generation: int | None = None
        """Generation of the running bundle; None when policy came from files."""
        self.bundle_hash: str | None = None
        self.bundle_target: str | None = None
        self.problems: list[str] = []
        """Configuration problems (missing credentials, ...): not ready, no sign-in."""
        self.reviews = ReviewBook()
        """Statements held for review (see :mod:`.review`), shared by the sessions."""
        self.review_desk = ReviewDesk(self)
        """Stores :attr:`reviews` and takes approvers' decisions (see :mod:`.reviewdesk`)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.audit_failed = False
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.analyzer = AnalysisPool(
            workers=settings.analysis_workers,
            timeout=settings.analysis_timeout,
            memory_bytes=settings.analysis_memory,
            max_statements=settings.analysis_limits.max_statements,
        )
        self.mask_pool = MaskPool(settings.mask_workers) if settings.mask_workers else None
        self.session_limits = settings.analysis_limits
        """What each session is built with (runs of rows go to the pool, if any)."""
        if self.mask_pool is not None and not self.session_limits.mask_offload_bytes:
            self.session_limits = replace(
                self.session_limits, mask_offload_bytes=MASK_OFFLOAD_BYTES
            )
        self.hash_keys = HashKeys(settings.hash_key, settings.hash_key_dir)
        self.hash_keys.check(policies)
        self.catalog = CatalogKeeper(
            settings.upstream, ttl=settings.catalog_ttl, timeout=settings.connect_timeout
        )
        self.tls: ssl.SSLContext | None = None  # toward clients, when configured
        if settings.tls_cert:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(settings.tls_cert, settings.tls_key)
            if settings.tls_client_ca:
                # Optional in the handshake, so a client without one hears why at sign-in;
                # one that is sent must verify (expired or from another CA ends the handshake).
                self.tls.verify_mode = ssl.CERT_OPTIONAL
                self.tls.load_verify_locations(settings.tls_client_ca)
        self.authenticator: Authenticator = settings.authenticator or (
            FixedIdentity(Identity(settings.identity, settings.identity_groups))
            if settings.identity
            else Trust()
        )
        self.upstream_check = UpstreamCheck(self)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        await self.analyzer.start()
        if self.mask_pool is not None:
            await self.mask_pool.start()
        # Checked before listening, so /readyz and the log tell the truth from the start.
        if self.settings.key_source is not None:
            await self.settings.key_source.refresh(force=True)
        await self.upstream_check.start()
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
        return (
            self._server is not None
            and not self.draining
            and not self.audit_failed
            and not self.problems
        )

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
        self.upstream_check.stop()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.draining = True
        self._log_evictions(time.monotonic(), flush=True)
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
        await self.analyzer.close()
        if self.mask_pool is not None:
            await self.mask_pool.close()
        await self.catalog.close()

    async def _reap(self) -> None:
        """Call :meth:`reap` a few times per timeout."""
        timeouts = (self.settings.idle_timeout, self.settings.startup_timeout)
        period = min([1.0, *(t / 4 for t in timeouts if t > 0)])
        while True:
            await asyncio.sleep(period)
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        """End sessions idle too long and clients that never finish signing in, as of ``now``.

        ``now`` is on the clock of ``time.monotonic``, which stamps connections
        and session activity.
        """
        idle = self.settings.idle_timeout
        startup = self.settings.startup_timeout
        self._log_evictions(now)
        for client in list(self.clients):
            session = client.session
            if session is None:
                if startup > 0 and now - client.connected_at > startup:
                    client.terminate(CONNECTION_FAILURE, "canceling sign-in: it took too long")
            elif (
                idle > 0
                and not (session.busy or client.delivering)
                and now - session.last_activity > idle
            ):
                client.terminate(
                    IDLE_SESSION_TIMEOUT,
                    f"terminating connection: idle for more than {idle:g}s",
                )

    # -- connections before their startup packet ----------------------------------

    def connection_pending(self, client: ClientProtocol) -> None:
        """A new connection; close the oldest pending ones beyond the bound."""
        pending = self.pending
        pending[client] = None
        while len(pending) > self.settings.max_pending_connections:
            oldest = next(iter(pending))
            del pending[oldest]
            self.metrics.pending_evicted += 1
            self._evicted_unlogged += 1
            oldest.terminate(
                TOO_MANY_CONNECTIONS,
                "too many connections have not sent a startup packet; closing the oldest",
            )
        self.metrics.pending_connections = len(pending)
        if self._evicted_unlogged:
            self._log_evictions(time.monotonic())

    def not_pending(self, client: ClientProtocol) -> None:
        """``client`` sent its startup packet, or closed."""
        if client in self.pending:
            del self.pending[client]
            self.metrics.pending_connections = len(self.pending)

    def _log_evictions(self, now: float, *, flush: bool = False) -> None:
        """At most one line per EVICTION_LOG_INTERVAL, with the count since the last."""
        due = flush or now - self._evicted_logged_at >= EVICTION_LOG_INTERVAL
        if self._evicted_unlogged and due:
            log.warning(
                "closed %d connection(s) that had not sent a startup packet: more than "
                "%d were pending (--max-pending-connections)",
                self._evicted_unlogged,
                self.settings.max_pending_connections,
            )
            self._evicted_unlogged = 0
            self._evicted_logged_at = now

    # -- helpers for protocols -----------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short background task, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def admission(self) -> Admission:
        """What a sign-in is judged against right now."""
        return Admission(
            database=self.settings.upstream.database,
            live_sessions=sum(1 for c in self.clients if c.admitted),
            max_connections=self.settings.max_connections,
            draining=self.draining,
            audit_failed=self.audit_failed,
        )

    def issue_cancel_key(self, client: ClientProtocol, pid: int) -> tuple[int, int]:
        """A cancel key for ``client``: ``pid`` and a secret of the proxy's own."""
        key = (pid, _secret_key())
        while key in self.cancel_keys:
            key = (pid, _secret_key())
        self.cancel_keys[key] = client
        return key

    def judge_for(self, identity: Identity) -> Judge:
        """The judge a session of ``identity`` keeps; refuses a subject no policy covers."""
        judge = self.current_judge(identity)
        if not judge.policies:
            raise Refusal(
                INVALID_AUTHORIZATION,
                f"no Steward policy covers subject {identity.subject}: access refused",
            )
        if judge.masker is not None and judge.masker.unavailable is not None:
            raise Refusal(CONNECTION_REJECTED, judge.masker.unavailable)
        return LiveJudge(self, identity)

    def current_judge(self, identity: Identity) -> Judge:
        """The judge of ``identity`` under the running policy set (cached per set).

        A subject no policy covers gets a judge with no policies, which denies
        everything, and is not cached: that would let unknown names grow the cache.
        Nor is a judge whose masking is unavailable (its hash key could not be
        read): the next call reads the key again.
        """
        judge = self.judges.get(identity)
        if judge is None:
            policies = self.policies.policies_for(identity)
            if not policies:
                return self._no_access
            judge = Judge(
                policies,
                max_statements=self.settings.analysis_limits.max_statements,
                masker=self._masker_for(identity, policies),
            )
            if judge.masker is None or judge.masker.unavailable is None:
                self.judges[identity] = judge
        return judge

    def replace_policies(
        self,
        policies: PolicySet,
        *,
        source: str,
        bundle_hash: str | None = None,
        generation: int | None = None,
        target: str | None = None,
    ) -> bool:
        """Run ``policies`` from now on: the one way the policy set changes.

        Call on the event loop (:meth:`replace_policies_threadsafe` from other
        threads). Writes a ``policy.loaded`` audit record, then swaps the set
        and drops every cached verdict; sessions in flight judge their next
        statement under the new set (see :class:`LiveJudge`). A bundle whose
        ``generation`` is older than the running one, or equal with another
        hash, raises :class:`PolicyRefused`; the very same bundle again changes
        nothing and returns False. If the audit record cannot be written the
        proxy fails closed (see :meth:`audit_failure`) and keeps the old set.
        """
        running = self.policy_generation
        if generation is not None and running is not None:
            if generation < running:
                raise PolicyRefused(
                    f"bundle generation {generation} is older than the running {running}"
                )
            if generation == running:
                if bundle_hash == self.bundle_hash:
                    return False
                raise PolicyRefused(f"bundle generation {generation} already runs other content")
        try:
            self.audit.write(
                "policy.loaded", **policy_record(policies, source, bundle_hash, generation, target)
            )
        except Exception as exc:
            self.audit_failure(exc)
            raise
        self.policies = policies
        self.judges = {}
        self.policy_swaps += 1
        self.hash_keys.check(policies)
        self.policy_source = source
        self.policy_generation = generation
        self.bundle_hash = bundle_hash
        self.bundle_target = target or self.bundle_target
        log.info(
            "policy loaded from %s: %d policies, compiled hash %s%s",
            source,
            len(policies.policies),
            policies.compiled_hash[:12],
            f", bundle {target} generation {generation}" if generation is not None else "",
        )
        return True

    def replace_policies_threadsafe(
        self, policies: PolicySet, **kwargs: Any
    ) -> concurrent.futures.Future[bool]:
        """:meth:`replace_policies` on the event loop, from another thread."""
        if self.loop is None:
            raise RuntimeError("the proxy is not running")
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def swap() -> None:
            try:
                done.set_result(self.replace_policies(policies, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(swap)
        return done

    def _masker_for(self, identity: Identity, policies: tuple[Any, ...]) -> Masker | None:
        """Masking for ``identity``; None when no policy in the set masks anything."""
        if not any(p.masking_rule_names or p.detect for p in self.policies.policies):
            return None
        config = MaskingConfig.for_identity(self.policies, policies, identity)
        strategies, unavailable = self.hash_keys.for_config(config)
        masker = Masker(config, strategies, self.catalog.catalog, unavailable=unavailable)
        self.catalog.attach(masker)
        return masker

    async def masking_ready(self, judge: Judge) -> None:
        """Before a session of a masked subject starts: a loaded catalog (or a logged failure)."""
        if judge.masker is not None and judge.masker.config.active:
            await self.catalog.ready()

    def identity_for(self, startup: wire.StartupMessage) -> Identity:
        if self.problems:
            raise Refusal(CONNECTION_REJECTED, "; ".join(self.problems))
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


FD_RESERVE = 64
"""Descriptors kept aside for the listener, audit trail, admin endpoint and cancel requests."""


def raise_open_file_limit(settings: ProxySettings) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; log and return it.

    Warns when the limit is below what the connection bounds may use: each
    session holds two descriptors (client and upstream), each pending
    connection one. Past the limit accept() fails: uvloop then closes new
    connections at once, unanswered and unlogged; asyncio logs it and stops
    accepting for a second. So the bounds should fit under the limit.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d to %d: %s", soft, target, exc)
        else:
            log.info("open file limit raised from %d to %d", soft, target)
            soft = target
    else:
        log.info("open file limit: %d", soft)
    needed = settings.max_pending_connections + 2 * settings.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open file limit %d is below the %d descriptors that --max-connections %d and "
            "--max-pending-connections %d may need: new clients may be closed unanswered",
            soft,
            needed,
            settings.max_connections,
            settings.max_pending_connections,
        )
    return soft


def _secret_key() -> int:
    """A cancel secret of the proxy's own: a random signed 32-bit integer, as PostgreSQL's."""
    return secrets.randbits(32) - (1 << 31)


def policy_record(
    policies: PolicySet,
    source: str,
    bundle_hash: str | None = None,
    generation: int | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """The fields of a ``policy.loaded`` audit record.

    ``policy`` lists the policies, ``fingerprint`` is the compiled hash,
    ``client`` says where the set came from, and for a bundle ``statement``
    names its target, generation and content hash.
    """
    fields: dict[str, Any] = {
        "policy": ",".join(p.key for p in policies.policies),
        "fingerprint": policies.compiled_hash,
        "decision": "allow",
        "client": source,
    }
    if generation is not None:
        fields["statement"] = f"bundle {target} generation {generation} hash {bundle_hash}"
    return fields


def install_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when it is installed, else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# The collector's first generation runs after this many net allocations (700 by
# default): a statement allocates a few dozen objects, so the default collects
# every few statements, for cycles sessions rarely make.
_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once started: keep what start-up built out of every later collection.

    Modules, grammar tables and compiled policies live as long as the process;
    frozen, a full collection no longer walks them. Objects freed by reference
    count still are; a later policy swap is collected as usual.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, older, oldest)
