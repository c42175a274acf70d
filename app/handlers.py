"""One function per request that answers once (the table in app/requests.py names them; the
streams are in app/stream.py). Each takes the :class:`app.dispatch.Call` and the validated
fields and returns the payload; admission, queues and memo are the dispatcher's, not theirs."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
from flask import current_app, request, send_file
from werkzeug.http import dump_options_header
from werkzeug.utils import secure_filename

from app import gallery, head_detection, insights, language, plots, shaping
from app.cache import cache_key
from app.links import LinkError
from app.protocol import AtlasError
from models.record import Capture, RecordLimits

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # bytes of one uploaded capture (a 4096-token record is ~220 MB)


def on_layer(call, fields: dict) -> dict:
    key, config = fields["key"], call.service.config
    return shaping.layer_payload(
        key,
        call.service.lookup(key),
        fields["layer"],
        fields["mode"],
        config["DENSE_LAYER_MAX_TOKENS"],
        config["LAYER_TOP_K"],
    )


def on_matrix(call, fields: dict) -> dict:
    key = fields["key"]
    return shaping.matrix_payload(
        key,
        call.service.lookup(key),
        fields["layer"],
        fields["head"],
        fields["mode"],
        fields["row0"],
        fields["row1"],
        fields["col0"],
        fields["col1"],
        call.service.config["MATRIX_TILE_MAX"],
    )


def on_token(call, fields: dict) -> dict:
    return shaping.token_payload(fields["key"], call.service.lookup(fields["key"]), fields["index"], fields["mode"])


def on_thumbnails(call, fields: dict) -> dict:
    """The model view in a norm-based mode (Kobayashi et al. 2020), from the stored record."""
    return shaping.norm_thumbnails_payload(fields["key"], call.service.lookup(fields["key"]), fields["mode"])


def on_neuron(call, fields: dict) -> dict:
    return shaping.neuron_payload(
        fields["key"], call.service.lookup(fields["key"]), fields["layer"], fields["head"], fields["query"]
    )


def summary_of(call, key: str, capture: Capture) -> dict[str, np.ndarray]:
    """The head summary, computed once per analysis for the head-roles and statistics views."""
    return call.service.memo.get_or_compute(key, "summary", lambda: insights.summary(capture))


def on_stats(call, fields: dict) -> dict:
    key = fields["key"]
    capture = call.service.lookup(key)
    return {"key": key, "plot": plots.head_stats_item(capture, summary_of(call, key, capture))}


def on_heads(call, fields: dict) -> dict:
    """The head summary with the detector scores (the dispatcher memoises this answer per key)."""
    key = fields["key"]
    capture = call.service.lookup(key)
    payload = insights.heads_payload(key, capture, summary_of(call, key, capture))
    return head_detection.with_detectors(payload, head_detection.detector_metrics(capture))


def on_rollout(call, fields: dict) -> dict:
    key = fields["key"]
    return insights.rollout_payload(key, call.service.lookup(key), fields["fusion"], fields["position"])


def on_flow(call, fields: dict) -> dict:
    key = fields["key"]
    return insights.flow_payload(key, call.service.lookup(key), fields["fusion"], fields["position"])


def on_compare(call, fields: dict) -> dict:
    key, other = fields["key"], fields["other"]
    return insights.compare_payload(key, call.service.lookup(key), other, call.service.lookup(other))


def on_lens(call, fields: dict) -> dict:
    key = fields["key"]
    return language.lens_payload(call.service, key, call.service.lookup(key), fields["start"], fields["count"])


def on_probe(call, fields: dict) -> dict:
    """A repeated random-word sequence to find induction heads with (the head-roles view opens it)."""
    model = call.service.model_name(fields["model"])
    text = language.probe_text(call.service, model, fields["length"], fields["seed"])
    return {"model": model, "text": text, "length": fields["length"], "seed": fields["seed"]}


def on_export_npz(call, fields: dict):
    """The whole record as NumPy arrays, ``tokens`` as a string array among them (an upload of
    this file opens the same analysis)."""
    key = fields["key"]
    capture = call.service.lookup(key)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **capture.export_arrays())
    buffer.seek(0)
    return send_file(
        buffer,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=f"atlas-{capture.model}-{key[:12]}.npz",
    )


def on_export_json(call, fields: dict):
    """Tokens and attention as plain JSON lists, for tools that read nothing else."""
    key = fields["key"]
    capture = call.service.lookup(key)
    most = call.service.config["JSON_EXPORT_MAX_TOKENS"]
    if capture.n_tokens > most:
        raise AtlasError("too_long", f"JSON export is limited to {most} tokens; use the NPZ export")
    attention = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    document = {
        "model": capture.model,
        "text": capture.text,
        "tokens": capture.tokens,
        "special": capture.special.tolist(),
        "info": capture.info,
        "attention": np.round(attention, 5).tolist(),
    }
    response = current_app.response_class(json.dumps(document), mimetype="application/json")
    name = secure_filename(f"atlas-{capture.model}-{key[:12]}.json") or f"atlas-{key[:12]}.json"
    response.headers["Content-Disposition"] = dump_options_header("attachment", {"filename": name})
    return response


UPLOAD_TYPE = "application/octet-stream"  # what the notebook bridge sends; a plain HTML form cannot


def on_upload(call, fields: dict) -> dict:
    """Store a capture made elsewhere (the notebook bridge) and answer its key and share link.

    The body is an ``np.savez`` of ``Capture.to_arrays()``. It must come as ``UPLOAD_TYPE`` and,
    from a browser, from this server's own pages (another site's page cannot post it for a
    visitor). Every array's header is read before any array is unpacked, so the upload unpacks
    to at most ``MAX_UPLOAD_BYTES``; the record is then checked against the server's own limits
    (:meth:`Capture.validate`), stored on disk in the uploads' budget, and only then linked.
    """
    if request.mimetype != UPLOAD_TYPE:
        raise AtlasError("bad_request", f"an upload must be sent as {UPLOAD_TYPE}", 415)
    origin = request.headers.get("Origin")
    if origin is not None and origin != request.host_url.rstrip("/"):
        raise AtlasError("forbidden", "uploads are accepted from this server's own pages and from scripts", 403)
    request.max_content_length = MAX_UPLOAD_BYTES  # this route's own limit, above the app-wide message limit
    if request.content_length is None or request.content_length > MAX_UPLOAD_BYTES:
        raise AtlasError("too_long", f"an uploaded capture must be under {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    body = request.get_data(cache=False)
    try:
        limits = record_limits(call.service.config)
        capture = Capture.from_arrays(_npz_arrays(body, MAX_UPLOAD_BYTES, limits)).validate(limits)
    except (ValueError, KeyError, TypeError, OSError, EOFError, RecursionError, zipfile.BadZipFile) as error:
        raise AtlasError("bad_request", f"not a valid Attention Atlas capture: {error}") from None
    key = cache_key(capture.model, "upload", capture.text, {"sha256": hashlib.sha256(body).hexdigest()})
    try:
        call.service.store(key, capture)
    except OSError:
        raise AtlasError("busy", "the server could not store the upload; try again later", 503) from None
    return {"key": key, "link": f"/?key={key}"}


def record_limits(config) -> RecordLimits:
    """The largest record this server accepts from outside: its own capture limits."""
    return RecordLimits(
        tokens=config["MAX_TOKENS"],
        layers=config["MAX_LAYERS"],
        heads=config["MAX_HEADS"],
        model_heads=config["MAX_MODEL_HEADS"],
        head_size=config["MAX_HEAD_SIZE"],
        chars=config["MAX_CHARS"],
    )


def _npz_arrays(body: bytes, most: int, limits: RecordLimits) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` body, refusing one whose arrays unpack to more than ``most``
    bytes in all, or whose queries are larger than ``limits`` allow: each array's header (its
    dtype and shape) is read first, so a small zip that claims huge arrays, or a record no model
    of this server's size has, is refused before anything is unpacked (unpacking 200 MB of zeros
    to find out took a second of the server's CPU). Pickled objects are refused."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        headers = {}
        for member in archive.infolist():
            with archive.open(member) as stream:
                headers[member.filename] = _npy_header(stream)
        total = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in headers.values())
        if total > most:
            raise ValueError(f"its arrays unpack to {total:,} bytes, more than the {most:,} an upload may hold")
        queries = headers.get("queries.npy", ((),))[0]
        if len(queries) == 4:
            layers, heads, tokens, head_size = queries
            limits.check(layers, heads, tokens, head_size, side=0, chars=0)
        arrays = {}
        for member in headers:
            with archive.open(member) as stream:
                arrays[member.removesuffix(".npy")] = np.lib.format.read_array(stream, allow_pickle=False)
        return arrays


def _npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("arrays of Python objects are not accepted")
    return shape, dtype


def on_models(call, fields: dict) -> dict:
    return {"default": call.service.registry.default, "models": call.service.models()}


def on_gallery(call, fields: dict) -> dict:
    return {"items": gallery.gallery_for(call.service)}


def on_link(call, fields: dict) -> dict:
    try:
        link_id = call.service.links.create(fields["query"])
    except LinkError as error:
        raise AtlasError("bad_request", str(error)) from None
    return {"id": link_id, "path": f"/s/{link_id}"}


def on_cancel(call, fields: dict) -> dict:
    """Stop one of this client's requests in progress (a generation, an analysis): its model work
    ends at its next check and it sends nothing more. ``cancelled`` is False when it had ended."""
    return {"request": fields["request"], "cancelled": call.cancel(fields["request"])}


def on_room(call, fields: dict) -> None:
    """Presenter mode: the room events answer the presenter and followers themselves."""
    call.rooms.handle(call.client, call.request.name, call.rid, fields)
