"""pgbench directly against PostgreSQL and through ``steward proxy``, in one run.

Starts a throwaway PostgreSQL (fsync off), initialises pgbench tables, starts the
proxy in front of it (allow-all policy for the ``pgbench`` user, audit log on),
then runs the same select-only pgbench workload directly and through the proxy
for each query mode and prints TPS and the proxied/direct ratio. A pure
byte-forwarding relay (``bench/forwarder.py``, same asyncio shell, no
governance) runs in the same pass as a second baseline, so the cost of
governance shows apart from the cost of any Python hop. With ``--baseline-ref
REF`` the proxy as it was at git commit REF runs in the same pass too (checked
out into a temporary directory), to measure a change. Each hop's own CPU time
per transaction is printed too (from /proc): it depends less on what else runs
on the machine than TPS does. Every hop runs ``--rounds`` times, in an order
rotated each round so that none always runs first (or last, after the others
warmed or loaded the machine), and the medians are printed. Nothing is
asserted: numbers depend on the machine. Usage::

    .venv/bin/python bench/pgbench_proxy.py [--seconds 10] [--rounds 3] [--clients 8]
        [--jobs 2] [--baseline-ref COMMIT]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from steward_testing.postgres import LocalPostgres, LocalProxy, free_port, wait_for_port

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: bench-allow-all}
spec:
  subjects: [{kind: User, name: pgbench}]
  defaultAction: allow
"""


