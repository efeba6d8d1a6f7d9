"""Start and stop a throwaway Kubernetes control plane: etcd plus kube-apiserver.

The binaries come from ``build.sh`` (a versioned cache outside the repository).
Everything listens on free loopback ports only; certificates, the service-account
signing key and a static admin token are generated per run into a temporary
directory that is removed again on stop. Both servers run in their own process
groups, are killed as groups on stop, by an ``atexit`` backstop, and (on Linux)
by the kernel should the Python process die without running either.

Run ``python e2e/controlplane/harness.py`` to get a control plane by hand; it
prints a kubeconfig path and runs until interrupted.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import http.client
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from steward_testing.certs import CertificateAuthority, pem_key

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BINARY_NAMES = ("kube-apiserver", "etcd", "helm")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "steward-e2e-admin"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Return the pinned versions from ``versions.env`` (KEY=VALUE lines)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        versions[key.strip()] = value.strip().strip("\"'")
    return versions


def cache_bin_dir() -> Path:
    """Return the directory ``build.sh`` installs the pinned binaries into."""
    v = read_versions()
    root = Path(os.environ.get("STEWARD_CACHE") or Path.home() / ".cache" / "steward")
    key = f"k8s-{v['KUBERNETES_VERSION']}_etcd-{v['ETCD_VERSION']}_helm-{v['HELM_VERSION']}"
    return root / "controlplane" / key / "bin"


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables."""

    kube_apiserver: Path
    etcd: Path
    helm: Path

    @classmethod
    def locate(cls, bin_dir: Path | None = None) -> Binaries | None:
        """Return the cached binaries, or None when the cache is not (fully) built."""
        directory = bin_dir or cache_bin_dir()
        if not (directory / ".complete").is_file():
            return None
        paths = [directory / name for name in BINARY_NAMES]
        if not all(p.is_file() and os.access(p, os.X_OK) for p in paths):
            return None
        return cls(*paths)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """Return True when a process (other than a zombie) with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # The state field follows the parenthesised command name.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """Return a preexec function asking Linux to SIGKILL the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# Certificates and keys


@dataclass
class _Pki:
    ca_cert: bytes
    serving_cert: bytes
    serving_key: bytes
    sa_public_key: bytes
    sa_private_key: bytes


def _make_pki() -> _Pki:
    ca = CertificateAuthority.create()
    first_service_ip = next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())
    serving_cert, serving_key = ca.issue_server_cert(
        "kube-apiserver",
        dns_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        ip_addresses=["127.0.0.1", str(first_service_ip)],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_public = sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _Pki(
        ca_cert=ca.cert_pem,
        serving_cert=serving_cert,
        serving_key=serving_key,
        sa_public_key=sa_public,
        sa_private_key=pem_key(sa_key),
    )


# ---------------------------------------------------------------------------
# The control plane


@dataclass
class _Server:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with an admin kubeconfig.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    binaries: Binaries
    startup_timeout: float = 120.0
    workdir: Path = field(init=False)
    kubeconfig: Path = field(init=False)
    server_url: str = field(init=False)
    ca_file: Path = field(init=False)
    admin_token: str = field(init=False)
    etcd_port: int = field(init=False)
    etcd_peer_port: int = field(init=False)
    apiserver_port: int = field(init=False)
    startup_seconds: float = field(init=False, default=0.0)
    _servers: list[_Server] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)

    # -- public API ---------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        """Process ids of the running servers (etcd first)."""
        return [s.proc.pid for s in self._servers]

    @property
    def ports(self) -> list[int]:
        """Loopback ports the servers listen on."""
        return [self.etcd_port, self.etcd_peer_port, self.apiserver_port]

    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver and wait until the API server is ready."""
        if self._started:
            raise ControlPlaneError("control plane already started")
        self._started = True
        began = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="steward-controlplane-"))
        atexit.register(self.stop)
        try:
            self._write_credentials()
            self.etcd_port, self.etcd_peer_port, self.apiserver_port = _free_ports(3)
            self.server_url = f"https://127.0.0.1:{self.apiserver_port}"
            deadline = began + self.startup_timeout
            self._start_etcd()
            self._wait_until(deadline, "etcd", self._etcd_healthy)
            self._start_apiserver()
            self._wait_until(deadline, "kube-apiserver", self._apiserver_ready)
            self._write_kubeconfig()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kill both servers (as process groups) and remove all their data."""
        for server in reversed(self._servers):
            _terminate_group(server.proc, grace=5.0)
            server.log_file.close()
        self._servers.clear()
        workdir = getattr(self, "workdir", None)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def logs(self, lines: int = 40) -> str:
        """Return the tail of each server's log."""
        return "\n".join(
            f"----- {s.name} ({s.log_path}) -----\n{_tail(s.log_path, lines)}"
            for s in self._servers
        )

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- startup steps ------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = _make_pki()
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(mode=0o700)
        files = {
            "ca.crt": pki.ca_cert,
            "apiserver.crt": pki.serving_cert,
            "apiserver.key": pki.serving_key,
            "sa.pub": pki.sa_public_key,
            "sa.key": pki.sa_private_key,
        }
        for name, data in files.items():
            (pki_dir / name).write_bytes(data)
            (pki_dir / name).chmod(0o600)
        self.ca_file = pki_dir / "ca.crt"
        self.admin_token = secrets.token_urlsafe(32)
        tokens = pki_dir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        except BaseException:
            log_file.close()
            raise
        self._servers.append(_Server(name, proc, log_path, log_file))

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=steward-e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=steward-e2e={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                "--allow-privileged=true",
                # Loopback addresses are not valid endpoints of the kubernetes Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _write_kubeconfig(self) -> None:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "steward-e2e",
                    "cluster": {"server": self.server_url, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": ADMIN_USER, "user": {"token": self.admin_token}}],
            "contexts": [
                {"name": "steward-e2e", "context": {"cluster": "steward-e2e", "user": ADMIN_USER}}
            ],
            "current-context": "steward-e2e",
        }
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    # -- readiness ----------------------------------------------------------

    def _etcd_healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and b'"true"' in response.read()
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, timeout=5, context=context
        )
        try:
            conn.request("GET", "/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
            response = conn.getresponse()
            response.read()
            return response.status == 200
        finally:
            conn.close()

    def _wait_until(self, deadline: float, what: str, probe: Callable[[], bool]) -> None:
        delay = 0.05
        while True:
            for server in self._servers:
                code = server.proc.poll()
                if code is not None:
                    raise ControlPlaneError(
                        f"{server.name} exited with status {code} while waiting for {what}\n"
                        + self.logs()
                    )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if probe():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not ready after {self.startup_timeout:.0f}s\n" + self.logs()
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _terminate_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Sweep anything else left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    """Start a control plane, print how to reach it, and run until interrupted."""
    binaries = Binaries.locate()
    if binaries is None:
        print(f"no control-plane binaries in {cache_bin_dir()}: run {HERE / 'build.sh'}")
        return 1
    with ControlPlane(binaries) as cp:
        print(f"ready in {cp.startup_seconds:.1f}s: {cp.server_url}")
        print(f"export KUBECONFIG={cp.kubeconfig}")
        print(f"helm: {binaries.helm}")
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
