"""Information-flow routes (models.information_flow, app.analysis.information_flow) against
Ferrando & Voita (2024)'s definition written out here: every term of every residual sum built as
its own vector from the architecture's modules, importance = proximity / sum of proximities with
proximity(z, y) = max(||y||_1 - ||y - z||_1, 0), and the graph pruned by a breadth-first walk from
the top. Tolerance: 1e-3 absolute on importances (the app counts terms below 1e-4 of their sum's
L1 norm as 0, so each such importance is off by at most that share; float32 elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.analysis.information_flow import ATTENTION, ATTENTION_RESIDUAL, FEED_FORWARD, FF_RESIDUAL, prune
from models.information_flow import route_importances
from tests.unit.models.test_mixing import run_model

PROMPT = "The quick brown fox jumps over the lazy dog."
TOLERANCE = 1e-3


def importances(terms: list[torch.Tensor], total: torch.Tensor) -> list[float]:
    """Each term's share of the proximities of all terms of one sum, term by term."""
    size = float(total.abs().sum())
    near = [max(size - float((total - term).abs().sum()), 0.0) for term in terms]
    whole = sum(near)  # 0 when every term is far from the sum (they cancel): no edge then
    return [value / whole if whole > 0 else 0.0 for value in near]


def split(norm, y, terms):
    """LN(y) = sum_k gamma * P z_k / s(y) + beta: the terms through a post-LN norm, beta last."""
    centre = (lambda t: t - t.mean()) if isinstance(norm, torch.nn.LayerNorm) else (lambda t: t)
    s = (centre(y).pow(2).mean() + norm.eps).sqrt()
    return [norm.weight * centre(z) / s for z in terms], norm.bias


def reference(name: str, handle, text: str) -> dict[str, np.ndarray]:
    """heads [L, H, N, N], attn_res, ff, ff_res [L, N] from the definition."""
    model = handle.model
    bert = "bert" in name
    blocks = model.encoder.layer if bert else model.model.layers
    seen, attentions = run_model(handle, blocks, text)
    out = {"heads": [], "attn_res": [], "ff": [], "ff_res": []}
    with torch.no_grad():
        for index, x in enumerate(seen):
            alpha = attentions[index][0].float()
            heads, n = alpha.shape[0], alpha.shape[-1]
            block = blocks[index]
            if bert:
                u, values = x, block.attention.self.value(x)
                out_proj, bias = block.attention.output.dense, block.attention.output.dense.bias
            else:
                u = block.input_layernorm(x)
                values, out_proj, bias = block.self_attn.v_proj(u), block.self_attn.o_proj, torch.zeros(x.shape[-1])
            d = out_proj.weight.shape[1] // heads
            values = values.reshape(n, -1, d).repeat_interleave(heads // (values.shape[-1] // d), dim=1)  # [N, H, d]
            f = torch.stack(
                [values[:, h] @ out_proj.weight[:, h * d : (h + 1) * d].T for h in range(heads)]
            )  # [H, N, D]
            layer_heads, layer_res, layer_ff, layer_ff_res = torch.zeros(heads, n, n), [], [], []
            mids = []
            for i in range(n):
                terms = [alpha[h, i, j] * f[h, j] for h in range(heads) for j in range(n)] + [x[i], bias]
                y = sum(terms)
                if bert:
                    normed, beta = split(block.attention.output.LayerNorm, y, terms)
                    terms, y = normed[:-1] + [normed[-1] + beta], block.attention.output.LayerNorm(y)
                shares = importances(terms, y)
                layer_heads[:, i] = torch.tensor(shares[: heads * n]).reshape(heads, n)
                layer_res.append(shares[heads * n])
                mids.append(y)
            mid = torch.stack(mids)  # [N, D] the stream after attention
            if bert:
                ff = block.output.dense(block.intermediate(mid))
            else:
                ff = block.mlp(block.post_attention_layernorm(mid))
            for i in range(n):
                terms = [mid[i], ff[i]]
                total = mid[i] + ff[i]
                if bert:
                    normed, beta = split(block.output.LayerNorm, total, terms)
                    terms, total = [*normed, beta], block.output.LayerNorm(total)
                shares = importances(terms, total)
                layer_ff_res.append(shares[0])
                layer_ff.append(shares[1])
            for key, value in zip(out, (layer_heads, layer_res, layer_ff, layer_ff_res), strict=True):
                out[key].append(torch.as_tensor(value).numpy())
    return {key: np.stack(values) for key, values in out.items()}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_importances_follow_ferrando_and_voita(tiny_models, name):
    got = route_importances(tiny_models[name], PROMPT)
    want = reference(name, tiny_models[name], PROMPT)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=TOLERANCE, rtol=0, err_msg=key)
    assert got["post_ln"].all() == (name == "tiny-bert")


@pytest.mark.real_model
def test_smollm2_importances_follow_the_definition(smollm2):
    text = "The cat sat on the mat."
    got, want = route_importances(smollm2, text), reference("smollm2-llama", smollm2, text)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=TOLERANCE, rtol=0, err_msg=key)


def walk(imp: dict[str, np.ndarray], token: int, tau: float) -> set[tuple]:
    """The pruned graph by a breadth-first walk over nodes (level, token), edge by edge."""
    layers, n = imp["heads"].shape[0], imp["heads"].shape[-1]
    frontier, kept = {(2 * layers, token)}, set()
    while frontier:
        level, i = frontier.pop()
        if level == 0:
            continue
        layer = (level - 1) // 2
        if level % 2 == 0:  # after the FF block: two edges from (level - 1, i)
            candidates = [(FEED_FORWARD, i, imp["ff"][layer, i]), (FF_RESIDUAL, i, imp["ff_res"][layer, i])]
        else:
            candidates = [(ATTENTION, j, imp["heads"][layer, :, i, j].sum()) for j in range(n)]
            candidates.append((ATTENTION_RESIDUAL, i, imp["attn_res"][layer, i]))
        for kind, source, weight in candidates:
            if weight > tau:
                kept.add((kind, layer, source, i))
                frontier.add((level - 1, source))
    return kept


@pytest.mark.parametrize("tau", [0.01, 0.04, 0.2])
def test_pruning_is_the_walk_from_the_top(tau):
    rng = np.random.default_rng(1)
    layers, heads, n = 4, 3, 6
    raw = rng.random((layers, heads, n, n)) ** 4
    imp = {
        "heads": (raw / raw.sum(axis=(1, 3), keepdims=True) * 0.7).astype(np.float32),
        "attn_res": np.full((layers, n), 0.3, dtype=np.float32),
        "ff": rng.random((layers, n)).astype(np.float32) * 0.3,
        "ff_res": np.full((layers, n), 0.7, dtype=np.float32),
    }
    edges = prune(imp, n - 1, tau)
    got = set(zip(*(edges[k].tolist() for k in ("kind", "layer", "source", "target")), strict=True))
    assert got == walk(imp, n - 1, tau)
    attention = edges["kind"] == ATTENTION
    heads_of = imp["heads"][edges["layer"][attention], :, edges["target"][attention], edges["source"][attention]]
    np.testing.assert_array_equal(edges["head"][attention], heads_of.argmax(axis=1))
