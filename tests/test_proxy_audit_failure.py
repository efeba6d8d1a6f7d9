"""Fail closed when the audit trail cannot be written.

The trail lives on a tiny tmpfs that really fills up: once a record cannot be
written, the proxy ends every session, refuses new ones, and reports not ready.
Mounting needs root, which CI has.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import ALLOW_ALL_POLICY, ProxyFactory, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path, leave: int) -> None:
    """Fill the filesystem of ``directory`` until about ``leave`` bytes remain."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    (directory / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_audit_disk_ends_sessions_and_refuses_new_ones(
    start_proxy: ProxyFactory, small_disk: Path
) -> None:
    audit_log = small_disk / "audit.jsonl"
    proxy = start_proxy(ALLOW_ALL_POLICY, "--audit-log", str(audit_log), "--audit-fsync", "always")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        fill(small_disk, leave=4096)
        with pytest.raises(psycopg.OperationalError, match="audit trail cannot be written"):
            for _ in range(200):
                conn.execute("select 'padding padding padding padding padding padding'")
    with pytest.raises(psycopg.OperationalError, match="audit trail cannot be written"):
        psycopg.connect(proxy.dsn())
    status, body = proxy.http_get("/readyz")
    assert status == 503 and "audit" in body
    wait_for(lambda: "audit trail cannot be written" in proxy.log(), "the failure in the log")
    assert "Traceback" not in proxy.log()
    # What was written is still a valid trail: nothing half-written stays behind.
    (small_disk / "filler").unlink()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("steward")), "audit", "verify", str(audit_log)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
