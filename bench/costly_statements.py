"""Statements that cost the analysis far more than their size: memory and stalls, in one run.

Starts a throwaway PostgreSQL and ``steward proxy`` (allow-all policy, audit on).
For each costly statement string, one client sends it while another runs
``SELECT 1`` in a loop; the script samples the proxy's resident memory (the
proxy process and its analysis workers) and records the other client's slowest
answer. A baseline with no costly statement, in the same run, gives the ratio.
Nothing is asserted. Usage::

    .venv/bin/python bench/costly_statements.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from steward_testing.postgres import LocalPostgres, LocalProxy

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-allow-all}
spec:
  subjects: [{kind: User, name: bench}]
  defaultAction: allow
"""

CASES = {
    "500,000 constants (1 MB)": "SELECT " + ",".join(["1"] * 500_000),
    "100,000 x SELECT 1; (0.9 MB)": "SELECT 1;" * 100_000,
    "1.1 MB of text": "SELECT " + "1," * 600_000 + "1",
    "900 statements of 200 constants (0.4 MB)": ("SELECT " + ",".join(["1"] * 200) + ";") * 900,
}


def rss_kib(pid: int) -> tuple[int, int]:
    """Resident memory of ``pid`` and of its children (analysis workers), in KiB."""
    return _rss(pid), sum(_rss(child) for child in children(pid))


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def probe(dsn: str, stop: threading.Event, latencies: list[float]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            latencies.append(time.perf_counter() - start)


def run_case(
    proxy: LocalProxy, sql: str | None, seconds: float
) -> tuple[float, tuple[int, int], float, str]:
    """Slowest probe answer, peak RSS (KiB: proxy, workers), time to the answer, the answer."""
    assert proxy.process is not None
    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(target=probe, args=(proxy.dsn("bench"), stop, latencies))
    prober.start()
    peak = rss_kib(proxy.process.pid)
    outcome, took = "-", 0.0
    done = threading.Event()

    def costly() -> None:
        nonlocal outcome, took
        start = time.perf_counter()
        try:
            with psycopg.connect(proxy.dsn("bench"), autocommit=True) as conn:
                if sql is None:
                    time.sleep(seconds)
                else:
                    conn.execute(sql.encode())  # type: ignore[call-overload]
                    outcome = "ran"
        except psycopg.Error as exc:
            outcome = f"{exc.sqlstate}: {str(exc)[:60]}"
        took = time.perf_counter() - start
        done.set()

    worker = threading.Thread(target=costly)
    worker.start()
    while not done.is_set():
        now = rss_kib(proxy.process.pid)
        peak = (max(peak[0], now[0]), max(peak[1], now[1]))
        time.sleep(0.01)
    worker.join()
    time.sleep(0.2)
    stop.set()
    prober.join()
    return max(latencies), peak, took, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="baseline length")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp, LocalPostgres() as pg:
        workdir = Path(tmp)
        (workdir / "policy.yaml").write_text(POLICY)
        with LocalProxy(
            pg,
            policy=workdir / "policy.yaml",
            audit_log=workdir / "audit.jsonl",
            log_path=workdir / "proxy.log",
        ) as proxy:
            assert proxy.process is not None
            idle = rss_kib(proxy.process.pid)
            base_latency, base_peak, _, _ = run_case(proxy, None, args.seconds)
            proxy_mib, worker_mib = idle[0] / 1024, idle[1] / 1024
            print(f"RSS idle: proxy {proxy_mib:.0f} MiB, analysis worker {worker_mib:.0f} MiB")
            print(
                f"{'case':<42} {'answer':<48} {'s':>5} {'proxy MiB':>9} {'worker MiB':>10} "
                f"{'slowest SELECT 1':>17}"
            )
            for name, sql in {"baseline (no costly statement)": None, **CASES}.items():
                if sql is None:
                    latency, peak, took, outcome = base_latency, base_peak, 0.0, "-"
                else:
                    latency, peak, took, outcome = run_case(proxy, sql, args.seconds)
                print(
                    f"{name:<42} {outcome[:48]:<48} {took:>5.1f} {peak[0] / 1024:>9.0f} "
                    f"{peak[1] / 1024:>10.0f} {latency * 1000:>14.1f} ms "
                    f"(x{latency / base_latency:.1f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
