"""Every request the server answers, in one table: its name, its fields, the one function that
handles it, how it travels (Socket.IO event, HTTP route, or both) and what it costs.

The cost decides admission, in one place (:mod:`app.dispatch`), identically for both transports:

- ``cached``: answered from a stored analysis in milliseconds (shaping one payload).
- ``cpu``: bounded work on a stored analysis (head summary, rollout, flow, compare, exports):
  runs in the CPU queue, memoised per key unless it answers with a file.
- ``model``: a forward pass or a generation: pays the analyze rate limit and the per-client job
  cap, waits in the device queue, is dropped when its client leaves.
- ``stream``: answered by a stream of events from a stored analysis (``open``): the job cap.
- ``room``: presenter mode: the room's own rules.

Every request pays the per-client event rate limit. Adding a request means adding a row here;
nothing else decides what it may cost.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from app import handlers, information_flow, interventions, language, mixing, published, stream
from app.globalview import handlers as globalview
from app.protocol import ATTENTION_MODES, FUSIONS, NORM_MODES, Field
from models.ablation import ABLATION_MODES


class Cost(enum.Enum):
    CACHED = "cached"
    CPU = "cpu"
    MODEL = "model"
    STREAM = "stream"
    ROOM = "room"


@dataclass(frozen=True)
class Request:
    name: str
    fields: dict[str, Field]
    handler: Callable  # handler(call: app.dispatch.Call, fields) -> payload dict, file response or None
    cost: Cost
    socket: bool = True  # a Socket.IO event of this name
    http: tuple[str, str] | None = None  # (method, rule under /api)
    streams: bool = False  # answered by several events (progress, tokens, overview, ..., done)
    memo: bool = True  # cpu/model answers memoised per (key, fields); False for files
    pays: tuple[str, ...] = ()  # rate limits paid beyond its cost's (app.dispatch.rate_limits names them)

    @property
    def memoised(self) -> bool:
        return self.memo and not self.streams and self.cost in (Cost.CPU, Cost.MODEL)


KEY = Field(str)
INDEX = Field(int, minimum=0)
MODE = Field(str, False, "attention", ATTENTION_MODES)
FUSION = Field(str, False, "mean", FUSIONS)
POSITION = Field(int, False, 0, minimum=0)
LAYERS = Field(list, required=False, default=[], minimum=0, max_items=64)  # layers to stream with the overview
TEXT = Field(str)
MODEL = Field(str, required=False)


def detail(name: str) -> tuple[str, str]:
    return "GET", f"/analysis/<key>/{name}"


TABLE: tuple[Request, ...] = (
    Request(
        "analyze",
        {"model": MODEL, "text": TEXT, "target": Field(str, required=False, default=""), "layers": LAYERS},
        stream.stream_analysis,
        Cost.MODEL,
        http=("POST", "/analyze"),
        streams=True,
    ),
    Request(
        "generate",
        {"model": MODEL, "text": TEXT, **language.GENERATION_FIELDS},
        stream.stream_generation,
        Cost.MODEL,
        http=("POST", "/generate"),
        streams=True,
    ),
    Request(
        "lens",
        {"key": KEY, "start": Field(int, False, 0, minimum=0), "count": Field(int, False, 16, minimum=1)},
        handlers.on_lens,
        Cost.MODEL,
        http=detail("lens"),
    ),
    Request(
        "probe",
        {
            "model": MODEL,
            "length": Field(int, False, 24, minimum=4, maximum=64),
            "seed": language.GENERATION_FIELDS["seed"],
        },
        handlers.on_probe,
        Cost.MODEL,
        socket=False,
        http=("GET", "/probe"),
        memo=False,
    ),
    Request("cancel", {"request": Field(int, minimum=0)}, handlers.on_cancel, Cost.CACHED),
    Request(
        "ablate",
        {
            "key": KEY,
            "heads": Field(list, minimum=0, max_items=4096, unordered=True),  # flat: layer * heads per layer + head
            "mode": Field(str, False, "zero", ABLATION_MODES),
        },
        interventions.on_ablate,
        Cost.MODEL,
        http=("POST", "/analysis/<key>/ablate"),
    ),
    Request(
        "patch",
        {"key": KEY, "corrupt": TEXT},
        interventions.on_patch,
        Cost.MODEL,
        http=("POST", "/analysis/<key>/patch"),
    ),
    Request("open", {"key": KEY, "layers": LAYERS}, stream.stream_open, Cost.STREAM, streams=True),
    Request("layer", {"key": KEY, "layer": INDEX, "mode": MODE}, handlers.on_layer, Cost.CACHED, http=detail("layer")),
    Request(
        "matrix",
        {
            "key": KEY,
            "layer": INDEX,
            "head": INDEX,
            "mode": MODE,
            "row0": Field(int, False, 0, minimum=0),
            "row1": Field(int, False, None, minimum=0),
            "col0": Field(int, False, 0, minimum=0),
            "col1": Field(int, False, None, minimum=0),
        },
        handlers.on_matrix,
        Cost.CACHED,
        http=detail("matrix"),
    ),
    Request("token", {"key": KEY, "index": INDEX, "mode": MODE}, handlers.on_token, Cost.CACHED, http=detail("token")),
    Request(
        "thumbnails",
        {"key": KEY, "mode": Field(str, False, "norm", NORM_MODES)},  # the model view, Kobayashi et al. 2020
        handlers.on_thumbnails,
        Cost.CPU,  # every head's N x N map recomputed from the record: seconds at long prompts, memoised
        http=detail("thumbnails"),
    ),
    Request(
        "neuron",
        {"key": KEY, "layer": INDEX, "head": INDEX, "query": INDEX},
        handlers.on_neuron,
        Cost.CACHED,
        http=detail("neuron"),
    ),
    Request("stats", {"key": KEY}, handlers.on_stats, Cost.CPU, http=detail("stats")),
    Request("heads", {"key": KEY}, handlers.on_heads, Cost.CPU, http=detail("heads")),
    Request(
        "rollout",
        {"key": KEY, "fusion": FUSION, "position": POSITION},
        handlers.on_rollout,
        Cost.CPU,
        http=detail("rollout"),
    ),
    Request(
        "flow", {"key": KEY, "fusion": FUSION, "position": POSITION}, handlers.on_flow, Cost.CPU, http=detail("flow")
    ),
    Request("mixing", {"key": KEY, "layer": INDEX}, mixing.on_mixing, Cost.MODEL, http=detail("mixing")),
    Request("feedforward", {"key": KEY, "layer": INDEX}, mixing.on_feedforward, Cost.MODEL, http=detail("feedforward")),
    Request("routes", information_flow.FIELDS, information_flow.on_routes, Cost.MODEL, http=detail("routes")),
    Request("compare", {"key": KEY, "other": KEY}, handlers.on_compare, Cost.CPU, http=detail("compare")),
    Request(
        "export_npz",
        {"key": KEY},
        handlers.on_export_npz,
        Cost.CPU,
        socket=False,
        http=detail("export.npz"),
        memo=False,
    ),
    Request(
        "export_json",
        {"key": KEY},
        handlers.on_export_json,
        Cost.CPU,
        socket=False,
        http=detail("export.json"),
        memo=False,
    ),
    Request(
        "upload",
        {},
        handlers.on_upload,
        Cost.CPU,
        socket=False,
        http=("POST", "/captures"),
        memo=False,
        pays=("analyze",),  # it adds an analysis, like a forward pass
    ),
    Request("models", {}, handlers.on_models, Cost.CACHED, socket=False, http=("GET", "/models")),
    Request("settings", {}, published.on_settings, Cost.CACHED, socket=False, http=("GET", "/settings")),
    Request("gallery", {}, handlers.on_gallery, Cost.CACHED, socket=False, http=("GET", "/gallery")),
    Request(
        "link",
        {"query": Field(str)},
        handlers.on_link,
        Cost.CACHED,
        socket=False,
        http=("POST", "/links"),
        pays=("link",),  # each new link is a file on the server's disk
    ),
    Request("atlas", globalview.FIELDS, globalview.on_atlas, Cost.CACHED, http=("GET", "/atlas/<model>"), memo=False),
    Request(
        "atlas_corpus",
        globalview.CORPUS_FIELDS,
        globalview.on_atlas_corpus,
        Cost.CPU,  # reads each named analysis from the cache
        http=("POST", "/atlas/<model>/corpus"),
        memo=False,  # starts a build: its answer changes as the build goes
    ),
    Request(
        "atlas_head",
        globalview.HEAD_FIELDS,
        globalview.on_atlas_head,
        Cost.CPU,
        http=("GET", "/atlas/<model>/<int:layer>/<int:head>"),
        memo=False,  # kept in the memo by the atlas itself, per head and method
    ),
    Request("present_start", {}, handlers.on_room, Cost.ROOM),
    Request("present_join", {"code": Field(str)}, handlers.on_room, Cost.ROOM),
    Request("present_leave", {"code": Field(str)}, handlers.on_room, Cost.ROOM),
    Request(
        "present_update", {"code": Field(str), "secret": Field(str), "state": Field(str)}, handlers.on_room, Cost.ROOM
    ),
    Request("present_end", {"code": Field(str), "secret": Field(str)}, handlers.on_room, Cost.ROOM),
)
REQUESTS: dict[str, Request] = {request.name: request for request in TABLE}
SOCKET_EVENTS: dict[str, Request] = {request.name: request for request in TABLE if request.socket}
