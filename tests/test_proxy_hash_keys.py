"""The ``hash`` strategy's key per policy, through the live proxy.

A policy names a Secret key (``spec.masking.hashKeySecretRef``); the proxy
reads it from ``--hash-key-dir/NAMESPACE/NAME/KEY`` (where the operator mounts
the Secret in a sidecar; these policy files have no namespace: ``default``).
The same key gives the same pseudonym, whichever proxy and whether it came
from a Secret or ``--hash-key-file``; another key gives another. A key that
cannot be read fails closed for the subjects of its policy only (their
sign-ins are refused with 08004 and the reason, and ``/readyz`` names them,
failing when that is every policy the proxy runs), and so do policies that
would hash one subject's values under different keys. The key never appears
in the log or the audit trail (its fingerprint does).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from steward_proxy.hashkeys import fingerprint
from tests.conftest import (
    LocalPostgres,
    Proxy,
    ProxyFactory,
    error_fields,
    raw_connect,
    recv_messages,
    startup_packet,
    wait_for,
)

SCHEMA = """
CREATE SCHEMA hk;
CREATE TABLE hk.people (id int PRIMARY KEY, full_name text, account_no bigint, city text);
INSERT INTO hk.people VALUES (1, 'Maria Gonzalez', 9876543210123, 'Lisbon'),
                             (2, 'Dmitri Volkov', 1234567890555, 'Tallinn');
"""

RULE = """\
apiVersion: steward.dev/v1alpha1
kind: MaskingRule
metadata: {name: hk-names}
spec:
  rules:
    - {columns: ["hk.people.full_name", "hk.people.account_no"], strategy: hash}
"""


def policy(name: str, users: list[str], secret: str | None) -> str:
    ref = f"\n    hashKeySecretRef: {{name: {secret}, key: hash-key}}" if secret else ""
    subjects = ", ".join(f"{{kind: User, name: {u}}}" for u in users)
    return f"""\
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {{name: {name}}}
spec:
  subjects: [{subjects}]
  defaultAction: allow
  masking:
    rules: [hk-names]{ref}
