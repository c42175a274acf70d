"""The recording hook: what one forward pass leaves behind, as numpy arrays on the CPU.

The capture mechanism is a registered transformers attention implementation. Every model whose
attention modules dispatch through ``ALL_ATTENTION_FUNCTIONS`` (BERT, GPT-2, Llama, Mistral,
Qwen, Gemma, T5-style encoders in transformers 5) hands it the query and key states exactly as it
uses them: after rotary embedding, before grouped-query expansion, with its own mask and scaling.
The function runs the model's own eager attention (so outputs are unchanged) and, while a
:func:`recording` context is active in this thread, hands each layer to a :class:`Recorder`.

The drivers that decide what a forward pass reads, :mod:`models.capture` (one sequence) and
:mod:`models.seq2seq` (encoder + decoder), share everything through this module; only capture
knows seq2seq (it hands encoder-decoder models on), so the two import no private names and form
no cycle.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

from models.errors import TooManyTokensError, UnsupportedModelError
from models.record import Capture

ATTENTION_IMPLEMENTATION = "atlas_capture"
OVERVIEW_BUDGET_BYTES = 192 * 1024  # bytes of uint8 thumbnails for the whole model view
THUMBNAIL_MAX_SIDE = 64  # pixels; the model view never needs more per head
THUMBNAIL_MIN_SIDE = 8
ATTENTION_KEEP_BYTES = 256 * 1024 * 1024  # bytes; above this attention is recomputed from q and k
SCORE_CHECK_ROWS = 128  # query rows sampled by the score check
SCORE_CHECK_TOLERANCE = 1e-3  # max |softmax(scores) - weights| before a record must keep attention

LayerDone = Callable[[int, int, np.ndarray], None]  # (layer index, layers in all, its [H, t, t] thumbnails)
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # storage precision -> torch dtype
_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("atlas_recorder", default=None)


def forward_bytes(n_heads: int, n_tokens: int) -> int:
    """Memory one eager forward pass needs beyond the weights, at most: one layer's float32
    scores and weights, softmax's temporary and the recorder's pooled copy, ~4 x H x N x N floats
    (2.4 GB for 9 heads at 4096 tokens)."""
    return 4 * n_heads * n_tokens * n_tokens * 4


def thumbnail_side(n_layers: int, n_heads: int, n_tokens: int) -> int:
    """Side of each head's thumbnail so the whole overview stays within its byte budget."""
    side = int((OVERVIEW_BUDGET_BYTES / max(1, n_layers * n_heads)) ** 0.5)
    return max(1, min(n_tokens, THUMBNAIL_MAX_SIDE, max(THUMBNAIL_MIN_SIDE, side)))


def _generic_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain attention for modules whose modeling file has no ``eager_attention_forward``."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _eager_for(module):
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", _generic_eager)


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: the model's own eager math, plus recording."""
    output, weights = _eager_for(module)(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record(module, query, key, value, attention_mask, scaling, weights)
    return output, weights


def register_capture_attention() -> None:
    """Make ``attn_implementation="atlas_capture"`` known to transformers (idempotent)."""
    if ATTENTION_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION_IMPLEMENTATION, capture_attention)
        AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)


