"""A proxy running a signed bundle: live reload from its file and from pushes.

The bundle directory is laid out the way the kubelet lays out a ConfigMap
volume (``bundle.json`` -> ``..data/bundle.json``, ``..data`` -> a timestamped
directory, swapped atomically), so the file watcher meets what it meets in a
pod. Sessions opened before a swap judge their next statement under the new
policy; a bundle that is forged, older, for another target or broken is
refused with its reason and the running policy stays.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from psycopg import errors as pgerr

from steward_proxy.policy.bundle import build, generate_key, sign

from conftest import Proxy, ProxyFactory, wait_for

pytestmark = pytest.mark.timeout(90)

TARGET = "default/app"
KEY = generate_key()
FORGER = generate_key()

OPEN: dict[str, Any] = {
    "apiVersion": "steward.dev/v1alpha1",
    "kind": "DatabaseAccessPolicy",
    "metadata": {"name": "app", "namespace": "default"},
    "spec": {"subjects": [{"kind": "User", "name": "alice"}], "defaultAction": "allow"},
}


def closed_to_mixed() -> dict[str, Any]:
    """OPEN with a guardrail that denies reading the ``mixed`` table."""
    doc = copy.deepcopy(OPEN)
    doc["spec"]["guardrails"] = [
        {
            "name": "no-mixed",
            "match": {"statements": ["SELECT"], "tables": ["public.mixed"]},
            "action": "deny",
            "message": "mixed is closed",
        }
    ]
    return doc


def bundle(generation: int, doc: dict[str, Any] | None = None, **kw: Any) -> bytes:
    built = build(kw.get("target", TARGET), generation, [doc or OPEN])
    return sign(built, kw.get("key", KEY))


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet does a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self._n = itertools.count()
        (self.root / "bundle.json").symlink_to("..data/bundle.json")

    @property
    def path(self) -> Path:
        return self.root / "bundle.json"

    def write(self, data: bytes) -> None:
        version = self.root / f"..2026_{next(self._n):04d}"
        version.mkdir()
        (version / "bundle.json").write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    vol = ConfigMapVolume(tmp_path / "bundle")
    vol.write(bundle(10))
    return vol


@pytest.fixture
def public_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "bundle-key.pem"
    path.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.fixture
def sidecar(start_proxy: ProxyFactory, volume: ConfigMapVolume, public_key_file: Path) -> Proxy:
    return start_proxy(
        None,
        "--bundle",
        str(volume.path),
        "--bundle-public-key",
        str(public_key_file),
        "--bundle-poll",
        "0.05",
    )


def put_policy(proxy: Proxy, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(proxy.admin_url + "/policy", data=data, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def running(proxy: Proxy) -> dict[str, Any]:
    status, text = proxy.http_get("/policy")
    assert status == 200, text
    return json.loads(text)


def reads_mixed(conn: psycopg.Connection[Any]) -> bool:
    """True when SELECT on mixed is allowed, False when the policy denies it."""
    try:
        conn.execute("SELECT count(*) FROM mixed").fetchone()
    except pgerr.InsufficientPrivilege as exc:
        assert "mixed is closed" in str(exc)
        return False
    return True


def loaded_records(proxy: Proxy) -> list[dict[str, Any]]:
    return [r for r in proxy.audit_records() if r["type"] == "policy.loaded"]


def test_the_proxy_starts_from_a_signed_bundle(sidecar: Proxy, volume: ConfigMapVolume) -> None:
    state = running(sidecar)
    assert state["target"] == TARGET
    assert state["generation"] == 10
    assert state["policies"] == ["default/app"]
    assert state["source"] == f"file {volume.path}"
    [record] = loaded_records(sidecar)
    assert record["policy"] == "default/app"
    assert record["fingerprint"] == state["compiledHash"]
    assert record["statement"] == f"bundle {TARGET} generation 10 hash {state['hash']}"
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert reads_mixed(conn)


def test_a_pushed_bundle_reaches_a_session_in_flight(sidecar: Proxy) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert reads_mixed(conn)
        status, answer = put_policy(sidecar, bundle(11, closed_to_mixed()))
        assert (status, answer["result"], answer["generation"]) == (200, "loaded", 11)
        assert not reads_mixed(conn)  # the same session, its next statement
        conn.execute("SELECT 1")  # and it goes on
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert not reads_mixed(conn)
    records = loaded_records(sidecar)
    assert [r["client"] for r in records][-1] == "push from 127.0.0.1"
    assert records[-1]["statement"].startswith(f"bundle {TARGET} generation 11 ")


def test_the_same_bundle_twice_changes_nothing(sidecar: Proxy) -> None:
    data = bundle(11, closed_to_mixed())
    assert put_policy(sidecar, data)[1]["result"] == "loaded"
    assert put_policy(sidecar, data)[1]["result"] == "unchanged"
    assert len(loaded_records(sidecar)) == 2  # startup and the one load


REFUSED_PUSHES = [
    pytest.param(
        lambda: bundle(11, closed_to_mixed(), key=FORGER),
        403,
        "signature",
        id="a bundle signed with another key",
    ),
    pytest.param(lambda: bundle(9, closed_to_mixed()), 409, "stale", id="an older generation"),
    pytest.param(
        lambda: bundle(10, closed_to_mixed()),
        409,
        "stale",
        id="the running generation with other content",
    ),
    pytest.param(
        lambda: bundle(11, closed_to_mixed(), target="default/other"),
        403,
        "target",
        id="another target's bundle",
    ),
    pytest.param(lambda: b"{not json", 400, "malformed", id="bytes that are no bundle"),
]


@pytest.mark.parametrize(("make", "status", "problem"), REFUSED_PUSHES)
def test_a_refused_push_leaves_the_running_policy(
    sidecar: Proxy, make: Any, status: int, problem: str
) -> None:
    before = running(sidecar)
    code, answer = put_policy(sidecar, make())
    assert (code, answer["problem"]) == (status, problem)
    assert running(sidecar) == before
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert reads_mixed(conn)
    assert f"refused ({problem})" in sidecar.log()
    assert "the running policy stays" in sidecar.log()
    assert len(loaded_records(sidecar)) == 1


def test_a_push_without_length_or_too_large_is_refused(sidecar: Proxy) -> None:
    request = urllib.request.Request(
        sidecar.admin_url + "/policy",
        data=b"x",
        method="PUT",
        headers={"Content-Length": str(2 << 20)},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 413


def test_a_changed_file_is_loaded(sidecar: Proxy, volume: ConfigMapVolume) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert reads_mixed(conn)
        volume.write(bundle(12, closed_to_mixed()))
        wait_for(lambda: running(sidecar)["generation"] == 12, "the file to be reloaded")
        assert not reads_mixed(conn)
    assert loaded_records(sidecar)[-1]["client"] == f"file {volume.path}"


def test_an_older_or_forged_file_is_refused(sidecar: Proxy, volume: ConfigMapVolume) -> None:
    assert put_policy(sidecar, bundle(12))[0] == 200
    volume.write(bundle(11, closed_to_mixed()))  # the kubelet still syncing an older one
    wait_for(lambda: "generation 11 is older" in sidecar.log(), "the older file to be refused")
    volume.write(bundle(13, closed_to_mixed(), key=FORGER))
    wait_for(lambda: "refused (signature)" in sidecar.log(), "the forged file to be refused")
    assert running(sidecar)["generation"] == 12
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        assert reads_mixed(conn)


def test_a_bad_bundle_at_startup_stops_the_proxy(
    start_proxy: ProxyFactory, tmp_path: Path, public_key_file: Path
) -> None:
    forged = tmp_path / "forged.json"
    forged.write_bytes(bundle(1, key=FORGER))
    proxy = start_proxy(
        None,
        "--bundle",
        str(forged),
        "--bundle-public-key",
        str(public_key_file),
        wait_ready=False,
    )
    assert proxy.process.wait(timeout=30) == 2
    assert "signature is not valid" in proxy.log()
    proxy.process.returncode = 0  # the factory expects a clean exit at teardown


def test_policy_files_take_no_push(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    code, answer = put_policy(proxy, bundle(1))
    assert code == 403
    assert "no --bundle" in answer["error"]


def test_missing_credentials_from_a_secret_make_the_proxy_unready(
    start_proxy: ProxyFactory, volume: ConfigMapVolume, public_key_file: Path, pg: Any
) -> None:
    host, port = pg.host, pg.port
    proxy = start_proxy(
        None,
        "--bundle",
        str(volume.path),
        "--bundle-public-key",
        str(public_key_file),
        upstream=f"postgresql://{host}:{port}/{pg.dbname}",
        env={"STEWARD_UPSTREAM_SECRET": "orders-db"},
    )
    status, text = proxy.http_get("/readyz")
    assert status == 503
    assert "Secret orders-db gave no user" in text
    assert "Secret orders-db gave no password" in text
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(proxy.dsn(), autocommit=True)
    assert "Secret orders-db gave no user" in str(refused.value)
    assert "not ready, every sign-in is refused" in proxy.log()
