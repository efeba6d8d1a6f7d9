"""Admin HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

Served by the standard library's threaded HTTP server on its own thread, so a
slow scrape never stalls the relay loop. ``/readyz`` is 200 only while the
proxy accepts sessions, its audit trail is writable and its latest sign-in
upstream worked (:mod:`steward_proxy.readiness`: checked at start and on an
interval, never per scrape).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from steward_proxy.server import ProxyServer


class AdminServer:
    """Runs the admin endpoint in a daemon thread."""

    def __init__(self, address: tuple[str, int], proxy: ProxyServer) -> None:
        self.proxy = proxy
        handler = type("Handler", (_Handler,), {"proxy": proxy})
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
    server_version = "steward-admin"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            problems = []
            if not self.proxy.ready:
                problems.append("not accepting sessions")
            if self.proxy.audit_failed:
                problems.append("audit trail not writable")
            check = self.proxy.upstream_check  # renewed by the proxy, never by a scrape
            if not check.ready:
                problems.append(f"upstream: {check.problem} (the log says why)")
            keys = self.proxy.settings.key_source
            if keys is not None and keys.cache.keys is None:
                problems.append("the OIDC key set has not been fetched (the log says why)")
            if problems:
                self._reply(503, ("; ".join(problems) + "\n").encode())
            else:
                self._reply(200, b"ready\n")
        elif path == "/metrics":
            self._reply(200, generate_latest(self.proxy.metrics.registry), CONTENT_TYPE_LATEST)
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet access log
        return
