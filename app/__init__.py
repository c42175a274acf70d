"""Attention Atlas: a web app that shows how a transformer attends, from the whole model down
to one query/key pair."""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import threading

from flask import Flask

from app import config as settings
from app.config import Config
from app.extensions import socketio

log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: config (defaults, ATLAS_* environment, test_config), extensions,
    blueprints and the Socket.IO namespace. Reads no configuration at import time, and leaves
    the process's logging and environment to its entry point (:mod:`app.wsgi`, ``python -m app``).

    Raises ValueError for a setting that would disable a limit, RuntimeError when REDIS_URL
    is set but Redis cannot be reached."""
    from app import dispatch, limits, security
    from app.dispatch import Dispatcher
    from app.events import SOCKETIO_CHANNEL, AtlasNamespace, Sockets, client_manager, no_delay
    from app.routes import api, pages
    from app.service import AtlasService

    app = Flask(__name__, static_folder="../static", template_folder="../templates")
    app.json.sort_keys = False  # a Bokeh json_item must keep each definition before its references
    app.config.from_object(Config)
    app.config.from_prefixed_env("ATLAS")
    app.config["REDIS_URL"] = app.config["REDIS_URL"] or os.environ.get("REDIS_URL") or None
    if test_config:
        app.config.update(test_config)
    settings.check(app.config)
    if not app.config["SECRET_KEY"] and app.config["REDIS_URL"]:
        log.warning(
            "ATLAS_SECRET_KEY is unset: each process signs with its own random key; set the same "
            "key on every process behind the load balancer"
        )
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or secrets.token_hex(32)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_CONTENT_LENGTH"] or app.config["MAX_MESSAGE_BYTES"]

    service = AtlasService(app.config)
    app.extensions["atlas"] = service
    limiter = app.extensions["atlas_limiter"] = limits.RateLimiter(lambda: dispatch.rate_limits(app.config))
    remote = None
    if app.config["MODEL_WORKERS"]:  # model rows run on `python -m app worker` processes
        from app.tasks import RemoteWork

        remote = RemoteWork(app.config)
    dispatcher = app.extensions["atlas_dispatcher"] = Dispatcher(service, limiter, remote)
    security.init_app(app)
    if remote is None:  # else the workers load the models and precompute
        start_model_work(app.config, service)
    import_in_background("torch")
    app.register_blueprint(pages)
    app.register_blueprint(api)
    # The client manager is always passed: Flask-SocketIO keeps options between init_app calls,
    # and a Redis manager left by an earlier app must not leak into this one. A connection's
    # events are handled in order on its own reader thread (``async_handlers=False``): with a
    # thread per event, one client flooding a few sockets made tens of thousands of threads
    # that queued on the send lock and stopped the server for everyone. Work longer than a
    # cached answer still leaves that thread (app/events.py), so a cancel is read at once.
    socketio.init_app(
        app,
        async_mode="threading",
        async_handlers=False,
        max_http_buffer_size=app.config["MAX_MESSAGE_BYTES"],
        cors_allowed_origins=app.config["CORS_ALLOWED_ORIGINS"],
        message_queue=None,
        client_manager=client_manager(app.config["REDIS_URL"], SOCKETIO_CHANNEL),
    )
    sockets = app.extensions["atlas_sockets"] = Sockets(app.config)
    dispatcher.flooded_before = sockets.flooded_before
    socketio.on_namespace(AtlasNamespace(dispatcher, sockets))
    sockets.install(socketio.server)
    if app.config["PROXY_FIX_X_FOR"]:  # outside Socket.IO's middleware: sockets are counted per user address too
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["PROXY_FIX_X_FOR"], x_proto=1)
    app.wsgi_app = no_delay(security.socket_headers(app.wsgi_app, app.config["CONTENT_SECURITY_POLICY"]))
    return app


def import_in_background(module: str) -> None:
    """Start importing ``module`` on a thread of its own. Shaping imports torch on first use
    (top keys, rollout), so that a cached answer never waits for it; but a process with no
    model loaded (a web process beside model workers, or one serving results cached before a
    restart) then paid the import on its first detail: the first ``layer`` took 1.5-3.1 s, every
    later one 2-46 ms. Imported at start-up instead, before the first student asks (about 1 s
    and 180 MB, which the first detail would have cost anyway)."""
    threading.Thread(target=importlib.import_module, args=(module,), name=f"import-{module}", daemon=True).start()


def start_model_work(config, service) -> None:
    """Models to preload and results to precompute at start-up, in background threads."""
    service.preload(config["PRELOAD_MODELS"])
    if config["PRECOMPUTE_GALLERY"]:
        from app import gallery

        threading.Thread(target=gallery.precompute, args=(service,), name="gallery", daemon=True).start()
    if config["PRECOMPUTE_ATLAS"]:
        from app.globalview import background

        background.precompute(service, list(config["PRECOMPUTE_ATLAS"]))
