"""What guardrails cost: pgbench through a proxy with ten guardrails and through an allow-all one.

Starts a throwaway PostgreSQL (fsync off), initialises pgbench tables, and starts
two ``steward proxy`` processes in front of it, same options and audit log on:
one whose policy allows everything, one with ten guardrails of every kind
(statements with tables, functions, withoutWhere, DYNAMIC, copy targets,
languages, globs). Then it runs the same select-only pgbench workload through
each, interleaved (allow-all, guardrails, guardrails, allow-all) so drift of a
busy machine weighs on both alike, for each query mode, and prints TPS and the
guardrails/allow-all ratio. The shape cache should make guardrails nearly free:
a statement shape is analysed and judged once. Nothing is asserted: numbers
depend on the machine. Usage::

    .venv/bin/python bench/pgbench_guardrails.py [--seconds 8] [--warmup 2] [--clients 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pgbench_proxy import init_tables, pgbench, tps

from steward_testing.postgres import LocalPostgres, LocalProxy

ALLOW_ALL = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-allow-all}
spec:
  subjects: [{kind: User, name: pgbench}]
  defaultAction: allow
"""

TEN_GUARDRAILS = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-guardrails}
spec:
  subjects: [{kind: User, name: pgbench}]
  defaultAction: allow
  guardrails:
    - {name: no-unbounded-writes, match: {statements: [UPDATE, DELETE], withoutWhere: true},
       action: deny}
    - {name: no-file-access, match: {functions: [pg_read_file, pg_read_binary_file, pg_ls_dir,
       lo_import, lo_export]}, action: deny}
    - {name: no-admin-functions, match: {functions: ["pg_catalog.pg_terminate_*",
       pg_cancel_backend, pg_reload_conf]}, action: deny}
    - {name: no-dynamic-sql, match: {statements: [DYNAMIC]}, action: deny}
    - {name: no-server-copy, match: {copy: [file, program]}, action: deny}
    - {name: no-untrusted-code, match: {languages: ["pl*u", c]}, action: deny}
    - {name: history-append-only, match: {statements: [UPDATE, DELETE, TRUNCATE, MERGE],
       tables: [pgbench_history]}, action: deny}
    - {name: branches-read-only, match: {statements: [INSERT, UPDATE, DELETE],
       tables: ["public.pgbench_branch*"]}, action: deny}
    - {name: secrets-are-logged, match: {tables: ["vault.*", "*.secrets"]}, action: log}
    - {name: schema-changes-need-review, match: {statements: [DROP, ALTER, TRUNCATE]},
       action: review}
  approval:
    approvers: [{kind: Group, name: dba}]
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="duration of each run")
    parser.add_argument(
        "--warmup", type=int, default=2, help="an untimed run through each proxy first"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument(
        "--modes", default="simple,prepared", help="pgbench query modes, comma-separated"
    )
    args = parser.parse_args(argv)

    user = LocalPostgres.SCRAM_USER
    with (
        tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp,
        LocalPostgres(fast=True) as pg,
    ):
        init_tables(pg, args.scale)

        workdir = Path(tmp)
        proxies: dict[str, LocalProxy] = {}
        for name, policy in (("allow-all", ALLOW_ALL), ("guardrails", TEN_GUARDRAILS)):
            (workdir / f"{name}.yaml").write_text(policy)
            proxies[name] = LocalProxy(
                pg,
                policy=workdir / f"{name}.yaml",
                audit_log=workdir / f"{name}.jsonl",
                log_path=workdir / f"{name}.log",
                upstream_user=user,
                extra_args=["--max-connections", str(args.clients * 4)],
            )
        try:
            for proxy in proxies.values():
                proxy.start()
            run = ["-S", "-n", "-c", str(args.clients), "-j", str(args.jobs)]
            if args.warmup:
                print("warming up both proxies and the server ...", flush=True)
                for proxy in proxies.values():
                    pgbench(pg, [*run, "-T", str(args.warmup)], port=proxy.port, user="pgbench",
                            password="")  # fmt: skip
            run += ["-T", str(args.seconds)]
            rows = []
            for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                totals = {"allow-all": 0.0, "guardrails": 0.0}
                for name in ("allow-all", "guardrails", "guardrails", "allow-all"):
                    print(f"pgbench -M {mode}: through the {name} proxy ...", flush=True)
                    result = pgbench(
                        pg, [*run, "-M", mode], port=proxies[name].port, user="pgbench", password=""
                    )
                    totals[name] += tps(result.stdout) / 2
                rows.append((mode, totals["allow-all"], totals["guardrails"]))
        except BaseException:
            for proxy in proxies.values():
                print(proxy.log(), file=sys.stderr)
            raise
        finally:
            codes = {name: proxy.stop() for name, proxy in proxies.items()}

    print()
    print(
        f"pgbench -S, {args.clients} clients, {args.jobs} threads, 2 x {args.seconds}s per proxy "
        f"and mode, scale {args.scale}; proxy exit codes {codes}"
    )
    print(f"{'mode':<10} {'allow-all TPS':>14} {'guardrails TPS':>15} {'guardrails/allow-all':>21}")
    for mode, allow_all, guarded in rows:
        print(f"{mode:<10} {allow_all:>14.0f} {guarded:>15.0f} {guarded / allow_all:>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
