"""Attention Atlas: a web app that shows how a transformer attends, from the whole model down
to one query/key pair."""
from __future__ import annotations

import logging
import secrets

from flask import Flask

from app.config import Config
from app.extensions import socketio


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: config (defaults, ATLAS_* environment, test_config), extensions,
    blueprints and the Socket.IO namespace. Reads no configuration at import time."""
    from app.events import AtlasNamespace
    from app.routes import api, pages
    from app.service import AtlasService

    app = Flask(__name__, static_folder="../static", template_folder="../templates")
    app.config.from_object(Config)
    app.config.from_prefixed_env("ATLAS")
    if test_config:
        app.config.update(test_config)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or secrets.token_hex(32)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    service = AtlasService(app.config)
    app.extensions["atlas"] = service
    service.preload(app.config["PRELOAD_MODELS"])
    app.register_blueprint(pages)
    app.register_blueprint(api)
    socketio.init_app(app, async_mode="threading", max_http_buffer_size=app.config["MAX_MESSAGE_BYTES"],
                      cors_allowed_origins=app.config["CORS_ALLOWED_ORIGINS"])
    socketio.on_namespace(AtlasNamespace(service))
    return app
