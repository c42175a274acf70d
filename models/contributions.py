"""What each token's value vector contributes to a head's output, as Kobayashi et al. (2020,
"Attention is Not Only a Weight: Analyzing Transformers with Vector Norms") define it:
f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h, the value vector through that head's slice of the output
projection (its bias b_O is added after the heads are summed, so it is no token's contribution).

||f_h(x_j)||^2 = v_j G_h v_j^T with G_h = W_O^h (W_O^h)^T [d, d], so a layer costs N d^2 per head,
not N d D. The output projection is found by the names transformers' architectures give it.
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "o")  # Llama-likes, BART/OPT, GPT-2, T5


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


def head_grams(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """[H, d, d] G_h = W_O^h (W_O^h)^T from the [H * d, D] output projection."""
    per_head = weight.float().reshape(heads, -1, weight.shape[-1])  # [H, d, D]
    return per_head @ per_head.transpose(1, 2)


def output_norms(values: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """[H, N] ||f_h(x_j)|| from value vectors [H, N, d] (already per query head) and [H, d, d]."""
    squared = torch.einsum("hnd,hde,hne->hn", values, grams, values)
    return squared.clamp(min=0).sqrt()
