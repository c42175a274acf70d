"""One forward pass read as sums of vectors on the residual stream: what the decompositions of
Kobayashi et al. (2021, context mixing) and Ferrando & Voita (2024, information-flow routes) need.

Per attention layer the hooks keep the heads' weights alpha [H, N, N], the value vectors (so each
head's term is f_h(x_j) = v_j^h W_O^h), the output projection's output and the input and output of
the norm that reads the residual sum; per feed-forward block its output, and in a post-LN model
the input and output of the norm after it. The residual x_i is then y_i - ATTN(x)_i whatever the
architecture calls it, and :func:`Reading.attention_parts` checks that the parts give y_i back.

Post-LN (BERT): y = x + ATTN(x); the stream continues from LN_1(y); the FF block reads LN_1(y)
and the stream continues from LN_2(LN_1(y) + FF). Pre-LN (Llama, GPT-2): y = x + ATTN(LN_1(x)) is
the stream; the FF block reads LN_2(y) and the stream continues from y + FF(LN_2(y)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models import contributions
from models.errors import TooManyTokensError, UnsupportedModelError

VALUE_PROJECTIONS = ("v_proj", "value", "v", "v_lin")  # Llama-likes, BERT, T5, DistilBERT
SUM_NORMS = ("post_attention_layernorm", "ln_2")  # pre-LN: the norm that reads x + ATTN
FEED_FORWARDS = ("mlp", "feed_forward", "ffn")  # pre-LN: the feed-forward block of a decoder layer
CHECK_TOLERANCE = 2e-3  # relative error of a reconstruction before a model is refused


@dataclass
class FeedForward:
    """A feed-forward block's parts: down(act(up(x))), or down(act(gate(x)) * up(x)) when gated."""

    up: nn.Module
    act: nn.Module
    down: nn.Module
    gate: nn.Module | None = None


@dataclass
class Layer:
    """The modules of one transformer layer this reading hooks."""

    attention: nn.Module
    value: nn.Module
    output: nn.Module  # W_O
    norm: nn.Module  # reads the residual sum x + ATTN
    feed_forward: nn.Module | None  # its output is FF(.); None when not found
    ff_norm: nn.Module | None  # post-LN: the norm after the FF sum
    post_ln: bool  # BERT-style: the norm's output is the residual stream
    parts: FeedForward | None = None  # the FF block's projections, where the architecture is known


@dataclass
class Seen:
    """What the hooks saw of one layer (batch of one, float32)."""

    weights: torch.Tensor | None = None  # [H, N, N]
    values: torch.Tensor | None = None  # [N, KV * d]
    attn_out: torch.Tensor | None = None  # [N, D] ATTN(x)_i including b_O
    norm_in: torch.Tensor | None = None  # [N, D] y_i
    norm_out: torch.Tensor | None = None  # [N, D] LN(y_i)
    ff_out: torch.Tensor | None = None  # [N, D] FF(.)_i
    ff_norm_in: torch.Tensor | None = None  # [N, D] post-LN: LN_1(y_i) + FF_i
    ff_norm_out: torch.Tensor | None = None  # [N, D] post-LN: the layer's output


@dataclass
class Parts:
    """One attention layer as a sum: y_i = sum_h sum_j alpha^h_ij f_h(x_j) + x_i + b_O."""

    alpha: torch.Tensor  # [H, N, N]
    vectors: torch.Tensor  # [H, N, D] f_h(x_j)
    residual: torch.Tensor  # [N, D] x_i
    bias: torch.Tensor  # [D] b_O (zeros when the projection has none)


@dataclass
class Norm:
    """A LayerNorm or RMSNorm as LN(y) = gamma * P y / s(y) + beta (P centres, or is the identity)."""

    gamma: torch.Tensor  # [D]
    beta: torch.Tensor | None  # [D]
    eps: float
    centred: bool

    def centre(self, t: torch.Tensor) -> torch.Tensor:
        return t - t.mean(dim=-1, keepdim=True) if self.centred else t

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        """[N] s(y_i), the divisor the whole sum shares."""
        return (self.centre(y).pow(2).mean(dim=-1) + self.eps).sqrt()

    def linear(self, t: torch.Tensor) -> torch.Tensor:
        """gamma * P t: the norm's linear part, before the division by s."""
        return self.gamma * self.centre(t)


