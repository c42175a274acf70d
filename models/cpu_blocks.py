"""The blocked pass's per-cell work on the CPU: the compiled row loop (models.cpu_fold), its
arguments and its threads.

:func:`models.blocks.summarize_layer` reads a fused layer's attention as blocks of scores q.k
(a torch product, the fastest thing there is for it) and then needs, per cell, the probability
exp(score - lse), the mask, the column sums, the thumbnails' row-bin maxima and the prefix's head
statistics. In torch each of those is a pass over the block and the passes cost more than the
product itself (SmolLM2, 9 heads x 1024 tokens: 28 ms a layer, 6 of them the product). Here one
loop per row does all of it while the row is in the cache. Numba compiles the loop (it ships
with umap-learn, already a requirement). GPUs keep the torch path.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

from models.record import STAT_OFFSETS

ENABLED = os.environ.get("ATLAS_CPU_BLOCKS", "1") != "0"  # 0: the torch path everywhere (a check, a fallback)


def available(device: torch.device) -> bool:
    """Whether blocks on ``device`` are summarised here: CPU tensors, numba importable."""
    return ENABLED and device.type == "cpu" and _kernels() is not None


@lru_cache(maxsize=1)
def _kernels():
    """models.cpu_fold (its loops compiled on first use and cached beside it, so a fresh process
    pays that once), or None where numba is missing: the torch path then serves."""
    try:
        from models import cpu_fold
    except ImportError:  # pragma: no cover - numba comes with umap-learn
        return None
    return cpu_fold


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
    are not one run. ``normalise``: each row's log-sum-exp is computed from its scores and
    written into ``lse`` (contiguous), and each block is left holding its probabilities
    (models.blocks.AttendedValues); each row's keys must then be one run."""

    def __init__(  # noqa: PLR0913 - what the compiled loop reads, each passed in
        self,
        lse: torch.Tensor,
        spans,
        starts,
        ends,
        stats,
        columns: torch.Tensor,
        pooled: torch.Tensor,
        normalise=False,
    ):
        if normalise and not spans.contiguous:
            raise ValueError("a row normalised here must see one run of keys")
        rows = np.arange(columns.shape[1])
        bins = np.stack([np.searchsorted(ends, rows, side="right"), np.searchsorted(starts, rows, side="right")])
        allowed = np.zeros((0, 0), bool) if spans.contiguous else spans.allowed.numpy()
        self.heads = columns.shape[0]
        self.arguments = (
            lse.contiguous().numpy(),  # contiguous already where it is written (normalise)
            normalise,
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
        heads split among as many threads as torch's team has now (model work sizes it to the
        cores other work leaves free: app.cores)."""
        kernel, (threads, workers) = _kernels().fold_rows, _threads()
        parts = max(1, min(self.heads, workers, torch.get_num_threads()))
        bounds = [(self.heads * part) // parts for part in range(parts + 1)]
        arguments = (scores.numpy(), self.arguments, r0, c0)
        futures = [threads.submit(kernel, *arguments, bounds[i], bounds[i + 1]) for i in range(1, parts)]
        kernel(*arguments, bounds[0], bounds[1])  # the first part here: waking a thread costs ~0.1 ms a block
        for future in futures:
            future.result()
