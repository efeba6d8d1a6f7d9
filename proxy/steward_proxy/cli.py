"""The ``steward`` command line: one sub-command per module in ``commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit
code. This module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from steward_proxy import __version__

COMMAND_MODULES = ("proxy", "policy", "review", "audit", "classify", "users", "demo", "operator")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` to every option's help that has a default worth naming.

    Options that are required, or whose default is None, False or empty (not
    set), are left alone, and so is help that names its default itself.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if action.required or unset or (isinstance(default, list) and not default):
            return help
        if "%(default)" in help or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)" if help else "(default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A sub-command's parser: ``--help`` shows every default unless it formats its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward",
        description="Steward: governance for every connection to a PostgreSQL database.",
    )
    parser.add_argument("--version", action="version", version=f"steward {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"steward_proxy.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["proxy"]:
        from steward_proxy.config import ConfigError, expand

        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        try:
            argv = ["proxy", *expand(argv[1:], commands.choices["proxy"])]
        except ConfigError as exc:
            parser.exit(2, f"steward proxy: {exc}\n")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
