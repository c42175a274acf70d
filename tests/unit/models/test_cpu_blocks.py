"""The blocked pass, by its compiled row loop (models.cpu_blocks) and by torch operations,
against the definitions, written here on the dense
softmax: masks of every shape the blocked pass meets (causal, windows, runs with holes, rows that
see nothing), a prefix shorter than the prompt, several layers side by side, blocks of a few rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models import blocks, cpu_blocks
from models.blocks import FusedSource, MaskSpans, summarize_layer
from models.record import STAT_OFFSETS

HEADS, N, D, THUMB = 4, 37, 8, 6
SCALING = 0.25  # a power of two: q * scaling is exact, as the blocked pass computes it


def on_a_grid(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Random values in [-3, 3] in steps of 1/8: every product is a multiple of 1/64 below 9 in
    size, so a score (D of them summed) is exact in float32 in any order. With plain random
    floats the blocked pass's q.k blocks and the reference's one product rounded differently
    in about 3 % of processes (the BLAS kernel torch picks varies), thumbnails then 1.5e-5 apart."""
    return torch.randint(-24, 25, shape, generator=generator).float() / 8


def dense_attention(queries, keys, allowed, scaling) -> np.ndarray:
    """[H, N, N] softmax(q.k * scaling) over allowed keys; a row that may see nothing is 0."""
    scores = (queries @ keys.transpose(1, 2) * scaling).masked_fill(~allowed, float("-inf")).double()
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0).numpy()


