"""``steward audit verify FILE...`` and ``steward audit tail FILE``.

``verify`` checks an audit trail's hash chain: exit 0 when the chain is
intact, 1 naming the first bad record otherwise, and 2 when a file cannot be
read. ``tail`` prints the last records as a table (or as JSON lines), and with
``--follow`` keeps printing new ones, across rotations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from steward_proxy.audit import verify
from steward_proxy.escape import escape

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
    tail = commands.add_parser(
        "tail",
        help="print the last records of an audit trail",
        description="Print the last records of an audit trail as a table, or as JSON lines.",
    )
    tail.add_argument("file", metavar="FILE", help="audit trail file")
    tail.add_argument(
        "-n", "--lines", type=int, default=20, metavar="N", help="records to print first"
    )
    tail.add_argument(
        "-f", "--follow", action="store_true", help="keep printing records as they are written"
    )
    tail.add_argument("--json", action="store_true", help="print each record as its JSON line")
    tail.set_defaults(func=run_tail)


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


COLUMNS: tuple[tuple[str, int], ...] = (
    ("time", 23),
    ("type", 16),
    ("identity", 28),
    ("command", 14),
    ("decision", 8),
    ("statement", 60),
)
"""Table columns and their widths; ``error`` (when set) follows the statement."""


def _cell(value: object, width: int) -> str:
    text = "" if value is None else escape(str(value), limit=width)
    return text.ljust(width)


def format_header() -> str:
    return " ".join(name.upper().ljust(width) for name, width in COLUMNS).rstrip()


def format_record(record: Mapping[str, Any]) -> str:
    """One table row: the columns, then ``error: ...`` when the record has one."""
    values = dict(record)
    values["time"] = str(values.get("time") or "").replace("T", " ").rstrip("Z")[:23]
    if values.get("type") == "session.start" and values.get("command"):
        values["command"] = f"auth:{values['command']}"
    row = " ".join(_cell(values.get(name), width) for name, width in COLUMNS).rstrip()
    if record.get("error"):
        row += "  error: " + escape(str(record["error"]), limit=200)
    return row


def _lines(stream: TextIO) -> Iterator[str]:
    for line in stream:
        if line.endswith("\n"):
            yield line


def _show(line: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(line if line.endswith("\n") else line + "\n")
        return
    try:
        record = json.loads(line)
    except ValueError:
        out.write(f"(not a record: {escape(line.strip(), limit=80)})\n")
        return
    out.write(format_record(record) + "\n")


def run_tail(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the last ``args.lines`` records of ``args.file``; follow it with ``--follow``."""
    path = Path(args.file)
    try:
        stream = path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"steward audit tail: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if not args.json:
        out.write(format_header() + "\n")
    with stream:
        for line in deque(_lines(stream), maxlen=max(args.lines, 0)):
            _show(line, args.json, out)
        out.flush()
        if not args.follow:
            return EXIT_OK
        try:
            _follow(path, stream, args.json, out)
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


def _follow(path: Path, stream: TextIO, as_json: bool, out: TextIO, poll: float = 0.5) -> None:
    """Print lines as they are appended; reopen the file when it is rotated."""
    inode = os.fstat(stream.fileno()).st_ino
    partial = ""
    while True:
        chunk = stream.readline()
        if chunk:
            partial += chunk
            if partial.endswith("\n"):
                _show(partial, as_json, out)
                out.flush()
                partial = ""
            continue
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            rotated = False  # between the rename and the new file
        if rotated:
            stream.close()
            stream = path.open(encoding="utf-8", errors="replace")
            inode = os.fstat(stream.fileno()).st_ino
            continue
        time.sleep(poll)
