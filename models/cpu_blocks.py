"""The blocked pass's work per attention cell on the CPU, compiled: one read of each block.

:func:`models.blocks.summarize_layer` reads a fused layer's attention as blocks of scores q.k
(a torch product, the fastest thing there is for it) and then needs, per cell, the probability
exp(score - lse), the mask, the column sums, the thumbnails' row-bin maxima and the prefix's head
statistics. In torch each of those is a pass over the block and the passes cost more than the
product itself (SmolLM2, 9 heads x 1024 tokens: 28 ms a layer, 6 of them the product). Here one
loop per row does all of it while the row is in the cache. Numba compiles the loop (it ships
with umap-learn, already a requirement); the exponential is computed inline because numba's
``math.exp`` is not vectorised without Intel's SVML. GPUs keep the torch path.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from models.record import STAT_OFFSETS

ENABLED = os.environ.get("ATLAS_CPU_BLOCKS", "1") != "0"  # 0: the torch path everywhere (a check, a fallback)
LOG2E = 1.4426950408889634
LN2_HIGH = 0.693145751953125  # ln 2 in two parts (Cody and Waite): n * LN2_HIGH is exact in float32
LN2_LOW = 1.4286068203094173e-06


def available(device: torch.device) -> bool:
    """Whether blocks on ``device`` are summarised here: CPU tensors, numba importable."""
    return ENABLED and device.type == "cpu" and _kernel() is not None


@lru_cache(maxsize=1)
def _kernel():
    """The compiled row loop, or None where numba is missing (the torch path then serves).
    Compiled on first use and cached beside this file, so a fresh process pays it once."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with umap-learn
        return None
    return numba.njit(nogil=True, fastmath=True, cache=True)(_summarize_rows)


