"""The harness leaves no process, listening port or data behind.

Each case starts a control plane in a child Python process and ends that process
in a different way: a pytest session whose test fails (fixture teardown), a
script that exits without stopping the control plane (``atexit`` backstop), and
a script killed with SIGKILL (the kernel's parent-death signal; only the data
directory can remain then, and the test removes it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane.harness import Binaries, pid_alive, port_is_listening
from e2e.controlplane.testing import E2E_DIR, FIXTURES

REPO = E2E_DIR.parent

SCRIPT = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from e2e.controlplane.harness import Binaries, ControlPlane
cp = ControlPlane(Binaries.locate()).start()
record = {{"pids": cp.pids, "ports": cp.ports, "workdir": str(cp.workdir)}}
open({out!r}, "w").write(json.dumps(record))
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(0)  # without cp.stop(): atexit must clean up
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)  # the child must start its own control plane
    env.pop("PYTEST_ADDOPTS", None)
    return env


def _assert_nothing_left(record: dict[str, Any], *, data_removed: bool = True) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        alive = [pid for pid in record["pids"] if pid_alive(pid)]
        listening = [port for port in record["ports"] if port_is_listening(port)]
        if not alive and not listening:
            break
        time.sleep(0.2)
    assert not alive, f"processes still alive: {alive}"
    assert not listening, f"ports still listening: {listening}"
    if data_removed:
        assert not Path(record["workdir"]).exists()


def test_failing_pytest_session_tears_down(controlplane_binaries: Binaries, tmp_path: Path):
    out = tmp_path / "probe.json"
    env = _child_env()
    env["STEWARD_PROBE_OUT"] = str(out)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(FIXTURES / "harness_probe.py"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout, result.stdout
    record = json.loads(out.read_text())
    assert len(record["pids"]) == 2 and len(record["ports"]) == 3
    _assert_nothing_left(record)


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_child_process_ending_tears_down(
    controlplane_binaries: Binaries, tmp_path: Path, ending: str
):
    out = tmp_path / "record.json"
    code = SCRIPT.format(root=str(REPO), out=str(out))
    result = subprocess.run(
        [sys.executable, "-c", code, ending],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    expected = -9 if ending == "kill" else 0
    assert result.returncode == expected, result.stderr
    record = json.loads(out.read_text())
    try:
        _assert_nothing_left(record, data_removed=ending == "exit")
    finally:
        shutil.rmtree(record["workdir"], ignore_errors=True)
