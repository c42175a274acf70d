"""The captured record of one forward pass: plain numpy, no torch, no Flask.

Everything downstream (cache, shaping, analyses, views) reads a :class:`Capture`. Full attention
matrices grow as N^2 per head, so a record keeps none by default: any block of any head is
recomputed from the captured queries, keys, mask and each row's log-sum-exp, the same
softmax(q.k * scaling + mask) the model ran. Queries and keys are stored as the model computed
them (float32 on a CPU, float16 on a GPU), which keeps the recomputed attention within 1e-3 of
the model's own (float16 copies of float32 q and k gave 9e-3 on SmolLM2; the capture tests
check 1e-3). Only models whose attention is not softmax(q.k) (soft-capping, ALiBi, T5's bias,
learned sinks) keep their attention, which the capture then cannot recompute.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 5  # bump when the arrays or their meaning change; part of every cache key
STATS_TOKENS = 1024  # tokens of the prefix whose head statistics the capture computes (app.insights)
STAT_OFFSETS = (-1, 0, 1, -4, -3, -2, 2, 3, 4)  # key - query of the positional shares in HEAD_STATS
# log p below this is read as this by both blocked passes (models.blocks, models.cpu_fold): exp stays a
# normal float32 (1.6e-38, not 0), and torch's CPU exp of arguments that underflow is 10-30x slower
EXP_FLOOR = -87.0
HEAD_STATS = (  # the last axis of Capture.head_stats: means over the prefix's query rows
    "entropy",  # nats
    "entropy_norm",  # entropy / log(keys the row may see), 0..1
    "distance",  # tokens, sum_k a_qk |q - k|
    "previous",
    "self",
    "next",
    *(f"offset{k:+d}" for k in STAT_OFFSETS[3:]),
)

ARRAY_FIELDS = (
    "spans",
    "special",
    "queries",
    "keys",
    "kv_map",
    "scaling",
    "masks",
    "mask_index",
    "row_lse",
    "output_norms",
    "output_grams",
    "hidden_norms",
    "received",
    "thumbnails",
    "head_stats",
    "key_shares",
    "attention",
)


class Deferred(np.lib.mixins.NDArrayOperatorsMixin):
    """An array of a record computed on first use, once, by whichever thread needs it first (then
    kept): it reads like the ndarray it becomes (indexing, ``shape``, ``dtype``, ``nbytes``,
    ``np.asarray``, operators and ufuncs, any ndarray attribute).

    A capture on the CPU defers its output norms and Grams (models.contributions): work that no
    first view needs (models.recorder.DEFERRED_OUTPUT_DEVICES says what it costs). The cache's background writer, or the
    first view of norms, computes them after the answer has gone out."""

    def __init__(self, shape: tuple[int, ...], dtype, compute: Callable[[], np.ndarray]):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._compute: Callable[[], np.ndarray] | None = compute
        self._value: np.ndarray | None = None
        self._lock = threading.Lock()

    def resolve(self) -> np.ndarray:
        """The array, computed now if no thread has yet (a failure is raised, and tried again
        at the next use)."""
        with self._lock:
            if self._value is None:
                value = np.asarray(self._compute(), dtype=self.dtype)
                if value.shape != self.shape:
                    raise ValueError(f"a deferred array came out {value.shape}, expected {self.shape}")
                self._value, self._compute = value, None  # what it was computed from can go
            return self._value

    @property
    def resolved(self) -> bool:
        return self._value is not None

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        value = self.resolve()
        return value.astype(dtype or value.dtype, copy=bool(copy))

    def __array_ufunc__(self, ufunc, method: str, *inputs, **kwargs):
        inputs = tuple(item.resolve() if isinstance(item, Deferred) else item for item in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getitem__(self, index) -> np.ndarray:
        return self.resolve()[index]

    def __len__(self) -> int:
        return self.shape[0]

    def __getattr__(self, name: str):
        if name.startswith("_"):  # its own state before __init__ (copy, pickle), and dunder probes
            raise AttributeError(name)
        return getattr(self.resolve(), name)


@dataclass
class Capture:
    """One prompt through one model. Shapes: L layers, H query heads, KV key/value heads,
    N tokens, d head size, t thumbnail side, M distinct masks."""

    model: str
    text: str
    tokens: list[str]  # display text of each token (its span of the prompt, or the special token)
    pieces: list[str]  # the tokenizer's own token strings ("Ġthe", "##ing")
    layer_names: list[str]  # module path of each attention layer
    info: dict  # model description and timings
    spans: np.ndarray  # [N, 2] int32 character offsets into text
    special: np.ndarray  # [N] bool, True for tokens the tokenizer added
    queries: np.ndarray  # [L, H, N, d] after rotary embedding, as the model used them
    keys: np.ndarray  # [L, KV, N, d] after rotary embedding
    kv_map: np.ndarray  # [H] int32, the key/value head each query head reads
    scaling: np.ndarray  # [L] float32, the factor on q.k before softmax
    masks: np.ndarray  # [M, N, N] bool, True where a query may attend to a key
    mask_index: np.ndarray  # [L] int32, which mask each layer used
    row_lse: np.ndarray  # [L, H, N] float32, log-sum-exp of each attention row's scores
    output_norms: np.ndarray | Deferred  # [L, H, N] float32, ||f_h(x_j)|| = ||(x_j W_V^h + b_V^h) W_O^h||
    #                                      (Kobayashi et al. 2020)
    hidden_norms: np.ndarray  # [L + 1, N] float32, norm of transformers' hidden_states: the embeddings,
    #                          the residual stream after each layer, and for the last entry after the
    #                          final norm (transformers applies it there), not the raw residual stream
    received: np.ndarray  # [L, N] float32, attention each key receives per head and visible query
    thumbnails: np.ndarray  # [L, H, t, t] float16, max-pooled attention for the model view
    head_stats: np.ndarray  # [L, H, S] float32, the HEAD_STATS of the first P tokens' rows
    key_shares: np.ndarray  # [L, H, P] float32, mean attention each of the first P keys gets from
    #                         the first P queries (P = min(N, STATS_TOKENS))
    attention: np.ndarray | None = None  # [L, H, N, N], kept only when asked (tests, small exports)
    output_grams: np.ndarray | Deferred | None = None  # [L, N, H, H] float32, f_h(x_j) . f_g(x_j) per token (the
    #                                         layer-level norms of Kobayashi et al. 2020); None in
    #                                         records made before format 5

    @property
    def n_layers(self) -> int:
        return int(self.queries.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.queries.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        arrays = [getattr(self, name) for name in ARRAY_FIELDS]
        return int(sum(a.nbytes for a in arrays if a is not None))

    def head_keys(self, layer: int, head: int) -> np.ndarray:
        """[N, d] keys that query head ``head`` compares against (grouped-query heads share)."""
        return self.keys[layer, self.kv_map[head]]

    def scores_block(self, layer: int, head: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """[r, c] float32 pre-softmax scores q.k * scaling, -inf where the mask forbids."""
        queries = self.queries[layer, head, rows].astype(np.float32)
        keys = self.head_keys(layer, head)[cols].astype(np.float32)
        scores = (queries @ keys.T) * np.float32(self.scaling[layer])
        allowed = self.masks[self.mask_index[layer]][rows, cols]
        return np.where(allowed, scores, np.float32(-np.inf))

    def attention_block(
        self, layer: int, head: int, rows: slice = slice(None), cols: slice = slice(None)
    ) -> np.ndarray:
        """[r, c] float32 attention probabilities for any block of one head.

        Without stored attention, exp(score - row log-sum-exp) gives any block exactly, without
        computing the rest of its rows (a 4096-token column costs one N x d product).
        """
        if self.attention is not None:
            return self.attention[layer, head, rows, cols].astype(np.float32)
        lse = self.row_lse[layer, head, rows].astype(np.float32)[:, None]
        return np.exp(self.scores_block(layer, head, rows, cols) - lse)

    def attention_at(self, layer: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[H, P] float32 attention of every head at P (row, col) pairs, 0 where the mask forbids:
        exp(q.k * scaling - row log-sum-exp) pair by pair, so a few marked pairs of a long prompt
        cost P x d per head, not the whole N x N map."""
        if self.attention is not None:
            return self.attention[layer][:, rows, cols].astype(np.float32)
        queries = self.queries[layer][:, rows].astype(np.float32)  # [H, P, d]
        keys = self.keys[layer][self.kv_map][:, cols].astype(np.float32)  # [H, P, d]
        scores = np.einsum("hpd,hpd->hp", queries, keys) * np.float32(self.scaling[layer])
        weights = np.exp(scores - self.row_lse[layer][:, rows].astype(np.float32))
        return np.where(self.masks[self.mask_index[layer]][rows, cols], weights, np.float32(0))

    def head_attention(self, layer: int, head: int) -> np.ndarray:
        """[N, N] float32 attention probabilities of one head."""
        return self.attention_block(layer, head)

    def layer_attention(self, layer: int) -> np.ndarray:
        """[H, N, N] float32 attention of every head in one layer."""
        if self.attention is not None:
            return self.attention[layer].astype(np.float32)
        return np.stack([self.head_attention(layer, head) for head in range(self.n_heads)])

    def validate(self, limits: RecordLimits | None = None) -> Capture:
        """Check the whole record against one schema: text fields of the right types, every array
        of the right kind and agreeing on L, H, KV, N and d, and (with ``limits``) no dimension
        beyond what the server itself would capture. Raises ValueError naming the first problem.

        Records from outside (notebook uploads) pass through here with the server's limits
        before being stored, so a stored record always opens and no analysis of it costs more
        than one of the server's own captures: the head summary's distance matrix grows with the
        square of layers x heads, a forward pass (the logit lens) with the tokens."""
        _check_meta(self)
        if np.ndim(self.queries) != 4 or np.ndim(self.keys) != 4 or np.ndim(self.thumbnails) != 4:
            raise ValueError("'queries', 'keys' and 'thumbnails' must be 4-dimensional")
        layers, heads, n, d = self.queries.shape
        kv_heads = self.keys.shape[1]
        side = self.thumbnails.shape[-1]
        if min(layers, heads, n, d, kv_heads, side, len(self.masks)) < 1:
            raise ValueError("a record needs at least one layer, head, token, key head, mask and head dimension")
        if limits is not None:
            limits.check(layers, heads, n, d, side, len(self.text))
        expected = {
            "tokens": (n,),
            "pieces": (n,),
            "spans": (n, 2),
            "special": (n,),
            "keys": (layers, kv_heads, n, d),
            "kv_map": (heads,),
            "scaling": (layers,),
            "mask_index": (layers,),
            "row_lse": (layers, heads, n),
            "output_norms": (layers, heads, n),
            "hidden_norms": (layers + 1, n),
            "received": (layers, n),
            "thumbnails": (layers, heads, side, side),
            "head_stats": (layers, heads, len(HEAD_STATS)),
            "key_shares": (layers, heads, min(n, STATS_TOKENS)),
            "layer_names": (layers,),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            actual = (len(value),) if isinstance(value, list) else np.shape(value)
            if tuple(actual) != shape:
                raise ValueError(f"'{name}' has shape {tuple(actual)}, expected {shape}")
        for name, kinds in ARRAY_KINDS.items():
            value = getattr(self, name)
            if value is not None and value.dtype.kind not in kinds:
                raise ValueError(f"'{name}' has dtype {value.dtype}, expected {ARRAY_KIND_NAMES[kinds]}")
            if value is not None and kinds == "f" and not np.isfinite(value).all():
                raise ValueError(f"'{name}' holds values that are not finite numbers")
        if self.masks.ndim != 3 or self.masks.shape[1:] != (n, n) or len(self.masks) > layers:
            raise ValueError(f"'masks' must be bool [M, {n}, {n}] with M at most {layers}")
        if self.mask_index.min(initial=0) < 0 or self.mask_index.max(initial=0) >= len(self.masks):
            raise ValueError("'mask_index' points outside 'masks'")
        if self.kv_map.min(initial=0) < 0 or self.kv_map.max(initial=0) >= kv_heads or kv_heads > heads:
            raise ValueError("'kv_map' points outside the key heads, or there are more key heads than query heads")
        if self.attention is not None and self.attention.shape != (layers, heads, n, n):
            raise ValueError(f"'attention' must be [{layers}, {heads}, {n}, {n}]")
        if self.output_grams is not None and self.output_grams.shape != (layers, n, heads, heads):
            raise ValueError(f"'output_grams' must be [{layers}, {n}, {heads}, {heads}]")
        _check_info(self.info, layers, n)
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flatten to named arrays for the disk store; text fields travel as one JSON array."""
        meta = {name: getattr(self, name) for name in ("model", "text", "tokens", "pieces", "layer_names", "info")}
        arrays = {name: getattr(self, name) for name in ARRAY_FIELDS if getattr(self, name) is not None}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return arrays

    def export_arrays(self) -> dict[str, np.ndarray]:
        """:meth:`to_arrays` plus what a reader of the NPZ export wants without parsing ``meta``
        (READABLE_ARRAYS): ``tokens``, a numpy string array ``[n]``. Uploaded back, it opens as is."""
        return {**self.to_arrays(), "tokens": np.array(self.tokens, dtype=str)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Capture:
        """The record :meth:`to_arrays` flattened. Raises ValueError for arrays it does not know or
        that are missing, and for a ``meta`` document that is not the record's text fields (run
        :meth:`validate` for the rest of the schema)."""
        arrays = {name: array for name, array in arrays.items() if name not in READABLE_ARRAYS}
        unknown = sorted(set(arrays) - {*ARRAY_FIELDS, "meta"})
        missing = sorted({*ARRAY_FIELDS, "meta"} - set(arrays) - set(OPTIONAL_ARRAYS))
        if unknown or missing:
            raise ValueError(f"unknown arrays {unknown[:8]}, missing arrays {missing}")
        raw = arrays["meta"]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("'meta' must be the record's text fields as uint8 JSON bytes")
        meta = json.loads(raw.tobytes().decode())
        if not isinstance(meta, dict) or set(meta) != set(META_FIELDS):
            raise ValueError(f"'meta' must be a JSON object with exactly the fields {', '.join(META_FIELDS)}")
        return cls(**meta, **{name: arrays.get(name) for name in ARRAY_FIELDS})


# --- the schema of a record from outside (validate, from_arrays) -----------------------------

META_FIELDS = ("model", "text", "tokens", "pieces", "layer_names", "info")  # what to_arrays puts in 'meta'
READABLE_ARRAYS = ("tokens",)  # copies of meta fields an export adds for readers; from_arrays drops them
OPTIONAL_ARRAYS = ("attention", "output_grams")  # attention: kept within the byte budget; grams: absent
#                                                  before format 5; every other array is required
ARRAY_KINDS = {  # numpy dtype kinds each array may have: f float, i/u integer, b bool
    "spans": "iu",
    "special": "b",
    "queries": "f",
    "keys": "f",
    "kv_map": "iu",
    "scaling": "f",
    "masks": "b",
    "mask_index": "iu",
    "row_lse": "f",
    "output_norms": "f",
    "output_grams": "f",
    "hidden_norms": "f",
    "received": "f",
    "thumbnails": "f",
    "head_stats": "f",
    "key_shares": "f",
    "attention": "f",
}
ARRAY_KIND_NAMES = {"f": "floating point", "iu": "integer", "b": "bool"}
LAYER_KINDS = ("encoder", "decoder", "cross")  # info["layer_kinds"] of an encoder-decoder record


@dataclass(frozen=True)
class RecordLimits:
    """The largest record a server accepts from outside: its own capture limits, passed in by
    the app (models/ never reads the app's configuration)."""

    tokens: int
    layers: int
    heads: int  # query heads per layer
    model_heads: int  # layers x heads: the head summary's cost grows with its square
    head_size: int
    chars: int  # characters of the record's text (the logit lens tokenizes it again)
    thumbnail_side: int = 64  # pixels per side of a head's thumbnail (models.recorder.THUMBNAIL_MAX_SIDE)

    def check(self, layers: int, heads: int, tokens: int, head_size: int, side: int, chars: int) -> None:
        sizes = {
            "layers": (layers, self.layers),
            "heads per layer": (heads, self.heads),
            "heads in all (layers x heads)": (layers * heads, self.model_heads),
            "tokens": (tokens, self.tokens),
            "head size": (head_size, self.head_size),
            "thumbnail side": (side, min(self.thumbnail_side, tokens)),
            "characters of text": (chars, self.chars),
        }
        over = [f"{name} {value:,} (at most {most:,})" for name, (value, most) in sizes.items() if value > most]
        if over:
            raise ValueError(f"the record is larger than this server accepts: {'; '.join(over)}")


def _check_meta(capture: Capture) -> None:
    """The text fields: strings where strings belong, ``info`` an object."""
    for name in ("model", "text"):
        if not isinstance(getattr(capture, name), str):
            raise ValueError(f"'{name}' must be a string")
    for name in ("tokens", "pieces", "layer_names"):
        value = getattr(capture, name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"'{name}' must be a list of strings")
    if not isinstance(capture.info, dict):
        raise ValueError("'info' must be a JSON object")


def _check_info(info: dict, layers: int, n: int) -> None:
    """The ``info`` fields the analyses read: ``causal``, and for an encoder-decoder record its
    layer kinds and the token range of each segment."""
    if not isinstance(info.get("causal", False), bool) or not isinstance(info.get("encoder_decoder", False), bool):
        raise ValueError("'info.causal' and 'info.encoder_decoder' must be true or false")
    if not info.get("encoder_decoder"):
        return
    kinds, segments = info.get("layer_kinds"), info.get("segments")
    if not isinstance(kinds, list) or len(kinds) != layers or not all(kind in LAYER_KINDS for kind in kinds):
        raise ValueError(f"'info.layer_kinds' must name each of the {layers} layers one of {', '.join(LAYER_KINDS)}")
    ranges = [segments.get(part) for part in ("encoder", "decoder")] if isinstance(segments, dict) else [None]
    if not all(_is_range(bounds, n) for bounds in ranges):
        raise ValueError(f"'info.segments' must give the encoder's and decoder's [first, end) tokens within {n}")


def _is_range(bounds: object, n: int) -> bool:
    return (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        and 0 <= bounds[0] <= bounds[1] <= n
    )
