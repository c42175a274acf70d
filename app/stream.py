"""Send one analysis to one client, overview first: progress -> tokens -> overview ->
requested layers -> done. ``emit(event, payload)`` is bound to that client by the caller, so
this runs the same under Socket.IO, in tests and in benchmarks."""
from __future__ import annotations

import logging
from typing import Callable

from app import shaping
from app.protocol import AtlasError
from app.service import AtlasService

log = logging.getLogger(__name__)

Emit = Callable[[str, dict], None]


def stream_analysis(service: AtlasService, emit: Emit, rid, request: dict) -> None:
    """Run (or fetch) one analysis and emit it; every failure becomes one ``error`` event."""
    try:
        def progress(stage: str, fraction: float) -> None:
            emit("progress", {"rid": rid, "stage": stage, "fraction": round(fraction, 3)})

        analysis = service.analyze(request["model"], request["text"], progress)
        capture, key = analysis.capture, analysis.key
        emit("tokens", {"rid": rid, **shaping.tokens_payload(key, capture)})
        emit("overview", {"rid": rid, **shaping.overview_payload(key, capture)})
        for layer in request.get("layers") or []:
            if isinstance(layer, int) and 0 <= layer < capture.n_layers:
                emit("layer", {"rid": rid, **detail(service, "layer", {"key": key, "layer": layer,
                                                                          "mode": "attention"})})
        emit("done", {"rid": rid, "key": key, "cached": analysis.cached, "seconds": round(analysis.seconds, 4)})
    except AtlasError as error:
        emit("error", error.payload(rid))
    except Exception:  # the server keeps serving; the client hears what happened
        log.exception("analysis failed")
        emit("error", AtlasError("internal", "the server failed on this request; it has been logged").payload(rid))


def detail(service: AtlasService, event: str, fields: dict) -> dict:
    """Shape one on-demand payload from the cache (never a forward pass)."""
    config = service.config
    capture = service.lookup(fields["key"])
    key = fields["key"]
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
    raise AtlasError("bad_request", f"unknown detail '{event}'")

