"""What one capture costs, on paper, before the forward pass runs: memory beyond the weights and
floating-point work. The recorder checks the memory against what the device has free and refuses
a capture that would not fit with a clear error, instead of failing (or swapping) mid-pass.

The figures follow the fused path (models.recorder): the record keeps q and k as the model
computed them, one log-sum-exp and value norm per row and head, the analysed prefix's
statistics; nothing H x N x N exists at once (row blocks of models.blocks.block_bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.blocks import BLOCK_BYTES
from models.errors import TooManyTokensError
from models.record import HEAD_STATS, STATS_TOKENS

MEMINFO = Path("/proc/meminfo")
THUMBNAIL_MAX_SIDE = 64  # pixels per side of a head's thumbnail; the model view never needs more
HEADROOM = 1.2  # the plan is an estimate: ask for this much more than it says


@dataclass(frozen=True)
class Geometry:
    """The sizes a capture's cost depends on, read off a transformers config."""

    layers: int  # attention layers
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    causal: bool

    @classmethod
    def of(cls, config, layers: int | None = None, causal: bool = True) -> Geometry:
        def first(*names: str, default: int = 0) -> int:
            return next((int(getattr(config, n)) for n in names if getattr(config, n, None)), default)

        hidden = first("hidden_size", "d_model", "n_embd")
        heads = first("num_attention_heads", "encoder_attention_heads", "n_head", "num_heads")
        return cls(
            layers=layers or first("num_hidden_layers", "n_layer", "num_layers"),
            heads=heads,
            kv_heads=first("num_key_value_heads", default=heads),
            head_dim=first("head_dim", "d_kv", default=hidden // max(1, heads)),
            hidden=hidden,
            intermediate=first("intermediate_size", "d_ff", "encoder_ffn_dim", "n_inner", default=4 * hidden),
            causal=causal,
        )


@dataclass(frozen=True)
class CapturePlan:
    """Bytes beyond the weights, and floating-point operations, of one capture of ``tokens``."""

    tokens: int
    record: int  # the arrays the capture returns (then held by the results cache)
    activations: int  # hidden states kept for their norms, one layer's transients, value vectors, the mask
    workspace: int  # the blocked pass's blocks, pooled rows and float32 q, k
    forward_flops: float  # the model's own forward pass
    record_flops: float  # the blocked pass: q.k again, exp, reductions

    @property
    def total(self) -> int:
        return self.record + self.activations + self.workspace


def plan_capture(
    geometry: Geometry,
    tokens: int,
    itemsize: int,
    keeps_values: bool = True,
    block_bytes: int = BLOCK_BYTES,
    stored_itemsize: int | None = None,
) -> CapturePlan:
    """The plan for ``tokens`` tokens with activations of ``itemsize`` bytes (4 on the CPU, 2 in
    half precision on a GPU). q and k are stored at ``stored_itemsize`` (the same, except 4 for
    bfloat16, which numpy lacks). ``keeps_values``: the capture
    keeps every layer's value vectors until its output Grams are computed, after the answer (a
    CPU capture, :data:`models.recorder.DEFERRED_OUTPUT_DEVICES`); a GPU capture computes them in
    the pass and keeps none, and planning them there could refuse a capture that fits.
    ``block_bytes``: the blocked pass's blocks on the device (:func:`models.blocks.block_bytes`)."""
    g, n = geometry, tokens
    prefix = min(n, STATS_TOKENS)
    per_layer_rows = g.heads * n * 4 * 2 + n * 4 * 2  # row lse, value norms; received, hidden norms
    stats = g.heads * (len(HEAD_STATS) + prefix) * 4
    thumbnails = g.heads * min(n, THUMBNAIL_MAX_SIDE) ** 2 * 2  # float16, at most this side
    grams = n * g.heads * g.heads * 4  # float32 output grams, f_h(x_j) . f_g(x_j) per token
    stored = (g.heads + g.kv_heads) * n * g.head_dim * (stored_itemsize or itemsize)  # q and k
    per_layer = stored + per_layer_rows + stats + thumbnails + grams
    record = g.layers * per_layer + n * n  # and one boolean mask
    hidden_states = (g.layers + 1) * n * g.hidden * itemsize
    layer = n * (3 * g.intermediate + 4 * g.hidden) * itemsize + 2 * g.heads * n * g.head_dim * itemsize
    values = g.layers * g.kv_heads * n * g.head_dim * 4 if keeps_values else 0  # float32, until the Grams are computed
    activations = hidden_states + layer + values + n * n * (itemsize + 2)  # the model's additive mask, bool copies
    workspace = 2 * block_bytes + g.heads * n * THUMBNAIL_MAX_SIDE * 4 + 2 * g.heads * n * g.head_dim * 4
    pairs = n * n * (0.5 if g.causal else 1.0)  # (query, key) pairs a causal kernel computes
    params = g.layers * (2 * g.hidden * g.heads * g.head_dim + 2 * g.hidden * g.kv_heads * g.head_dim)
    params += g.layers * 3 * g.hidden * g.intermediate
    forward = 2 * n * params + 4 * g.layers * g.heads * pairs * g.head_dim
    recording = g.layers * g.heads * pairs * (2 * g.head_dim + 12)
    return CapturePlan(n, int(record), int(activations), int(workspace), float(forward), float(recording))


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a capture on ``device``: the CUDA allocator's free memory, or the
    kernel's MemAvailable for the CPU; None where neither can be read (then nothing is checked)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(plan: Callable[[int], CapturePlan], tokens: int, available: int | None, where: str) -> None:
    """Raise TooManyTokensError, before any model work, when a capture of ``tokens`` would not
    fit in ``available`` bytes by ``plan`` (tokens -> its plan); the message says how much it
    needs and how long a prompt fits."""
    needed = int(plan(tokens).total * HEADROOM)
    if available is None or needed <= available:
        return
    fits = 0
    low, high = 1, tokens
    while low <= high:  # the longest prompt that fits: the plan grows with the tokens
        middle = (low + high) // 2
        if plan(middle).total * HEADROOM <= available:
            fits, low = middle, middle + 1
        else:
            high = middle - 1
    raise TooManyTokensError(
        f"a capture of {tokens} tokens needs about {needed / 2**30:.1f} GiB beyond the model's weights and "
        f"{where} has {available / 2**30:.1f} GiB free; a prompt of at most {fits} tokens fits now"
    )
