"""The captured record of one forward pass: plain numpy, no torch, no Flask.

Everything downstream (cache, shaping, analyses, views) reads a :class:`Capture`. Full attention
matrices grow as N^2 per head, so a record keeps them only while they fit a byte budget; past it,
any head's attention is recomputed exactly from the captured queries, keys and mask, the same
softmax(q.k * scaling + mask) the model ran (the capture tests check the two agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np

FORMAT_VERSION = 2  # bump when the arrays or their meaning change; part of every cache key

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
    "value_norms",
    "hidden_norms",
    "received",
    "thumbnails",
    "attention",
)


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
    value_norms: np.ndarray  # [L, H, N] float32, ||v_j|| of each head's value vectors
    hidden_norms: np.ndarray  # [L + 1, N] float32, residual-stream norm after embeddings and each layer
    received: np.ndarray  # [L, N] float32, attention each key receives per head and visible query
    thumbnails: np.ndarray  # [L, H, t, t] float16, max-pooled attention for the model view
    attention: np.ndarray | None = None  # [L, H, N, N], kept only within the byte budget

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

    def head_attention(self, layer: int, head: int) -> np.ndarray:
        """[N, N] float32 attention probabilities of one head."""
        return self.attention_block(layer, head)

    def layer_attention(self, layer: int) -> np.ndarray:
        """[H, N, N] float32 attention of every head in one layer."""
        if self.attention is not None:
            return self.attention[layer].astype(np.float32)
        return np.stack([self.head_attention(layer, head) for head in range(self.n_heads)])

    def validate(self) -> Capture:
        """Check that every array agrees on L, H, KV, N and d; raises ValueError naming the first
        mismatch. Records from outside (notebook uploads) pass through here before being served."""
        layers, heads, n, d = self.queries.shape
        kv_heads = self.keys.shape[1]
        side = self.thumbnails.shape[-1]
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
            "value_norms": (layers, heads, n),
            "hidden_norms": (layers + 1, n),
            "received": (layers, n),
            "thumbnails": (layers, heads, side, side),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            actual = (len(value),) if isinstance(value, list) else np.shape(value)
            if tuple(actual) != shape:
                raise ValueError(f"'{name}' has shape {tuple(actual)}, expected {shape}")
        if self.masks.ndim != 3 or self.masks.shape[1:] != (n, n) or self.masks.dtype != bool:
            raise ValueError(f"'masks' must be bool [M, {n}, {n}]")
        if self.mask_index.min(initial=0) < 0 or self.mask_index.max(initial=0) >= len(self.masks):
            raise ValueError("'mask_index' points outside 'masks'")
        if self.kv_map.min(initial=0) < 0 or self.kv_map.max(initial=0) >= kv_heads:
            raise ValueError("'kv_map' points outside the key heads")
        if self.attention is not None and self.attention.shape != (layers, heads, n, n):
            raise ValueError(f"'attention' must be [{layers}, {heads}, {n}, {n}]")
        if len(self.layer_names) != layers:
            raise ValueError("'layer_names' must name every layer")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flatten to named arrays for the disk store; text fields travel as one JSON array."""
        meta = {name: getattr(self, name) for name in ("model", "text", "tokens", "pieces", "layer_names", "info")}
        arrays = {name: getattr(self, name) for name in ARRAY_FIELDS if getattr(self, name) is not None}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Capture:
        meta = json.loads(bytes(arrays["meta"]).decode())
        known = {f.name for f in fields(cls)}
        values = {name: arrays.get(name) for name in ARRAY_FIELDS}
        return cls(**{k: v for k, v in meta.items() if k in known}, **values)
