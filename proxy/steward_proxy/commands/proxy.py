"""``steward proxy``: run the governed PostgreSQL proxy.

Policy comes from YAML files (``--policy``) or from a signed bundle
(``--bundle``, what the operator's sidecar injection gives), which is then
reloaded when the file changes and may be pushed to ``PUT /policy``.

Upstream credentials: the user from the URL or ``STEWARD_UPSTREAM_USER``, the
password from the URL, ``--upstream-password-file`` or
``STEWARD_UPSTREAM_PASSWORD``. An injected sidecar gets both variables from a
Secret and ``STEWARD_UPSTREAM_SECRET`` naming it; when that Secret does not
give them, the proxy runs but is not ready and refuses every sign-in, saying
why in its log, in ``/readyz`` and to clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from steward_proxy import wire
from steward_proxy.auth import setup as auth_setup
from steward_proxy.hashkeys import DEFAULT_HASH_KEY_DIR

log = logging.getLogger("steward.proxy")

DEFAULT_AUDIT_MAX_BYTES = 100 << 20
"""Audit files rotate at 100 MiB unless told otherwise."""


class AuditWriterLike(Protocol):
    def sync(self) -> None: ...

    def close(self) -> None: ...


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if non_negative_int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="run the governed PostgreSQL proxy",
        description="Accept PostgreSQL clients, govern every statement, relay to the upstream.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML mapping of these flags' long names to values (listen: 0.0.0.0:6432, "
        "policy: [a.yaml, b/]); flags on the command line win",
    )
    p.add_argument(
        "--listen",
        type=host_port,
        default="127.0.0.1:6432",
        metavar="HOST:PORT",
        help="where clients connect",
    )
    p.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="postgresql://USER[:PASS]@HOST:PORT/DB[?sslmode=...]",
    )
    p.add_argument(
        "--upstream-password-file",
        metavar="FILE",
        help="the upstream password (else the URL's, or STEWARD_UPSTREAM_PASSWORD)",
    )
    p.add_argument(
        "--policy",
        action="append",
        metavar="PATH",
        help="policy file or directory (repeatable); or give --bundle",
    )
    p.add_argument(
        "--bundle",
        metavar="FILE",
        help="signed policy bundle to run; reloaded when the file changes, and "
        "accepted by PUT /policy on the admin endpoint",
    )
    p.add_argument(
        "--bundle-public-key",
        metavar="FILE",
        help="Ed25519 key that bundles must be signed with (PEM or base64); "
        "default: the STEWARD_BUNDLE_PUBLIC_KEY variable",
    )
    p.add_argument(
        "--bundle-target",
        metavar="NAMESPACE/POLICY",
        help="the only target whose bundles are taken (default: the first bundle's)",
    )
    p.add_argument(
        "--bundle-poll",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often the bundle file is checked for a change (default: %(default)s)",
    )
    p.add_argument(
        "--policy-poll",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often the --policy files are checked for a change; 0: only on SIGHUP "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="bearer token that /reviews and PUT /policy of YAML need; without it they "
        "answer 401 (default: none)",
    )
    p.add_argument(
        "--review-store",
        metavar="FILE",
        help="SQLite file that keeps reviews across restarts "
        "(default: steward-reviews.sqlite3 next to --audit-log)",
    )
    p.add_argument("--identity", metavar="SUBJECT", help="fixed subject (sidecar mode)")
    p.add_argument(
        "--identity-group",
        action="append",
        default=[],
        metavar="NAME",
        help="a group of the fixed subject (repeat for several)",
    )
    p.add_argument("--audit-log", default="steward-audit.log", metavar="FILE", help="audit trail")
    p.add_argument(
        "--audit-fsync",
        choices=("always", "interval", "never"),
        default="interval",
        help="when audit records are forced to disk (interval: at least once a second)",
    )
    p.add_argument(
        "--audit-max-bytes",
        type=int,
        default=DEFAULT_AUDIT_MAX_BYTES,
        metavar="N",
        help="rotate the audit trail at N bytes (FILE.1, FILE.2, ...; 0: never)",
    )
    p.add_argument("--admin", type=host_port, metavar="HOST:PORT", help="health and metrics")
    p.add_argument(
        "--hash-key-file",
        metavar="FILE",
        help="key of the hash masking strategy (HMAC-SHA256, at least 16 bytes) for policies "
        "that name no spec.masking.hashKeySecretRef; without it a random key per process, so "
        "pseudonyms change on restart (default: none)",
    )
    p.add_argument(
        "--hash-key-dir",
        default=DEFAULT_HASH_KEY_DIR,
        metavar="DIR",
        help="where the Secret keys policies name in spec.masking.hashKeySecretRef are "
        "found, as DIR/NAMESPACE/SECRET/KEY (a policy file without metadata.namespace is "
        "in default) (default: %(default)s)",
    )
    p.add_argument(
        "--catalog-ttl",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="reload the catalog masking resolves columns with this often, besides after "
        "DDL seen through the proxy; 0 disables (default: %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=100,
        metavar="N",
        help="sessions open or signing in; more are refused (53300)",
    )
    p.add_argument(
        "--max-pending-connections",
        type=positive_int,
        default=256,
        metavar="N",
        help="connections that have not sent their startup packet yet; "
        "beyond N the oldest is closed",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="close sessions idle outside a transaction this long (0: never)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time a client has to sign in (0: no limit)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running statements may finish",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="upstream connect and sign-in",
    )
    p.add_argument(
        "--max-message-size",
        type=int,
        default=wire.DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="a protocol message declared longer is refused before it is read",
    )
    p.add_argument(
        "--max-statement-bytes",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="longer statement text is refused (54000) without analysis",
    )
    p.add_argument(
        "--max-statements",
        type=int,
        default=1000,
        metavar="N",
        help="a query string with more statements is refused (54000)",
    )
    p.add_argument(
        "--analysis-workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that analyse large statements off the event loop",
    )
    p.add_argument(
        "--mask-workers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="processes that mask long results (runs of rows of 16 KiB or more masked by "
        "column rules alone) off the event loop, on other cores; 0: masked in the proxy's "
        "own process",
    )
    p.add_argument(
        "--analysis-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time one off-loop analysis may take; over it the statement is refused (54000)",
    )
    p.add_argument(
        "--analysis-memory",
        type=int,
        default=1024,
        metavar="MIB",
        help="address space of an analysis worker; over it the statement is refused (54000)",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="certificate for TLS toward clients")
    p.add_argument("--tls-key", metavar="FILE", help="its private key")
    p.add_argument(
        "--readiness-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often /readyz's upstream sign-in check runs and hash masking keys that "
        "could not be read are read again (0: never; /readyz then does not check the "
        "upstream)",
    )
    auth_setup.add_arguments(p)
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="least severe log lines written",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="log lines as text, or as one JSON object each",
    )
    p.set_defaults(func=run)


def configure_logging(level: str, format: str = "text") -> None:
    from steward_proxy.logformat import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def upstream_password(args: argparse.Namespace) -> str | None:
    if args.upstream_password_file:
        return Path(args.upstream_password_file).read_text().rstrip("\n")
    return os.environ.get("STEWARD_UPSTREAM_PASSWORD")


MISSING_USER = "steward-credentials-missing"


def upstream_credentials(url: str, password: str | None) -> tuple[str, list[str]]:
    """The upstream URL with ``STEWARD_UPSTREAM_USER`` filled in, and what is missing.

    When ``STEWARD_UPSTREAM_SECRET`` names the Secret the credentials should
    come from and it gave no user or no password, the problems say so; the URL
    then carries a placeholder user that is never used, as no sign-in is
    allowed while there are problems.
    """
    user = os.environ.get("STEWARD_UPSTREAM_USER")
    secret = os.environ.get("STEWARD_UPSTREAM_SECRET")
    parts = urlsplit(url)
    problems = []
    if not user and not parts.username and secret:
        problems.append(
            f"upstream credentials missing: Secret {secret} gave no user "
            "(STEWARD_UPSTREAM_USER is not set)"
        )
        user = MISSING_USER
    if secret and password is None and not parts.password:
        problems.append(
            f"upstream credentials missing: Secret {secret} gave no password "
            "(STEWARD_UPSTREAM_PASSWORD is not set)"
        )
    if user:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = quote(user, safe="") + (f":{parts.password}" if parts.password else "")
        netloc += f"@{host}" + (f":{parts.port}" if parts.port else "")
        url = urlunsplit(parts._replace(netloc=netloc))
    return url, problems


def run(args: argparse.Namespace) -> int:
    from steward_proxy.admin import AdminServer
    from steward_proxy.adminapi import AdminApi, read_token
    from steward_proxy.audit import AuditWriteError, AuditWriter
    from steward_proxy.auth import AuthConfigError
    from steward_proxy.hashkeys import HashKeyError, read_key
    from steward_proxy.metrics import MeteredAudit, ProxyMetrics
    from steward_proxy.policy import PolicyError, load_policy_set
    from steward_proxy.policy.bundle import BundleError, load_public_key, verify
    from steward_proxy.policyfiles import PolicyFiles, files_state
    from steward_proxy.reload import BundleUpdater, read_bundle_file
    from steward_proxy.reviewdesk import STORE_NAME, ReviewStoreError, SQLiteReviewStore
    from steward_proxy.server import (
        ProxyServer,
        ProxySettings,
        install_uvloop,
        raise_open_file_limit,
        settle_heap,
    )
    from steward_proxy.session import AnalysisLimits
    from steward_proxy.summary import startup_line
    from steward_proxy.upstream import UpstreamTarget

    configure_logging(args.log_level, args.log_format)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("steward proxy: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if bool(args.policy) == bool(args.bundle):
        print("steward proxy: give either --policy or --bundle", file=sys.stderr)
        return 2
    token = None
    if args.admin_token_file:
        try:
            token = read_token(Path(args.admin_token_file).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"steward proxy: no usable admin token: {exc}", file=sys.stderr)
            return 2
    try:
        password = upstream_password(args)
        url, problems = upstream_credentials(args.upstream, password)
        target = UpstreamTarget.from_url(url, password=password)
    except (ValueError, OSError) as exc:
        print(f"steward proxy: bad upstream: {exc}", file=sys.stderr)
        return 2
    try:
        auth = auth_setup.build_authenticator(args)
    except AuthConfigError as exc:
        print(f"steward proxy: {exc}; refusing to start", file=sys.stderr)
        return 2
    if auth.warning:
        log.warning("%s", auth.warning)
    bundle = None
    if args.bundle:
        try:
            key = load_public_key(
                Path(args.bundle_public_key).read_bytes()
                if args.bundle_public_key
                else os.environ.get("STEWARD_BUNDLE_PUBLIC_KEY", "")
            )
        except (OSError, ValueError) as exc:
            print(f"steward proxy: no usable bundle public key: {exc}", file=sys.stderr)
            return 2
        try:
            bundle = verify(read_bundle_file(Path(args.bundle)), key, target=args.bundle_target)
        except (OSError, BundleError) as exc:
            print(f"steward proxy: bundle {args.bundle} refused: {exc}", file=sys.stderr)
            return 2
        policies = bundle.policies
    else:
        seen = files_state(args.policy)  # before reading: a change meanwhile is seen later
        try:
            policies = load_policy_set(args.policy)
        except PolicyError as exc:
            print("steward proxy: policy does not load; refusing to start:", file=sys.stderr)
            for error in exc.errors:
                print(f"  {error}", file=sys.stderr)
            return 2
    hash_key = None
    if args.hash_key_file:
        try:
            hash_key = read_key(args.hash_key_file)
        except HashKeyError as exc:
            print(f"steward proxy: --hash-key-file: {exc}", file=sys.stderr)
            return 2
    settings = ProxySettings(
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        upstream=target,
        identity=args.identity,
        identity_groups=tuple(args.identity_group),
        max_connections=args.max_connections,
        max_pending_connections=args.max_pending_connections,
        idle_timeout=args.idle_timeout,
        startup_timeout=args.startup_timeout,
        max_message_size=args.max_message_size,
        connect_timeout=args.connect_timeout,
        shutdown_timeout=args.shutdown_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        analysis_limits=AnalysisLimits(
            max_statement_bytes=args.max_statement_bytes, max_statements=args.max_statements
        ),
        analysis_workers=args.analysis_workers,
        mask_workers=args.mask_workers,
        analysis_timeout=args.analysis_timeout,
        analysis_memory=args.analysis_memory << 20,
        hash_key=hash_key,
        hash_key_dir=args.hash_key_dir,
        catalog_ttl=args.catalog_ttl,
        authenticator=auth.authenticator,
        key_source=auth.keys,
        tls_client_ca=args.tls_client_ca,
        readiness_interval=args.readiness_interval,
    )
    raise_open_file_limit(settings)
    try:
        audit = AuditWriter(args.audit_log, fsync=args.audit_fsync, max_bytes=args.audit_max_bytes)
    except Exception as exc:  # the writer's message names the file and the problem
        print(
            f"steward proxy: {exc}; refusing to start (fix the file or its directory, "
            "or point --audit-log elsewhere)",
            file=sys.stderr,
        )
        return 2
    metrics = ProxyMetrics()
    server = ProxyServer(settings, policies, MeteredAudit(audit, metrics), metrics)
    review_store_path = args.review_store or str(Path(args.audit_log).parent / STORE_NAME)
    try:
        review_store = SQLiteReviewStore(review_store_path)
        kept = server.review_desk.attach(review_store)
    except ReviewStoreError as exc:
        print(f"steward proxy: {exc} (see --review-store)", file=sys.stderr)
        audit.close()
        return 2
    log.info("review store %s: %d reviews", review_store_path, kept)
    server.problems.extend(problems)
    for problem in problems:
        log.error("%s: not ready, every sign-in is refused", problem)
    updater = None
    files = None
    if bundle is None:
        files = PolicyFiles(server, args.policy, args.policy_poll, seen=seen)
    try:
        if bundle is not None:
            updater = BundleUpdater(server, key, args.bundle_target or bundle.target)
            updater.install(bundle, f"file {args.bundle}")
        else:
            server.replace_policies(policies, source="files " + ",".join(args.policy))
    except AuditWriteError as exc:
        print(f"steward proxy: cannot write the audit trail: {exc}", file=sys.stderr)
        return 2
    admin = None
    if args.admin:
        try:
            admin = AdminServer(args.admin, server, updater, AdminApi(server, token, files))
        except OSError as exc:
            print(
                f"steward proxy: cannot listen on {args.admin[0]}:{args.admin[1]}: {exc}",
                file=sys.stderr,
            )
            audit.close()
            review_store.close()
            return 2
        admin.start()

    async def main() -> None:
        # Handlers first: a SIGHUP sent as soon as the port listens must reload, not kill.
        if updater is not None:
            _on_sighup(server, lambda: updater.offer_file(Path(args.bundle)))
        if files is not None:
            _on_sighup(server, lambda: files.reload("SIGHUP"))
        await server.start()
        settle_heap()
        log.info(
            "%s",
            startup_line(
                listen=f"{settings.listen_host}:{settings.listen_port}",
                admin=f"{admin.address[0]}:{admin.address[1]}" if admin else None,
                upstream=target.redacted(),
                authentication=server.authenticator.describe(),
                policies=server.policies,
            ),
        )
        background = [asyncio.create_task(_sync_audit(audit, server.audit_failure))]
        if updater is not None:
            background.append(
                asyncio.create_task(updater.watch(Path(args.bundle), args.bundle_poll))
            )
        if files is not None and args.policy_poll > 0:
            background.append(asyncio.create_task(files.watch()))
        try:
            await server.serve()
        finally:
            for task in background:
                task.cancel()

    loop_factory = install_uvloop()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    except OSError as exc:
        print(
            f"steward proxy: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}",
            file=sys.stderr,
        )
        return 2
    finally:
        if admin:
            admin.stop()
        review_store.close()
        closed = _close_audit(audit)
    log.info("stopped")
    return 0 if closed else 1


def _on_sighup(server: Any, reload: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """SIGHUP loads the policy again (where the platform has signals)."""
    import signal

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(reload()))


def _close_audit(audit: AuditWriterLike) -> bool:
    """Close the trail; False (and a message) when its last records may not be on disk."""
    from steward_proxy.audit import AuditWriteError

    try:
        audit.close()
    except AuditWriteError as exc:
        print(f"steward proxy: audit trail not closed cleanly: {exc}", file=sys.stderr)
        return False
    return True


async def _sync_audit(
    audit: AuditWriterLike, on_failure: Callable[[Exception], None], interval: float = 1.0
) -> None:
    """Let an ``interval`` fsync policy act even when no statements arrive.

    A failed sync fails closed like a failed write: ``on_failure`` ends every session.
    """
    from steward_proxy.audit import AuditWriteError

    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(audit.sync)  # fdatasync may block; keep it off the loop
        except AuditWriteError as exc:
            on_failure(exc)
            return
