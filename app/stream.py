"""Send one analysis to one client, overview first: progress (and, while the model runs, each
layer's thumbnails) -> tokens -> overview -> requested layers -> done. ``emit(event, payload)``
is bound to that client by the caller, so this runs the same under Socket.IO, in tests and in
benchmarks."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

from app import insights, limits, shaping
from app.protocol import AtlasError
from app.service import AtlasService

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]
# Per-layer events wait until a request has run this long (s). A shorter forward pass is over
# before they could help, and the page redrawing after each one takes CPU from the pass itself:
# on 2 cores, a 128-token capture took 0.72 s with them and 0.56 s without, against 0.3 s alone.
LIVE_AFTER_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 0.2  # at most one "running the model" progress event per interval


def stream_analysis(service: AtlasService, emit: Emit, rid, request: dict) -> None:
    """Run (or fetch) one analysis and emit it; every failure becomes one ``error`` event."""
    with reporting_errors(emit, rid):
        layers = LayerStream(emit, rid)
        analysis = service.analyze(request["model"], request["text"], _progress(emit, rid),
                                   target=request.get("target") or "", on_layer=layers)
        _send(service, emit, rid, analysis, request.get("layers") or [], streamed=layers.complete(analysis.capture))


class LayerStream:
    """Sends each layer's thumbnails as the model finishes it (``overview_layer``), so the model
    view fills in during a long forward pass (none in a request's first LIVE_AFTER_SECONDS: they
    are held, then sent together); remembers which layers went out, so the overview that
    follows need not carry them again."""

    def __init__(self, emit: Emit, rid):
        self.emit, self.rid, self.sent = emit, rid, set()
        self.started = time.monotonic()
        self.held: list[tuple[int, int, object]] = []  # layers finished before LIVE_AFTER_SECONDS

    def __call__(self, layer: int, layers: int, thumbnails) -> None:
        self.held.append((layer, layers, thumbnails))
        if time.monotonic() - self.started < LIVE_AFTER_SECONDS:
            return
        for held_layer, total, pooled in self.held:
            self.emit("overview_layer", {"rid": self.rid, **shaping.overview_layer_payload(held_layer, total, pooled)})
            self.sent.add(held_layer)
        self.held.clear()

    def complete(self, capture) -> bool:
        return len(self.sent) == capture.n_layers


def stream_generation(service: AtlasService, emit: Emit, rid, request: dict) -> None:
    """Generate a continuation, then stream the analysis of prompt + continuation, announcing
    first where the generated tokens begin (the stepper walks through them)."""
    from app import language

    with reporting_errors(emit, rid):
        settings = {name: request[name] for name in ("max_new_tokens", "sample", "seed", "temperature")}
        full = language.generate(service, request["model"], request["text"], settings, _progress(emit, rid))
        analysis = service.analyze(request["model"], full, _progress(emit, rid))
        emit("generated", {"rid": rid, "key": analysis.key, "prompt": request["text"], "text": full,
                           "first_generated": language.first_generated_token(analysis.capture, request["text"]),
                           **settings})
        _send(service, emit, rid, analysis, [])


def _progress(emit: Emit, rid):
    """Progress events: every queue position, the rest at most one per PROGRESS_EVERY_SECONDS and
    none of them before LIVE_AFTER_SECONDS (see there)."""
    started = time.monotonic()
    last_sent = started - PROGRESS_EVERY_SECONDS

    def progress(stage: str, fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if not isinstance(stage, limits.QueueStage):
            if now - started < LIVE_AFTER_SECONDS or now - last_sent < PROGRESS_EVERY_SECONDS:
                return
            last_sent = now
        emit("progress", {"rid": rid, "stage": stage, "fraction": round(fraction, 3)})

    return progress


def _send(service: AtlasService, emit: Emit, rid, analysis, layers: list, streamed: bool = False) -> None:
    """tokens -> overview -> requested layers -> done."""
    capture, key = analysis.capture, analysis.key
    emit("tokens", {"rid": rid, **shaping.tokens_payload(key, capture)})
    emit("overview", {"rid": rid, **shaping.overview_payload(key, capture, streamed)})
    for layer in layers:
        if isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer < capture.n_layers:
            emit("layer", {"rid": rid, **detail(service, "layer", {"key": key, "layer": layer, "mode": "attention"})})
    emit("done", {"rid": rid, "key": key, "cached": analysis.cached, "seconds": round(analysis.seconds, 4)})


@contextlib.contextmanager
def reporting_errors(emit: Emit, rid):
    """Turn any failure into one ``error`` event for this client; the server keeps serving."""
    try:
        yield
    except AtlasError as error:
        emit("error", error.payload(rid))
    except Exception:
        log.exception("request %r failed", rid)
        emit("error", AtlasError("internal", "the server failed on this request; it has been logged").payload(rid))


def detail(service: AtlasService, event: str, fields: dict) -> dict:
    """Shape one on-demand payload from the cache (never a forward pass)."""
    key = fields["key"]
    capture = service.lookup(key)
    config = service.config
    if event == "layer":
        return shaping.layer_payload(key, capture, fields["layer"], fields["mode"],
                                     config["DENSE_LAYER_MAX_TOKENS"], config["LAYER_TOP_K"])
    if event == "matrix":
        return shaping.matrix_payload(key, capture, fields["layer"], fields["head"], fields["mode"],
                                      fields["row0"], fields["row1"], fields["col0"], fields["col1"],
                                      config["MATRIX_TILE_MAX"])
    if event == "token":
        return shaping.token_payload(key, capture, fields["index"])
    if event == "neuron":
        return shaping.neuron_payload(key, capture, fields["layer"], fields["head"], fields["query"])
    if event == "stats":
        from app import plots

        return {"key": key, "plot": plots.head_stats_item(capture)}
    if event == "heads":
        return insights.heads_payload(key, capture)
    if event == "rollout":
        return insights.rollout_payload(key, capture, fields["fusion"], fields["position"])
    if event == "flow":
        return insights.flow_payload(key, capture, fields["fusion"], fields["position"])
    if event == "lens":
        from app import language

        return language.lens_payload(service, key, capture, fields["start"], fields["count"])
    if event == "compare":
        return insights.compare_payload(key, capture, fields["other"], service.lookup(fields["other"]))
    raise AtlasError("bad_request", f"unknown detail '{event}'")


def stream_open(service: AtlasService, emit: Emit, rid, request: dict) -> None:
    """Stream a cached analysis by key (share links to uploaded captures, short links)."""
    from app.service import Analysis

    with reporting_errors(emit, rid):
        capture = service.lookup(request["key"])
        _send(service, emit, rid, Analysis(request["key"], capture, True, 0.0), request.get("layers") or [])


STREAMS = {"analyze": stream_analysis, "generate": stream_generation, "open": stream_open}  # answered by a stream
