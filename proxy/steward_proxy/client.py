"""One client connection: startup packet, sign-in, relay, and its end.

:class:`ClientProtocol` answers SSLRequest/GSSENCRequest, relays
CancelRequests, and signs a client in: it names the subject, judges the startup
parameters (:mod:`.startup`: an allow-list, client_encoding and
standard_conforming_strings pinned), checks that a policy covers the subject,
connects and signs in upstream with the proxy's own credentials, then replays
the upstream's parameters to the client with the upstream backend's process id
and a cancel secret of its own. Everything the client sent reaches the log and
refusals through :func:`~steward_proxy.escape.escape`. From then on each chunk
goes through the pure :class:`~steward_proxy.session.Session` and out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING

from steward_proxy import wire
from steward_proxy.admission import Refusal, admit, check_read_only, read_only_settings
from steward_proxy.audit import AuditWriteError
from steward_proxy.auth import AuthFailed, ClientFacts
from steward_proxy.engine import Judge
from steward_proxy.escape import escape
from steward_proxy.masking.rows import MaskJob
from steward_proxy.maskworkers import MaskWorkerError
from steward_proxy.policy import Identity
from steward_proxy.session import Session, SessionEnded
from steward_proxy.sqlstate import (
    ADMIN_SHUTDOWN,
    CANNOT_CONNECT,
    CONNECTION_FAILURE,
    CONNECTION_REJECTED,
    INTERNAL_ERROR,
    PROTOCOL_VIOLATION,
)
from steward_proxy.upstream import UpstreamProtocol, sign_in_upstream

if TYPE_CHECKING:
    from steward_proxy.server import ProxyServer

log = logging.getLogger("steward.proxy")

_MASK_JOBS_IN_FLIGHT = 4
"""A session's runs of rows at masking workers before its upstream reading pauses."""
_OUTBOX_BYTES = 1 << 18
"""Bytes a session holds behind a run at a worker before its upstream reading pauses."""


