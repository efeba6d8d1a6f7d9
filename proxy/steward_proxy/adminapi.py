"""The admin endpoints that need the admin token: reviews, and pushed YAML policy.

Every request here must carry ``Authorization: Bearer TOKEN`` with the token
of ``--admin-token-file``; a proxy started without one answers 401 to all of
them. Whoever holds the token may act as any approver: the approver's subject
and groups are what the request says.

- ``GET /reviews`` (``?state=pending``...): a JSON list of reviews, oldest first;
- ``GET /reviews/ID``: one review (404 if unknown);
- ``POST /reviews/ID/approve`` and ``/deny`` with ``{"subject": ...,
  "groups": [...], "reason": ...}``, or with ``{"id_token": ...}`` instead of
  subject and groups on a proxy that signs people in with OIDC (the
  approver is then who the verified token says): 200 and the review; 403 when the
  approver may not decide it (not in ``approval.approvers``, or the
  requester), 404 unknown, 409 not pending (decided, used, or expired);
- ``PUT /policy`` with YAML documents, when the proxy runs ``--policy``
  files: 200 when loaded (or already running), 422 when they do not load.

Bodies are bounded; answers are JSON objects (a list for ``GET /reviews``).
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from steward_proxy.auth.base import AuthFailed
from steward_proxy.auth.oidc import OidcAuthenticator, UnknownKey, verify_token
from steward_proxy.policy import Identity, PolicyError, is_valid_subject
from steward_proxy.review import STATES, ReviewRefused
from steward_proxy.reviewdesk import ReviewStoreError

if TYPE_CHECKING:
    from steward_proxy.policyfiles import PolicyFiles
    from steward_proxy.server import ProxyServer

__all__ = ["MAX_DECISION_BYTES", "AdminApi", "read_token"]

MAX_DECISION_BYTES = 65536
_MAX_GROUPS = 256
_REFUSED_STATUS = {"unknown": 404, "state": 409, "approver": 403}

Answer = tuple[int, Any]


def read_token(text: str) -> str:
    """The token in a token file's text (surrounding whitespace dropped); refuses an empty one."""
    token = text.strip()
    if not token:
        raise ValueError("the admin token file is empty")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("the admin token must be one line of printable characters")
    return token


class AdminApi:
    """Routes and answers of the token-protected endpoints."""

    def __init__(
        self, proxy: ProxyServer, token: str | None = None, files: PolicyFiles | None = None
    ) -> None:
        self.proxy = proxy
        self._token = token.encode() if token else None
        self.files = files

    def owns(self, method: str, path: str) -> bool:
        """Whether this API answers ``method path``."""
        if path == "/policy":
            return method == "PUT" and self.files is not None
        return path == "/reviews" or path.startswith("/reviews/")

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the admin token."""
        if self._token is None or not header:
            return False
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)

    def handle(self, method: str, target: str, body: bytes, client: str) -> Answer:
        """The status and JSON answer for an authorized request."""
        path, _, query = target.partition("?")
        if path == "/policy":
            return self._put_policy(body, client)
        parts = [unquote(p) for p in path.split("/")[2:]]
        desk = self.proxy.review_desk
        if method == "GET" and not parts:
            state = parse_qs(query).get("state", [None])[-1]
            if state is not None and state not in STATES:
                return 400, {"error": f"state must be one of {', '.join(STATES)}"}
            return 200, [r.as_json() for r in desk.list_threadsafe(state)]  # type: ignore[arg-type]
        if method == "GET" and len(parts) == 1:
            review = desk.get_threadsafe(parts[0])
            if review is None:
                return 404, {"error": "no such review", "problem": "unknown"}
            return 200, review.as_json()
        if method == "POST" and len(parts) == 2 and parts[1] in ("approve", "deny"):
            return self._decide(parts[0], parts[1] == "approve", body, client)
        return 404, {"error": "not found"}

    def _decide(self, review_id: str, approve: bool, body: bytes, client: str) -> Answer:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "the body must be JSON"}
        if not isinstance(request, dict):
            return 400, {"error": "the body must be a JSON object"}
        reason = request.get("reason")
        if "id_token" in request:
            proven = self._approver_from_token(request["id_token"])
            if isinstance(proven, tuple):
                return proven
            subject, groups = proven.subject, list(proven.groups)
        else:
            subject, groups = request.get("subject"), request.get("groups", [])
        if not isinstance(subject, str) or not is_valid_subject(subject):
            return 400, {
                "error": "subject must be user:NAME or system:serviceaccount:NAMESPACE:NAME"
            }
        if (
            not isinstance(groups, list)
            or len(groups) > _MAX_GROUPS
            or not all(isinstance(g, str) and g for g in groups)
        ):
            return 400, {"error": "groups must be a list of group names"}
        if reason is not None and not isinstance(reason, str):
            return 400, {"error": "reason must be a string"}
        try:
            approver = Identity(subject, tuple(groups))
            review = self.proxy.review_desk.decide_threadsafe(
                review_id, approve=approve, approver=approver, reason=reason, client=client
            )
        except ValueError as exc:
            return 400, {"error": str(exc)}
        except ReviewRefused as exc:
            return _REFUSED_STATUS[exc.problem], {"error": exc.message, "problem": exc.problem}
        except ReviewStoreError:
            return 500, {"error": "the review store cannot be written; nothing was decided"}
        return 200, review.as_json()

    def _approver_from_token(self, token: Any) -> Identity | Answer:
        """The identity an OIDC ID token proves, checked as a sign-in would be."""
        authenticator = self.proxy.authenticator
        if not isinstance(authenticator, OidcAuthenticator):
            return 400, {"error": "this proxy has no OIDC settings: name the approver instead"}
        keys = authenticator.cache.keys
        if not isinstance(token, str) or keys is None:
            return 403, {"error": "the ID token cannot be checked", "problem": "approver"}
        try:
            return verify_token(token.strip(), keys, authenticator.settings)
        except (AuthFailed, UnknownKey) as exc:
            # Never the token itself: only why it is not accepted.
            why = exc.message if isinstance(exc, AuthFailed) else "it names an unknown key"
            return 403, {"error": f"the ID token is not accepted: {why}", "problem": "approver"}

    def _put_policy(self, body: bytes, client: str) -> Answer:
        assert self.files is not None
        try:
            return 200, self.files.offer_yaml_threadsafe(body, f"push from {client}")
        except PolicyError as exc:
            return 422, {"error": "the policy does not load", "errors": list(exc.errors)}
