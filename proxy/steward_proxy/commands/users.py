"""``steward users add NAME``: write a SCRAM-SHA-256 verifier into a users file.

The file is what ``steward proxy --users-file`` reads (PgBouncer's
``auth_file`` format, plus an optional groups column). The password is read
from the terminal (twice) or, with ``--password-stdin``, from the first line of
standard input; only its verifier is written, never the password. An existing
entry for NAME is replaced; other lines are kept as they are. The file is
replaced atomically and readable by its owner only.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

from steward_proxy.auth.scram import (
    DEFAULT_ITERATIONS,
    UserEntry,
    UsersFileError,
    make_verifier,
    parse_users,
    upsert_line,
)
from steward_proxy.escape import has_controls


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "users",
        help="manage the SCRAM users file of --users-file",
        description="Manage the users file `steward proxy --users-file` reads.",
    )
    commands = parser.add_subparsers(dest="users_command", metavar="SUBCOMMAND", required=True)
    add = commands.add_parser(
        "add",
        help="add a user or set its password and groups",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument("name", metavar="NAME", help="the user name clients sign in with")
    add.add_argument(
        "--file",
        default="steward-users.txt",
        metavar="FILE",
        help="the users file (created when missing) (default: %(default)s)",
    )
    add.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="a group the user belongs to (repeat for several; default: none)",
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of the terminal",
    )
    add.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        metavar="N",
        help="PBKDF2 iterations of the verifier, 4096 or more (default: %(default)s)",
    )
    add.set_defaults(func=run_add)


def _password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        print("steward users: the passwords differ; nothing written", file=sys.stderr)
        return None
    return first


def _saslprep(password: str) -> str:
    """The password as clients send it (RFC 4013), or as it is where that fails (PostgreSQL)."""
    from scramp.utils import saslprep

    try:
        return saslprep(password)
    except Exception:
        return password


def run_add(args: argparse.Namespace) -> int:
    name = args.name
    if not name or has_controls(name) or any(not g or "," in g for g in args.group):
        print("steward users: invalid user or group name", file=sys.stderr)
        return 2
    if args.iterations < DEFAULT_ITERATIONS:
        print(f"steward users: --iterations must be {DEFAULT_ITERATIONS} or more", file=sys.stderr)
        return 2
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        parse_users(text, origin=str(path))  # refuse to extend a file the proxy cannot read
    except (OSError, UnicodeDecodeError, UsersFileError) as exc:
        print(f"steward users: {exc}", file=sys.stderr)
        return 2
    password = _password(args)
    if password is None:
        return 1
    if not password:
        print("steward users: an empty password is not allowed", file=sys.stderr)
        return 2
    entry = UserEntry(name, make_verifier(_saslprep(password), args.iterations), tuple(args.group))
    content = upsert_line(text, entry)
    directory = path.resolve().parent
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        print(f"steward users: cannot write {path}: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: SCRAM-SHA-256 verifier written to {path}")
    return 0
