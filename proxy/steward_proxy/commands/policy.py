"""``steward policy check`` and ``steward policy explain``.

``check PATH...`` validates policy files the way the proxy loads them and prints
one line per problem. ``explain`` shows, as JSON, what the proxy would decide for
a subject running some SQL under the given policies, with the names the audit
record uses (``decision``, ``policy``, ``rule``, ``message``), and for each
statement what it executes: its operations (each with its own decision), the
functions it calls or wires in, and whether it is an unbounded write.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from steward_proxy.policy import (
    Decision,
    Identity,
    PolicyError,
    compile_documents,
    decide,
    decide_each,
    decide_operations,
    is_valid_subject,
    load_policy_set,
    read_documents,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "policy",
        help="check policy files and explain decisions",
        description="Check policy files and explain the decisions they make.",
    )
    commands = parser.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy documents against the CRD schemas and compile them. "
        "Exits non-zero with one line per problem.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="a YAML file or a directory")
    check.set_defaults(func=run_check)

    explain = commands.add_parser(
        "explain",
        help="show the decision for a subject running SQL",
        description="Print, as JSON, the decision the proxy would make for SQL sent by a "
        "subject under the given policies.",
    )
    explain.add_argument(
        "--policy",
        dest="policies",
        action="append",
        required=True,
        metavar="PATH",
        help="a policy file or directory (repeatable)",
    )
    explain.add_argument(
        "--as",
        dest="subject",
        required=True,
        metavar="SUBJECT",
        help="user:NAME or system:serviceaccount:NAMESPACE:NAME",
    )
    explain.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="NAME",
        help="a group of the subject (repeatable)",
    )
    explain.add_argument("sql", metavar="SQL", help="the statement string to judge")
    explain.set_defaults(func=run_explain)


def _fail(errors: tuple[str, ...] | list[str]) -> int:
    for line in errors:
        print(line, file=sys.stderr)
    return 1


def run_check(args: argparse.Namespace) -> int:
    documents, errors = read_documents(args.paths)
    if errors:
        return _fail(errors)
    if not documents:
        return _fail([f"no policy documents found in {', '.join(args.paths)}"])
    try:
        policy_set = compile_documents(documents)
    except PolicyError as exc:
        return _fail(exc.errors)
    print(
        f"OK: {len(documents)} documents ({len(policy_set.policies)} policies, "
        f"{len(policy_set.masking_rules)} masking rules)"
    )
    return 0


def run_explain(args: argparse.Namespace) -> int:
    if not is_valid_subject(args.subject):
        return _fail(
            [
                f"steward policy explain: --as {args.subject!r} is not a subject; "
                "use user:NAME or system:serviceaccount:NAMESPACE:NAME"
            ]
        )
    try:
        identity = Identity(args.subject, tuple(args.groups))
    except ValueError as exc:
        return _fail([f"steward policy explain: {exc}"])
    try:
        policy_set = load_policy_set(args.policies)
    except PolicyError as exc:
        return _fail(exc.errors)

    from steward_proxy.sql import analyze

    try:
        statements = tuple(analyze(args.sql))
    except Exception as exc:
        # The proxy refuses a statement it cannot analyze; explain says so.
        result: dict[str, Any] = {
            "subject": identity.subject,
            "groups": list(identity.groups),
            "policies": [p.key for p in policy_set.policies_for(identity)],
            "decision": "deny",
            "policy": None,
            "rule": None,
            "message": f"statement refused: it could not be analyzed: {exc}",
            "statements": [],
        }
        print(json.dumps(result, indent=2))
        return 1

    policies = policy_set.policies_for(identity)
    overall = decide(policies, statements)
    if not policies:
        overall = Decision(
            "deny",
            None,
            None,
            f"no policy covers subject {identity.subject}: sign-in is refused (SQLSTATE 28000)",
        )
    parts: list[dict[str, Any]] = []
    for statement, decision in zip(statements, decide_each(policies, statements), strict=True):
        parts.append(
            {
                "command": statement.command,
                "statement": statement.normalized,
                "fingerprint": statement.fingerprint,
                "decision": decision.action,
                "policy": decision.policy,
                "rule": decision.rule,
                "message": decision.message,
                "operations": [
                    {
                        "command": op.command,
                        "table": op.table,
                        "unbounded": op.unbounded,
                        "copy": op.copy,
                        "language": op.language,
                        "decision": op_decision.action,
                        "policy": op_decision.policy,
                        "rule": op_decision.rule,
                    }
                    for op, op_decision in decide_operations(policies, statement)
                ],
                "functions": list(statement.functions),
                "tables": list(statement.tables),
                "unbounded": statement.unbounded,
            }
        )
    result = {
        "subject": identity.subject,
        "groups": list(identity.groups),
        "policies": [p.key for p in policies],
        "decision": overall.action,
        "policy": overall.policy,
        "rule": overall.rule,
        "message": overall.message,
        "statements": parts,
    }
    print(json.dumps(result, indent=2))
    return 0
