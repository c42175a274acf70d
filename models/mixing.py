"""Context mixing with the residual and the layer norm, as Kobayashi et al. (2021, "Incorporating
Residual and Normalization Layers into Analysis of Masked Language Models", EMNLP) define it.

One forward pass read by :mod:`models.residual` gives, per attention layer, the heads' weights
alpha [H, N, N], f_h(x_j) = v_j^h W_O^h [H, N, D], the residual x_i and the input y of the norm
that reads the residual sum. With
m_ij = sum_h alpha^h_ij f_h(x_j) (the ATTN term; its bias b_O belongs to no token):

    ATTN         ||m_ij||                                  (Kobayashi et al. 2020, layer level)
    ATTN+RES     ||m_ij + [i = j] x_i||
    ATTN+RES+LN  ||g_i(m_ij + [i = j] x_i)||,  g_i(z) = gamma * P z / s_i

where P centres a vector (LayerNorm; the identity for RMSNorm) and s_i is the norm's divisor for
the whole sum y_i: LN(y_i) = sum_j g_i(z_ij) + g_i(b_O) + beta, linear in the z_ij because s_i is
shared. Every norm is a quadratic form, ||sum_h a_h w_h||^2 = a^T G a with the [H, H] Gram matrix
of the heads' vectors of token j, so no [N, N, D] array is ever built.

Post-LN encoders (BERT) normalise y_i = x_i + ATTN_i and the residual stream continues from that.
Pre-LN decoders (Llama, GPT-2) add ATTN(LN_1(x)) to the unnormalised stream; the norm of the sum is
then the feed-forward block's input norm (``post_attention_layernorm``, ``ln_2``), so ATTN+RES+LN
describes what the feed-forward block reads and ATTN+RES the residual stream itself.

Two checks (in :mod:`models.residual`) refuse an architecture this reading gets wrong: the parts
must give y_i back, and gamma * P y_i / s_i + beta must be what the norm module returned.
"""

from __future__ import annotations

import numpy as np
import torch

from models.residual import Reading, norm_of, read_pass

MIXING_MAX_TOKENS = 512  # tokens one context-mixing pass reads (eager attention keeps [H, N, N] per layer)
MAPS = ("weights", "attn", "attn_res", "attn_res_ln")  # the paper's W, ATTN, ATTN+RES, ATTN+RES+LN


def _quadratic(weights: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """[N, N] a_ij^T G_j a_ij for weights [H, N, N] and per-key grams [N, H, H] (symmetric).

    As H (H + 1) / 2 elementwise products of [N, N] maps: with a dozen heads this is several
    times faster than one batched product of tiny [H, H] matrices."""
    heads = weights.shape[0]
    total = torch.zeros(weights.shape[1:], dtype=weights.dtype)
    for h in range(heads):
        for g in range(h, heads):
            total += (1.0 if g == h else 2.0) * weights[h] * weights[g] * grams[None, :, h, g]
    return total


def layer_maps(reading: Reading, index: int) -> dict[str, np.ndarray]:
    """The four [N, N] maps of one layer (see the module docstring), float32."""
    parts, seen = reading.attention_parts(index), reading.seen[index]
    alpha, vectors, residual = parts.alpha, parts.vectors, parts.residual
    n = alpha.shape[-1]
    norm = norm_of(
        reading.layers[index].norm, type(reading.layers[index].attention).__name__, seen.norm_in, seen.norm_out
    )
    scale = norm.scale(seen.norm_in)  # [N] s_i
    maps = {"weights": alpha.mean(dim=0)}
    for key, vecs, res, divisor in (
        ("attn", vectors, None, None),
        ("attn_res", vectors, residual, None),
        ("attn_res_ln", norm.linear(vectors), norm.linear(residual), scale),
    ):
        grams = torch.einsum("hjd,gjd->jhg", vecs, vecs)  # [N, H, H]
        squared = _quadratic(alpha, grams)
        if res is not None:  # the residual joins the diagonal: ||m_ii + x_i||^2
            diagonal = torch.arange(n)
            cross = torch.einsum("hi,hid,id->i", alpha[:, diagonal, diagonal], vecs, res)
            squared[diagonal, diagonal] += 2 * cross + res.pow(2).sum(dim=-1)
        norms = squared.clamp(min=0).sqrt()
        maps[key] = norms / divisor[:, None] if divisor is not None else norms
    return {key: value.cpu().numpy().astype(np.float32) for key, value in maps.items()}


def context_mixing(handle, text: str) -> dict[str, np.ndarray]:
    """One forward pass of ``handle`` over ``text``: ``maps`` float32 [4, L, N, N] (``MAPS`` in
    order) and ``post_ln`` bool [L]. Raises TooManyTokensError above ``MIXING_MAX_TOKENS``,
    UnsupportedModelError for encoder-decoders and architectures the checks refuse."""
    reading = read_pass(handle, text, MIXING_MAX_TOKENS, "context mixing")
    layers = [layer_maps(reading, index) for index in range(len(reading.layers))]
    return {
        "maps": np.stack([np.stack([layer[key] for layer in layers]) for key in MAPS]),  # [4, L, N, N]
        "post_ln": np.array([layer.post_ln for layer in reading.layers]),  # [L]
    }
