"""``steward audit verify FILE...``: check an audit trail's hash chain.

Exit 0 when the chain is intact, 1 naming the first bad record otherwise, and
2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from steward_proxy.audit import verify

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2


def register(subparsers: Any) -> None:
    """Add the ``audit`` command and its ``verify`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "audit", help="work with audit trails", description="Work with Steward audit trails."
    )
    commands = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser(
        "verify",
        help="verify an audit trail's hash chain",
        description=(
            "Recompute every record's hash and the chain between records, and name the "
            "first record that was changed, removed, reordered or inserted. Given one "
            "FILE, its rotated siblings (FILE.1, FILE.2, ...; higher is newer) are "
            "checked first; several FILEs are read in the order given."
        ),
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="audit trail file(s)")
    check.add_argument(
        "--complete",
        action="store_true",
        help="the files hold the whole trail: fail unless it starts at seq 1",
    )
    check.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """Verify ``args.files`` and print the outcome; return the exit code."""
    result = verify(args.files, require_start=args.complete)
    files = ", ".join(result.files) or ", ".join(args.files)
    if result.ok:
        print(f"OK: {result.records} records, chain intact ({files})")
        if result.first_seq is not None and result.first_seq > 1:
            print(
                f"note: the chain starts at seq {result.first_seq}; "
                "earlier records are not in these files"
            )
        if result.last_hash is not None:
            print(f"last record: seq {result.last_seq}, hash {result.last_hash}")
        return EXIT_OK
    if result.problem == "unreadable":
        print(f"ERROR: {result.message}", file=sys.stderr)
        return EXIT_UNREADABLE
    where = f"{result.file} line {result.line}"
    if result.seq is not None:
        where += f" (seq {result.seq})"
    print(f"FAIL: {where}: {result.message}")
    return EXIT_TAMPERED