class ClientProtocol(asyncio.Protocol):
    """One client connection, from the startup packet to the last byte."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn = wire.ServerConnection(max_message_size=server.settings.max_message_size)
        self.session: Session | None = None
        self.upstream: UpstreamProtocol | None = None
        self.peer = "?"
        self.session_id = uuid.uuid4().hex[:16]
        self.cancel_key: tuple[int, int] | None = None  # what the client was given
        self.upstream_key: tuple[int, int] | None = None  # what the upstream gave us
        self.admitted = False  # passed the connection limit; counts against it until closed
        self._login: asyncio.Task[None] | None = None
        self._handshaking = False  # TLS handshake under way: no plaintext may be written
        self._tls_active = False
        self._signing_in: wire.StartupMessage | None = None  # until session.start is audited
        self.connected_at = time.monotonic()
        self._draining = False
        self._closing = False
        self._paused = False  # the client transport's reading is paused
        self._backpressure = False  # the upstream's write buffer is full
        self._client_full = False  # the client's write buffer is full
        self._upstream_paused = False
        # Bytes for the client behind a run of rows at a masking worker, in order.
        self._outbox: deque[bytes | asyncio.Future[bytes]] = deque()
        self._jobs = 0  # masking jobs in the outbox
        self._outbox_bytes = 0  # bytes in the outbox, not counting jobs
        self._lost_upstream: tuple[Exception | None] | None = None  # noticed behind the outbox
        self._held = False  # the session holds client input (Session.stalled)
        self._analysis: asyncio.Future[None] | None = None
        self.auth_method = server.authenticator.method
        self._input: asyncio.Future[None] | None = None  # awaiting an authentication message
        self._negotiated = False  # NegotiateProtocolVersion sent

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        self.server.clients.add(self)
        self.server.connection_pending(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            self.server.metrics.bytes_from_client += len(data)
            try:
                to_upstream = session.feed_client(data)
            except Exception as exc:
                self._relay_failed(exc, "client")
                return
            self._to_upstream(session, to_upstream)
            return
        if self._login is not None:
            self.conn.receive_data(data)  # held until sign-in completes
            if self.conn.pending > self.server.settings.max_message_size:
                self.terminate(PROTOCOL_VIOLATION, "too much data before sign-in")
            elif self._input is not None and not self._input.done():
                self._input.set_result(None)
            return
        self.conn.receive_data(data)
        self._startup_events()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is None and not self._closing:
            pending = self.conn.pending
            log.info(
                "client %s: disconnected before sign-in%s",
                self.peer,
                f" with {pending} bytes of an incomplete message" if pending else "",
            )
        self._close("client disconnected")

    def pause_writing(self) -> None:
        self._client_full = True
        self._update_upstream_reading()

    def resume_writing(self) -> None:
        self._client_full = False
        self._update_upstream_reading()

    @property
    def delivering(self) -> bool:
        """Rows for the client are still at masking workers (the session is not idle)."""
        return bool(self._outbox)

    def _update_upstream_reading(self) -> None:
        pause = (
            self._client_full
            or self._jobs >= _MASK_JOBS_IN_FLIGHT
            or self._outbox_bytes >= _OUTBOX_BYTES
        )
        upstream = self.upstream
        if upstream and upstream.transport and pause != self._upstream_paused:
            self._upstream_paused = pause
            if pause:
                upstream.transport.pause_reading()
            else:
                upstream.transport.resume_reading()

    def pause_reading(self) -> None:
        self._backpressure = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._backpressure = False
        self._update_reading()

    def _update_reading(self) -> None:
        pause = self._backpressure or self._held
        if self.transport and pause != self._paused:
            self._paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- startup phase -------------------------------------------------------------

    def _startup_events(self) -> None:
        try:
            while True:
                event = self.conn.next_event()
                if event is wire.NEED_DATA or event is wire.CONNECTION_CLOSED:
                    return
                if isinstance(event, wire.SSLRequest | wire.GSSENCRequest):
                    if self._tls_active:
                        raise wire.RemoteProtocolError("SSLRequest after TLS was established")
                    accept = isinstance(event, wire.SSLRequest) and self.server.tls is not None
                    self.transport.write(self.conn.send(wire.SSLResponse(accept)))  # type: ignore[union-attr]
                    if accept:
                        self._login = asyncio.ensure_future(self._start_tls())
                        return
                elif isinstance(event, wire.CancelRequest):
                    self.server.spawn(self._cancel(event))
                    self._close("cancel request")
                    return
                elif isinstance(event, wire.StartupMessage):
                    self.server.not_pending(self)
                    self._signing_in = event
                    self._login = asyncio.ensure_future(self._sign_in(event))
                    return
        except wire.ProtocolError as exc:
            log.warning("client %s: protocol error before sign-in: %s", self.peer, exc.message)
            self.server.metrics.error("protocol")
            self.terminate(exc.sqlstate, exc.message)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        self._handshaking = True
        try:
            self.transport = await loop.start_tls(  # type: ignore[assignment]
                self.transport,  # type: ignore[arg-type]
                self,
                self.server.tls,  # type: ignore[arg-type]
                server_side=True,
            )
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.warning("client %s: TLS handshake failed: %s", self.peer, exc)
            self._close("TLS handshake failed")
            return
        finally:
            self._handshaking = False
        self._tls_active = True
        self._login = None
        self._startup_events()

    async def _cancel(self, request: wire.CancelRequest) -> None:
        target = self.server.cancel_keys.get((request.process_id, request.secret_key))
        if target is None or target.upstream_key is None:
            log.info("client %s: cancel request for an unknown session ignored", self.peer)
            return
        upstream = self.server.settings.upstream
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(upstream.host, upstream.port),
                self.server.settings.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning("cancel request could not reach the upstream: %s", exc)
            return
        try:
            pid, key = target.upstream_key
            writer.write(wire.encode(wire.CancelRequest(pid, key)))
            await writer.drain()
            log.info("session %s: cancel request relayed upstream", target.session_id)
        except OSError as exc:
            log.warning("cancel request could not reach the upstream: %s", exc)
        finally:
            writer.close()

    async def _sign_in(self, startup: wire.StartupMessage) -> None:
        server = self.server
        settings = server.settings
        identity: Identity | None = None
        try:
            upstream_settings = admit(startup, server.admission())
            self.admitted = True
            if server.problems:  # the configuration is incomplete (no upstream credentials)
                raise Refusal(CONNECTION_REJECTED, "; ".join(server.problems))
            identity = await self._authenticate(startup)
            judge = server.judge_for(identity)
            await server.masking_ready(judge)
            read_only = judge.read_only  # spec.readOnly: PostgreSQL enforces it
            if read_only:
                upstream_settings = read_only_settings(upstream_settings)
            self.upstream = UpstreamProtocol(self)
            try:
                self.upstream_key, self._upstream_params = await sign_in_upstream(
                    self.upstream,
                    settings.upstream,
                    upstream_settings,
                    timeout=settings.connect_timeout,
                    session=self.session_id,
                )
            except Refusal as refusal:
                if refusal.sqlstate in (CANNOT_CONNECT, CONNECTION_REJECTED):
                    server.upstream_check.observed(False, refusal.message)
                raise
            server.upstream_check.observed(True)
            if read_only:
                check_read_only(_reported(self._upstream_params))
        except Refusal as refusal:
            if refusal.detail:
                log.warning("client %s: %s", self.peer, refusal.detail)
            if refusal.kind:
                server.metrics.error(refusal.kind)
            server.metrics.sign_in_failed(refusal)
            self._refuse_sign_in(identity, startup, refusal)
            return
        except wire.ProtocolError as exc:
            log.warning("client %s: protocol error during sign-in: %s", self.peer, exc.message)
            server.metrics.error("protocol")
            refusal = Refusal(exc.sqlstate, exc.message)
            server.metrics.sign_in_failed(refusal)
            self._refuse_sign_in(identity, startup, refusal)
            return
        except Exception as exc:
            log.error("session %s: sign-in failed: %s", self.session_id, escape(repr(exc)))
            self._refuse_sign_in(identity, startup, Refusal(INTERNAL_ERROR, "sign-in failed"))
            return
        if self._closing:
            return
        self._ready(identity, startup, judge)

    async def _authenticate(self, startup: wire.StartupMessage) -> Identity:
        """Run the listener's authentication exchange; the proven identity or AuthFailed."""
        self._negotiate(startup)
        transport = self.transport
        assert transport is not None
        facts = ClientFacts(
            user=startup.user or "",
            tls=self._tls_active,
            peer_certificate=transport.get_extra_info("peercert") if self._tls_active else None,
            now=time.monotonic(),
        )
        exchange = self.server.authenticator.exchange(facts)
        step = exchange.begin()
        while True:
            if step.send:
                transport.write(b"".join(self.conn.send(message) for message in step.send))
            if step.identity is not None:
                return step.identity
            if step.fetch_keys:
                keys = self.server.settings.key_source
                if keys is not None:
                    await keys.refresh()
                step = exchange.resume()
            else:
                step = exchange.receive(await self._client_message())

    async def _client_message(self) -> wire.Message:
        """The client's next message during authentication."""
        while True:
            event = self.conn.next_event()
            if event is wire.CONNECTION_CLOSED:
                raise AuthFailed("the client closed the connection", "protocol")
            if event is not wire.NEED_DATA:
                return event  # type: ignore[return-value]
            self._input = asyncio.get_running_loop().create_future()
            try:
                await self._input
            finally:
                self._input = None

    def _negotiate(self, startup: wire.StartupMessage) -> None:
        """Answer a newer minor version or ``_pq_`` options first, as PostgreSQL does."""
        minor = startup.protocol_version & 0xFFFF
        unknown = tuple(k for k in startup.parameters if k.startswith("_pq_."))
        if (minor > 0 or unknown) and not self._negotiated:
            self._negotiated = True
            message = wire.NegotiateProtocolVersion(0, unknown)
            self.transport.write(self.conn.send(message))  # type: ignore[union-attr]

    def _refuse_sign_in(
        self, identity: Identity | None, startup: wire.StartupMessage, refusal: Refusal
    ) -> None:
        subject = escape(identity.subject if identity else f"user:{startup.user}")
        log.info("client %s: sign-in refused for %s: %s", self.peer, subject, refusal.message)
        self.server.metrics.sessions["refused"] += 1
        try:
            self._audit_failed_sign_in(identity, "deny", f"{refusal.sqlstate}: {refusal.message}")
        finally:
            self.terminate(refusal.sqlstate, refusal.message, hint=refusal.hint)

    def _audit_failed_sign_in(
        self, identity: Identity | None, decision: str | None, error: str
    ) -> None:
        """The session.start record of a sign-in that did not become a session."""
        startup, self._signing_in = self._signing_in, None
        if startup is None:
            return
        if identity is None:
            with contextlib.suppress(Refusal):
                identity = self.server.identity_for(startup)
        try:
            self.server.audit.write(
                "session.start",
                session=self.session_id,
                identity=escape(identity.subject if identity else f"user:{startup.user}"),
                groups=[escape(group) for group in identity.groups] if identity else [],
                database=escape(startup.database or ""),
                client=self.peer,
                command=self.auth_method,
                decision=decision,
                error=error,
            )
        except AuditWriteError as exc:
            self.server.audit_failure(exc)

    def _ready(self, identity: Identity, startup: wire.StartupMessage, judge: Judge) -> None:
        server = self.server
        out = [self.conn.send(wire.AuthenticationOk())]
        for message in self._upstream_params:
            out.append(self.conn.send(message))
        # The client sees the upstream backend's own pid (so NotificationResponse,
        # pg_stat_activity and pg_terminate_backend agree) and a secret of the proxy's.
        backend_pid = self.upstream_key[0] if self.upstream_key else None
        pid = backend_pid if backend_pid is not None else secrets.randbits(31)
        key = self.cancel_key = server.issue_cancel_key(self, pid)
        out.append(self.conn.send(wire.BackendKeyData(*key)))
        out.append(self.conn.send(wire.ReadyForQuery("I")))
        session = Session(
            session_id=self.session_id,
            identity=identity,
            database=server.settings.upstream.database,
            client=self.peer,
            application=_application_name(self._upstream_params),
            backend_pid=backend_pid,
            judge=judge,
            max_message_size=server.settings.max_message_size,
            limits=server.session_limits,
            parameters={
                m.name: m.value
                for m in self._upstream_params
                if isinstance(m, wire.ParameterStatus)
            },
            reviews=server.reviews,
        )
        self._signing_in = None
        try:
            server.audit.write(
                "session.start", **session.who(), command=self.auth_method, decision="allow"
            )
        except AuditWriteError as exc:
            server.audit_failure(exc)
            self.terminate(CONNECTION_REJECTED, "the audit trail cannot be written")
            return
        self.session = session
        server.metrics.sessions["accepted"] += 1
        server.metrics.sessions_active += 1
        log.info(
            "session %s: %s signed in from %s (%s)",
            self.session_id,
            identity.subject,
            self.peer,
            self.auth_method,
        )
        self.transport.write(b"".join(out))  # type: ignore[union-attr]
        upstream = self.upstream
        assert upstream is not None
        upstream.relaying = True
        left_over_up = upstream.conn.take_pending()
        left_over_client = self.conn.take_pending()
        self._login = None
        if left_over_up:
            self.from_upstream(left_over_up)
        if upstream.lost:
            self.upstream_lost(None)
        elif left_over_client:
            self.data_received(left_over_client)

    # -- relay -----------------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        session = self.session
        if session is None or self._closing:
            return
        self.server.metrics.bytes_from_upstream += len(data)
        session.last_activity = session.clock()
        try:
            out = session.feed_upstream(data)
        except Exception as exc:
            self._relay_failed(exc, "upstream")
            return
        if not self._apply(session):
            return
        if out.__class__ is list or self._outbox:
            self._queue_out(out)
        elif out:
            self.transport.write(out)  # type: ignore[union-attr, arg-type]
        if session.resumable:
            self._resume()
        if self._draining and not session.running and not self._outbox:
            self.terminate(ADMIN_SHUTDOWN, "terminating connection: proxy shut down")

    def _queue_out(self, out: bytes | list[bytes | wire.Deferred]) -> None:
        """Send ``out`` behind what the outbox holds, runs of rows once masked."""
        pool = self.server.mask_pool
        outbox = self._outbox
        for piece in out if isinstance(out, list) else (out,):
            if isinstance(piece, MaskJob):
                assert pool is not None
                metrics = self.server.metrics
                metrics.mask_jobs += 1
                metrics.mask_job_bytes += len(piece.rows)
                job = asyncio.ensure_future(pool.mask(piece))
                job.add_done_callback(self._flush_out)
                outbox.append(job)
                self._jobs += 1
            elif piece:
                assert isinstance(piece, bytes)
                outbox.append(piece)
                self._outbox_bytes += len(piece)
        self._flush_out()

    def _flush_out(self, done: asyncio.Future[bytes] | None = None) -> None:
        """Write the outbox up to its first job not answered yet."""
        if self._closing:
            if done is not None and not done.cancelled():
                done.exception()  # answered after the session ended: dropped
            return
        outbox = self._outbox
        ready: list[bytes] = []
        failed: BaseException | None = None
        while outbox:
            head = outbox[0]
            if isinstance(head, bytes):
                ready.append(outbox.popleft())
                self._outbox_bytes -= len(head)
                continue
            if not head.done():
                break
            outbox.popleft()
            self._jobs -= 1
            failed = head.exception() if not head.cancelled() else MaskWorkerError("cancelled")
            if failed is not None:
                break
            ready.append(head.result())
        if ready:
            self.transport.write(b"".join(ready))  # type: ignore[union-attr]
            if self.session is not None:  # idle from when the client has its answers
                self.session.last_activity = self.session.clock()
        if failed is not None:
            self._mask_failed(failed)
            return
        self._update_upstream_reading()
        if outbox:
            return
        if self._lost_upstream is not None:
            self.upstream_lost(self._lost_upstream[0])
        elif self._draining and self.session is not None and not self.session.running:
            self.terminate(ADMIN_SHUTDOWN, "terminating connection: proxy shut down")

    def _drop_outbox(self) -> None:
        """Forget what waits for the client; its jobs not at a worker yet never go."""
        for piece in self._outbox:
            if not isinstance(piece, bytes):
                piece.cancel()
        self._outbox.clear()
        self._jobs = self._outbox_bytes = 0

    def _mask_failed(self, exc: BaseException) -> None:
        self._drop_outbox()
        if isinstance(exc, Exception) and not isinstance(exc, MaskWorkerError):
            self._relay_failed(exc, "upstream")
            return
        log.warning("session %s: ended: %s", self.session_id, exc)
        self.server.metrics.error("mask_worker")
        self.terminate(
            INTERNAL_ERROR,
            "terminating connection: masking its results failed",
            reason=f"masking worker: {exc}",
        )

    def _apply(self, session: Session) -> bool:
        """Write the session's audit records and count its metrics, before any bytes move.

        False (and the session ended) when the records cannot be written: what
        was not recorded must not run, nor its answer be delivered.
        """
        server = self.server
        effects = session.take_effects()
        if effects is not None:
            records, events = effects
            metrics = server.metrics
            for command, decision, seconds in events:
                metrics.statement(command, decision, seconds)
            if records:
                try:
                    server.audit.write_many(records)
                except AuditWriteError as exc:
                    server.audit_failure(exc)
                    self.terminate(CONNECTION_REJECTED, "the audit trail cannot be written")
                    return False
        if server.reviews.changed and not server.review_desk.save():
            # An approval used must be stored as used before its statement runs.
            self.terminate(CONNECTION_REJECTED, "the review store cannot be written")
            return False
        return True

    def _stalled(self, session: Session) -> None:
        """The session holds client input: stop reading, and do what it waits for."""
        self._held = True
        self._update_reading()
        stall = session.stalled
        if stall == "analysis" and self._analysis is None:
            sql = session.pending_analysis
            assert sql is not None
            self._analysis = asyncio.ensure_future(self._analyse(session, sql))
        elif stall == "yield":
            asyncio.get_running_loop().call_soon(self._resume)

    async def _analyse(self, session: Session, sql: str) -> None:
        result = await self.server.analyzer.analyze(sql)
        self._analysis = None
        if self._closing or self.session is not session:
            return
        session.analysed(sql, result)
        self._resume()

    def _resume(self) -> None:
        """Go on with client input the session held."""
        session = self.session
        if session is None or self._closing:
            return
        try:
            to_upstream = session.resume()
        except Exception as exc:
            self._relay_failed(exc, "client")
            return
        self._to_upstream(session, to_upstream)

    def _to_upstream(self, session: Session, data: bytes) -> None:
        """Record, then forward what the session let through; follow its hold on input."""
        if not self._apply(session):
            return
        if data:
            self.upstream.transport.write(data)  # type: ignore[union-attr]
        if session.stalled:
            self._stalled(session)
        elif self._held:
            self._held = False
            self._update_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self._closing:
            return
        if self._outbox:
            self._lost_upstream = (exc,)  # what the upstream sent before goes first
            return
        if self.session is not None and self.session.terminated:
            self._close("client disconnected")
            return
        fatal = self.session.upstream_fatal if self.session is not None else None
        if fatal is not None:
            # The client already has PostgreSQL's own FATAL (57P01 after
            # pg_terminate_backend or a shutdown) and gets no second one.
            if not (len(fatal) == 5 and fatal.isascii() and fatal.isalnum()):
                fatal = "invalid"
            reason = f"the upstream ended the session (SQLSTATE {fatal})"
            log.info("session %s: %s", self.session_id, reason)
            self._close(reason)
            return
        log.warning("session %s: upstream connection lost", self.session_id)
        self.server.metrics.error("upstream_lost")
        self.terminate(CONNECTION_FAILURE, "upstream connection lost", reason="upstream lost")

    def _relay_failed(self, exc: Exception, side: str) -> None:
        if isinstance(exc, SessionEnded):
            log.warning("session %s: ended: %s", self.session_id, exc.reason)
            self.server.metrics.error(exc.kind)
            self.terminate(exc.sqlstate, exc.message, reason=exc.reason)
        elif isinstance(exc, wire.ProtocolError):
            log.warning(
                "session %s: protocol error from %s: %s", self.session_id, side, exc.message
            )
            self.server.metrics.error("protocol")
            self.terminate(exc.sqlstate, exc.message, reason=f"protocol error from {side}")
        elif isinstance(exc, AuditWriteError):
            self.server.audit_failure(exc)
            self.terminate(CONNECTION_REJECTED, "the audit trail cannot be written")
        else:
            log.exception("session %s: internal error", self.session_id)
            self.server.metrics.error("internal")
            self.terminate(INTERNAL_ERROR, "internal error in the proxy")

    # -- ending ------------------------------------------------------------------------

    def drain(self) -> None:
        """Close once no statement is running (graceful shutdown); end any sign-in now."""
        self._draining = True
        session = self.session
        if session is None:
            self.terminate(ADMIN_SHUTDOWN, "the proxy is shutting down")
        elif not session.running and not self._outbox:
            self.terminate(ADMIN_SHUTDOWN, "terminating connection: proxy shut down")

    def terminate(
        self, sqlstate: str, message: str, reason: str | None = None, *, hint: str | None = None
    ) -> None:
        self._write_fatal(sqlstate, message, hint)
        self._close(reason or message)

    def _write_fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._handshaking:
            error = wire.ErrorResponse.build(sqlstate, message, severity="FATAL", hint=hint)
            transport.write(wire.encode(error))

    def _close(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        server = self.server
        server.clients.discard(self)
        server.not_pending(self)
        if self.cancel_key is not None:
            server.cancel_keys.pop(self.cancel_key, None)
        if self._login is not None and not self._login.done():
            self._login.cancel()
        if self._analysis is not None and not self._analysis.done():
            self._analysis.cancel()
        self._drop_outbox()
        if self._signing_in is not None:
            self._audit_failed_sign_in(None, None, f"sign-in abandoned: {reason}")
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        if self.transport is not None:
            self.transport.close()
        session = self.session
        if session is not None:
            server.metrics.sessions_active -= 1
            session.abandon(reason)
            for command, decision, seconds in session.take_metrics():
                server.metrics.statement(command, decision, seconds)
            end = {
                **session.who(),
                "duration_ms": round((time.monotonic() - session.started) * 1000, 3),
                "error": None if reason == "client disconnected" else reason,
            }
            try:
                server.audit.write_many([*session.take_records(), ("session.end", end)])
            except AuditWriteError as exc:
                server.audit_failure(exc)
            log.info("session %s: closed (%s)", self.session_id, reason)


_NAMEDATALEN = 64  # PostgreSQL's limit on names, terminating NUL included


def _application_name(parameters: list[wire.Message]) -> str | None:
    """The application_name the upstream reports for the session, as its own logs show it.

    PostgreSQL keeps at most 63 bytes of printable ASCII and escapes the rest
    as ``\\xNN``; the same is done here in case an upstream does not.
    """
    for message in parameters:
        if isinstance(message, wire.ParameterStatus) and message.name == "application_name":
            raw = message.value.encode("utf-8", "surrogateescape")[: _NAMEDATALEN - 1]
            return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw)
    return None


def _reported(messages: list[wire.Message]) -> dict[str, str]:
    """The parameters the upstream reported at sign-in."""
    return {m.name: m.value for m in messages if isinstance(m, wire.ParameterStatus)}
