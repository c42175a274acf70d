"""What a feed-forward block does to token mixing, as Kobayashi et al. (2023, "Analyzing
Feed-Forward Blocks in Transformers through the Lens of Attention Map", ICLR 2024) measure it.

The FF block's input at token i is already a sum over tokens: Kobayashi et al. 2021's split of the
attention block (:mod:`models.mixing`) gives FFin_i = sum_j c_ij + c_i (c_i: the biases, no
token's). The FF block is nonlinear only in its activation, so its output is split by integrated
gradients of the activation from a zero baseline: with pre-activations h = sum_j h_j + h_bias,

    elementwise act(h):      a_j = h_j * (act(h) - act(0)) / h
    gated act(A) * B:        a_j = A_j * B * (act(A) - Q) / A + B_j * Q,   Q = int_0^1 act(tA) dt

which is exactly the integral IG approximates with a Riemann sum (for one variable the path
integral of act' is act(h) - act(0); the gated form follows by parts), so sum_j a_j is the block's
activation and FF_{i<-j} = a_j W_down. Q is a 1-D integral per neuron, by Gauss-Legendre.

Three [N, N] maps per layer: ``before`` ||c_ij|| (what the FF reads), ``ff`` ||FF_{i<-j}|| (the FF
alone) and ``after`` the FF block's output with its residual (and, post-LN, its norm):
||c_ij + FF_{i<-j}|| through LN_2 (BERT), or ||z_ij + FF_{i<-j}|| on the residual stream of a
pre-LN model, z_ij = m_ij + [i = j] x_i (before is then ||z_ij||, the stream the FF adds to).
Every decomposition is checked: the parts must give the FF's output back.
"""

from __future__ import annotations

import numpy as np
import torch

from models.contributions import projection_weight
from models.errors import UnsupportedModelError
from models.residual import Reading, check, host, norm_of, read_pass

FF_MAX_TOKENS = 96  # one layer: ~0.6 s for SmolLM2 on 2 cores; [N, N, K] float32 arrays of 57 MB each
NODES = 64  # Gauss-Legendre nodes for Q of a gated activation
FF_MAPS = ("before", "ff", "after")
NEAR_ZERO = 1e-6  # |pre-activation| below which the slopes take their limit at 0


def _weight(module) -> torch.Tensor:
    return host(projection_weight(module))  # [in, out]


def _bias(module) -> torch.Tensor | float:
    bias = getattr(module, "bias", None)
    return host(bias) if bias is not None else 0.0


def _slope_at_zero(act) -> float:
    """act'(0) by a central difference (the limit of (act(h) - act(0)) / h)."""
    step = torch.tensor([-1e-3, 1e-3])
    values = act(step)
    return float((values[1] - values[0]) / 2e-3)


def _over(numerator: torch.Tensor, denominator: torch.Tensor, limit: float) -> torch.Tensor:
    small = denominator.abs() < NEAR_ZERO
    return torch.where(small, torch.full_like(numerator, limit), numerator / torch.where(small, 1.0, denominator))


def _integral(act, a: torch.Tensor) -> torch.Tensor:
    """Q = int_0^1 act(t a) dt, elementwise, by Gauss-Legendre on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(NODES)
    t = torch.tensor((nodes + 1) / 2, dtype=a.dtype)  # [M]
    w = torch.tensor(weights / 2, dtype=a.dtype)
    return (act(a[..., None] * t) * w).sum(dim=-1)


def attribute(parts, inputs: torch.Tensor, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split FF(sum_j inputs_j + rest) into per-token outputs [..., J, D] and the rest [..., D].

    ``inputs`` [..., J, D] are the tokens' parts of the FF's input, ``rest`` [..., D] the biases."""
    act = parts.act
    up = inputs @ _weight(parts.up)  # [..., J, K]
    up_rest = rest @ _weight(parts.up) + _bias(parts.up)  # [..., K]
    total_up = up.sum(dim=-2) + up_rest
    if parts.gate is None:
        slope = _over(act(total_up) - act(torch.zeros(())), total_up, _slope_at_zero(act))  # [..., K]
        shares, rest_share = up * slope[..., None, :], up_rest * slope + act(torch.zeros(()))
    else:
        gate = inputs @ _weight(parts.gate)
        gate_rest = rest @ _weight(parts.gate) + _bias(parts.gate)
        total_gate = gate.sum(dim=-2) + gate_rest
        q = _integral(act, total_gate)  # [..., K]
        by_gate = total_up * _over(act(total_gate) - q, total_gate, _slope_at_zero(act) / 2)
        shares = gate * by_gate[..., None, :] + up * q[..., None, :]
        rest_share = gate_rest * by_gate + up_rest * q
    down = _weight(parts.down)
    return shares @ down, rest_share @ down + _bias(parts.down)


def layer_maps(reading: Reading, index: int) -> dict[str, np.ndarray]:
    """The three [N, N] maps of one layer (module docstring), float32."""
    layer, seen = reading.layers[index], reading.seen[index]
    name = type(layer.attention).__name__
    if layer.parts is None or seen.ff_out is None:
        raise UnsupportedModelError(f"{name}: cannot find the parts of the layer's feed-forward block")
    p = reading.attention_parts(index)
    n = p.alpha.shape[-1]
    z = torch.einsum("hij,hjd->ijd", p.alpha, p.vectors) + torch.diag_embed(p.residual.T).permute(1, 2, 0)  # [N, N, D]
    norm = norm_of(layer.norm, name, seen.norm_in, seen.norm_out)
    scale = norm.scale(seen.norm_in)  # [N]
    inputs = norm.linear(z) / scale[:, None, None]  # [N, N, D] c_ij
    rest = norm.linear(p.bias)[None, :] / scale[:, None] + (0.0 if norm.beta is None else norm.beta)  # [N, D]
    check(name, inputs.sum(dim=1) + rest, seen.norm_out, "the feed-forward block's input from its parts")
    ff, ff_rest = attribute(layer.parts, inputs, rest)  # [N, N, D], [N, D]
    check(name, ff.sum(dim=1) + ff_rest, seen.ff_out, "the feed-forward block's output from its parts")
    if layer.post_ln:
        after_norm = norm_of(layer.ff_norm, name, seen.ff_norm_in, seen.ff_norm_out)
        after_scale = after_norm.scale(seen.ff_norm_in)
        before, after = inputs, after_norm.linear(inputs + ff) / after_scale[:, None, None]
    else:
        before, after = z, z + ff
    maps = {"before": before.norm(dim=-1), "ff": ff.norm(dim=-1), "after": after.norm(dim=-1)}
    assert all(value.shape == (n, n) for value in maps.values())
    return {key: value.cpu().numpy().astype(np.float32) for key, value in maps.items()}


def feed_forward_mixing(handle, text: str, layer: int) -> dict[str, np.ndarray]:
    """One forward pass, one layer: ``maps`` float32 [3, N, N] (``FF_MAPS`` in order), ``post_ln``
    bool. Raises TooManyTokensError above FF_MAX_TOKENS, UnsupportedModelError where the checks fail."""
    reading = read_pass(handle, text, FF_MAX_TOKENS, "the feed-forward analysis")
    if not 0 <= layer < len(reading.layers):
        raise ValueError(f"'layer' must be between 0 and {len(reading.layers) - 1}")
    with torch.inference_mode():
        maps = layer_maps(reading, layer)
    return {"maps": np.stack([maps[key] for key in FF_MAPS]), "post_ln": np.array(reading.layers[layer].post_ln)}
