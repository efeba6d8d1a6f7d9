"""Admin HTTP endpoint: ``/healthz``, ``/readyz``, ``/metrics`` and ``/policy``.

Served by the standard library's threaded HTTP server on its own thread, so a
slow scrape never stalls the relay loop. ``/readyz`` is 200 only while the
proxy accepts sessions, its audit trail is writable, its configuration is
complete (upstream credentials present), its latest sign-in upstream
worked (:mod:`steward_proxy.readiness`: checked at start and on an interval,
never per scrape) and not every policy it runs is held up by a hash masking key
that cannot be read (fewer are named in its 200 answer).

``GET /policy`` describes the running policy as JSON. ``PUT /policy`` takes a
signed bundle (see :mod:`steward_proxy.reload`) when the proxy runs one
(``--bundle``): 200 when loaded or already running, 400 when it is not a
bundle, 403 for a bad signature or another target, 409 when it is older than
the running one, 422 when it does not compile, 413 when it is too large. No
secret is needed: only a bundle signed by the operator's key is ever taken.

The endpoints that change state or show reviews (``/reviews``, and ``PUT
/policy`` of YAML documents when the proxy runs ``--policy`` files) need the
admin token; see :mod:`steward_proxy.adminapi`.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from steward_proxy.adminapi import MAX_DECISION_BYTES, AdminApi
from steward_proxy.escape import escape
from steward_proxy.policy.bundle import MAX_BUNDLE_BYTES, BundleError

if TYPE_CHECKING:
    from steward_proxy.reload import BundleUpdater
    from steward_proxy.server import ProxyServer

log = logging.getLogger("steward.admin")

_REFUSAL_STATUS = {"malformed": 400, "signature": 403, "target": 403, "stale": 409, "invalid": 422}


class AdminServer:
    """Runs the admin endpoint in a daemon thread."""

    def __init__(
        self,
        address: tuple[str, int],
        proxy: ProxyServer,
        updater: BundleUpdater | None = None,
        api: AdminApi | None = None,
    ) -> None:
        self.proxy = proxy
        api = api or AdminApi(proxy)
        handler = type("Handler", (_Handler,), {"proxy": proxy, "updater": updater, "api": api})
        self.httpd = ThreadingHTTPServer(address, handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    proxy: ProxyServer
    updater: BundleUpdater | None
    api: AdminApi
    server_version = "steward-admin"
    timeout = 10.0  # seconds a client may take to send a request

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self.api.owns("GET", path):
            self._api("GET", 0)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            problems = list(self.proxy.problems)
            if not self.proxy.ready and not problems:
                problems.append("not accepting sessions")
            if self.proxy.audit_failed:
                problems.append("audit trail not writable")
            check = self.proxy.upstream_check  # renewed by the proxy, never by a scrape
            if not check.ready and not self.proxy.problems:
                problems.append(f"upstream: {check.problem} (the log says why)")
            keys = self.proxy.settings.key_source
            if keys is not None and keys.cache.keys is None:
                problems.append("the OIDC key set has not been fetched (the log says why)")
            # A hash key that cannot be read refuses the subjects of its policies: not
            # ready when that is every policy served (a sidecar's one), else said only.
            policies = self.proxy.policies
            blocked = list(self.proxy.hash_keys.blocked(policies).values())
            if blocked and len(blocked) == len(policies.policies):
                problems.extend(blocked)
                blocked = []
            if problems:
                self._reply(503, ("; ".join(problems) + "\n").encode())
            else:
                self._reply(200, ("; ".join(["ready", *blocked]) + "\n").encode())
        elif path == "/metrics":
            self._reply(200, generate_latest(self.proxy.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/policy":
            proxy = self.proxy
            policies = proxy.policies
            self._json(
                200,
                {
                    "source": proxy.policy_source,
                    "target": proxy.bundle_target,
                    "generation": proxy.policy_generation,
                    "hash": proxy.bundle_hash,
                    "compiledHash": policies.compiled_hash,
                    "policies": [p.key for p in policies.policies],
                },
            )
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        if self.api.owns("POST", self.path.split("?", 1)[0]):
            self._api("POST", MAX_DECISION_BYTES)
        else:
            self._reply(404, b"not found\n")

    def do_PUT(self) -> None:
        if self.path.split("?", 1)[0] != "/policy":
            self._reply(404, b"not found\n")
            return
        if self.updater is None and self.api.owns("PUT", "/policy"):
            self._api("PUT", MAX_BUNDLE_BYTES)
            return
        if self.updater is None:
            self._json(403, {"error": "policy push is not enabled: this proxy runs no --bundle"})
            return
        data = self._body(MAX_BUNDLE_BYTES)
        if data is None:
            return
        try:
            outcome = self.updater.offer_threadsafe(data, f"push from {self.client_address[0]}")
        except BundleError as exc:
            self._json(_REFUSAL_STATUS[exc.problem], {"error": exc.message, "problem": exc.problem})
            return
        except Exception:
            self._json(500, {"error": "the bundle was not loaded; the running policy stays"})
            return
        self._json(200, outcome.as_json())

    def _body(self, limit: int) -> bytes | None:
        """The request body, read only when its declared length is at most ``limit``.

        None when it is refused (the answer is sent).
        """
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            self._json(411, {"error": "Content-Length is required"})
            return None
        if int(length) > limit:
            self.close_connection = True
            self._json(413, {"error": f"the body has at most {limit} bytes"})
            return None
        return self.rfile.read(int(length))

    def _api(self, method: str, max_body: int) -> None:
        """A request for :class:`AdminApi`: the admin token first, then a bounded body."""
        if not self.api.authorized(self.headers.get("Authorization")):
            self.close_connection = True
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="steward-admin"')
            body = b'{"error": "the admin token is required"}\n'
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data: bytes | None = b""
        if max_body:
            data = self._body(max_body)
            if data is None:
                return
        try:
            status, answer = self.api.handle(method, self.path, data, self.client_address[0])
        except Exception:
            log.exception("admin %s %s failed", method, escape(self.path.split("?", 1)[0]))
            status, answer = 500, {"error": "internal error in the proxy"}
        self._json(status, answer)

    def _json(self, status: int, body: Any) -> None:
        self._reply(status, json.dumps(body).encode() + b"\n", "application/json")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet access log
        return
