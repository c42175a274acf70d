"""PyTorch's fused scaled-dot-product kernels, called so that they also return each row's
log-sum-exp: the one number per row that, with q and k, gives back any block of the attention.

``F.scaled_dot_product_attention`` computes the same attention but drops the log-sum-exp, so this
module calls the kernels it dispatches to: on the CPU
``aten._scaled_dot_product_flash_attention_for_cpu``; on CUDA the flash kernel (half precision,
no mask other than causal) or else the memory-efficient kernel (any additive mask). A causal
mask is passed as ``is_causal``, so the kernels skip the blocks above the diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

FLASH_MAX_HEAD_DIM = 256  # the CUDA flash kernel's largest head size
BIAS_ALIGNMENT = 16  # the memory-efficient kernel reads its bias in rows padded to this many keys


@dataclass(frozen=True)
class KernelMask:
    """A model's mask as the kernels take it: causal, or an additive bias, or nothing."""

    causal: bool
    additive: torch.Tensor | None  # [1, 1, q, k] (or broadcast) additive mask, or None


def kernel_mask(attention_mask: torch.Tensor | None, allowed: torch.Tensor | None) -> KernelMask:
    """Read the model's ``attention_mask`` once per pass; ``allowed`` is its [q, k] bool form."""
    if attention_mask is None or allowed is None or bool(allowed.all()):
        return KernelMask(False, None)
    queries, keys = allowed.shape
    if queries == keys and torch.equal(allowed, torch.ones_like(allowed).tril()):
        return KernelMask(True, None)
    if attention_mask.dtype == torch.bool:
        additive = torch.zeros(attention_mask.shape, device=attention_mask.device)
        return KernelMask(False, additive.masked_fill_(~attention_mask, float("-inf")))
    return KernelMask(False, attention_mask)


def supported(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a fused kernel here takes these states (one head size for q, k and v; CPU or CUDA)."""
    same_size = query.shape[-1] == key.shape[-1] == value.shape[-1]
    return same_size and query.device.type in ("cpu", "cuda") and query.dtype.is_floating_point


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: KernelMask, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [1, N, H, d] as transformers' attention functions return it, lse [1, H, N] float32).

    ``query`` is [1, H, N, d]; ``key`` and ``value`` [1, KV, M, d] with KV dividing H. The CPU
    kernel reads grouped keys as they are (exactly what repeating them gives, 20% faster at 1024
    tokens); the CUDA kernels get them repeated, as transformers' sdpa path does.
    """
    bias = None if mask.additive is None else mask.additive[..., : key.shape[-2]].to(query.dtype)
    if query.device.type == "cuda":
        groups = query.shape[1] // key.shape[1]
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        output, lse = _cuda(query, key, value, mask.causal, bias, scaling)
    else:
        output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, mask.causal, attn_mask=bias, scale=scaling
        )
    return output.transpose(1, 2).contiguous(), lse[..., : query.shape[-2]].float()


def _cuda(query, key, value, causal: bool, bias, scaling: float):
    """Flash where it applies (half precision, no bias, supported head size), else memory-efficient."""
    head_dim = query.shape[-1]
    if bias is None and query.dtype in (torch.float16, torch.bfloat16) and head_dim <= FLASH_MAX_HEAD_DIM:
        output, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, 0.0, causal, False, scale=scaling
        )
        return output, lse
    if bias is not None:  # padded to the kernel's alignment, then viewed back at its width
        keys = bias.shape[-1]
        pad = -keys % BIAS_ALIGNMENT
        bias = F.pad(bias, (0, pad))[..., :keys].expand(query.shape[0], query.shape[1], query.shape[2], keys)
    output, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, True, 0.0, causal, scale=scaling
    )
    return output, lse