def pgbench(
    pg: LocalPostgres, args: list[str], *, port: int, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password:
        env["PGPASSWORD"] = password
    argv = [pg.bin("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user, *args, pg.dbname]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
    return result


def init_tables(pg: LocalPostgres, scale: int) -> None:
    """pgbench's tables at ``scale``, vacuumed and analysed."""
    su, su_pw = LocalPostgres.SUPERUSER, pg.passwords[LocalPostgres.SUPERUSER]
    print(f"initialising pgbench tables (scale {scale}) ...", flush=True)
    pgbench(pg, ["-i", "-q", "-s", str(scale)], port=pg.port, user=su, password=su_pw)
    pg.execute("VACUUM ANALYZE;")


def tps(output: str) -> float:
    match = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def transactions(output: str) -> int:
    match = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no transaction count in pgbench output:\n{output}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def through(
    pg: LocalPostgres, args: list[str], *, port: int, user: str, password: str, pid: int | None
) -> tuple[float, float]:
    """TPS through the hop listening on ``port``, and the hop's CPU µs per transaction.

    CPU per transaction does not depend on how busy the machine is as much as
    TPS does: it is the cost of the hop itself.
    """
    before = cpu_seconds(pid) if pid is not None else 0.0
    output = pgbench(pg, args, port=port, user=user, password=password).stdout
    if pid is None:
        return tps(output), float("nan")
    spent = cpu_seconds(pid) - before
    return tps(output), spent / max(transactions(output), 1) * 1e6


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Median TPS and median CPU per transaction of a hop's runs."""
    return statistics.median(t for t, _ in runs), statistics.median(c for _, c in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each run")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="runs of each hop, in an order rotated every round; medians are printed",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument(
        "--modes", default="simple,prepared", help="pgbench query modes, comma-separated"
    )
    parser.add_argument(
        "--upstream-user",
        default=LocalPostgres.SCRAM_USER,
        choices=[LocalPostgres.SCRAM_USER, LocalPostgres.MD5_USER, LocalPostgres.TRUST_USER],
        help="role (and so auth method) for the proxy's upstream login and the direct runs",
    )
    parser.add_argument(
        "--baseline-ref", metavar="REF", help="also run the proxy of this git commit"
    )
    args = parser.parse_args(argv)

    user = args.upstream_user
    with (
        tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp,
        LocalPostgres(fast=True) as pg,
    ):
        init_tables(pg, args.scale)

        workdir = Path(tmp)
        (workdir / "policy.yaml").write_text(POLICY)
        proxy = LocalProxy(
            pg,
            policy=workdir / "policy.yaml",
            audit_log=workdir / "audit.jsonl",
            log_path=workdir / "proxy.log",
            upstream_user=user,
            extra_args=["--max-connections", str(args.clients * 4)],
        )
        old = None
        if args.baseline_ref:
            checkout = workdir / "baseline"
            repo = Path(__file__).resolve().parents[1]
            archive = subprocess.run(
                # crds/ too: the package reads the CRDs through a link to it.
                ["git", "-C", str(repo), "archive", args.baseline_ref, "proxy", "operator", "crds"],
                capture_output=True,
                check=True,
            ).stdout
            checkout.mkdir()
            subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
            old = LocalProxy(
                pg,
                policy=workdir / "policy.yaml",
                audit_log=workdir / "audit-baseline.jsonl",
                log_path=workdir / "proxy-baseline.log",
                upstream_user=user,
                extra_args=["--max-connections", str(args.clients * 4)],
                env={"PYTHONPATH": f"{checkout / 'proxy'}:{checkout / 'operator'}"},
            )
        relay_port = free_port()
        relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forwarder.py")), str(relay_port),
             str(pg.port)]
        )  # fmt: skip
        try:
            proxy.start()
            if old is not None:
                old.start()
            wait_for_port("127.0.0.1", relay_port, process=relay)
            run = ["-S", "-n", "-c", str(args.clients), "-j", str(args.jobs)]
            run += ["-T", str(args.seconds)]
            assert proxy.process is not None
            hops: dict[str, tuple[int, str, str, int | None]] = {
                "direct": (pg.port, user, pg.passwords[user], None),
                "relay": (relay_port, user, pg.passwords[user], relay.pid),
                "proxy": (proxy.port, "pgbench", "", proxy.process.pid),
            }
            if old is not None:
                assert old.process is not None
                hops["baseline"] = (old.port, "pgbench", "", old.process.pid)
            modes = [m.strip() for m in args.modes.split(",") if m.strip()]
            runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
            order = list(hops)
            for round_ in range(args.rounds):
                for mode in modes:
                    for hop in order:
                        port, login, password, pid = hops[hop]
                        print(f"round {round_ + 1}, pgbench -M {mode}: {hop} ...", flush=True)
                        runs.setdefault((mode, hop), []).append(
                            through(
                                pg, [*run, "-M", mode], port=port, user=login,
                                password=password, pid=pid,
                            )
                        )  # fmt: skip
                order = order[1:] + order[:1]  # no hop always runs first
            rows = [
                (mode, *(_median(runs[mode, hop]) if (mode, hop) in runs else None for hop in hops))
                for mode in modes
            ]
        except BaseException:
            print(proxy.log(), file=sys.stderr)
            raise
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=30)
            exit_code = proxy.stop()
            if old is not None:
                old.stop()
        audit_lines = len(proxy.audit_log.read_bytes().splitlines())

    print()
    print(
        f"pgbench -S, {args.clients} clients, {args.jobs} threads, {args.seconds}s per run, "
        f"median of {args.rounds} rounds, "
        f"scale {args.scale}; proxy exit code {exit_code}, {audit_lines} audit records"
    )
    print(
        f"{'mode':<10} {'direct TPS':>11} {'relay TPS':>10} {'proxy TPS':>10} "
        f"{'relay/direct':>13} {'proxy/direct':>13} {'proxy/relay':>12} "
        f"{'relay CPU':>10} {'proxy CPU':>10}"
    )
    for mode, (direct, _), (relayed, relay_cpu), (proxied, proxy_cpu), baseline in rows:
        print(
            f"{mode:<10} {direct:>11.0f} {relayed:>10.0f} {proxied:>10.0f} "
            f"{relayed / direct:>13.2f} {proxied / direct:>13.2f} {proxied / relayed:>12.2f} "
            f"{relay_cpu:>7.1f} us {proxy_cpu:>7.1f} us"
        )
        if baseline is not None:
            old_tps, old_cpu = baseline
            print(
                f"{'':<10} {args.baseline_ref[:10]:>11} {'':>10} {old_tps:>10.0f} "
                f"{'':>13} {old_tps / direct:>13.2f} {old_tps / relayed:>12.2f} "
                f"{'':>10} {old_cpu:>7.1f} us"
                f"   (this proxy / {args.baseline_ref[:10]}: TPS {proxied / old_tps:.2f},"
                f" CPU per transaction {proxy_cpu / old_cpu:.2f})"
            )
    print("CPU: the hop's own user+system CPU time per transaction (from /proc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
