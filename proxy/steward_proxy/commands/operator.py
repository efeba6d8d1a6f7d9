"""``steward operator``: run the Kubernetes operator (``steward_operator``).

The arguments live with the operator; this module only registers them, so
``steward --help`` needs none of the operator's dependencies.
"""

from __future__ import annotations

import argparse

from steward_operator.cli import DESCRIPTION, add_arguments, run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the Kubernetes operator", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
