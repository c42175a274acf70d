"""Pages, and the HTTP API built from the request table (app/requests.py): every row with an
HTTP route becomes one, admitted and run by the same dispatcher as its Socket.IO event. The API
answers the same payloads as the socket, as JSON with arrays base64-encoded, so scripts and
notebooks can use everything the browser can."""

from __future__ import annotations

import functools
from pathlib import Path

import bokeh
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
)

from app.dispatch import Call
from app.protocol import AtlasError, jsonable
from app.published import page_settings
from app.requests import REQUESTS, TABLE, Request

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__, url_prefix="/api")

BOKEH_JS_DIR = Path(bokeh.__file__).parent / "server" / "static" / "js"
BOKEH_FILES = ("bokeh.min.js", "bokeh-widgets.min.js")  # all the statistics panel needs
ONCE_EVENTS = ("done", "generated")  # stream events whose fields an HTTP answer carries at its top level
LIVE_EVENTS = ("progress", "overview_layer")  # stream events an HTTP answer has no use for


def service():
    return current_app.extensions["atlas"]


def dispatcher():
    return current_app.extensions["atlas_dispatcher"]


@pages.get("/")
def index():
    """The page; its #atlas-config block is the document GET /api/settings answers."""
    return render_template("index.html", settings=page_settings(current_app.config, service()))


@pages.get("/vendor/bokeh/<name>")
def bokeh_js(name: str):
    """BokehJS from the installed bokeh package, so the page needs no CDN."""
    if name not in BOKEH_FILES:
        abort(404)
    return send_from_directory(BOKEH_JS_DIR, name, max_age=86400)


@pages.get("/s/<link_id>")
def short_link(link_id: str):
    """A permalink made by POST /api/links; kept on this server's disk, survives restarts."""
    query = service().links.resolve(link_id)
    if query is None:
        abort(404)
    return redirect("/?" + query, code=302)


@api.errorhandler(AtlasError)
def atlas_error(error: AtlasError):
    return jsonify(error.payload()), error.status


def answer(name: str, **url_values) -> Response:
    """One HTTP call of the table's row ``name``: fields from the URL, the query string and a JSON
    body; a stream's events collected into one JSON document."""
    request_spec = REQUESTS[name]
    client = request.remote_addr or "unknown"
    data = {name: _query_value(value) for name, value in request.args.items()}
    if request.method == "POST" and request.mimetype == "application/json":
        body = request.get_json(silent=True)
        data = body if isinstance(body, dict) else None
    if data is not None:
        data.update(url_values)
    with dispatcher().turns.take(client):
        spec, fields = dispatcher().parse(client, request_spec, request_spec.name, data)
        collected: dict = {}
        call = Call(service(), spec, client, None, functools.partial(_collect, collected), live=False)
        result = dispatcher().run(call, fields)
    if isinstance(result, Response):
        return result
    return jsonify(jsonable(result if result is not None else collected))


def _collect(collected: dict, event: str, payload: dict) -> None:
    payload = {name: value for name, value in payload.items() if name != "rid"}
    if event in ONCE_EVENTS:
        collected.update(payload)
    elif event == "layer":
        collected.setdefault("layers", []).append(payload)
    elif event not in LIVE_EVENTS:
        collected[event] = payload


def _query_value(value: str):
    """A query value as the number it spells (``3``, ``0.04``), else the string."""
    digits = value.removeprefix("-")
    if digits.isascii() and digits.isdigit():
        return int(value)
    whole, dot, fraction = digits.partition(".")
    return float(value) if dot and (whole + fraction).isascii() and (whole + fraction).isdigit() else value


def _register(request_spec: Request) -> None:
    method, rule = request_spec.http
    name = request_spec.name
    api.add_url_rule(rule, f"request_{name}", lambda **values: answer(name, **values), methods=[method])


for _row in TABLE:
    if _row.http:
        _register(_row)


@api.route("/analysis/<key>/<name>", methods=["GET", "POST"])
def unknown_detail(key: str, name: str):
    raise AtlasError("not_found", f"unknown detail '{name}'", 404)
