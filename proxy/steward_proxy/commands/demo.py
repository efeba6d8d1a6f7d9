"""``steward demo``: a local PostgreSQL, the proxy in front of it, and a guided tour.

Starts a throwaway PostgreSQL (``LocalPostgres``), loads ``examples/demo/schema.sql``
(fake customers, test card numbers, orders), starts ``steward proxy`` as a
subprocess with ``examples/demo/policy.yaml`` and an audit log in a temporary
directory, runs a few statements through it (a query, a parameterised query, a
multi-statement string, a guardrail denial, a refused user), then prints the
audit trail and the result of ``steward audit verify``. Everything is removed
afterwards, also on Ctrl-C. With ``--keep-running`` the proxy stays up for your
own ``psql`` until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_USER = "demo"
REFUSED_USER = "auditor"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a local PostgreSQL + proxy with a sample policy and show what Steward does",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="directory with schema.sql and policy.yaml (default: the repository's examples/demo)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the tour, keep the proxy running for your own clients until Ctrl-C",
    )
    parser.set_defaults(func=run)


def find_examples(explicit: Path | None = None) -> Path:
    """The directory holding the demo's ``schema.sql`` and ``policy.yaml``."""
    candidates = [explicit] if explicit else []
    here = Path(__file__).resolve()
    candidates += [parent / "examples" / "demo" for parent in here.parents]
    for candidate in candidates:
        if candidate and (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError(
        "examples/demo not found: run `steward demo` from a Steward checkout "
        "(pip install -e .) or pass --examples DIR"
    )


class _Tour:
    """Prints numbered steps and runs statements through the proxy."""

    def __init__(self, host: str, port: int, dbname: str) -> None:
        self.host, self.port, self.dbname = host, port, dbname
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n== {self.step}. {text}", flush=True)

    def pg8000(self, user: str, sql: str, **params: Any) -> None:
        import pg8000.native
        from pg8000.exceptions import DatabaseError, InterfaceError

        print(f"   {user}> {sql}" + (f"   -- params {params}" if params else ""))
        try:
            conn = pg8000.native.Connection(
                user=user, host=self.host, port=self.port, database=self.dbname
            )
        except (DatabaseError, InterfaceError) as err:
            self._print_error(err)
            return
        try:
            rows = conn.run(sql, **params)
            names = [c["name"] for c in conn.columns or []]
            _print_table(names, rows or [])
        except DatabaseError as err:
            self._print_error(err)
        finally:
            conn.close()

    def psql(self, user: str, sql: str) -> None:
        print(f"   {user}> {sql}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        dsn = f"postgresql://{user}@{self.host}:{self.port}/{self.dbname}"
        result = subprocess.run(
            [shutil.which("psql") or "psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        for line in (result.stdout + result.stderr).rstrip().splitlines():
            print(f"   {line}")

    @staticmethod
    def _print_error(err: Exception) -> None:
        info = err.args[0] if err.args and isinstance(err.args[0], dict) else {}
        if info:
            print(f"   ERROR {info.get('C', '?????')}: {info.get('M', '')}")
        else:
            print(f"   ERROR: {err}")


def _print_table(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    print("   " + " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("   " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print("   " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"   ({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _print_audit(path: Path) -> None:
    if not path.exists():
        print("   (no audit log written)")
        return
    for line in path.read_text().splitlines():
        record = json.loads(line)
        field = {key: "" if value is None else str(value) for key, value in record.items()}
        if field.get("rule"):
            field["policy"] = f"{field.get('policy', '')}:{field['rule']}"
        print(
            f"   #{field.get('seq', ''):<3} {field.get('type', ''):<14} "
            f"{field.get('identity', ''):<13} {field.get('decision', ''):<6} "
            f"{field.get('policy', ''):<34} {field.get('statement', '')[:70]}"
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run the tour; SIGTERM is treated like Ctrl-C (clean up, exit 130)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        from steward_testing.postgres import LocalPostgres, LocalProxy
    except ImportError:
        print(
            "steward demo: needs the development install (pip install -e '.[dev]', "
            "or `make demo`); the images do not carry it",
            file=sys.stderr,
        )
        return 2
    examples = find_examples(args.examples)
    print("Steward demo: starting a throwaway PostgreSQL ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="steward-demo-") as tmp, LocalPostgres() as pg:
        pg.execute((examples / "schema.sql").read_text())
        workdir = Path(tmp)
        audit_log = workdir / "audit.jsonl"
        proxy = LocalProxy(
            pg,
            policy=examples / "policy.yaml",
            audit_log=audit_log,
            log_path=workdir / "proxy.log",
            own_session=True,  # Ctrl-C reaches the demo, which stops the proxy
        )
        print(
            f"PostgreSQL on 127.0.0.1:{pg.port}; starting steward proxy on 127.0.0.1:{proxy.port}"
        )
        print(f"   (upstream login as {proxy.upstream_user}; clients never see its password)")
        try:
            try:
                proxy.start()
            except RuntimeError as err:
                print(err, file=sys.stderr)
                return 1
            _tour(_Tour(proxy.host, proxy.port, pg.dbname))
            if args.keep_running:
                print(
                    f"\nThe proxy keeps running. Try:  psql '{proxy.dsn(DEMO_USER)}'"
                    "   (Ctrl-C to stop)"
                )
                proxy.wait()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            proxy.stop()
            return 130
        finally:
            code = proxy.stop()
        print("\n== Audit trail (statements carry placeholders, never literal values)")
        _print_audit(audit_log)
        print("\n== steward audit verify")
        verify = subprocess.run(
            [sys.executable, "-m", "steward_proxy", "audit", "verify", str(audit_log)],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in (verify.stdout + verify.stderr).rstrip().splitlines():
            print(f"   {line}")
        print(f"   exit code {verify.returncode}")
        if code != 0:
            print(f"\nsteward proxy exited with {code}; its log:", file=sys.stderr)
            print(proxy.log(), file=sys.stderr)
        print("\nDone: PostgreSQL stopped, temporary files removed.")
        return 0 if code == 0 and verify.returncode == 0 else 1


def _tour(tour: _Tour) -> None:
    tour.title(f"A query as user '{DEMO_USER}' (policy demo-app: defaultAction allow)")
    tour.pg8000(
        DEMO_USER,
        "SELECT c.full_name, count(o.id) AS orders, sum(o.total) AS spent "
        "FROM customers c JOIN orders o ON o.customer_id = c.id "
        "GROUP BY c.full_name ORDER BY spent DESC LIMIT 3",
    )
    tour.title("A parameterised query (the audit log records $1, not the value)")
    tour.pg8000(
        DEMO_USER,
        "SELECT o.id, o.total, o.status FROM orders o JOIN customers c ON c.id = o.customer_id "
        "WHERE c.email = :email ORDER BY o.id LIMIT 3",
        email="ada@example.com",
    )
    tour.title("A multi-statement string through psql (each part is judged)")
    tour.psql(DEMO_USER, "SELECT count(*) AS customers FROM customers; SELECT 'ok' AS status")
    tour.title("A guardrail: DELETE without WHERE is denied (SQLSTATE 42501)")
    tour.pg8000(DEMO_USER, "DELETE FROM orders")
    tour.pg8000(DEMO_USER, "SELECT count(*) AS orders_still_there FROM orders")
    tour.title(f"User '{REFUSED_USER}' is covered by a defaultAction: deny policy")
    tour.pg8000(REFUSED_USER, "SELECT ssn FROM customers WHERE ssn = '000-12-3456'")
    tour.title("A user no policy covers is refused at sign-in (SQLSTATE 28000)")
    tour.pg8000("mallory", "SELECT 1")
