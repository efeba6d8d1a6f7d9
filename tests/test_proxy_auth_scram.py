"""SCRAM-SHA-256 against a users file through the live proxy, with every real client;
``steward users add`` writes the file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import pg8000.native
import psycopg
import pytest

from steward_testing.postgres import LocalPostgres

from conftest import Proxy, ProxyFactory, run_psql, server_certificate

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse 'battery' staple"
POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: reporting}
spec:
  subjects: [{kind: Group, name: reporting}]
  defaultAction: allow
"""


def users_add(
    path: Path, name: str, password: str, *groups: str
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "steward_proxy", "users", "add", name, "--file", str(path)]
    for group in groups:
        argv += ["--group", group]
    return subprocess.run(
        [*argv, "--password-stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    for name, password, groups in (
        ("svc", PASSWORD, ("reporting",)),
        ("other", "irrelevant", ("reporting", "finance")),
    ):
        done = users_add(path, name, password, *groups)
        assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def proxy(start_proxy: ProxyFactory, users_file: Path, tmp_path: Path) -> Proxy:
    cert, key = server_certificate(tmp_path)
    return start_proxy(
        POLICY,
        "--users-file",
        str(users_file),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )


def test_users_add_writes_a_verifier_never_the_password(users_file: Path) -> None:
    text = users_file.read_text()
    assert PASSWORD not in text and "irrelevant" not in text
    lines = text.splitlines()
    assert [line.split(" ")[0] for line in lines] == ['"svc"', '"other"']
    assert all('"SCRAM-SHA-256$4096:' in line for line in lines)
    assert lines[1].endswith('"reporting,finance"')
    assert users_file.stat().st_mode & 0o777 == 0o600
    before = lines[1]
    assert users_add(users_file, "svc", "new password", "reporting").returncode == 0
    after = users_file.read_text().splitlines()
    assert after[1] == before and after[0] != lines[0]  # replaced in place, others kept


def test_users_add_refuses_a_file_with_a_plain_password(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text('"legacy" "plaintext"\n')
    done = users_add(path, "svc", PASSWORD)
    assert done.returncode == 2
    assert "line 1" in done.stderr and "plain passwords" in done.stderr
    assert path.read_text() == '"legacy" "plaintext"\n'


def test_every_client_signs_in_with_the_right_password(proxy: Proxy) -> None:
    upstream_role = LocalPostgres.SCRAM_USER
    for sslmode in ("disable", "require"):
        dsn = proxy.dsn("svc") + f"?sslmode={sslmode}"
        with psycopg.connect(dsn, password=PASSWORD, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (upstream_role,)
    done = run_psql(proxy.dsn("svc"), "-Atc", "SELECT 41 + 1", env={"PGPASSWORD": PASSWORD})
    assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr

    async def via_asyncpg() -> object:
        conn = await asyncpg.connect(**proxy.asyncpg_args("svc"), password=PASSWORD)
        try:
            return await conn.fetchval("SELECT 42")
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == 42
    conn = pg8000.native.Connection(**proxy.pg8000_args("svc"), password=PASSWORD)
    try:
        assert conn.run("SELECT 42") == [[42]]
    finally:
        conn.close()
    starts = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert {(r["identity"], tuple(r["groups"]), r["command"]) for r in starts} == {
        ("user:svc", ("reporting",), "scram-sha-256")
    }
    assert len(starts) == 5


@pytest.mark.parametrize(
    ("user", "password"),
    [("svc", "wr0ng-Pa55-4711"), ("nobody", PASSWORD)],
    ids=["wrong password", "user not in the file"],
)
def test_wrong_password_is_28p01(proxy: Proxy, user: str, password: str) -> None:
    async def sign_in() -> None:
        await asyncpg.connect(**proxy.asyncpg_args(user), password=password, ssl=False)

    # Plain connections: with sslmode=prefer a client tries again without TLS.
    with pytest.raises(asyncpg.InvalidPasswordError) as failure:
        asyncio.run(sign_in())
    assert failure.value.sqlstate == "28P01"
    assert str(failure.value) == f'password authentication failed for user "{user}"'
    done = run_psql(
        proxy.dsn(user) + "?sslmode=disable", "-c", "SELECT 1", env={"PGPASSWORD": password}
    )
    assert done.returncode != 0 and "password authentication failed" in done.stderr
    assert proxy.terminate() == 0
    assert password.encode() not in proxy.log_path.read_bytes()
    assert password.encode() not in proxy.audit_log.read_bytes()  # type: ignore[union-attr]
    refused = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert [(r["decision"], r["command"], str(r["error"])[:5]) for r in refused] == [
        ("deny", "scram-sha-256", "28P01")
    ] * 2


def test_proxy_refuses_to_start_on_a_bad_users_file(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "users.txt"
    path.write_text('"svc" "md5d7d8b1b9c4d1e3e6f2a5b4c3d2e1f0a9"\n')
    proxy = start_proxy(POLICY, "--users-file", str(path), wait_ready=False)
    assert proxy.process.wait(timeout=60) == 2
    assert "line 1: not a SCRAM-SHA-256 verifier" in proxy.log()
    start_proxy.proxies.remove(proxy)
