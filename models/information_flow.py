"""Edge importances of information-flow routes, as Ferrando & Voita (2024, "Information Flow
Routes: Automatically Interpreting Language Models at Scale", EMNLP) define them.

Every block writes a sum of vectors into the residual stream: after the attention block of layer
l, token i's vector is t_i = x_i + sum_h sum_j alpha^h_ij f_h(x_j) + b_O (the residual, one term
per head and token, the bias); after the feed-forward block it is t_i + FF(t_i). A term z of a
sum y counts by its proximity to the sum (Ferrando et al. 2022's measure, which the paper uses):

    proximity(z, y) = max(||y||_1 - ||y - z||_1, 0),   importance(z, y) = proximity(z, y) / sum_k proximity(z_k, y)

with the sum over every term of y, the bias included (a term no token owns, so it is no edge).
Each head's term is its own edge j -> i; the residual and the FF are edges i -> i.

Post-LN models (BERT) normalise each sum: the stream is LN(y_i) = sum_k g_i(z_k) + beta with
g_i(z) = gamma * P z / s_i (Kobayashi et al. 2021's linear split, :mod:`models.mixing`); the terms
are then the g_i(z_k), and beta joins the bias. Pre-LN models (Llama, GPT-2) add each block's
output to the stream as it is, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch

from models.errors import UnsupportedModelError
from models.residual import Reading, check, norm_of, read_pass

ROUTES_MAX_TOKENS = 128  # tokens one routes pass reads: H N^2 D per layer (about 3 s for 30 layers of smollm2)
BLOCK_FLOATS = 1 << 24  # float32 values of head terms held at once (64 MB)
SKIP = 1e-4  # a head's term whose L1 norm is below this share of its sum's counts as 0 (its proximity is at most that)


def proximity(terms: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """max(||y||_1 - ||y - z||_1, 0) over the last axis, for terms z and sums y [..., D] that broadcast."""
    return (total.abs().sum(dim=-1) - (total - terms).abs().sum(dim=-1)).clamp(min=0)


def _attention_importances(reading: Reading, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([H, N, N] importance of head h's term j -> i, [N] importance of the residual i -> i)."""
    layer, seen = reading.layers[index], reading.seen[index]
    parts = reading.attention_parts(index)
    alpha, vectors, residual, bias = parts.alpha, parts.vectors, parts.residual, parts.bias
    heads, n = alpha.shape[0], alpha.shape[-1]
    if layer.post_ln:
        norm = norm_of(layer.norm, type(layer.attention).__name__, seen.norm_in, seen.norm_out)
        scale = norm.scale(seen.norm_in)[:, None]  # [N, 1]
        target = seen.norm_out
        vectors, residual = norm.linear(vectors), norm.linear(residual) / scale
        bias = norm.linear(bias)[None, :] / scale + (0.0 if norm.beta is None else norm.beta)  # [N, D]
    else:
        scale, target, bias = torch.ones(n, 1), seen.norm_in, bias.expand(n, -1)
    # proximity(z, y) <= ||z||_1 (triangle inequality): terms below SKIP of ||y||_1 count as 0
    bounds = alpha * vectors.abs().sum(dim=-1)[:, None, :] / scale[None]  # [H, N, N] ||alpha f||_1
    chosen = (bounds > SKIP * target.abs().sum(dim=-1)[None, :, None]).nonzero()  # [K, 3] (h, i, j)
    heads_importance = torch.zeros(heads, n, n)
    for start in range(0, len(chosen), max(1, BLOCK_FLOATS // vectors.shape[-1])):
        h, i, j = chosen[start : start + BLOCK_FLOATS // vectors.shape[-1]].unbind(dim=1)
        terms = alpha[h, i, j][:, None] * vectors[h, j] / scale[i]  # [k, D]
        heads_importance[h, i, j] = proximity(terms, target[i])
    own = proximity(residual, target)  # [N]
    unowned = proximity(bias, target)  # [N]
    totals = heads_importance.sum(dim=(0, 2)) + own + unowned  # [N]
    totals = torch.where(totals > 0, totals, 1.0)
    return heads_importance / totals[None, :, None], own / totals


def _feed_forward_importances(reading: Reading, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] importance of the FF's output, [N] of the residual) in the sum after the FF block."""
    layer, seen = reading.layers[index], reading.seen[index]
    name = type(layer.attention).__name__
    if seen.ff_out is None or (layer.post_ln and seen.ff_norm_in is None):
        raise UnsupportedModelError(f"{name}: cannot find the layer's feed-forward block")
    if layer.post_ln:
        check(name, seen.norm_out + seen.ff_out, seen.ff_norm_in, "the feed-forward sum from its parts")
        norm = norm_of(layer.ff_norm, name, seen.ff_norm_in, seen.ff_norm_out)
        scale = norm.scale(seen.ff_norm_in)[:, None]
        stream, ff = norm.linear(seen.norm_out) / scale, norm.linear(seen.ff_out) / scale
        beta = norm.beta.expand_as(stream) if norm.beta is not None else torch.zeros_like(stream)
        target = seen.ff_norm_out
    else:
        stream, ff, beta = seen.norm_in, seen.ff_out, torch.zeros_like(seen.norm_in)
        target = stream + ff
    own, through, unowned = proximity(stream, target), proximity(ff, target), proximity(beta, target)
    totals = own + through + unowned
    totals = torch.where(totals > 0, totals, 1.0)
    return through / totals, own / totals


def route_importances(handle, text: str) -> dict[str, np.ndarray]:
    """One forward pass: ``heads`` float32 [L, H, N, N] (head h's edge j -> i into the stream
    after layer l's attention), ``attn_res`` [L, N] (the residual's edge there), ``ff`` [L, N] and
    ``ff_res`` [L, N] (the FF's and the residual's edges after the FF block), ``post_ln`` [L].
    Raises TooManyTokensError above ROUTES_MAX_TOKENS, UnsupportedModelError where the checks fail."""
    reading = read_pass(handle, text, ROUTES_MAX_TOKENS, "information-flow routes")
    out: dict[str, list] = {"heads": [], "attn_res": [], "ff": [], "ff_res": []}
    for index in range(len(reading.layers)):
        heads, own = _attention_importances(reading, index)
        through, ff_own = _feed_forward_importances(reading, index)
        for key, value in zip(out, (heads, own, through, ff_own), strict=True):
            out[key].append(value.cpu().numpy().astype(np.float32))
    arrays = {key: np.stack(values) for key, values in out.items()}
    return {**arrays, "post_ln": np.array([layer.post_ln for layer in reading.layers])}
