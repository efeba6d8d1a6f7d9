"""Types and helpers shared by e2e/conftest.py and the e2e test modules."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from kubernetes import client, config

from .harness import ControlPlane

E2E_DIR = Path(__file__).resolve().parent.parent
FIXTURES = E2E_DIR / "fixtures"
BUILD_SCRIPT = E2E_DIR / "controlplane" / "build.sh"

HelmRunner = Callable[..., subprocess.CompletedProcess[str]]
"""``helm(*args, check=True, timeout=120)``: run helm against the cluster under test."""


def in_ci() -> bool:
    """Return True when running under CI (``CI=true``), where nothing may skip."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the current test for ``reason``, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: e2e tests must not skip)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Cluster:
    """The Kubernetes API server the e2e tests run against."""

    kubeconfig: Path
    helm: Path | None
    control_plane: ControlPlane | None  # None when KUBECONFIG named an existing cluster

    def api_client(self) -> client.ApiClient:
        """Return a new admin ApiClient for this cluster."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))