@dataclass
class Recorder:
    """Collects per-layer arrays during one forward pass, on the CPU, in ``dtype``."""

    n_tokens: int
    thumb: int
    keep_attention: bool
    dtype: np.dtype
    names: dict[int, str]
    on_layer: Callable[[int, np.ndarray], None] | None = None  # (layer index, its thumbnails)
    scores_exact: bool = True
    layers: list[dict] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def record(self, module, query, key, value, attention_mask, scaling, weights) -> None:
        if query.shape[0] != 1 or query.shape[-2] != key.shape[-2]:
            raise UnsupportedModelError(
                f"{type(module).__name__}: only self-attention over one sequence can be captured "
                f"(got queries {tuple(query.shape)} and keys {tuple(key.shape)})"
            )
        scaling = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
        weights = weights[0].float()  # [H, N, N]
        groups = query.shape[1] // key.shape[1]
        if not self.layers:
            self._check_scores(query, key, attention_mask, scaling, weights, groups)
        thumbs = F.adaptive_max_pool2d(weights, self.thumb)  # [H, t, t]
        keys = key[0].float().repeat_interleave(groups, 0)  # [H, N, d]
        mask = self._mask_index(attention_mask)
        visible = torch.from_numpy(self.masks[mask].sum(axis=0).clip(min=1)).to(weights)  # [N] queries per key
        self.layers.append(
            {
                "name": self.names.get(id(module), type(module).__name__),
                "queries": self._numpy(query[0]),  # [H, N, d]
                "keys": self._numpy(key[0]),  # [KV, N, d]
                "row_lse": _row_logsumexp(query[0].float(), keys, weights, scaling).cpu().numpy(),  # [H, N]
                "received": (weights.sum(dim=(0, 1)) / (weights.shape[0] * visible)).cpu().numpy(),  # [N]
                "value_norms": value[0].float().norm(dim=-1).repeat_interleave(groups, 0).cpu().numpy(),  # [H, N]
                "thumbnails": thumbs.cpu().numpy().astype(np.float16),
                "attention": self._numpy(weights) if self.keep_attention else None,
                "scaling": scaling,
                "mask": mask,
                "groups": groups,
            }
        )
        if self.on_layer:
            self.on_layer(len(self.layers) - 1, self.layers[-1]["thumbnails"])

    def _check_scores(self, query, key, attention_mask, scaling, weights, groups) -> None:
        """Keep full attention when softmax(q.k * scaling + mask) does not reproduce the model's
        weights (soft-capping, learned sinks, ALiBi): recomputing from q and k would then be wrong.
        Checks a sample of rows, so a long prompt's check costs little memory."""
        rows = torch.linspace(0, query.shape[-2] - 1, min(SCORE_CHECK_ROWS, query.shape[-2])).long()
        keys = key[0].float().repeat_interleave(groups, 0)  # [H, N, d]
        scores = query[0][:, rows].float() @ keys.transpose(1, 2) * scaling  # [H, r, N]
        if attention_mask is not None:
            mask = attention_mask[0, 0, rows, : scores.shape[-1]]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        readable = torch.isfinite(scores).any(dim=-1, keepdim=True)  # rows a query may read at all
        probabilities = torch.softmax(scores.masked_fill(~readable, 0.0), dim=-1) * readable
        error = (probabilities - weights[:, rows]).abs().max()
        self.scores_exact = bool(error <= SCORE_CHECK_TOLERANCE)
        self.keep_attention = self.keep_attention or not self.scores_exact

    def _numpy(self, tensor: torch.Tensor) -> np.ndarray:
        """Convert in torch: its float16 cast is ~15x faster than numpy's on large attention."""
        return tensor.detach().to(TORCH_DTYPES[self.dtype.name]).cpu().numpy()

    def _mask_index(self, attention_mask) -> int:
        """Store each distinct mask once as booleans (True = may attend)."""
        n = self.n_tokens
        if attention_mask is None:
            allowed = np.ones((n, n), dtype=bool)
        else:
            allowed = allowed_positions(attention_mask[0, 0, :n, :n]).cpu().numpy()
        for index, known in enumerate(self.masks):
            if np.array_equal(known, allowed):
                return index
        self.masks.append(allowed)
        return len(self.masks) - 1


def _row_logsumexp(queries, keys, weights, scaling: float):
    """[H, N] log-sum-exp of each row's scores, read off each row's largest weight.

    p_ij = exp(s_ij - lse_i) for every j, so lse_i = s_ij* - log p_ij* at the argmax j*, whose
    weight is >= 1/N and never underflows. Costs one gather instead of a second N x N product.
    """
    best = weights.argmax(dim=-1)  # [H, N]
    best_keys = torch.gather(keys, 1, best[..., None].expand(-1, -1, keys.shape[-1]))  # [H, N, d]
    best_scores = (queries * best_keys).sum(-1) * scaling
    best_weights = torch.gather(weights, -1, best[..., None])[..., 0]
    # a row that reads nothing (another segment's rows in an encoder-decoder record) stores 0
    return torch.where(best_weights > 0, best_scores - torch.log(best_weights), 0.0)


