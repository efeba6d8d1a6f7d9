"""``steward classify --dsn DSN``: find the columns that hold sensitive data.

Samples every text-like column (``TABLESAMPLE`` on large tables, else
``LIMIT``), runs the data-class detectors and weighs column-name hints (see
:mod:`steward_proxy.masking.classify`), and prints a MaskingRule for the
columns it found (``--format yaml``, the default), or per column the class,
confidence and sample size (``--format json``). It never prints a sampled
value. Exit 0 when it ran (whether or not it found anything), 2 when the
database cannot be reached or read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from steward_proxy.escape import escape

COLUMNS_SQL = """
SELECT n.nspname::text, c.relname::text, a.attname::text, c.reltuples::float8
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
  AND (t.typcategory = 'S' OR t.typname IN ('citext', 'json', 'jsonb'))
  AND (cast(:schema as text) IS NULL OR n.nspname = cast(:schema as text))
ORDER BY 1, 2, a.attnum
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="find columns holding sensitive data; print a MaskingRule",
        description=(
            "Sample each text-like column, detect data classes (EMAIL_ADDRESS, CREDIT_CARD, "
            "US_SSN, PHONE_NUMBER, IBAN_CODE, IP_ADDRESS) and weigh column-name hints; "
            "print a MaskingRule for what was found. Sampled values are never printed."
        ),
    )
    parser.add_argument(
        "--dsn",
        required=True,
        help="postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (the password may also come "
        "from PGPASSWORD)",
    )
    parser.add_argument("--schema", default=None, help="only this schema (default: all)")
    parser.add_argument(
        "--sample",
        type=int,
        default=1000,
        metavar="N",
        help="rows sampled per table (default: %(default)s)",
    )
    parser.add_argument(
        "--format", choices=("yaml", "json"), default="yaml", help="output (default: %(default)s)"
    )
    parser.add_argument(
        "--name", default="classified", help="the MaskingRule's name (default: %(default)s)"
    )
    parser.add_argument("--namespace", default=None, help="the MaskingRule's namespace")
    parser.set_defaults(func=run)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def run(args: argparse.Namespace) -> int:
    import pg8000.native
    import yaml

    from steward_proxy.masking.classify import classify_column, masking_rule
    from steward_proxy.upstream import UpstreamTarget

    if args.sample < 1:
        print("steward classify: --sample must be at least 1", file=sys.stderr)
        return 2
    try:
        target = UpstreamTarget.from_url(args.dsn, password=os.environ.get("PGPASSWORD"))
    except ValueError as exc:
        print(f"steward classify: bad --dsn: {exc}", file=sys.stderr)
        return 2
    try:
        conn = pg8000.native.Connection(
            target.user,
            host=target.host,
            port=target.port,
            database=target.database,
            password=target.password,
            ssl_context=target.ssl_context() if target.sslmode not in ("prefer", "allow") else None,
            timeout=30,
            application_name="steward-classify",
        )
    except Exception as exc:
        print(
            f"steward classify: cannot connect to {target.redacted()}: {escape(str(exc))}",
            file=sys.stderr,
        )
        return 2
    findings = []
    try:
        conn.run("SET default_transaction_read_only = on")
        tables: dict[tuple[str, str], tuple[list[str], float]] = {}
        for schema, table, column, tuples in conn.run(COLUMNS_SQL, schema=args.schema):
            tables.setdefault((schema, table), ([], tuples))[0].append(column)
        progress = sys.stderr.isatty() or len(tables) > 50
        for done, ((schema, table), (columns, tuples)) in enumerate(tables.items(), start=1):
            if progress:
                bar = "#" * (30 * done // len(tables))
                print(
                    f"\rclassify [{bar:<30}] {done}/{len(tables)} tables", end="", file=sys.stderr
                )
            sampled = ", ".join(f"{_ident(c)}::text" for c in columns)
            relation = f"{_ident(schema)}.{_ident(table)}"
            sample = ""
            if tuples > args.sample * 10:
                sample = f" TABLESAMPLE BERNOULLI ({min(100.0, 300.0 * args.sample / tuples):.6f})"
            try:
                rows = conn.run(f"SELECT {sampled} FROM {relation}{sample} LIMIT {args.sample}")
            except Exception as exc:
                print(
                    f"\nsteward classify: skipped {escape(schema)}.{escape(table)}: "
                    f"{escape(str(exc))[:200]}",
                    file=sys.stderr,
                )
                continue
            for i, column in enumerate(columns):
                values = (None if r[i] is None else r[i].encode() for r in rows)
                finding = classify_column(f"{schema}.{table}.{column}", values)
                if finding is not None:
                    findings.append(finding)
        if progress:
            print(file=sys.stderr)
    except Exception as exc:
        print(f"steward classify: cannot read the catalog: {escape(str(exc))}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    if args.format == "json":
        print(json.dumps([f.as_json() for f in findings], indent=2))
        return 0
    if not findings:
        print("# steward classify: no sensitive columns found")
        return 0
    print("# steward classify: detected columns (class, confidence, sample size)")
    for f in findings:
        print(
            f"#   {f.column}: {f.data_class or 'name:' + str(f.hint)}, "
            f"{f.confidence:.2f}, {f.sample_size}"
        )
    print(
        yaml.safe_dump(
            masking_rule(findings, name=args.name, namespace=args.namespace), sort_keys=False
        ),
        end="",
    )
    return 0
