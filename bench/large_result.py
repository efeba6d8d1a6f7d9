"""Large results: rows per second directly and through ``steward proxy``, in one run.

Starts a throwaway PostgreSQL and the proxy (allow-all policy, audit on), then
reads ``SELECT g, repeat('x', WIDTH) FROM generate_series(1, ROWS) g`` with
psycopg several times each way, alternating, and prints the best time of each,
rows per second and the proxied/direct ratio. Nothing is asserted. Usage::

    .venv/bin/python bench/large_result.py [--rows 1000000] [--width 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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


def read_all(dsn: str, sql: str) -> tuple[float, int]:
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        start = time.perf_counter()
        cursor.execute(sql)
        rows = len(cursor.fetchall())
        return time.perf_counter() - start, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sql = f"SELECT g, repeat('x', {args.width}) FROM generate_series(1, {args.rows}) g"
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp, LocalPostgres() as pg:
        workdir = Path(tmp)
        (workdir / "policy.yaml").write_text(POLICY)
        with LocalProxy(
            pg,
            policy=workdir / "policy.yaml",
            audit_log=workdir / "audit.jsonl",
            log_path=workdir / "proxy.log",
        ) as proxy:
            direct_dsn = pg.dsn(LocalPostgres.SCRAM_USER)
            direct, proxied = [], []
            for _ in range(args.repeat):
                direct.append(read_all(direct_dsn, sql)[0])
                seconds, rows = read_all(proxy.dsn("bench"), sql)
                assert rows == args.rows
                proxied.append(seconds)
    best_direct, best_proxied = min(direct), min(proxied)
    print(f"{args.rows} rows of {args.width + 8} bytes, best of {args.repeat}, psycopg fetchall")
    print(f"{'path':<8} {'seconds':>8} {'rows/s':>12}")
    print(f"{'direct':<8} {best_direct:>8.2f} {args.rows / best_direct:>12.0f}")
    print(f"{'proxy':<8} {best_proxied:>8.2f} {args.rows / best_proxied:>12.0f}")
    print(f"proxy/direct throughput: {best_direct / best_proxied:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
