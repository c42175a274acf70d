"""The feed-forward maps (models.feedforward) against Kobayashi et al. (2023)'s definition written
out here: the FF input split per token from the architecture's own modules, integrated gradients
of the activation by a Riemann sum of autograd gradients (STEPS midpoints from a zero baseline),
every [N, N, D] vector built. Tolerance: 1e-3 of each map's peak (the Riemann sum's error is
O(1 / STEPS^2); the app integrates exactly or by Gauss-Legendre)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.feedforward import FF_MAPS, feed_forward_mixing
from tests.unit.models.test_mixing import run_model

PROMPT = "The quick brown fox jumps over the lazy dog."
STEPS = 400
TOLERANCE = 1e-3
LAYER = 1


def integrated_gradients(function, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """IG of an elementwise ``function(*inputs)`` from 0 to sum(parts), split to each part:
    part_j * mean over the path of the gradient (inputs: tuples of [.., K] tensors)."""
    totals = [sum(part[k] for part in parts) for k in range(len(parts[0]))]
    mean = [torch.zeros_like(total) for total in totals]
    for step in range(STEPS):
        t = (step + 0.5) / STEPS
        point = [(t * total).requires_grad_() for total in totals]
        grads = torch.autograd.grad(function(*point).sum(), point)
        mean = [m + g / STEPS for m, g in zip(mean, grads, strict=True)]
    return [sum(part[k] * mean[k] for k in range(len(totals))) for part in parts]


def reference(name: str, handle, text: str) -> dict[str, np.ndarray]:
    model, kind = handle.model, name.split("-")[-1]
    blocks = model.encoder.layer if kind == "bert" else model.model.layers
    seen, attentions = run_model(handle, blocks, text)
    x, block = seen[LAYER], blocks[LAYER]
    alpha = attentions[LAYER][0].float()
    heads, n = alpha.shape[0], alpha.shape[-1]
    with torch.no_grad():
        if kind == "bert":
            attn = block.attention
            values, out, norm = attn.self.value(x), attn.output.dense, attn.output.LayerNorm
            bias = out.bias
        else:
            values, out = block.self_attn.v_proj(block.input_layernorm(x)), block.self_attn.o_proj
            norm, bias = block.post_attention_layernorm, torch.zeros(x.shape[-1])
        d = out.weight.shape[1] // heads
        values = values.reshape(n, -1, d).repeat_interleave(heads // (values.shape[-1] // d), dim=1)
        f = torch.stack([values[:, h] @ out.weight[:, h * d : (h + 1) * d].T for h in range(heads)])  # [H, N, D]
        z = torch.einsum("hij,hjd->ijd", alpha, f) + torch.eye(n)[:, :, None] * x[:, None, :]  # [N, N, D]
        y = z.sum(dim=1) + bias
        centred = kind == "bert"
        mean = (lambda t: t.mean(dim=-1, keepdim=True)) if centred else (lambda t: 0.0)
        eps = norm.eps if centred else norm.variance_epsilon
        s = ((y - mean(y)).pow(2).mean(dim=-1) + eps).sqrt()  # [N]
        c = norm.weight * (z - mean(z)) / s[:, None, None]  # [N, N, D] the FF input's parts
        c_rest = norm.weight * (bias - mean(bias)) / s[:, None] + (norm.bias if centred else 0.0)  # [N, D]
        torch.testing.assert_close(c.sum(dim=1) + c_rest, norm(y), rtol=1e-4, atol=1e-4)
    if kind == "bert":
        up, act, down = block.intermediate.dense, block.intermediate.intermediate_act_fn, block.output.dense
        parts = [(c[:, j] @ up.weight.T,) for j in range(n)] + [(c_rest @ up.weight.T + up.bias,)]
        shares = integrated_gradients(act, parts)
    else:
        mlp = block.mlp
        parts = [(c[:, j] @ mlp.gate_proj.weight.T, c[:, j] @ mlp.up_proj.weight.T) for j in range(n)]
        parts.append((c_rest @ mlp.gate_proj.weight.T, c_rest @ mlp.up_proj.weight.T))
        shares = integrated_gradients(lambda a, b: mlp.act_fn(a) * b, parts)
        down = mlp.down_proj
    with torch.no_grad():
        ff = torch.stack([share @ down.weight.T for share in shares[:-1]], dim=1)  # [N, N, D] FF_{i<-j}
        if kind == "bert":
            total = norm(y) + block.output.dense(act(up(norm(y))))
            norm2 = block.output.LayerNorm
            s2 = ((total - mean(total)).pow(2).mean(dim=-1) + norm2.eps).sqrt()
            summed = c + ff
            before, after = c, norm2.weight * (summed - mean(summed)) / s2[:, None, None]
        else:
            before, after = z, z + ff
    return {"before": before.norm(dim=-1), "ff": ff.norm(dim=-1), "after": after.norm(dim=-1)}


def check(name: str, handle) -> None:
    got = feed_forward_mixing(handle, PROMPT, LAYER)
    want = reference(name, handle, PROMPT)
    for m, key in enumerate(FF_MAPS):
        expected = want[key].numpy()
        np.testing.assert_allclose(got["maps"][m], expected, atol=TOLERANCE * expected.max(), rtol=0, err_msg=key)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_maps_follow_kobayashi_et_al_2023(tiny_models, name):
    check(name, tiny_models[name])


@pytest.mark.real_model
def test_minilm_follows_the_definition(minilm):
    check("minilm-bert", minilm)


@pytest.mark.real_model
def test_smollm2_follows_the_definition(smollm2):
    check("smollm2-llama", smollm2)
