"""Send one analysis to one client, overview first: progress (and, while the model runs, each
layer's thumbnails) -> tokens -> overview -> requested layers -> done. Answers go through the
call's ``emit``, bound to that client by the transport (a socket, or an HTTP answer that collects
them), so this runs the same under Socket.IO, over HTTP, in tests and in benchmarks. Errors are
raised; the transport turns them into one ``error`` answer."""

from __future__ import annotations

import time
from collections.abc import Callable

from app import limits, shaping
from app.handlers import on_layer
from app.protocol import quantize_unit
from app.service import Analysis

Emit = Callable[[str, dict], None]
# Per-layer events wait until a request has run this long (s). A shorter forward pass is over
# before they could help, and the page redrawing after each one takes CPU from the pass itself:
# on 2 cores, a 128-token capture took 0.72 s with them and 0.56 s without, against 0.3 s alone.
LIVE_AFTER_SECONDS = 0.5
PROGRESS_EVERY_SECONDS = 0.2  # at most one "running the model" progress event per interval


def stream_analysis(call, fields: dict) -> None:
    """Run (or fetch) one analysis and emit it."""
    layers = LayerStream(call.emit, call.rid) if call.live else None
    with call.service.cache.answering():  # a new capture's write waits until its first view is out
        analysis = call.service.analyze(
            fields["model"], fields["text"], progress_events(call), target=fields["target"], on_layer=layers
        )
        _send(call, analysis, fields["layers"], streamed=bool(layers and layers.complete(analysis.capture)))


class LayerStream:
    """Sends each layer's thumbnails as the model finishes it (``overview_layer``), so the model
    view fills in during a long forward pass: none in a request's first LIVE_AFTER_SECONDS, then
    the layers finished since the last send at most every PROGRESS_EVERY_SECONDS (and with the
    last layer), in step with the progress events. The page renders each burst in one frame: a
    1024-token SmolLM2 pass finishes a layer every 70 ms, and each event's frame took a share of
    the 2 cores the pass runs on. Remembers which layers went out, so the overview that follows
    need not carry them again."""

    def __init__(self, emit: Emit, rid):
        self.emit, self.rid, self.sent = emit, rid, set()
        self.started = time.monotonic()
        self.last_sent = self.started - PROGRESS_EVERY_SECONDS
        self.held: list[tuple[int, int, object]] = []  # layers finished since the last send

    def __call__(self, layer: int, layers: int, thumbnails) -> None:
        self.held.append((layer, layers, thumbnails))
        now = time.monotonic()
        last = len(self.sent) + len(self.held) == layers  # the pass's last layer goes at once
        if now - self.started < LIVE_AFTER_SECONDS or (now - self.last_sent < PROGRESS_EVERY_SECONDS and not last):
            return
        self.last_sent = now
        for held_layer, total, pooled in self.held:
            self.emit("overview_layer", {"rid": self.rid, **shaping.overview_layer_payload(held_layer, total, pooled)})
            self.sent.add(held_layer)
        self.held.clear()

    def complete(self, capture) -> bool:
        return len(self.sent) == capture.n_layers


def stream_generation(call, fields: dict) -> None:
    """Generate a continuation, sending each token as the model chooses it (``generated_token``),
    then stream the analysis of prompt + continuation, announcing first where the generated
    tokens begin (the stepper walks through them). A cancelled request stops between tokens."""
    from app import language

    settings = {name: fields[name] for name in ("max_new_tokens", "sample", "seed", "temperature")}
    announce = _token_stream(call, settings["max_new_tokens"])
    full = language.generate(call.service, fields["model"], fields["text"], settings, progress_events(call), announce)
    analysis = call.service.analyze(fields["model"], full, progress_events(call))
    call.emit(
        "generated",
        {
            "rid": call.rid,
            "key": analysis.key,
            "prompt": fields["text"],
            "text": full,
            "first_generated": language.first_generated_token(analysis.capture, fields["text"]),
            **settings,
        },
    )
    _send(call, analysis, [])


def _token_stream(call, total: int):
    """models.language.TokenDone for one request: each new token with the attention row that chose
    it, as uint8 ``[layers, heads, n]`` (a socket's; an HTTP call answers once); raises
    JobCancelled once the request is cancelled or its client left, which ends the model work."""

    def announce(step: int, pieces: list[str], attention) -> None:
        if limits.cancelled():
            raise limits.JobCancelled()
        if call.live:
            payload = {"step": step, "total": total, "tokens": pieces, "attention": quantize_unit(attention)}
            call.emit("generated_token", {"rid": call.rid, **payload})

    return announce


def stream_open(call, fields: dict) -> None:
    """Stream a stored analysis by key (share links to uploaded captures, short links)."""
    key = fields["key"]
    _send(call, Analysis(key, call.service.lookup(key), True, 0.0), fields["layers"])


def progress_events(call):
    """Progress events: every queue position, the rest at most one per PROGRESS_EVERY_SECONDS and
    none of them before LIVE_AFTER_SECONDS (see there); none for a call that answers once."""
    started = time.monotonic()
    last_sent = started - PROGRESS_EVERY_SECONDS

    def progress(stage: str, fraction: float) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if not call.live:
            return
        if not isinstance(stage, limits.QueueStage):
            if now - started < LIVE_AFTER_SECONDS or now - last_sent < PROGRESS_EVERY_SECONDS:
                return
            last_sent = now
        call.emit("progress", {"rid": call.rid, "stage": stage, "fraction": round(fraction, 3)})

    return progress


def _send(call, analysis: Analysis, layers: list, streamed: bool = False) -> None:
    """tokens -> overview -> requested layers -> done."""
    capture, key, emit, rid = analysis.capture, analysis.key, call.emit, call.rid
    if streamed:  # the first answer of a new analysis: its thumbnails went out as the model ran
        tokens, overview = shaping.tokens_payload(key, capture), shaping.overview_payload(key, capture, streamed)
    else:
        tokens, overview = call.service.first_views.get(key, capture)
    emit("tokens", {"rid": rid, **tokens})
    emit("overview", {"rid": rid, **overview})
    for layer in layers:
        if 0 <= layer < capture.n_layers:
            emit("layer", {"rid": rid, **on_layer(call, {"key": key, "layer": layer, "mode": "attention"})})
    emit("done", {"rid": rid, "key": key, "cached": analysis.cached, "seconds": round(analysis.seconds, 4)})
