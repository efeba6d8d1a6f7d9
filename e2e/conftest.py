"""Fixtures for the end-to-end tests: a real Kubernetes API server to talk to.

By default the session starts its own control plane (etcd + kube-apiserver from
``e2e/controlplane/build.sh``, see ``controlplane/harness.py``). When
``KUBECONFIG`` is set, the tests use that cluster instead and start nothing.

Without Go and without cached binaries the tests skip; with ``CI=true`` they
never skip, they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.controlplane.harness import Binaries, ControlPlane, ControlPlaneError, cache_bin_dir
from e2e.controlplane.testing import BUILD_SCRIPT, Cluster, HelmRunner, unavailable

_startup_report: list[str] = []


@pytest.fixture(scope="session")
def controlplane_binaries() -> Binaries:
    """The cached kube-apiserver, etcd and helm binaries (skip/fail when absent)."""
    binaries = Binaries.locate()
    if binaries is not None:
        return binaries
    if shutil.which("go") is None:
        unavailable(
            f"Go is not installed and no control plane is cached in {cache_bin_dir()}: "
            "install Go and run `make controlplane` to run the e2e tests"
        )
    pytest.fail(
        f"control plane not built (nothing in {cache_bin_dir()}): run {BUILD_SCRIPT} "
        "(`make controlplane`) first",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster under test: KUBECONFIG's if set, else a fresh local control plane."""
    external = os.environ.get("KUBECONFIG")
    if external:
        kubeconfig = Path(external.split(os.pathsep)[0])
        if not kubeconfig.is_file():
            pytest.fail(f"KUBECONFIG={external} names no file", pytrace=False)
        binaries = Binaries.locate()
        which_helm = shutil.which("helm")
        helm = binaries.helm if binaries else (Path(which_helm) if which_helm else None)
        yield Cluster(kubeconfig, helm, None)
        return

    binaries = request.getfixturevalue("controlplane_binaries")
    control_plane = ControlPlane(binaries)
    try:
        try:
            control_plane.start()
        except ControlPlaneError as err:
            pytest.fail(f"control plane failed to start: {err}", pytrace=False)
        _startup_report.append(
            f"control plane {control_plane.server_url} ready in "
            f"{control_plane.startup_seconds:.1f}s"
        )
        yield Cluster(control_plane.kubeconfig, binaries.helm, control_plane)
    finally:
        control_plane.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long the control plane took to become ready."""
    for line in _startup_report:
        terminalreporter.write_line(f"e2e: {line}")


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    """Path of an admin kubeconfig for the cluster under test."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> Iterator[client.ApiClient]:
    """An admin (system:masters) ApiClient for the cluster under test."""
    api = cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def token_client(api_client: client.ApiClient) -> Iterator[Callable[[str], client.ApiClient]]:
    """Factory: an ApiClient for the same server that authenticates with a bearer token."""
    made: list[client.ApiClient] = []

    def make(token: str) -> client.ApiClient:
        admin = api_client.configuration
        configuration = client.Configuration()
        configuration.host = admin.host
        configuration.ssl_ca_cert = admin.ssl_ca_cert
        configuration.verify_ssl = admin.verify_ssl
        configuration.api_key = {"authorization": f"Bearer {token}"}
        api = client.ApiClient(configuration)
        made.append(api)
        return api

    try:
        yield make
    finally:
        for api in made:
            api.close()


@pytest.fixture(scope="session")
def helm_binary(cluster: Cluster) -> Path:
    """Path of the helm executable."""
    if cluster.helm is None:
        unavailable("no helm binary: run `make controlplane` or put helm on PATH")
    return cluster.helm


@pytest.fixture(scope="session")
def helm(
    helm_binary: Path, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> HelmRunner:
    """Run ``helm ARGS...`` against the cluster, with private cache/config/data dirs."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(
        *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(helm_binary), "--kubeconfig", str(kubeconfig), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
                pytrace=False,
            )
        return result

    return run


@pytest.fixture
def make_namespace(api_client: client.ApiClient) -> Iterator[Callable[[str], str]]:
    """Factory: create a uniquely named namespace; each is deleted at teardown.

    Without a namespace controller, deletion only marks a namespace Terminating on
    the local control plane; that is harmless because its data is discarded.
    """
    core = client.CoreV1Api(api_client)
    created: list[str] = []

    def make(prefix: str = "e2e") -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        created.append(name)
        return name

    try:
        yield make
    finally:
        for name in created:
            try:
                core.delete_namespace(name)
            except ApiException as err:
                if err.status != 404:
                    raise


@pytest.fixture
def namespace(make_namespace: Callable[[str], str]) -> str:
    """A fresh namespace for one test."""
    return make_namespace("e2e")
