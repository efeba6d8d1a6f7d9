"""Running the operator: health endpoint, leader election, then kopf.

The health endpoint (with ``/metrics``) runs from the start: ``/healthz`` says the process is
alive, ``/readyz`` that it leads and kopf (with its webhook server) is up, so
the chart's Service sends admission requests to the leader only. The operator
runs in kopf's standalone mode (no kopf peering); the Lease of
:mod:`steward_operator.leader` makes it the only active one. Webhooks are
served from the chart's certificate files; kopf reloads them when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from steward_operator.cli import OperatorConfig
from steward_operator.handlers import make_registry
from steward_operator.injection import SidecarSettings
from steward_operator.kube import Kube, api_client
from steward_operator.leader import LeaseElector
from steward_operator.metrics import REGISTRY
from steward_operator.reconcile import Reconciler
from steward_proxy.policy.bundle import load_private_key, public_key_text

log = logging.getLogger("steward.operator")


class AdmissionRefusals(logging.Filter):
    """kopf logs every refused admission as an error; it is an answer, not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            record.levelno == logging.ERROR
            and record.exc_info is None
            and message.startswith("Webhook '")
            and "failed permanently" in message
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class Health:
    """``/healthz``, ``/readyz`` and ``/metrics`` on their own small server."""

    def __init__(self, webhook: tuple[str, int] | None = None) -> None:
        self.leading = False
        self.operator_ready = asyncio.Event()
        self.webhook = webhook

    async def _webhook_listening(self) -> bool:
        if self.webhook is None:
            return True
        host, port = self.webhook
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def start(self, host: str, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def _alive(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _ready(self, _: web.Request) -> web.Response:
        if not self.leading:
            return web.Response(status=503, text="not leading\n")
        if not self.operator_ready.is_set() or not await self._webhook_listening():
            return web.Response(status=503, text="starting\n")
        return web.Response(text="ready\n")


def kopf_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # The CRDs' status schemas have no room for kopf's own state: annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="operator.steward.dev"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.steward.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.admission.managed = None  # the chart owns the webhook configurations
    settings.admission.server = kopf.WebhookServer(
        addr=config.webhook_address,
        port=config.webhook_port,
        certfile=str(config.webhook_cert) if config.webhook_cert else None,
        pkeyfile=str(config.webhook_key) if config.webhook_key else None,
    )
    return settings


async def operate(config: OperatorConfig) -> int:
    key = load_private_key(config.signing_key.read_bytes())
    settings = SidecarSettings(
        image=config.sidecar_image,
        image_pull_policy=config.sidecar_image_pull_policy,
        resources=config.sidecar_resources,
        public_key=public_key_text(key),
        operator_namespace=config.namespace,
        bundle_poll_seconds=config.sidecar_bundle_poll,
    )
    api = api_client()
    health = Health((config.webhook_address, config.webhook_port))
    runner = await health.start(config.health_address, config.health_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = LeaseElector(
        api, config.namespace, config.lease_name, config.pod_name, config.lease_duration
    )
    try:
        if not await elector.acquire(stop):
            return 0
        health.leading = True
        holder = asyncio.create_task(elector.hold(stop))
        reconciler = Reconciler(Kube(api), key, push_timeout=config.push_timeout)
        refresher = asyncio.create_task(reconciler.run(config.status_interval, stop))
        await kopf.operator(
            registry=make_registry(settings),
            settings=kopf_settings(config),
            memo=kopf.Memo(reconciler=reconciler),
            standalone=True,
            clusterwide=True,
            stop_flag=stop,
            ready_flag=health.operator_ready,
        )
        lost = not elector.leading
        for task in (holder, refresher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if lost:
            return 1
        await asyncio.to_thread(elector.release)
        return 0
    finally:
        health.leading = False
        await runner.cleanup()
        api.close()


def main(config: OperatorConfig) -> int:
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kopf.objects").addFilter(AdmissionRefusals())
    if config.log_level != "debug":
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        key_bytes_ok = config.signing_key.is_file()
    except OSError:
        key_bytes_ok = False
    if not key_bytes_ok:
        print(f"steward operator: no signing key at {config.signing_key}", file=sys.stderr)
        return 2
    for path in (config.webhook_cert, config.webhook_key):
        if path is not None and not path.is_file():
            print(f"steward operator: no webhook certificate file {path}", file=sys.stderr)
            return 2
    return asyncio.run(operate(config))
