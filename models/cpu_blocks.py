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
import threading
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


@lru_cache(maxsize=1)
def _attention_threads() -> ThreadPoolExecutor:
    """Threads that each attend whole heads (:meth:`LayerFold.attend`), each with a torch team of
    one: each thread's q.k, fold and P @ V of a block then stay in its own core's cache. All
    start here; setting their teams also set torch's default for threads that start later,
    which is then set back to the caller's."""
    workers = _threads()[1]
    threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="atlas-attend", initializer=_one_thread)
    team = torch.get_num_threads()
    barrier = threading.Barrier(workers)  # each task holds its thread until all have started
    for future in [threads.submit(barrier.wait) for _ in range(workers)]:
        future.result()
    torch.set_num_threads(team)
    return threads


def _one_thread() -> None:
    torch.get_num_threads()  # a thread's team is set from torch's default on its first call: that first
    torch.set_num_threads(1)


def pool_columns(pooled: torch.Tensor, starts: np.ndarray, ends: np.ndarray) -> torch.Tensor:
    """[R, t] the maxima of ``pooled`` [R, N] (float32) over column bins ``starts`` / ``ends`` [t]:
    the thumbnails' column pooling, as torch's adaptive max pooling computes it but without its
    dispatch and index bookkeeping: a 128-token SmolLM2 prompt's 30 layers read together 0.7
    against 2.7 ms, a 1024-token layer 0.07 against 0.25 ms, a 4096-token one 0.58 against 0.59."""
    out = torch.empty((pooled.shape[0], len(starts)))
    _kernels().pool_columns(pooled.contiguous().numpy(), starts, ends, out.numpy())
    return out


SUMS, POOLED = 9, 10  # where LayerFold.arguments' sums begin (columns), and the thumbnails' maxima
_scratch = threading.local()  # each attention thread's scores and output blocks, reused from layer to layer


def _block(name: str, cells: int) -> torch.Tensor:
    """This thread's float32 buffer ``name`` of at least ``cells`` cells (fresh memory pays its
    page faults on every first write: models.blocks.Scratch)."""
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.numel() < cells:
        buffer = torch.empty(cells)
        setattr(_scratch, name, buffer)
    return buffer[:cells]


def _even_runs(costs: list[int], parts: int) -> list[int]:
    """Bounds [0, .., len(costs)] cutting ``costs`` into ``parts`` runs of about equal sums."""
    total, bounds, running = sum(costs), [0], 0
    for index, cost in enumerate(costs):
        if len(bounds) < parts and running + cost / 2 > total * len(bounds) / parts:
            bounds.append(index)
        running += cost
    return bounds + [len(costs)] * (parts + 1 - len(bounds))


os.register_at_fork(after_in_child=_threads.cache_clear)
os.register_at_fork(after_in_child=_attention_threads.cache_clear)


class LayerFold:
    """What one layer's blocks fold into, as the compiled loop reads it: ``columns`` [H, N] each
    key's attention, ``pooled`` [H, t, N] row-bin maxima of the thumbnails (``starts`` /
    ``ends`` [t] their rows), and ``stats`` (models.blocks._PrefixStats) over the prefix.
    ``spans`` (models.blocks.MaskSpans): the mask is read cell by cell only when a row's keys
    are not one run. ``normalise``: each row's log-sum-exp is computed from its scores and
    written into ``lse`` (contiguous), and each block is left holding its probabilities
    (:meth:`attend`); each row's keys must then be one run."""

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

    def attend(self, queries, keys, values, blocks: list[tuple[int, int, int, int]], output: torch.Tensor) -> None:
        """Write the layer's attention output into ``output`` [N, H, d], computed here head by head
        and folded in as it goes (``normalise``): per block (r0, r1, c0, c1) of ``blocks``, q.k,
        each row normalised and folded, then P @ V, all in one thread while the block is in its
        core's cache (blocks of all heads at once, each step split among the threads, took
        20-25% longer at 4096 tokens: 19 MB of scores went out to memory and back three times).
        The threads share the (head, block) pairs by their cells, not by whole heads (9 heads on
        2 threads are 5 against 4), each folding into sums of its own, added up at the end.
        ``queries`` and ``keys`` [H, N, d] (scaled, keys repeated per query head), ``values``
        [KV, N, d], float32."""
        heads, d = queries.shape[0], queries.shape[2]
        groups = heads // values.shape[0]
        kernel = _kernels().fold_head
        pairs = [(h, block) for h in range(heads) for block in blocks]
        parts = max(1, min(len(pairs), _threads()[1], torch.get_num_threads()))
        shares = _even_runs([(r1 - r0) * (c1 - c0) for _, (r0, r1, c0, c1) in pairs], parts)
        folds = [self.arguments] + [self._own_sums() for _ in range(parts - 1)]

        def attend_pairs(part: int) -> None:
            with torch.inference_mode():  # the threads' buffers are made and written in it, from any caller
                for h, (r0, r1, c0, c1) in pairs[shares[part] : shares[part + 1]]:
                    scores = _block("scores", (r1 - r0) * (c1 - c0)).view(r1 - r0, c1 - c0)
                    torch.matmul(queries[h, r0:r1], keys[h, c0:c1].T, out=scores)
                    kernel(scores.numpy(), folds[part], r0, c0, h)
                    out = _block("output", (r1 - r0) * d).view(r1 - r0, d)
                    torch.matmul(scores, values[h // groups, c0:c1], out=out)  # the fold left probabilities
                    output[r0:r1, h] = out

        threads = _attention_threads()
        for future in [threads.submit(attend_pairs, part) for part in range(parts)]:
            future.result()
        for fold in folds[1:]:
            self._add_sums(fold)

    def _own_sums(self) -> tuple:
        """The fold's arguments with zeroed sums of their own (columns, thumbnails, statistics)."""
        return (*self.arguments[:SUMS], *(np.zeros_like(array) for array in self.arguments[SUMS:]))

    def _add_sums(self, fold: tuple) -> None:
        """Add another thread's sums into this fold's (the thumbnails' by their maximum)."""
        for index in range(SUMS, len(self.arguments)):
            mine, theirs = self.arguments[index], fold[index]
            if index == POOLED:
                np.maximum(mine, theirs, out=mine)
            else:
                mine += theirs

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
