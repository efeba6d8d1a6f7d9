"""How long a policy change takes to be enforced: file change, SIGHUP and PUT /policy.

Starts a throwaway PostgreSQL and ``steward proxy --policy FILE`` (audit on).
A client keeps one session open and sends ``DELETE FROM t WHERE id = -1``
in a loop; at random moments the policy file is replaced (a complete file
renamed over it), alternately with one that denies DELETE and one that
allows it. The time from the change to the first statement judged under the
new policy is the enforcement latency. Each trigger is measured
``--changes`` times: a file change at the default poll interval (1s) and at
0.1s, SIGHUP with polling off, and ``PUT /policy`` with the admin token.
Nothing is asserted. Usage::

    .venv/bin/python bench/reload_latency.py [--changes 20]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from steward_testing.postgres import LocalPostgres, LocalProxy, free_port

ALLOW = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench}
spec:
  subjects: [{kind: User, name: bench}]
  defaultAction: allow
"""
DENY = (
    ALLOW + "  guardrails:\n    - {name: no-delete, match: {statements: [DELETE]}, action: deny}\n"
)
TOKEN = "bench-token"


def write(path: Path, text: str) -> None:
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(text)
    os.replace(fresh, path)


def denied(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("DELETE FROM t WHERE id = -1")
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def measure(
    conn: psycopg.Connection, policy: Path, changes: int, trigger: Callable[[str], None]
) -> list[float]:
    """Seconds from each change to the first statement judged under it."""
    seconds = []
    jitter = random.Random(1)
    for n in range(changes):
        deny = n % 2 == 0
        # Changes come at any moment, not just after the last poll found one.
        time.sleep(jitter.uniform(0, 1))
        start = time.perf_counter()
        write(policy, DENY if deny else ALLOW)
        trigger(DENY if deny else ALLOW)
        while denied(conn) != deny:
            time.sleep(0.001)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="steward-reload-") as tmp, LocalPostgres() as pg:
        root = Path(tmp)
        pg.execute("CREATE ROLE bench LOGIN; CREATE TABLE t (id int); GRANT ALL ON t TO bench")
        (root / "token").write_text(TOKEN)
        cases: list[tuple[str, list[str], str]] = [
            ("file change, --policy-poll 1 (default)", [], "file"),
            ("file change, --policy-poll 0.1", ["--policy-poll", "0.1"], "file"),
            ("SIGHUP, --policy-poll 0", ["--policy-poll", "0"], "sighup"),
            ("PUT /policy, --policy-poll 0", ["--policy-poll", "0"], "put"),
        ]
        print(f"{'trigger':42} {'median':>8} {'p90':>8} {'max':>8}  (ms, {args.changes} changes)")
        for i, (name, extra, how) in enumerate(cases):
            policy = root / f"policy{i}.yaml"
            policy.write_text(ALLOW)
            admin = free_port()
            proxy = LocalProxy(
                pg,
                policy=policy,
                audit_log=root / f"audit{i}.log",
                log_path=root / f"proxy{i}.log",
                extra_args=[
                    *extra,
                    "--admin",
                    f"127.0.0.1:{admin}",
                    "--admin-token-file",
                    str(root / "token"),
                    "--review-store",
                    str(root / f"reviews{i}.sqlite3"),
                ],
            ).start()
            try:
                process = proxy.process
                assert process is not None

                def trigger(
                    text: str, how: str = how, admin: int = admin, process: Any = process
                ) -> None:
                    if how == "sighup":
                        process.send_signal(signal.SIGHUP)
                    elif how == "put":
                        request = urllib.request.Request(
                            f"http://127.0.0.1:{admin}/policy",
                            data=text.encode(),
                            method="PUT",
                            headers={"Authorization": f"Bearer {TOKEN}"},
                        )
                        urllib.request.urlopen(request, timeout=10).close()

                dsn = f"postgresql://bench@{proxy.host}:{proxy.port}/{pg.dbname}"
                with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
                    # Not prepared: a session holding a prepared statement that a
                    # new policy refuses is ended, which is not what is measured.
                    seconds = measure(conn, policy, args.changes, trigger)
            finally:
                proxy.stop()
            ms = sorted(s * 1000 for s in seconds)
            p90 = ms[int(0.9 * (len(ms) - 1))]
            print(f"{name:42} {statistics.median(ms):8.1f} {p90:8.1f} {ms[-1]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
