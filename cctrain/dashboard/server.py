"""The dashboard's local HTTP server: the page, its script and the JSON it polls.

Who can reach it: anything on this machine can connect to a loopback port, and any web
page the party's browser opens can make it send requests (and, by DNS rebinding, read the
answers). So every request must

- carry the per-launch token (``?token=`` or the ``X-Cctrain-Token`` header; compared in
  constant time), which only the URL printed at launch holds;
- name this server in its ``Host`` header (``127.0.0.1:PORT``, ``localhost:PORT`` or
  ``[::1]:PORT``): a rebound name (``evil.example:PORT``) is refused;
- be a GET or HEAD: the dashboard changes nothing.

Answers carry a Content-Security-Policy that allows only this server's own script, style
and connections (no inline script, no frames, no forms), ``no-referrer`` (the token never
leaves in a Referer) and ``no-store``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import secrets
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from cctrain.errors import InputError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
TOKEN_HEADER = "X-Cctrain-Token"  # noqa: S105 (a header name, not a secret)
STATIC = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
}
#: Sections of the snapshot served on their own at /api/NAME (/api/state: all of them).
SECTIONS = ("party", "attested", "policy", "status", "receipts", "progress", "journal", "release")


class Snapshots(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (names are not resolved: ``localhost``
    could be anything the resolver says)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _static(name: str) -> bytes:
    return resources.files("cctrain.dashboard").joinpath("static", name).read_bytes()


class DashboardServer:
    """Serve ``view``'s snapshots on ``host:port`` (loopback only; port 0: the OS picks).

    ``token``: the per-launch secret (default: 32 random bytes, URL-safe)."""

    def __init__(
        self,
        view: Snapshots,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
    ) -> None:
        if not is_loopback(host):
            raise InputError(
                f"--host: got {host!r}, want a loopback address (127.0.0.1 or ::1): the "
                "dashboard shows what this party may see and is served to this machine only"
            )
        self.view = view
        self.token = token or secrets.token_urlsafe(32)
        self._index = _static("index.html")
        handler = _handler_for(self)
        server_cls = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._httpd = server_cls((host, port), handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def allowed_hosts(self) -> set[str]:
        return {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}

    def index_html(self) -> bytes:
        # The token goes into the asset URLs; it is URL-safe base64, nothing to escape.
        return self._index.replace(b"{{TOKEN}}", self.token.encode())

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve on a background thread (tests; the CLI calls :meth:`serve_forever`)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="cctrain-dashboard-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(server: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cctrain-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass  # request lines hold the token: never logged

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self, status: HTTPStatus, why: str) -> None:
            body = json.dumps({"error": why}).encode()
            self._send(status, body, "application/json")

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            given = self.headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode(), server.token.encode())

        def _serve(self) -> None:
            host = self.headers.get("Host", "")
            if host not in server.allowed_hosts():
                self._refuse(HTTPStatus.MISDIRECTED_REQUEST, "Host: not this dashboard")
                return
            url = urlsplit(self.path)
            if not self._authorised(parse_qs(url.query)):
                self._refuse(HTTPStatus.FORBIDDEN, "token: missing or wrong")
                return
            path = url.path
            if path == "/":
                self._send(HTTPStatus.OK, server.index_html(), "text/html; charset=utf-8")
            elif path in STATIC:
                name, ctype = STATIC[path]
                self._send(HTTPStatus.OK, _static(name), ctype)
            elif path.startswith("/api/") and path[5:] in ("state", *SECTIONS):
                snap = server.view.snapshot()
                name = path[5:]
                doc = snap if name == "state" else {name: snap.get(name)}
                body = json.dumps(_finite(doc), allow_nan=False, default=str).encode()
                self._send(HTTPStatus.OK, body, "application/json")
            else:
                self._refuse(HTTPStatus.NOT_FOUND, f"path: got {path!r}, not served")

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def _read_only(self) -> None:
            self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "method: the dashboard is read-only")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only

    return Handler
