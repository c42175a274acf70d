"""The wire contract between server and browser, mirrored by ``static/js/protocol.js`` and
described in ``docs/protocol.md``: namespace, event names, request fields, error codes, and how
arrays travel (binary, float16 or uint8 with a scale; never JSON lists of floats)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

NAMESPACE = "/atlas"
MAX_RID_CHARS = 64
MAX_ITEM_CHARS = 256  # characters of one string in a list field (an analysis key has 64)
# Weight modes of the views. Kobayashi et al. 2020 (docs/analyses.md): per head ||alpha_ij f_h(x_j)||
# as row shares ("value") or raw in norm units ("norm"); per layer ||sum_h alpha^h_ij f_h(x_j)|| as
# row shares ("layer_share") or raw ("layer"), one map for the whole layer.
ATTENTION_MODES = ("attention", "scores", "value", "norm", "layer_share", "layer")
HEAD_NORM_MODES = ("value", "norm")
LAYER_NORM_MODES = ("layer_share", "layer")
NORM_MODES = HEAD_NORM_MODES + LAYER_NORM_MODES  # the model view's norm-based thumbnails
RAW_MODES = ("norm", "layer")  # in the model's norm units, unbounded: payloads carry their peak as the scale
FUSIONS = ("mean", "max", "min")


# Every error code the server sends, with the title the page shows above its message (published
# to the page by app/published.py; the codes only the page itself raises are in static/js/protocol.js).
ERRORS = {
    "bad_request": "The request was not understood",
    "empty_prompt": "The prompt is empty",
    "too_long": "The prompt is too long",
    "unknown_model": "Unknown model",
    "model_load_failed": "The model could not be loaded",
    "unsupported_model": "This model is not supported",
    "not_found": "This analysis is no longer cached",
    "not_computed": "Not computed yet",
    "out_of_memory": "The server ran out of memory",
    "busy": "The server is busy",
    "rate_limited": "Too many requests",
    "forbidden": "Not allowed",
    "internal": "The server failed",
}

# Every event the server sends a client: the stream of an analysis or generation, the answer to
# a detail request (an event of the request's own name), `error`, and presenter mode's.
SERVER_EVENTS = (
    "progress",
    "overview_layer",
    "tokens",
    "overview",
    "generated_token",
    "generated",
    "done",
    "error",
    "layer",
    "matrix",
    "token",
    "thumbnails",
    "neuron",
    "stats",
    "heads",
    "rollout",
    "flow",
    "mixing",
    "feedforward",
    "routes",
    "compare",
    "ablate",
    "patch",
    "lens",
    "atlas",
    "atlas_corpus",
    "atlas_head",
    "cancel",
    "present_started",
    "present_state",
    "present_followers",
    "present_ended",
)


class AtlasError(Exception):
    """An error the user should see: ``code`` (one of ERRORS) is stable for programs,
    ``message`` for people."""

    def __init__(self, code: str, message: str, status: int = 400):
        assert code in ERRORS, f"unknown error code {code!r}: add it to app.protocol.ERRORS"
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def payload(self, rid: Any = None) -> dict:
        return {"rid": rid, "code": self.code, "message": self.message}


def encode_array(array: np.ndarray, dtype: str = "float16") -> dict:
    """A binary array: ``data`` is little-endian bytes of ``dtype`` in C order."""
    array = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(array.shape), "data": array.tobytes()}


def quantize_unit(array: np.ndarray) -> dict:
    """Values in [0, 1] as uint8 (value = byte * scale): a quarter of float32, plenty for colour."""
    scale = 1.0 / 255.0
    encoded = encode_array(np.clip(np.rint(np.asarray(array) / scale), 0, 255), "uint8")
    return {**encoded, "scale": scale}


def jsonable(payload: Any) -> Any:
    """The HTTP form of a payload: bytes become base64 strings, everything else is unchanged."""
    if isinstance(payload, bytes):
        return base64.b64encode(payload).decode("ascii")
    if isinstance(payload, dict):
        return {key: jsonable(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [jsonable(value) for value in payload]
    return payload


@dataclass(frozen=True)
class Field:
    kind: type
    required: bool = True
    default: Any = None
    choices: tuple = ()
    minimum: float | None = None  # of a number, or of a list's integers
    maximum: float | None = None
    max_items: int | None = None  # a list field: at most this many integers (never booleans)
    item: type = int  # a list field's items: integer indices, or strings (of at most MAX_ITEM_CHARS)
    # A list field that names a set: sorted without repeats when parsed, so the same set in
    # another order is the same request (one memo entry, one answer).
    unordered: bool = False


def request_id(data: Any) -> str | int | None:
    """The client's request id when it is a valid one (a short string or integer), else None."""
    rid = data.get("rid") if isinstance(data, dict) else None
    valid = isinstance(rid, (str, int)) and not isinstance(rid, bool) and len(str(rid)) <= MAX_RID_CHARS
    return rid if valid else None


