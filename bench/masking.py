"""Masking: rows per second of a large SELECT directly and through ``steward proxy``, in one run.

Starts a throwaway PostgreSQL with a table of ROWS rows (id, name, email, ssn,
notes) and one proxy whose policy masks three columns (email: email, ssn:
redact, name: hash) for user ``masked``, adds detection on every other text
column for user ``detect``, and covers user ``plain`` with no masking. Reads
with psycopg, alternating direct and proxied, and prints the best time of
each, rows per second and the ratio to direct:

- ``unmasked``: the same query by ``plain`` (today's pass-through);
- ``masked``: three masked columns;
- ``detect``: three masked columns and detection on the other text columns;
- ``workers``: ``masked`` through a second proxy started with
  ``--mask-workers 2`` (long runs of rows masked in worker processes).

Nothing is asserted. Usage::

    .venv/bin/python bench/masking.py [--rows 1000000] [--repeat 3]
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
metadata: {name: bench-masked}
spec:
  subjects: [{kind: User, name: masked}]
  defaultAction: allow
  masking: {rules: [bench-pii]}
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-detect}
spec:
  subjects: [{kind: User, name: detect}]
  defaultAction: allow
  masking: {rules: [bench-pii], detect: true}
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-plain}
spec:
  subjects: [{kind: User, name: plain}]
  defaultAction: allow
---
apiVersion: steward.dev/v1alpha1
kind: MaskingRule
metadata: {name: bench-pii}
spec:
  rules:
    - {columns: [public.people.email], strategy: email}
    - {columns: [public.people.ssn], strategy: redact}
    - {columns: [public.people.name], strategy: hash}
"""

SQL = "SELECT id, name, email, ssn, notes, city FROM people"


def seed(pg: LocalPostgres, rows: int) -> None:
    pg.execute(
        f"""
        CREATE TABLE people AS
        SELECT g AS id,
               'Person ' || g AS name,
               'user' || g || '@example.org' AS email,
               lpad((100 + g % 500)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0')
                 || '-' || lpad((1000 + g % 8999)::text, 4, '0') AS ssn,
               CASE WHEN g % 10 = 0 THEN 'call 212-555-' || lpad((g % 9999)::text, 4, '0')
                    ELSE 'no contact details here' END AS notes,
               'Springfield' AS city
        FROM generate_series(1, {rows}) g;
        ANALYZE people;
        """
    )


def read_all(dsn: str) -> float:
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        start = time.perf_counter()
        cursor.execute(SQL)
        cursor.fetchall()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {
        "direct": [],
        "unmasked": [],
        "masked": [],
        "detect": [],
        "workers": [],
    }
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp, LocalPostgres() as pg:
        seed(pg, args.rows)
        workdir = Path(tmp)
        (workdir / "policy.yaml").write_text(POLICY)
        (workdir / "hash.key").write_text("bench-key-of-32-bytes-0123456789\n")
        (workdir / "workers").mkdir()
        key = ["--hash-key-file", str(workdir / "hash.key")]
        with (
            LocalProxy(
                pg,
                policy=workdir / "policy.yaml",
                audit_log=workdir / "audit.jsonl",
                log_path=workdir / "proxy.log",
                extra_args=key,
            ) as proxy,
            LocalProxy(
                pg,
                policy=workdir / "policy.yaml",
                audit_log=workdir / "workers" / "audit.jsonl",
                log_path=workdir / "workers" / "proxy.log",
                extra_args=[*key, "--mask-workers", "2"],
            ) as pooled,
        ):
            direct_dsn = pg.dsn(LocalPostgres.SCRAM_USER)
            for _ in range(args.repeat):
                times["direct"].append(read_all(direct_dsn))
                times["unmasked"].append(read_all(proxy.dsn("plain")))
                times["masked"].append(read_all(proxy.dsn("masked")))
                times["detect"].append(read_all(proxy.dsn("detect")))
                times["workers"].append(read_all(pooled.dsn("masked")))
    best = {path: min(t) for path, t in times.items()}
    print(f"{args.rows} rows x 6 columns, best of {args.repeat}, psycopg fetchall")
    print(f"{'path':<10} {'seconds':>8} {'rows/s':>12} {'of direct':>10}")
    for path, seconds in best.items():
        ratio = best["direct"] / seconds
        print(f"{path:<10} {seconds:>8.2f} {args.rows / seconds:>12.0f} {ratio:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