def allowed_positions(mask: torch.Tensor) -> torch.Tensor:
    """Bool: True where a mask lets a query attend, for boolean masks and additive ones (which
    put the dtype's minimum, or -inf, where they forbid)."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def new_recorder(
    recorder_class: type[Recorder],
    n: int,
    layers: int,
    heads: int,
    precision: str,
    keep_attention_bytes: int,
    on_layer: LayerDone | None,
    **fields,
) -> Recorder:
    """A recorder for ``layers`` x ``heads`` over ``n`` tokens: attention kept when it fits
    ``keep_attention_bytes``, ``on_layer`` told how many layers there are."""
    dtype = np.dtype(precision)
    keep = layers * heads * n * n * dtype.itemsize <= keep_attention_bytes
    callback = (lambda layer, thumbnails: on_layer(layer, layers, thumbnails)) if on_layer else None
    return recorder_class(n, thumbnail_side(layers, heads, n), keep, dtype, {}, on_layer=callback, **fields)


def recorded_forward(handle, recorder: Recorder, heads: int, reserve: Callable[[int], None] | None, **inputs):
    """(output, seconds) of one forward pass with ``recorder`` active; ``reserve`` hears first the
    memory the pass will need."""
    if reserve:
        reserve(forward_bytes(heads, recorder.n_tokens))
    with handle.lock, torch.inference_mode(), recording(handle.model, recorder):
        started = time.perf_counter()
        output = handle.model(**inputs, output_hidden_states=True, use_cache=False)
        return output, time.perf_counter() - started


@contextlib.contextmanager
def recording(model, recorder: Recorder):
    """Activate ``recorder`` for forward passes in this thread; always deactivates."""
    recorder.names.update({id(module): name for name, module in model.named_modules()})
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


@dataclass
class Tokenized:
    """A prompt as the model reads it (ids) and as the views show it (tokens, spans)."""

    ids: list[int]
    pieces: list[str]
    tokens: list[str]
    spans: np.ndarray  # [N, 2] int32
    special: np.ndarray  # [N] bool


def tokenize(tokenizer, text: str, max_tokens: int) -> Tokenized:
    """Tokenize with character spans; refuse more than ``max_tokens`` before any model work."""
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=False)
    ids = list(encoded["input_ids"])
    if len(ids) > max_tokens:
        raise TooManyTokensError(f"the prompt is {len(ids)} tokens; this model accepts at most {max_tokens}")
    if not ids:
        raise ValueError("the prompt produced no tokens")
    spans = np.asarray(encoded["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    special = np.asarray(encoded["special_tokens_mask"], dtype=bool)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    tokens = [
        piece if is_special or start == end else text[start:end]
        for piece, is_special, (start, end) in zip(pieces, special, spans)
    ]
    return Tokenized(ids, pieces, tokens, spans, special)


def assemble(
    model: str,
    text: str,
    tokenized: Tokenized,
    recorder: Recorder,
    hidden_norms: np.ndarray,
    description: dict,
    timings: dict,
) -> Capture:
    """The record of one finished pass: the recorder's per-layer arrays stacked along a layer axis.

    ``hidden_norms`` is [L + 1, N]; each driver reads it off its own model output, because
    encoder-decoder models return two stacks of hidden states. Both drivers end here, so every
    record has the same layout whichever model produced it.
    """
    layers = recorder.layers
    groups = layers[0]["groups"]
    heads = layers[0]["queries"].shape[0]
    return Capture(
        model=model,
        text=text,
        tokens=tokenized.tokens,
        pieces=tokenized.pieces,
        layer_names=[layer["name"] for layer in layers],
        info={**description, **timings, "tokens": len(tokenized.ids), "scores_exact": recorder.scores_exact},
        spans=tokenized.spans,
        special=tokenized.special,
        queries=np.stack([layer["queries"] for layer in layers]),
        keys=np.stack([layer["keys"] for layer in layers]),
        kv_map=(np.arange(heads) // groups).astype(np.int32),
        scaling=np.asarray([layer["scaling"] for layer in layers], dtype=np.float32),
        masks=np.stack(recorder.masks),
        mask_index=np.asarray([layer["mask"] for layer in layers], dtype=np.int32),
        row_lse=np.stack([layer["row_lse"] for layer in layers]).astype(np.float32),
        received=np.stack([layer["received"] for layer in layers]).astype(np.float32),
        value_norms=np.stack([layer["value_norms"] for layer in layers]).astype(np.float32),
        hidden_norms=hidden_norms.astype(np.float32),
        thumbnails=np.stack([layer["thumbnails"] for layer in layers]),
        attention=np.stack([layer["attention"] for layer in layers]) if recorder.keep_attention else None,
    )
