"""What each token's value vector contributes to a head's output, as Kobayashi et al. (2020,
"Attention is Not Only a Weight: Analyzing Transformers with Vector Norms") define it:
f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h, the value vector through that head's slice of the output
projection (its bias b_O is added after the heads are summed, so it is no token's contribution).

The capture keeps, per layer and token, the heads' Gram matrix G_j[h, g] = f_h(x_j) . f_g(x_j)
([H, H]: the per-head norms are its diagonal, the layer-level norm of section 5 a quadratic form in
it). The output projection is found by the names transformers' architectures give it. On the CPU
the capture keeps each layer's value vectors instead and the Grams are computed after the first
view (:func:`deferred_outputs`): they cost as much as a fifth of a short prompt's forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.record import Deferred

OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "o")  # Llama-likes, BART/OPT, GPT-2, T5
GRAM_BLOCK_BYTES = 16 * 2**20  # bytes of the [H, n, D] float32 vectors f_h(x_j) alive at once


def output_projection(module: nn.Module, parent: nn.Module | None) -> nn.Module | None:
    """The output projection W_O of an attention module (nn.Linear or GPT-2's Conv1D), or None.

    BERT-likes keep it beside the attention module, in the parent's ``output.dense``.
    """
    candidates = [getattr(module, name, None) for name in OUTPUT_PROJECTIONS]
    candidates.append(getattr(getattr(parent, "output", None), "dense", None))
    for layer in candidates:
        if isinstance(layer, nn.Linear) or type(layer).__name__ == "Conv1D":
            return layer
    return None


def projection_weight(layer: nn.Module) -> torch.Tensor:
    """[in, out] weight of an nn.Linear or of GPT-2's Conv1D (which already stores it so)."""
    return layer.weight.T if isinstance(layer, nn.Linear) else layer.weight


def output_weight(module: nn.Module, parent: nn.Module | None) -> torch.Tensor | None:
    """[H * d, D] output projection of an attention module (input features first), or None."""
    layer = output_projection(module, parent)
    return None if layer is None else projection_weight(layer)


def head_projections(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """[H, d, D] W_O^h, each head's rows of the [H * d, D] output projection."""
    return weight.float().reshape(heads, -1, weight.shape[-1])


def output_grams(values: torch.Tensor, projections: torch.Tensor | None) -> torch.Tensor:
    """[N, H, H] G_j[h, g] = f_h(x_j) . f_g(x_j), the heads' transformed value vectors' inner
    products per token, from value vectors [H, N, d] and W_O^h [H, d, D] (as many tokens at a
    time as GRAM_BLOCK_BYTES allows, so no [H, N, D] array is whole). With them the layer's
    contribution of token j to token i, ||sum_h alpha^h_ij f_h(x_j)||, is sqrt(alpha_ij G_j
    alpha_ij) for the [H] weights alpha_ij (Kobayashi et al. 2020, section 5). Without a
    projection (``None``) the heads' outputs are taken side by side (W_O = identity), so G_j is
    diagonal with ||v_j||^2."""
    if projections is None:
        return torch.diag_embed(values.square().sum(-1).T)
    heads, width = projections.shape[0], projections.shape[-1]
    rows = max(1, GRAM_BLOCK_BYTES // (4 * heads * width))
    grams = []
    for start in range(0, values.shape[1], rows):
        transformed = torch.bmm(values[:, start : start + rows], projections)  # [H, n, D]
        grams.append(torch.einsum("hne,gne->nhg", transformed, transformed))  # [n, H, H]
    return torch.cat(grams)


LayerValues = tuple[torch.Tensor, torch.Tensor | None, int]  # [KV, N, d] values, W_O^h or None, heads per KV


def layer_grams(values: torch.Tensor, projections: torch.Tensor | None, groups: int) -> torch.Tensor:
    """[N, H, H] Grams of one layer, from its [KV, N, d] value vectors (each read by ``groups``
    query heads) and W_O^h [H, d, D] (None: W_O = identity)."""
    values = values.float().repeat_interleave(groups, 0)  # [H, N, d]
    return output_grams(values, None if projections is None else projections.to(values.device))


def norms_of(grams: torch.Tensor) -> torch.Tensor:
    """[..., H, N] ||f_h(x_j)|| from Grams [..., N, H, H]: the square roots of their diagonals
    (rounding can leave a vanishing one slightly negative; it counts as 0)."""
    return grams.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt().transpose(-1, -2)


def deferred_outputs(layers: list[LayerValues]) -> tuple[Deferred, Deferred]:
    """The record's [L, H, N] output norms and [L, N, H, H] Grams from each layer's value vectors,
    computed once, when either is first used; the values are let go then."""
    pending = list(layers)
    first, _, groups = pending[0]
    heads, n = first.shape[0] * groups, first.shape[1]

    def compute_grams() -> np.ndarray:
        grams = np.empty((len(pending), n, heads, heads), np.float32)
        with torch.inference_mode():  # the values are inference tensors; W_O^h are parameters
            for index, layer in enumerate(pending):
                grams[index] = layer_grams(*layer).numpy()
        pending.clear()
        return grams

    grams = Deferred((len(pending), n, heads, heads), np.float32, compute_grams)

    def compute_norms() -> np.ndarray:
        return norms_of(torch.from_numpy(grams.resolve())).contiguous().numpy()

    norms = Deferred((len(pending), heads, n), np.float32, compute_norms)
    return norms, grams