def definition_stats(attention: np.ndarray, prefix: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """([H, S] means of the head statistics over the prefix rows that count, [H, P] key shares):
    entropy, entropy / log(keys the row may see), sum_k a |q - k|, then a[q, q + offset]."""
    heads = attention.shape[0]
    stats = np.zeros((heads, 3 + len(STAT_OFFSETS)))
    shares = np.zeros((heads, prefix))
    for h in range(heads):
        totals, counts, rows = np.zeros(stats.shape[1]), np.zeros(stats.shape[1]), 0
        for q in range(prefix):
            row = attention[h, q, :prefix]
            keys = q + 1 if causal else prefix
            if row.sum() <= 0 or keys <= 1:
                continue
            entropy = -sum(a * np.log(a) for a in row if a > 0)
            distance = sum(a * (q - k if causal else abs(q - k)) for k, a in enumerate(row))
            totals[:3] += entropy, entropy / np.log(max(keys, 2)), distance
            counts[:3] += 1
            for s, offset in enumerate(STAT_OFFSETS):
                if 0 <= q + offset < prefix:
                    totals[3 + s] += row[q + offset]
                    counts[3 + s] += 1
            shares[h] += row
            rows += 1
        stats[h] = np.where(counts > 0, totals / np.maximum(counts, 1), 0.0)
        shares[h] /= max(rows, 1)
    return stats, shares


def masks() -> dict[str, tuple[torch.Tensor, bool]]:
    """name -> ([N, N] allowed, whether the statistics read it as causal)."""
    behind = torch.arange(N)[:, None] - torch.arange(N)[None, :]
    holes = torch.rand(N, N, generator=torch.Generator().manual_seed(3)) > 0.4
    holes[5] = False  # a row that sees nothing
    segments = torch.zeros(N, N, dtype=torch.bool)
    segments[:20, :20] = True
    segments[25:, 20:] = behind[25:, 20:] >= 0  # rows 20..24 see nothing
    return {
        "causal": (behind >= 0, True),
        "full": (torch.ones(N, N, dtype=torch.bool), False),
        "window": ((behind >= 0) & (behind < 6), True),
        "holes": (holes, False),
        "segments": (segments, False),
    }


@pytest.mark.parametrize("mask", list(masks()))
@pytest.mark.parametrize("prefix", [N, 11])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("rows", [5, N], ids=["5-rows", "one-block"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_the_blocked_pass_gives_the_definitions(monkeypatch, mask, prefix, layers, rows, compiled):
    """In blocks of a few rows (a CPU's) and in one block of all rows (a GPU's)."""
    monkeypatch.setattr(cpu_blocks, "ENABLED", compiled)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", rows)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", rows * 4 * HEADS * layers * N)
    allowed, causal = masks()[mask]
    spans = MaskSpans.of(allowed)
    generator = torch.Generator().manual_seed(0)
    queries, keys = (on_a_grid(HEADS * layers, N, D, generator=generator) for _ in range(2))
    scaling = SCALING
    attention = dense_attention(queries, keys, allowed, scaling)  # [H, N, N]
    lse = torch.logsumexp((queries @ keys.transpose(1, 2) * scaling).masked_fill(~allowed, float("-inf")), dim=-1)
    lse = torch.where(spans.readable, lse, 0.0)

    ran = []
    original = cpu_blocks.LayerFold.add
    monkeypatch.setattr(cpu_blocks.LayerFold, "add", lambda *args: ran.append(1) or original(*args))
    source = FusedSource(queries, keys, lse, scaling, spans)
    summary = summarize_layer(
        source, spans, heads=HEADS * layers, thumb=THUMB, stats_tokens=prefix, causal=causal, layers=layers
    )
    assert bool(ran) == compiled, "the compiled loop ran where it should not, or did not where it should"

    check_summary(summary, attention, prefix, causal, layers)


def check_summary(summary, attention: np.ndarray, prefix: int, causal: bool, layers: int = 1) -> None:
    """The pass's thumbnails, received attention and head statistics are the definitions'."""
    thumbnails = F.adaptive_max_pool2d(torch.from_numpy(attention).float(), THUMB).numpy()
    np.testing.assert_allclose(summary.thumbnails.numpy(), thumbnails, atol=1e-5)  # float32 scores and lse
    received = attention.sum(axis=1).reshape(layers, -1, attention.shape[-1]).sum(axis=1)  # [layers, N]
    np.testing.assert_allclose(summary.received.numpy(), received, atol=1e-5)
    stats, shares = definition_stats(attention, prefix, causal)
    np.testing.assert_allclose(summary.head_stats.numpy(), stats, atol=1e-5)
    np.testing.assert_allclose(summary.key_shares.numpy(), shares, atol=1e-6)


@pytest.mark.parametrize("mask", ["causal", "full", "window", "segments"])
@pytest.mark.parametrize("prefix", [N, 11])
def test_a_pass_that_attends_gives_the_output_the_lse_and_the_definitions(monkeypatch, mask, prefix):
    """With values the compiled pass computes each row's
    log-sum-exp from its own scores and the attention output P @ V: both as the dense softmax
    gives them, with two query heads per key head, and the summary as without."""
    monkeypatch.setattr(blocks, "ATTEND_ROWS", 5)  # 5 rows a block
    allowed, causal = masks()[mask]
    spans = MaskSpans.of(allowed)
    generator = torch.Generator().manual_seed(1)
    queries = on_a_grid(HEADS, N, D, generator=generator)
    keys, values = (on_a_grid(HEADS // 2, N, D, generator=generator) for _ in range(2))
    scaling = SCALING
    attention = dense_attention(queries, keys.repeat_interleave(2, 0), allowed, scaling)  # [H, N, N]
    buffers = blocks.Buffers()
    lse = torch.zeros(HEADS, N)
    source = FusedSource(queries, keys.repeat_interleave(2, 0), lse, scaling, spans, buffers)
    summary = summarize_layer(
        source, spans, heads=HEADS, thumb=THUMB, stats_tokens=prefix, causal=causal, values=values
    )
    output = np.einsum("hqk,hkd->qhd", attention, values.repeat_interleave(2, 0).double().numpy())  # [N, H, d]
    np.testing.assert_allclose(summary.output.numpy(), output, atol=1e-5)
    scores = (queries @ keys.repeat_interleave(2, 0).transpose(1, 2) * scaling).masked_fill(~allowed, float("-inf"))
    expected_lse = torch.where(spans.readable, torch.logsumexp(scores.double(), dim=-1), 0.0)
    np.testing.assert_allclose(lse.numpy(), expected_lse.numpy(), atol=1e-5)
    check_summary(summary, attention, prefix, causal)


def test_a_pass_that_attends_needs_rows_that_see_one_run_of_keys():
    """A row whose keys have holes would be normalised over keys it may not see: refused."""
    allowed, _ = masks()["holes"]
    spans = MaskSpans.of(allowed)
    source = FusedSource(torch.ones(HEADS, N, D), torch.ones(HEADS, N, D), torch.zeros(HEADS, N), 1.0, spans)
    with pytest.raises(ValueError, match="one run of keys"):
        summarize_layer(
            source, spans, heads=HEADS, thumb=THUMB, stats_tokens=N, causal=False, values=torch.ones(HEADS, N, D)
        )


def test_a_row_whose_largest_score_the_guess_misses_is_read_again():
    """A normalising row guesses its maximum from every (n / SHIFT_SAMPLES)-th score; a key far
    above those (150 here: its exp from the guess overflows) sends the row back to its exact
    maximum, and its log-sum-exp and probabilities are still the softmax's."""
    n = 300
    scores = torch.randn(1, 1, n, generator=torch.Generator().manual_seed(2))
    scores[0, 0, 7] = 150.0  # the guess reads keys 0, 9, 18, ...
    spans = MaskSpans.of(torch.ones(1, n, dtype=torch.bool))
    columns, pooled, lse = torch.zeros(1, n), torch.zeros(1, 1, n), torch.zeros(1, 1)
    stats = blocks._PrefixStats(1, 0, False, "cpu")
    fold = cpu_blocks.LayerFold(lse, spans, np.array([0]), np.array([1]), stats, columns, pooled, normalise=True)
    expected = torch.softmax(scores.double(), dim=-1)
    expected_lse = torch.logsumexp(scores.double(), dim=-1)
    fold.add(scores, 0, 0)
    assert abs(float(lse[0, 0]) - float(expected_lse)) < 1e-5
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), atol=1e-7)  # the block holds the probabilities
    np.testing.assert_allclose(columns.numpy()[0], expected.numpy()[0, 0], atol=1e-7)


def test_the_exponential_is_float32_exact_over_the_range_it_reads():
    """The inline exp (range reduction and a degree-6 polynomial) on every log-probability the
    loop meets, -87 (models.record.EXP_FLOOR) to 0: within a few float32 roundings of exp."""
    values = torch.linspace(-87.0, 0.0, 100_003)
    spans = MaskSpans.of(torch.ones(1, values.numel(), dtype=torch.bool))
    columns, pooled = torch.zeros(1, values.numel()), torch.zeros(1, 1, values.numel())
    stats = blocks._PrefixStats(1, 0, False, "cpu")
    fold = cpu_blocks.LayerFold(torch.zeros(1, 1), spans, np.array([0]), np.array([1]), stats, columns, pooled)
    fold.add(values.view(1, 1, -1).contiguous(), 0, 0)
    exact = torch.exp(values.double())
    assert ((columns[0].double() - exact).abs() / exact).max() < 1e-6


@pytest.mark.parametrize(("n", "t"), [(128, 64), (130, 64), (1000, 26), (7, 7), (5, 3)])
def test_the_column_pooling_is_torch_s_adaptive_max_pooling(n, t):
    """The thumbnails' column bins overlap where t does not divide n, as torch's do."""
    pooled = torch.rand(3 * t, n, generator=torch.Generator().manual_seed(n))
    bins = blocks._Bins(n, t)
    expected = F.adaptive_max_pool1d(pooled, t)
    assert torch.equal(cpu_blocks.pool_columns(pooled, bins.starts, bins.ends), expected)


def test_a_gpu_reads_a_layer_in_few_blocks_a_cpu_in_many():
    """A GPU's blocks are as large as GPU_BLOCK_BYTES allows (each block costs launches, not
    arithmetic); a CPU's stay at BLOCK_ROWS (its cache)."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # a device name: no GPU needed to plan for one
    assert blocks.block_rows(9, 1024, cpu) == blocks.BLOCK_ROWS
    assert blocks.block_rows(9, 1024, gpu) == 1024  # a SmolLM2 layer of 1024 tokens in one block
    assert blocks.block_rows(9, 4096, gpu) == blocks.GPU_BLOCK_BYTES // (4 * 9 * 4096)  # 3 blocks
    assert blocks.block_rows(32, 4096, gpu) * 4 * 32 * 4096 <= blocks.GPU_BLOCK_BYTES
