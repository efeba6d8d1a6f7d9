"""Operational limits of ``steward proxy``: connections, idleness, audit rotation, bad policy.

``--max-connections`` refuses sessions beyond the limit with 53300 (also when
they sign in at the same moment), ``--idle-timeout`` closes idle sessions with
57P05 but never one whose statement is running, ``--audit-max-bytes`` rotates
the trail into siblings that ``steward audit verify`` chains back together, and
a policy that does not validate stops the proxy at start (fail closed), naming
the field, just as ``steward policy check`` does.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pg8000.dbapi
import psycopg
import pytest

from conftest import (
    REPO,
    Proxy,
    ProxyFactory,
    error_fields,
    first_error,
    raw_connect,
    raw_login,
    read_until_closed,
    recv_messages,
    startup_packet,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: limits}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
"""


def steward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def sign_in_error(proxy: Proxy, user: str = "alice") -> dict[str, str] | None:
    """The ErrorResponse fields a raw sign-in gets, or None when it is admitted."""
    with raw_connect(proxy) as sock:
        sock.sendall(startup_packet(user, proxy.dbname))
        messages = recv_messages(sock)
    for kind, payload in messages:
        if kind == b"E":
            return error_fields(payload)
    assert messages and messages[-1][0] == b"Z", f"unexpected sign-in answer {messages!r}"
    return None


# ------------------------------------------------------------- max connections


