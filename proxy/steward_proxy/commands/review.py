"""``steward review list|approve|deny``: approvals through a proxy's admin endpoint.

Each sub-command talks to ``--admin URL`` (the proxy's ``--admin`` address)
with the bearer token in ``--token-file``. ``approve`` and ``deny`` name the
approver with ``--as SUBJECT`` and ``--group NAME``, or with the approver's
OIDC ID token (``--id-token-file``), which a proxy that signs people in with
OIDC verifies; the proxy checks the approver against the policy's
``approval.approvers`` and refuses the requester.

Exit codes: 0 done, 1 the proxy refused (the reason is printed), 2 the
request could not be made (bad arguments, no token, proxy unreachable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from steward_proxy.escape import escape

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2
TIMEOUT = 15.0

_COLUMNS = ("id", "state", "subject", "policy", "rule", "expires", "statement")


class RequestFailed(Exception):
    """The admin endpoint could not be asked, or answered with an error."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused


def register(subparsers: Any) -> None:
    """Add ``review`` and its sub-commands to ``subparsers``."""
    parser = subparsers.add_parser(
        "review",
        help="list, approve and deny statements held for review",
        description="Approvals through a proxy's admin endpoint (standalone mode).",
    )
    commands = parser.add_subparsers(dest="review_command", metavar="SUBCOMMAND", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--admin",
            default=os.environ.get("STEWARD_ADMIN_URL"),
            metavar="URL",
            help="the proxy's admin endpoint, e.g. http://127.0.0.1:9187 or 127.0.0.1:9187 "
            "(default: the STEWARD_ADMIN_URL variable)",
        )
        sub.add_argument(
            "--token-file",
            default=os.environ.get("STEWARD_ADMIN_TOKEN_FILE"),
            metavar="FILE",
            help="file with the proxy's admin token (default: the STEWARD_ADMIN_TOKEN_FILE "
            "variable)",
        )

    listing = commands.add_parser("list", help="list reviews", description="List reviews.")
    common(listing)
    listing.add_argument(
        "--state",
        choices=("pending", "approved", "denied", "expired", "used"),
        help="only reviews in this state (default: all)",
    )
    listing.add_argument("--json", action="store_true", help="print the JSON the proxy sent")
    listing.set_defaults(func=run_list)

    for verb in ("approve", "deny"):
        sub = commands.add_parser(
            verb,
            help=f"{verb} a review",
            description=f"{verb.capitalize()} review ID as an approver of its policy.",
        )
        common(sub)
        sub.add_argument("review_id", metavar="ID")
        who = sub.add_mutually_exclusive_group(required=True)
        who.add_argument(
            "--as",
            dest="subject",
            metavar="SUBJECT",
            help="the approver: user:NAME or system:serviceaccount:NAMESPACE:NAME",
        )
        who.add_argument(
            "--id-token-file",
            metavar="FILE",
            help="the approver's OIDC ID token; the proxy verifies it as a sign-in and "
            "takes the approver and groups from it (proxies with --oidc-issuer only)",
        )
        sub.add_argument(
            "--group",
            dest="groups",
            action="append",
            default=[],
            metavar="NAME",
            help="a group of the approver (repeatable; default: none)",
        )
        sub.add_argument("--reason", metavar="TEXT", help="why (kept with the review)")
        sub.set_defaults(func=run_decide, approve=verb == "approve")


def run_list(args: argparse.Namespace) -> int:
    query = f"?state={args.state}" if args.state else ""
    try:
        reviews = _request(args, "GET", f"/reviews{query}")
    except RequestFailed as exc:
        return _failed(exc)
    if args.json:
        print(json.dumps(reviews, indent=2))
        return EXIT_OK
    rows = [[escape(str(r.get(c) or "-"), 80) for c in _COLUMNS] for r in reviews]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(_COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def run_decide(args: argparse.Namespace) -> int:
    body: dict[str, Any]
    if args.id_token_file:
        if args.groups:
            print("steward review: --group goes with --as; the token names the groups")
            return EXIT_ERROR
        try:
            body = {"id_token": Path(args.id_token_file).read_text().strip()}
        except (OSError, UnicodeDecodeError) as exc:
            print(f"steward review: cannot read the ID token file: {exc}", file=sys.stderr)
            return EXIT_ERROR
    else:
        body = {"subject": args.subject, "groups": args.groups}
    if args.reason:
        body["reason"] = args.reason
    verb = "approve" if args.approve else "deny"
    try:
        review = _request(args, "POST", f"/reviews/{quote(args.review_id, safe='')}/{verb}", body)
    except RequestFailed as exc:
        return _failed(exc)
    print(
        f"review {review['id']} {review['state']}: {review['subject']} may run "
        f"{escape(review['statement'], 200)} once before {review['expires']}"
        if review["state"] == "approved"
        else f"review {review['id']} {review['state']}"
    )
    return EXIT_OK


def _request(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    if not args.admin:
        raise RequestFailed("give --admin URL (or set STEWARD_ADMIN_URL)", refused=False)
    if not args.token_file:
        raise RequestFailed(
            "give --token-file FILE (or set STEWARD_ADMIN_TOKEN_FILE)", refused=False
        )
    try:
        token = Path(args.token_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestFailed(f"cannot read the token file: {exc}", refused=False) from None
    data = json.dumps(body).encode() if body is not None else None
    base = args.admin if "://" in args.admin else f"http://{args.admin}"  # HOST:PORT as --admin
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("error") or err.reason
        except (ValueError, AttributeError):
            detail = err.reason
        refused = err.code in (403, 404, 409)
        raise RequestFailed(f"{detail} (HTTP {err.code})", refused=refused) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RequestFailed(f"cannot reach {args.admin}: {reason}", refused=False) from None


def _failed(exc: RequestFailed) -> int:
    print(f"steward review: {escape(exc.message, 1024)}", file=sys.stderr)
    return EXIT_REFUSED if exc.refused else EXIT_ERROR
