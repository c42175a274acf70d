"""HTTP hardening: security headers on every page and API answer, and error answers that never
leak internals (the API answers JSON ``{rid, code, message}``; pages get a plain status page).

The Content-Security-Policy allows scripts only from this origin (no inline script, no eval):
BokehJS 3.9 and the app's ES modules render under it (tests/integration/test_security.py checks this in
Chromium). ``style-src 'unsafe-inline'`` stays because BokehJS sets element styles from script.
Pages refuse to be framed by other sites, except the embeddable view (``/?...&embed=1``, what
``notebook.show`` frames), which FRAME_ANCESTORS (default: Jupyter on any local port) may frame.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from app.protocol import AtlasError

log = logging.getLogger(__name__)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",  # the legacy twin of frame-ancestors 'self'
    "Referrer-Policy": "no-referrer",  # share links hold the prompt; never send it to another site
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "bad_request",
    413: "too_long",
    414: "too_long",
    429: "rate_limited",
    431: "too_long",
    503: "busy",
}  # HTTP status -> protocol error code


def init_app(app: Flask) -> None:
    app.after_request(add_headers)
    app.register_error_handler(AtlasError, atlas_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)


TRUSTWORTHY_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # where browsers honour COOP over plain http


EMBED_FLAG = "embed"  # `/?...&embed=1`: the page notebook.show frames
FRAME_ANCESTORS = re.compile(r"frame-ancestors[^;]*")  # the directive in CONTENT_SECURITY_POLICY


def add_headers(response: Response) -> Response:
    embeddable = is_embeddable()
    response.headers.setdefault("Content-Security-Policy", _policy(embeddable))
    for name, value in HEADERS.items():
        if not (embeddable and name == "X-Frame-Options"):  # it cannot name a list of origins
            response.headers.setdefault(name, value)
    if request.is_secure or request.host.rsplit(":", 1)[0] in TRUSTWORTHY_HOSTS:
        # over plain http on a class network Chromium ignores COOP and logs an error on every page
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    return response


def socket_headers(wsgi_app, policy: str):
    """The same headers on Socket.IO's own answers (its long-polling and handshake responses
    never pass through Flask's ``after_request``)."""
    added = [("Content-Security-Policy", policy), *HEADERS.items()]

    def app(environ, start_response):
        if not environ.get("PATH_INFO", "").startswith("/socket.io/"):
            return wsgi_app(environ, start_response)

        def start(status, headers, *exc_info):
            present = {name.lower() for name, _ in headers}
            return start_response(status, headers + [h for h in added if h[0].lower() not in present], *exc_info)

        return wsgi_app(environ, start)

    return app


def is_embeddable() -> bool:
    """Only the app page asked for with ``embed`` may be framed by FRAME_ANCESTORS (a notebook on
    another port); every other page and answer keeps ``frame-ancestors 'self'``."""
    return request.path == "/" and EMBED_FLAG in request.args


def _policy(embeddable: bool = False) -> str:
    from flask import current_app

    policy = current_app.config["CONTENT_SECURITY_POLICY"]
    if not embeddable:
        return policy
    ancestors = " ".join(["frame-ancestors 'self'", *current_app.config["FRAME_ANCESTORS"]])
    if FRAME_ANCESTORS.search(policy):
        return FRAME_ANCESTORS.sub(ancestors, policy, count=1)
    return f"{policy}; {ancestors}"


def is_api() -> bool:
    return request.path.startswith("/api/")


def atlas_error(error: AtlasError):
    """An error for the user raised outside a blueprint's own handler (e.g. by a rate limit)."""
    return jsonify(error.payload()), error.status


def http_error(error: HTTPException):
    """404, 405, 413... : JSON under /api/, Werkzeug's plain page elsewhere."""
    if not is_api():
        return error
    code = STATUS_CODES.get(error.code or 500, "bad_request" if (error.code or 500) < 500 else "internal")
    return jsonify(AtlasError(code, error.description or error.name).payload()), error.code


def unexpected_error(error: Exception):
    """A bug: logged with its traceback, answered 500 without one."""
    log.exception("%s %s failed", request.method, request.path)
    message = "the server failed on this request; it has been logged"
    if is_api():
        return jsonify(AtlasError("internal", message).payload()), 500
    return Response(message, status=500, mimetype="text/plain")