def test_third_session_is_refused_with_53300_while_two_keep_working(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(
        POLICY,
        "--max-connections",
        "2",
    )
    first = psycopg.connect(proxy.dsn(), autocommit=True)
    second = psycopg.connect(proxy.dsn(), autocommit=True)
    try:
        fields = sign_in_error(proxy)
        assert fields is not None, "a third session was admitted"
        assert fields["C"] == "53300"
        assert fields["S"] == "FATAL"

        with pytest.raises(pg8000.dbapi.DatabaseError) as info:
            pg8000.dbapi.connect(**proxy.pg8000_args())
        assert info.value.args[0]["C"] == "53300"

        assert first.execute("SELECT 1").fetchone() == (1,)
        assert second.execute("SELECT 2").fetchone() == (2,)
    finally:
        first.close()

    def admitted() -> bool:
        return sign_in_error(proxy) is None

    wait_for(admitted, "a new session after one closed")
    with psycopg.connect(proxy.dsn(), autocommit=True) as third:
        assert third.execute("SELECT 3").fetchone() == (3,)
    assert second.execute("SELECT 4").fetchone() == (4,)
    second.close()


def test_concurrent_sign_ins_cannot_exceed_the_limit(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(
        POLICY,
        "--max-connections",
        "2",
    )
    attempts = 8
    barrier = threading.Barrier(attempts)
    outcomes: list[str] = []
    sockets: list[socket.socket] = []
    lock = threading.Lock()

    def sign_in() -> None:
        sock = raw_connect(proxy)
        barrier.wait()
        sock.sendall(startup_packet("alice", proxy.dbname))
        messages = recv_messages(sock)
        kinds = [k for k, _ in messages]
        outcome = "admitted" if kinds and kinds[-1] == b"Z" else "refused"
        if outcome == "refused":
            assert error_fields(messages[-1][1])["C"] == "53300"
        with lock:
            outcomes.append(outcome)
            sockets.append(sock)

    threads = [threading.Thread(target=sign_in) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert len(outcomes) == attempts
        assert outcomes.count("admitted") == 2, outcomes
    finally:
        for sock in sockets:
            sock.close()


# ------------------------------------------------------------------ idle timeout


def test_idle_session_is_closed_with_57p05_but_a_running_statement_is_not(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(
        POLICY,
        "--idle-timeout",
        "1",
    )
    idle, _ = raw_login(proxy)
    busy = psycopg.connect(proxy.dsn(), autocommit=True)
    in_transaction = psycopg.connect(proxy.dsn())
    try:
        in_transaction.execute("SELECT 1")  # opens a transaction and leaves it open
        assert busy.execute("SELECT pg_sleep(2.2), 'done'").fetchone() == ("", "done")
        with idle:
            idle.settimeout(10)
            closing = read_until_closed(idle)
        fields = first_error(closing)
        assert fields is not None, f"no ErrorResponse before close: {closing!r}"
        assert fields["C"] == "57P05"
        assert fields["S"] == "FATAL"
        assert "idle" in fields["M"]
        # An open transaction is not idle in the proxy's sense either.
        assert in_transaction.execute("SELECT 'kept'").fetchone() == ("kept",)
        in_transaction.commit()
    finally:
        busy.close()
        in_transaction.close()


def test_idle_psycopg_session_fails_its_next_query_with_a_connection_error(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(
        POLICY,
        "--idle-timeout",
        "1",
    )
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        ended = wait_for(
            lambda: [
                r
                for r in proxy.audit_records()
                if r["type"] == "session.end" and "idle" in str(r["error"])
            ],
            "the idle session to be closed",
        )
        assert ended
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        assert "idle" in str(info.value) or "closed" in str(info.value)


# ------------------------------------------------------------------ audit rotation


def test_audit_rotation_keeps_one_verifiable_chain(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = start_proxy(
        POLICY,
        "--audit-max-bytes",
        "2000",
    )
    live = proxy.audit_log
    assert live is not None
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for n in range(25):
            conn.execute(f"SELECT {n} AS n, 'rotation' AS what")
    wait_for(lambda: Path(f"{live}.3").exists(), "three rotated audit files")
    siblings = sorted(live.parent.glob(live.name + ".*"), key=lambda p: int(p.suffix[1:]))
    assert all(p.stat().st_size <= 2000 for p in siblings)

    verified = steward("audit", "verify", str(live))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK: ")
    assert f"({live}.1, {live}.2, {live}.3, " in verified.stdout
    assert verified.stdout.split("\n")[0].endswith(f", {live})")

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in [*siblings, live]:
        shutil.copy(path, copy / path.name)
    rotated = copy / f"{live.name}.2"
    lines = rotated.read_text().splitlines(keepends=True)
    assert '"identity":"user:alice"' in lines[0]
    lines[0] = lines[0].replace('"identity":"user:alice"', '"identity":"user:mallory"')
    rotated.write_text("".join(lines))
    tampered = steward("audit", "verify", str(copy / live.name))
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert tampered.stdout.startswith(f"FAIL: {rotated} line 1")
    assert "changed" in tampered.stdout


# ------------------------------------------------------------------ invalid policy

INVALID_POLICIES = [
    pytest.param(
        """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: typo}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: alow
""",
        "spec.defaultAction",
        id="a misspelt defaultAction",
    ),
    pytest.param(
        """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bad-guardrail}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - {name: no-delete, match: {statements: [DELETE]}, action: block}
""",
        "spec.guardrails[0].action",
        id="a guardrail with an unknown action",
    ),
    pytest.param(
        """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: no-subjects}
spec:
  defaultAction: allow
""",
        "subjects",
        id="a policy without subjects",
    ),
]


@pytest.mark.parametrize(("policy", "field"), INVALID_POLICIES)
def test_invalid_policy_stops_the_proxy_at_start_and_policy_check_agrees(
    start_proxy: ProxyFactory, policy: str, field: str
) -> None:
    proxy = start_proxy(policy, wait_ready=False)
    try:
        code = proxy.process.wait(timeout=30)
    finally:
        start_proxy.proxies.remove(proxy)
    log = proxy.log()
    assert code != 0, log
    assert "policy does not load" in log
    assert field in log, log
    assert "Traceback" not in log
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()

    policy_file = proxy.log_path.parent / "policy.yaml"
    checked = steward("policy", "check", str(policy_file))
    assert checked.returncode != 0
    assert field in checked.stdout + checked.stderr


def test_a_flood_of_syncs_is_answered_without_buffering_its_requests(
    start_proxy: ProxyFactory,
) -> None:
    """Each request the server owes costs the proxy memory: client input is held
    while the server owes too many, and resumes as the answers come."""
    proxy = start_proxy(POLICY)
    sock, _ = raw_login(proxy, "alice")
    count = 2_000_000  # 10 MB of 5-byte Syncs
    before = proxy.rss_kib()
    sender = threading.Thread(target=sock.sendall, args=(b"S\x00\x00\x00\x04" * count,))
    sender.start()
    received = 0
    peak = 0
    while received < 6 * count:
        chunk = sock.recv(1 << 20)
        assert chunk, "the proxy closed the session"
        received += len(chunk)
        peak = max(peak, proxy.rss_kib())
    sender.join()
    sock.close()
    assert received == 6 * count  # one ReadyForQuery each
    assert max(peak, proxy.rss_kib()) - before < 64 * 1024  # KiB