"""


# alice and bob hash under their policies' Secrets, dave under --hash-key-file;
# erin is covered by both team-a and team-b, which name different keys.
POLICIES = (
    RULE
    + policy("team-a", ["alice", "erin"], "team-a")
    + policy("team-b", ["bob", "erin"], "team-b")
    + policy("team-own", ["dave"], None)
    + policy("plain", ["frank"], None).replace("rules: [hk-names]", "detect: false")
)

KEY_A = secrets.token_hex(24).encode()
KEY_B = secrets.token_hex(24).encode()
KEY_C = secrets.token_hex(24).encode()


def pseudonym(key: bytes, value: str) -> str:
    return "h_" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def key_dir(root: Path, keys: dict[str, bytes]) -> Path:
    """A directory laid out as the operator mounts Secrets: ``DIR/NAMESPACE/NAME/KEY``."""
    (root / "default").mkdir(parents=True)
    for secret, key in keys.items():
        (root / "default" / secret).mkdir()
        (root / "default" / secret / "hash-key").write_bytes(key)
    return root


def keyed_proxy(
    start_proxy: ProxyFactory, root: Path, keys: dict[str, bytes], *args: str, **kwargs: Any
) -> Proxy:
    """A proxy running POLICIES with the Secret keys ``keys`` mounted under ``root``."""
    return start_proxy(POLICIES, "--hash-key-dir", str(key_dir(root, keys)), *args, **kwargs)


@pytest.fixture(scope="module")
def seeded(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    pg.execute(SCHEMA)
    yield pg
    pg.execute("DROP SCHEMA hk CASCADE")


def names(proxy: Proxy, user: str) -> list[str]:
    with psycopg.connect(proxy.dsn(user)) as conn:
        rows = conn.execute("SELECT full_name, city FROM hk.people ORDER BY id").fetchall()
    assert [city for _, city in rows] == ["Lisbon", "Tallinn"]  # not masked
    return [name for name, _ in rows]


def sign_in_error(proxy: Proxy, user: str) -> dict[str, str] | None:
    """The ErrorResponse a sign-in as ``user`` gets, or None when it succeeds."""
    sock = raw_connect(proxy)
    try:
        sock.sendall(startup_packet(user, proxy.dbname))
        messages = recv_messages(sock)
    finally:
        sock.close()
    errors = [error_fields(payload) for kind, payload in messages if kind == b"E"]
    if errors:
        return errors[0]
    assert messages[-1][0] == b"Z", messages
    return None


def assert_key_never_written(proxy: Proxy, *keys: bytes) -> None:
    assert proxy.audit_log is not None
    for key in keys:
        assert key not in proxy.log().encode()
        assert key not in proxy.audit_log.read_bytes()


def test_each_policy_hashes_under_its_own_secret_key(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    own = tmp_path / "own.key"
    own.write_bytes(KEY_A)
    mounted = {"team-a": KEY_A + b"\n", "team-b": KEY_B}
    proxy = keyed_proxy(
        start_proxy, tmp_path / "keys", mounted, "--hash-key-file", str(own), admin=False
    )
    maria, dmitri = "Maria Gonzalez", "Dmitri Volkov"
    assert names(proxy, "alice") == [pseudonym(KEY_A, maria), pseudonym(KEY_A, dmitri)]
    assert names(proxy, "bob") == [pseudonym(KEY_B, maria), pseudonym(KEY_B, dmitri)]
    # The same key from --hash-key-file gives the same pseudonyms as from the Secret.
    assert names(proxy, "dave") == names(proxy, "alice")
    with psycopg.connect(proxy.dsn("frank")) as conn:  # masks nothing: needs no key
        assert conn.execute("SELECT full_name FROM hk.people WHERE id = 1").fetchone() == (maria,)
    assert_key_never_written(proxy, KEY_A, KEY_B)


def test_two_proxies_agree_on_a_shared_key_and_differ_on_another(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    first = keyed_proxy(start_proxy, tmp_path / "1", {"team-a": KEY_A, "team-b": KEY_B})
    second = keyed_proxy(start_proxy, tmp_path / "2", {"team-a": KEY_A, "team-b": KEY_C})
    assert names(first, "alice") == names(second, "alice")
    assert names(first, "bob") != names(second, "bob")
    assert names(second, "bob")[0] == pseudonym(KEY_C, "Maria Gonzalez")
    # Integers hash to stable integers under the same key too.
    query = "SELECT account_no FROM hk.people ORDER BY id"
    with psycopg.connect(first.dsn("alice")) as one, psycopg.connect(second.dsn("alice")) as two:
        assert one.execute(query).fetchall() == two.execute(query).fetchall()
        assert one.execute(query).fetchall()[0] != (9876543210123,)


def test_a_missing_or_empty_key_fails_closed_for_its_policy_only(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = keyed_proxy(
        start_proxy, tmp_path / "keys", {"team-a": KEY_A}, "--readiness-interval", "0"
    )
    missing = tmp_path / "keys" / "default" / "team-b" / "hash-key"
    assert "policy default/team-b (Secret default/team-b, key hash-key)" in proxy.log()
    # Other policies keep serving: ready, and the one held up is named.
    status_code, ready = proxy.http_get("/readyz")
    assert status_code == 200 and ready.startswith("ready; "), ready
    assert "the hash masking key of policy default/team-b" in ready

    error = sign_in_error(proxy, "bob")
    assert error is not None and error["C"] == "08004", error
    assert "default/team-b" in error["M"] and f"{missing} does not exist" in error["M"]
    assert sign_in_error(proxy, "alice") is None  # other policies keep serving
    assert names(proxy, "alice")[0] == pseudonym(KEY_A, "Maria Gonzalez")

    missing.parent.mkdir()
    for content, problem in ((b" \n", "is empty"), (b"short\n", "holds 5 bytes")):
        missing.write_bytes(content)
        error = sign_in_error(proxy, "bob")
        assert error is not None and error["C"] == "08004" and problem in error["M"], error

    # The Secret arrives (kubelet fills an optional Secret volume): the next sign-in reads it.
    missing.write_bytes(KEY_B)
    assert names(proxy, "bob")[0] == pseudonym(KEY_B, "Maria Gonzalez")
    assert proxy.http_get("/readyz") == (200, "ready\n")

    refused = [
        r
        for r in proxy.audit_records()
        if r["type"] == "session.start" and r["identity"] == "user:bob" and r["error"]
    ]
    assert len(refused) == 3 and all(r["decision"] == "deny" for r in refused), refused
    status_code, metrics = proxy.http_get("/metrics")
    assert status_code == 200
    assert_key_never_written(proxy, KEY_A, KEY_B)
    assert KEY_A.decode() not in metrics and KEY_B.decode() not in metrics


def test_policies_that_hash_one_subject_under_different_keys_refuse_it(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    keys = {"team-a": KEY_A, "team-b": KEY_B}
    proxy = keyed_proxy(start_proxy, tmp_path / "keys", keys, admin=False)
    error = sign_in_error(proxy, "erin")
    assert error is not None and error["C"] == "08004", error
    assert "different keys" in error["M"]
    assert "default/team-a (Secret default/team-a, key hash-key)" in error["M"]
    assert "default/team-b (Secret default/team-b, key hash-key)" in error["M"]
    assert sign_in_error(proxy, "alice") is None


def test_a_policy_change_to_a_missing_key_ends_open_sessions_until_the_key_appears(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = keyed_proxy(start_proxy, tmp_path / "keys", {"team-a": KEY_A}, "--policy-poll", "0.1")
    policy_file = Path(proxy.argv[proxy.argv.index("--policy") + 1])
    loaded = len([r for r in proxy.audit_records() if r["type"] == "policy.loaded"])
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
        assert conn.execute("SELECT full_name FROM hk.people WHERE id = 1").fetchone() == (
            pseudonym(KEY_A, "Maria Gonzalez"),
        )
        fresh = policy_file.with_name("policy.yaml.new")
        fresh.write_text(POLICIES.replace("{name: team-a, key", "{name: team-z, key"))
        fresh.replace(policy_file)
        wait_for(
            lambda: (
                len([r for r in proxy.audit_records() if r["type"] == "policy.loaded"]) > loaded
            ),
            "the changed policy to load",
        )
        with pytest.raises(psycopg.Error, match="masking this subject gets has changed") as ended:
            conn.execute("SELECT full_name FROM hk.people WHERE id = 1")
        assert ended.value.sqlstate == "42501"
    assert "policy default/team-a (Secret default/team-z, key hash-key)" in proxy.log()
    # The Secret arrives: the very next sign-in reads it (the session that met its
    # absence left no judge without a key behind).
    new_key = tmp_path / "keys" / "default" / "team-z" / "hash-key"
    new_key.parent.mkdir()
    new_key.write_bytes(KEY_C)
    assert sign_in_error(proxy, "alice") is None
    assert names(proxy, "alice")[0] == pseudonym(KEY_C, "Maria Gonzalez")


def test_the_proxy_refuses_to_start_with_an_empty_hash_key_file(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"\n")
    proxy = start_proxy(POLICIES, "--hash-key-file", str(empty), admin=False, wait_ready=False)
    assert proxy.process.wait(timeout=60) == 2
    assert f"--hash-key-file: {empty} is empty" in proxy.log()
    start_proxy.proxies.remove(proxy)


def test_a_sidecar_whose_one_policy_lacks_its_key_is_not_ready_until_the_key_appears(
    seeded: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    # A sidecar runs one policy: without its key no subject that gets hash may sign in.
    root = tmp_path / "keys"
    (root / "default").mkdir(parents=True)
    proxy = start_proxy(
        RULE + policy("team-a", ["alice"], "team-a"),
        "--hash-key-dir",
        str(root),
        "--readiness-interval",
        "0.1",
    )
    status_code, reason = proxy.http_get("/readyz")
    assert status_code == 503, reason
    assert "the hash masking key of policy default/team-a (Secret default/team-a" in reason
    # The kubelet fills the optional Secret volume in: read again without any sign-in.
    (root / "default" / "team-a").mkdir()
    (root / "default" / "team-a" / "hash-key").write_bytes(KEY_A)
    wait_for(lambda: proxy.http_get("/readyz") == (200, "ready\n"), "/readyz to turn ready")
    assert f"Secret default/team-a, key hash-key loaded: fingerprint {fingerprint(KEY_A)}" in (
        proxy.log()
    )
    assert names(proxy, "alice")[0] == pseudonym(KEY_A, "Maria Gonzalez")
    assert_key_never_written(proxy, KEY_A)
