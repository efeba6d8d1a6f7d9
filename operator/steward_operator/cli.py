"""``steward operator`` (and ``python -m steward_operator``): the command line.

This module only defines and reads arguments; it imports neither kopf nor the
Kubernetes client, so ``steward --help`` works where only the proxy's
dependencies are installed. :mod:`steward_operator.main` runs the operator.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SIDECAR_IMAGE = "ghcr.io/steward-dev/steward-proxy:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Everything ``steward operator`` is configured with (see ``--help``)."""

    namespace: str
    pod_name: str
    signing_key: Path
    webhook_cert: Path | None
    webhook_key: Path | None
    webhook_address: str
    webhook_port: int
    health_address: str
    health_port: int
    sidecar_image: str
    sidecar_image_pull_policy: str
    sidecar_resources: dict[str, Any]
    sidecar_bundle_poll: float
    status_interval: float
    push_timeout: float
    lease_name: str
    lease_duration: float
    log_level: str


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _resources(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object (requests/limits)")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = "(default: %(default)s)"
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "steward-system"),
        help=f"the operator's own namespace: its Lease, never injected; env POD_NAMESPACE {d}",
    )
    p.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME", socket.gethostname()),
        help=f"identity in leader election; env POD_NAME {d}",
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        default=Path("/etc/steward/signing/ed25519.pem"),
        metavar="FILE",
        help=f"Ed25519 private key (PKCS#8 PEM) that signs policy bundles {d}",
    )
    p.add_argument(
        "--webhook-cert",
        type=Path,
        default=Path("/etc/steward/webhook/tls.crt"),
        metavar="FILE",
        help=f"TLS certificate the admission webhooks are served with {d}",
    )
    p.add_argument(
        "--webhook-key",
        type=Path,
        default=Path("/etc/steward/webhook/tls.key"),
        metavar="FILE",
        help=f"its private key {d}",
    )
    p.add_argument(
        "--webhook-listen",
        type=_host_port,
        default=("0.0.0.0", 9443),
        metavar="HOST:PORT",
        help="where the admission webhooks listen (default: 0.0.0.0:9443)",
    )
    p.add_argument(
        "--health-listen",
        type=_host_port,
        default=("0.0.0.0", 8080),
        metavar="HOST:PORT",
        help="/healthz (alive) and /readyz (leading, webhooks served) (default: 0.0.0.0:8080)",
    )
    p.add_argument("--sidecar-image", default=DEFAULT_SIDECAR_IMAGE, help=f"proxy image {d}")
    p.add_argument(
        "--sidecar-image-pull-policy",
        default="IfNotPresent",
        choices=("Always", "IfNotPresent", "Never"),
        help=d,
    )
    p.add_argument(
        "--sidecar-resources",
        type=_resources,
        default={},
        metavar="JSON",
        help='sidecar resources, e.g. {"requests": {"cpu": "50m"}} (default: none)',
    )
    p.add_argument(
        "--sidecar-bundle-poll",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help=f"how often sidecars check their bundle file {d}",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help=f"how often pod counts are refreshed and late sidecars pushed to {d}",
    )
    p.add_argument(
        "--push-timeout", type=float, default=5.0, metavar="SECONDS", help=f"per push {d}"
    )
    p.add_argument("--lease-name", default="steward-operator", help=f"leader-election Lease {d}")
    p.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help=f"how long a silent leader keeps the Lease {d}",
    )
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help=d
    )


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    return OperatorConfig(
        namespace=args.namespace,
        pod_name=args.pod_name,
        signing_key=args.signing_key,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_address=args.webhook_listen[0],
        webhook_port=args.webhook_listen[1],
        health_address=args.health_listen[0],
        health_port=args.health_listen[1],
        sidecar_image=args.sidecar_image,
        sidecar_image_pull_policy=args.sidecar_image_pull_policy,
        sidecar_resources=args.sidecar_resources,
        sidecar_bundle_poll=args.sidecar_bundle_poll,
        status_interval=args.status_interval,
        push_timeout=args.push_timeout,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        log_level=args.log_level,
    )


DESCRIPTION = (
    "Run the Steward operator: compile DatabaseAccessPolicies and MaskingRules into signed "
    "bundles, inject the proxy sidecar into annotated pods, push policy changes to running "
    "sidecars, and validate policies at admission."
)


def run(args: argparse.Namespace) -> int:
    from steward_operator.main import main

    return main(config_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steward operator", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def entry(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(entry())