@lru_cache(maxsize=1)
def _threads() -> tuple[ThreadPoolExecutor, int]:
    """A thread per core: the loop releases the GIL, and its heads are independent. Each block
    uses as many of them as torch's team has now (model work sizes it to the cores other work
    leaves free: app.cores). A forked child starts its own: the parent's threads are not in it."""
    workers = max(1, os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atlas-blocks"), workers


os.register_at_fork(after_in_child=_threads.cache_clear)


class LayerFold:
    """What one layer's blocks fold into, as the compiled loop reads it: ``columns`` [H, N] each
    key's attention, ``pooled`` [H, t, N] row-bin maxima of the thumbnails (``starts`` /
    ``ends`` [t] their rows), and ``stats`` (models.blocks._PrefixStats) over the prefix.
    ``spans`` (models.blocks.MaskSpans): the mask is read cell by cell only when a row's keys
    are not one run."""

    def __init__(self, lse: torch.Tensor, spans, starts, ends, stats, columns: torch.Tensor, pooled: torch.Tensor):
        rows = np.arange(columns.shape[1])
        bins = np.stack([np.searchsorted(ends, rows, side="right"), np.searchsorted(starts, rows, side="right")])
        allowed = np.zeros((0, 0), bool) if spans.contiguous else spans.allowed.numpy()
        self.heads = columns.shape[0]
        self.arguments = (
            lse.contiguous().numpy(),
            allowed,
            spans.first,
            spans.last,
            bins,  # [2, N]: the first and one past the last bin holding each row (bins overlap)
            stats.prefix,
            stats.causal,
            np.asarray(STAT_OFFSETS, np.int64),
            columns.numpy(),
            pooled.numpy(),
            stats.sums.numpy(),
            stats.counts.numpy(),
            stats.key_sums.numpy(),
            stats.rows.numpy(),
        )

    def add(self, scores: torch.Tensor, r0: int, c0: int) -> None:
        """Fold in one block of scores [H, r, c], q.k * scaling of rows r0.. over keys c0..: the
        heads split among the threads."""
        kernel, (threads, workers) = _kernel(), _threads()
        parts = max(1, min(self.heads, workers, torch.get_num_threads()))
        bounds = [(self.heads * part) // parts for part in range(parts + 1)]
        arguments = (scores.numpy(), *self.arguments, r0, c0)
        futures = [threads.submit(kernel, *arguments, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        kernel(*arguments, bounds[0], bounds[1])  # the first part here: waking a thread costs ~0.1 ms a block
        for future in futures:
            future.result()


def _summarize_rows(  # noqa: PLR0913, PLR0912, PLR0915 - one compiled loop, its arrays passed in
    scores,  # [H, r, c] float32
    lse,  # [H, N] float32
    allowed,  # [N, N] bool, or [0, 0] when every row's keys are the run first..last
    first,  # [N] int64
    last,  # [N] int64
    bins,  # [2, N] int64: the first and one past the last thumbnail bin holding each row
    prefix,  # P, the analysed prefix
    causal,
    offsets,  # [O] int64 STAT_OFFSETS
    columns,  # [H, N] float32 (out)
    pooled,  # [H, t, N] float32 (out)
    sums,  # [H, S] float64 (out)
    counts,  # [H, S] float64 (out)
    key_sums,  # [H, P] float64 (out)
    weighted_rows,  # [H] float64 (out)
    r0,  # the block's first row and first key
    c0,
    h0,  # the heads this call reads: h0..h1
    h1,
):
    rows, width = scores.shape[1], scores.shape[2]
    masked = allowed.shape[0] > 0
    p = np.empty(width, np.float32)
    log_p = np.empty(width, np.float32)
    exponent = np.empty(width, np.int32)
    scale = exponent.view(np.float32)
    for h in range(h0, h1):
        for i in range(rows):
            row = r0 + i
            a, b = max(first[row] - c0, 0), min(last[row] - c0, width)
            if b <= a:
                continue  # the row sees none of these keys
            # loops over views from 0: numba then knows no index is negative, and vectorises
            m, shift, row_scores = b - a, lse[h, row], scores[h, i, a:b]
            for j in range(m):
                x = max(row_scores[j] - shift, np.float32(-87.0))  # models.blocks.EXP_FLOOR
                n = np.floor(x * np.float32(LOG2E) + np.float32(0.5))  # float32, as every term here
                r = x - n * np.float32(LN2_HIGH) - n * np.float32(LN2_LOW)  # |r| <= ln2 / 2
                log_p[j] = x
                p[j] = np.float32(1.0) + r * (
                    np.float32(1.0)
                    + r
                    * (
                        np.float32(0.5)
                        + r
                        * (
                            np.float32(1.0 / 6)
                            + r * (np.float32(1.0 / 24) + r * (np.float32(1.0 / 120) + r * np.float32(1.0 / 720)))
                        )
                    )
                )
                exponent[j] = (np.int32(n) + np.int32(127)) << 23  # 2^n as float32 bits
            for j in range(m):
                p[j] *= scale[j]
            if masked:
                row_allowed = allowed[row, c0 + a : c0 + b]
                for j in range(m):
                    p[j] = p[j] if row_allowed[j] else np.float32(0.0)
            row_columns = columns[h, c0 + a : c0 + b]
            for j in range(m):
                row_columns[j] += p[j]
            for t in range(bins[0, row], bins[1, row]):
                row_pooled = pooled[h, t, c0 + a : c0 + b]
                for j in range(m):
                    row_pooled[j] = max(row_pooled[j], p[j])
            if row >= prefix:
                continue
            seen = max(0, min(b, prefix - c0) - a)  # the prefix's keys among them
            row_sum, entropy, distance = 0.0, 0.0, 0.0
            gap0 = row - (c0 + a)  # row - key at j = 0
            for j in range(seen):
                row_sum += p[j]
                entropy -= p[j] * log_p[j]
                distance += p[j] * ((gap0 - j) if causal else abs(gap0 - j))
            keys = row + 1 if causal else prefix
            if not (row_sum > 0 and keys > 1):
                continue  # a row head_metrics leaves out of its means
            values = (entropy, entropy / math.log(max(keys, 2)), distance)
            for s in range(3):
                sums[h, s] += values[s]
                counts[h, s] += 1.0
            for s in range(offsets.shape[0]):
                key = row + offsets[s]
                if 0 <= key < prefix:
                    sums[h, 3 + s] += p[key - c0 - a] if 0 <= key - c0 - a < seen else 0.0
                    counts[h, 3 + s] += 1.0
            row_keys = key_sums[h, c0 + a : c0 + a + seen]
            for j in range(seen):
                row_keys[j] += p[j]
            weighted_rows[h] += 1.0