@dataclass
class Reading:
    layers: list[Layer]
    seen: list[Seen] = field(default_factory=list)
    heads: int = 0

    def attention_parts(self, index: int) -> Parts:
        """Layer ``index``'s attention sum, checked against the y_i the norm read."""
        layer, seen = self.layers[index], self.seen[index]
        name = type(layer.attention).__name__
        if seen.weights is None or seen.values is None or seen.norm_in is None or seen.attn_out is None:
            raise UnsupportedModelError(f"{name}: cannot read the layer's attention weights and values")
        alpha = seen.weights  # [H, N, N]
        n = alpha.shape[-1]
        weight = host(contributions.projection_weight(layer.output))  # [H * d, D]
        d = weight.shape[0] // self.heads
        values = seen.values.reshape(n, -1, d)  # [N, KV, d]
        values = values.repeat_interleave(self.heads // values.shape[1], dim=1).transpose(0, 1)  # [H, N, d]
        vectors = values @ weight.reshape(self.heads, d, -1)  # [H, N, D]
        bias = getattr(layer.output, "bias", None)
        bias = host(bias) if bias is not None else torch.zeros(vectors.shape[-1])
        residual = seen.norm_in - seen.attn_out
        summed = torch.einsum("hij,hjd->id", alpha, vectors) + residual + bias
        check(name, summed, seen.norm_in, "the residual sum from its parts")
        return Parts(alpha, vectors, residual, bias)


def host(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy on the CPU: a reading's sums run there whatever device the model is on (a
    few [N, N] maps of a short prompt), in float32 whatever precision the model ran in."""
    return tensor.detach().float().cpu()


def norm_of(module: nn.Module, name: str, y: torch.Tensor, out: torch.Tensor) -> Norm:
    """The parameters of ``module``, checked: gamma * P y / s + beta must be what it returned."""
    centred = isinstance(module, nn.LayerNorm) or "RMS" not in type(module).__name__
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None) or 1e-6
    beta = getattr(module, "bias", None)
    norm = Norm(host(module.weight), None if beta is None else host(beta), float(eps), centred)
    rebuilt = norm.linear(y) / norm.scale(y)[:, None] + (0.0 if norm.beta is None else norm.beta)
    check(name, rebuilt, out, f"its norm {type(module).__name__}")
    return norm


def check(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    error = float((got - want).norm() / want.norm().clamp(min=1e-12))
    if not error <= CHECK_TOLERANCE:
        raise UnsupportedModelError(f"{name}: the decomposition does not reproduce {what} (relative error {error:.2g})")


def _parents(model: nn.Module) -> dict[int, nn.Module]:
    return {id(child): module for module in model.modules() for child in module.children()}


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The innermost attention modules, in the order they run."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
    return [m for m in found if not any(child in found for child in m.children())]


def _named(owner: nn.Module | None, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(owner, n) for n in names if isinstance(getattr(owner, n, None), nn.Module)), None)


def _find_layer(attention: nn.Module, parents: dict[int, nn.Module]) -> Layer:
    """The modules one layer's decomposition hooks. Raises UnsupportedModelError naming what is missing."""
    parent = parents.get(id(attention))
    value = _named(attention, VALUE_PROJECTIONS)
    if value is None and type(getattr(attention, "c_attn", None)).__name__ == "Conv1D":
        value = attention.c_attn  # GPT-2: q, k and v in one projection, v last
    output = contributions.output_projection(attention, parent)
    post = getattr(getattr(parent, "output", None), "LayerNorm", None)
    if isinstance(post, nn.Module):  # BERT: BertAttention.output.LayerNorm; the FF is BertLayer.output
        layer = parents.get(id(parent))
        block = getattr(layer, "output", None)
        norm, feed_forward, ff_norm = post, getattr(block, "dense", None), getattr(block, "LayerNorm", None)
        inner = getattr(layer, "intermediate", None)
        parts = FeedForward(inner.dense, inner.intermediate_act_fn, feed_forward) if inner is not None else None
    else:
        norm, feed_forward, ff_norm = _named(parent, SUM_NORMS), _named(parent, FEED_FORWARDS), None
        parts = _feed_forward_parts(feed_forward)
    needed = (("value projection", value), ("output projection", output), ("norm after the residual sum", norm))
    missing = [what for what, module in needed if module is None]
    if missing:
        raise UnsupportedModelError(f"{type(attention).__name__}: cannot find its {', '.join(missing)}")
    return Layer(attention, value, output, norm, feed_forward, ff_norm, isinstance(post, nn.Module), parts)


def _feed_forward_parts(block: nn.Module | None) -> FeedForward | None:
    """Llama-style gated (gate_proj, up_proj, down_proj, act_fn) or GPT-2 (c_fc, act, c_proj)."""
    if all(isinstance(getattr(block, name, None), nn.Module) for name in ("gate_proj", "up_proj", "down_proj")):
        return FeedForward(block.up_proj, block.act_fn, block.down_proj, block.gate_proj)
    if all(isinstance(getattr(block, name, None), nn.Module) for name in ("c_fc", "c_proj")):
        return FeedForward(block.c_fc, block.act, block.c_proj)
    return None


def _hooks(reading: Reading) -> list:
    """Forward hooks that fill ``reading.seen`` layer by layer."""
    handles = []

    def first(tensor) -> torch.Tensor:
        return host(tensor[0])

    for layer, seen in zip(reading.layers, reading.seen, strict=True):
        gpt2 = layer.value is getattr(layer.attention, "c_attn", None)

        def keep_values(module, args, output, seen=seen, gpt2=gpt2):
            seen.values = first(output).chunk(3, dim=-1)[2] if gpt2 else first(output)

        def keep_weights(module, args, output, seen=seen):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            seen.weights = None if weights is None else first(weights)

        def keep_attn_out(module, args, output, seen=seen):
            seen.attn_out = first(output)

        def keep_norm(module, args, output, seen=seen):
            seen.norm_in, seen.norm_out = first(args[0]), first(output)

        def keep_ff(module, args, output, seen=seen):
            seen.ff_out = first(output[0] if isinstance(output, tuple) else output)

        def keep_ff_norm(module, args, output, seen=seen):
            seen.ff_norm_in, seen.ff_norm_out = first(args[0]), first(output)

        pairs = [(layer.value, keep_values), (layer.attention, keep_weights), (layer.output, keep_attn_out)]
        pairs += [(layer.norm, keep_norm), (layer.feed_forward, keep_ff), (layer.ff_norm, keep_ff_norm)]
        handles += [module.register_forward_hook(hook) for module, hook in pairs if module is not None]
    return handles


def read_pass(handle, text: str, max_tokens: int, what: str) -> Reading:
    """One forward pass of ``handle`` over ``text`` with the hooks. Raises TooManyTokensError above
    ``max_tokens`` and UnsupportedModelError for encoder-decoders and unreadable architectures."""
    model = handle.model
    if getattr(handle.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{handle.name}: {what} reads encoder-only or decoder-only models")
    ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] > max_tokens:
        raise TooManyTokensError(f"{what} reads at most {max_tokens} tokens (this prompt has {ids.shape[1]})")
    parents = _parents(model)
    layers = [_find_layer(module, parents) for module in _attention_modules(model)]
    reading = Reading(layers, [Seen() for _ in layers], handle.config.num_attention_heads)
    handles = _hooks(reading)
    try:
        with handle.lock, torch.inference_mode():
            ids = ids.to(handle.device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for hook in handles:
            hook.remove()
    return reading
