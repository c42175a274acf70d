"""Pages and the HTTP API. The API returns the same payloads as the socket, as JSON with arrays
base64-encoded, so scripts and notebooks can use everything the browser can."""
from __future__ import annotations

from pathlib import Path

import bokeh
import hashlib
import io
import json
import zipfile

import numpy as np
from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, send_file, \
    send_from_directory

from app import gallery, shaping, stream
from app.cache import cache_key
from app.links import LinkError, LinkStore
from app.protocol import REQUESTS, AtlasError, jsonable, parse_request
from app.record import Capture

pages = Blueprint("pages", __name__)
api = Blueprint("api", __name__, url_prefix="/api")

BOKEH_JS_DIR = Path(bokeh.__file__).parent / "server" / "static" / "js"
BOKEH_FILES = ("bokeh.min.js", "bokeh-widgets.min.js")  # all the statistics panel needs
JSON_EXPORT_MAX_TOKENS = 512  # above this the JSON export would be hundreds of MB: use NPZ
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # bytes of one uploaded capture (a 4096-token record is ~220 MB)


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


def links() -> LinkStore:
    """The permalink store beside the result cache, created on first use."""
    if "atlas_links" not in current_app.extensions:
        current_app.extensions["atlas_links"] = LinkStore(Path(current_app.config["CACHE_DIR"]) / "links")
    return current_app.extensions["atlas_links"]


@pages.get("/s/<link_id>")
def short_link(link_id: str):
    """A permalink made by POST /api/links; kept on this server's disk, survives restarts."""
    query = links().resolve(link_id)
    if query is None:
        abort(404)
    return redirect("/?" + query, code=302)


@api.post("/links")
def create_link():
    data = request.get_json(silent=True)
    query = data.get("query") if isinstance(data, dict) else None
    try:
        link_id = links().create(query)
    except LinkError as error:
        raise AtlasError("bad_request", str(error)) from None
    return jsonify({"id": link_id, "path": f"/s/{link_id}"})


@api.get("/gallery")
def gallery_items():
    return jsonify({"items": gallery.gallery_for(service())})


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
    analysis = service().analyze(fields["model"], fields["text"], target=fields["target"])
    return jsonify(jsonable({
        "key": analysis.key, "cached": analysis.cached, "seconds": analysis.seconds,
        "tokens": shaping.tokens_payload(analysis.key, analysis.capture),
        "overview": shaping.overview_payload(analysis.key, analysis.capture),
    }))


@api.post("/generate")
def generate():
    """Generate a continuation (cached), then answer its analysis like /api/analyze."""
    from app import language

    _, fields = parse_request("generate", request.get_json(silent=True))
    settings = {name: fields[name] for name in ("max_new_tokens", "sample", "seed", "temperature")}
    full = language.generate(service(), fields["model"], fields["text"], settings)
    analysis = service().analyze(fields["model"], full)
    return jsonify(jsonable({
        "key": analysis.key, "cached": analysis.cached, "text": full,
        "first_generated": language.first_generated_token(analysis.capture, fields["text"]),
        "tokens": shaping.tokens_payload(analysis.key, analysis.capture),
        "overview": shaping.overview_payload(analysis.key, analysis.capture),
    }))


@api.get("/analysis/<key>/<event>")
def detail(key: str, event: str):
    """``/api/analysis/KEY/layer?layer=3`` and likewise matrix, token, neuron, stats."""
    if event not in REQUESTS or event in stream.STREAMS or event.startswith("present_"):
        raise AtlasError("not_found", f"unknown detail '{event}'", 404)
    data = {"key": key, **{name: _query_value(value) for name, value in request.args.items()}}
    _, fields = parse_request(event, data)
    return jsonify(jsonable(stream.detail(service(), event, fields)))


@api.get("/analysis/<key>/export.npz")
def export_npz(key: str):
    """The whole record as NumPy arrays (attention recomputed as [layers, heads, query, key])."""
    capture = service().lookup(key)
    arrays = {name: value for name, value in capture.to_arrays().items() if not name.startswith("extra.")}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    buffer.seek(0)
    return send_file(buffer, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"atlas-{capture.model}-{key[:12]}.npz")


@api.get("/analysis/<key>/export.json")
def export_json(key: str):
    """Tokens and attention as plain JSON lists, for tools that read nothing else."""
    capture = service().lookup(key)
    if capture.n_tokens > JSON_EXPORT_MAX_TOKENS:
        raise AtlasError("too_long", f"JSON export is limited to {JSON_EXPORT_MAX_TOKENS} tokens; use the NPZ export")
    attention = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    document = {"model": capture.model, "text": capture.text, "tokens": capture.tokens, "special": capture.special.tolist(),
                "info": capture.info, "attention": np.round(attention, 5).tolist()}
    response = current_app.response_class(json.dumps(document), mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="atlas-{capture.model}-{key[:12]}.json"'
    return response


@api.post("/captures")
def upload_capture():
    """Store a capture made elsewhere (the notebook bridge) and answer its key and share link.

    The body is an ``np.savez`` of ``Capture.to_arrays()``; it is loaded without pickle and checked
    array by array before it is cached.
    """
    request.max_content_length = MAX_UPLOAD_BYTES  # this route's own limit, above the app-wide message limit
    if request.content_length is None or request.content_length > MAX_UPLOAD_BYTES:
        raise AtlasError("too_long", f"an uploaded capture must be under {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    body = request.get_data(cache=False)
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            if sum(member.file_size for member in archive.infolist()) > MAX_UPLOAD_BYTES:
                raise ValueError("the arrays unpack to more than the upload limit")
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            capture = Capture.from_arrays({name: archive[name] for name in archive.files}).validate()
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise AtlasError("bad_request", f"not a valid Attention Atlas capture: {error}") from None
    key = cache_key(capture.model, "upload", capture.text, {"sha256": hashlib.sha256(body).hexdigest()})
    service().cache.put(key, capture)
    return jsonify({"key": key, "link": f"/?key={key}"})


def _query_value(value: str):
    digits = value.removeprefix("-")
    return int(value) if digits.isascii() and digits.isdigit() else value
