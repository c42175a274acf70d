"""Pages and the HTTP API. The API returns the same payloads as the socket, as JSON with arrays
base64-encoded, so scripts and notebooks can use everything the browser can."""
from __future__ import annotations

from pathlib import Path

import bokeh
from flask import Blueprint, abort, current_app, jsonify, render_template, request, send_from_directory

from app import shaping, stream
from app.protocol import REQUESTS, AtlasError, jsonable, parse_request

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__, url_prefix="/api")

BOKEH_JS_DIR = Path(bokeh.__file__).parent / "server" / "static" / "js"
BOKEH_FILES = ("bokeh.min.js", "bokeh-widgets.min.js")  # all the statistics panel needs


def service():
    return current_app.extensions["atlas"]


@pages.get("/")
def index():
    return render_template("index.html", models=service().models(), default_model=service().registry.default,
                           bokeh_version=bokeh.__version__)


@pages.get("/vendor/bokeh/<name>")
def bokeh_js(name: str):
    """BokehJS from the installed bokeh package, so the page needs no CDN."""
    if name not in BOKEH_FILES:
        abort(404)
    return send_from_directory(BOKEH_JS_DIR, name, max_age=86400)


@api.errorhandler(AtlasError)
def atlas_error(error: AtlasError):
    return jsonify(error.payload()), error.status


@api.get("/models")
def models():
    return jsonify({"default": service().registry.default, "models": service().models()})


@api.post("/analyze")
def analyze():
    """Run or fetch one analysis; answers tokens and overview in one JSON document."""
    data = request.get_json(silent=True)
    _, fields = parse_request("analyze", data)
    analysis = service().analyze(fields["model"], fields["text"])
    return jsonify(jsonable({
        "key": analysis.key, "cached": analysis.cached, "seconds": analysis.seconds,
        "tokens": shaping.tokens_payload(analysis.key, analysis.capture),
        "overview": shaping.overview_payload(analysis.key, analysis.capture),
    }))


@api.get("/analysis/<key>/<event>")
def detail(key: str, event: str):
    """``/api/analysis/KEY/layer?layer=3`` and likewise matrix, token, neuron, stats."""
    if event not in REQUESTS or event == "analyze":
        raise AtlasError("not_found", f"unknown detail '{event}'", 404)
    data = {"key": key, **{name: _query_value(value) for name, value in request.args.items()}}
    _, fields = parse_request(event, data)
    return jsonify(jsonable(stream.detail(service(), event, fields)))


def _query_value(value: str):
    return int(value) if value.lstrip("-").isdigit() else value