def parse_request(event: str, specs: dict[str, Field], data: Any) -> tuple[Any, dict]:
    """Validate a client request against its fields (app/requests.py): returns (rid, fields) or
    raises AtlasError('bad_request')."""
    if not isinstance(data, dict):
        raise AtlasError("bad_request", f"'{event}' expects an object with fields {sorted(specs)}")
    rid = request_id(data)
    if rid is None and data.get("rid") is not None:
        raise AtlasError("bad_request", f"'rid' must be a string or integer of at most {MAX_RID_CHARS} characters")
    values = {}
    for name, spec in specs.items():
        value = data.get(name)
        if value is None:
            if spec.required:
                raise AtlasError("bad_request", f"'{event}' needs the field '{name}'")
            values[name] = spec.default
            continue
        kinds = (int, float) if spec.kind is float else spec.kind
        if not isinstance(value, kinds) or (isinstance(value, bool) and spec.kind is not bool):
            raise AtlasError("bad_request", f"'{name}' must be of type {spec.kind.__name__}")
        if spec.choices and value not in spec.choices:
            raise AtlasError("bad_request", f"'{name}' must be one of {', '.join(spec.choices)}")
        if spec.kind is list:
            (_check_strings if spec.item is str else _check_indices)(name, value, spec)
            value = sorted(set(value)) if spec.unordered else value
        elif spec.minimum is not None and value < spec.minimum:
            raise AtlasError("bad_request", f"'{name}' must be at least {spec.minimum}")
        elif spec.maximum is not None and value > spec.maximum:
            raise AtlasError("bad_request", f"'{name}' must be at most {spec.maximum}")
        values[name] = value
    return rid, values


def _check_indices(name: str, value: list, spec: Field) -> None:
    """A list of integer indices (not booleans, which Python counts as integers and numpy reads
    as masks), at most ``max_items`` of them."""
    if (spec.max_items is not None and len(value) > spec.max_items) or not all(
        type(item) is int and (spec.minimum is None or item >= spec.minimum) for item in value
    ):
        raise AtlasError("bad_request", f"'{name}' must be a list of at most {spec.max_items} indices")


def _check_strings(name: str, value: list, spec: Field) -> None:
    """A list of at most ``max_items`` short strings (what each must spell is its handler's check)."""
    if (spec.max_items is not None and len(value) > spec.max_items) or not all(
        isinstance(item, str) and len(item) <= MAX_ITEM_CHARS for item in value
    ):
        raise AtlasError("bad_request", f"'{name}' must be a list of at most {spec.max_items} strings")


def encode_strings(strings: list[str]) -> dict:
    """A list of strings as one ``joined`` string and ``lengths`` (uint32, UTF-16 code units,
    which is how JavaScript slices strings). Socket.IO walks every list element in Python to look
    for binary data, so 4096 tokens as a JSON list cost ~5 ms per message; this costs ~0.1 ms."""
    joined = "".join(strings)
    if len(joined.encode("utf-16-le")) == 2 * len(joined):  # no character outside the BMP
        lengths = np.fromiter(map(len, strings), dtype=np.uint32, count=len(strings))
    else:
        lengths = np.array([len(text.encode("utf-16-le")) // 2 for text in strings], dtype=np.uint32)
    return {"joined": joined, "lengths": encode_array(lengths, "uint32")}
