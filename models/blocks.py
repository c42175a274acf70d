"""One layer's attention read in row blocks: everything the first views need, never all N x N.

The recorder hands :func:`summarize_layer` a :class:`LayerSource`: the fused kernel's q, k and
each row's log-sum-exp (:class:`FusedSource`), or the weights an eager layer returned
(:class:`EagerSource`), and the pass's :class:`MaskSpans`. One pass over row blocks, each only as
wide as the keys its rows may see (most of the masked half of a causal matrix is never computed),
gathers the thumbnails, the attention each key receives, the head statistics of the analysed
prefix and, only when asked, the full attention. Torch, on the model's device: on a GPU none of it
leaves the device until the end. On the CPU a fused layer's blocks are q.k products in torch and
the rest, per cell, one compiled loop (models.cpu_blocks: 9.8 against 20-28 ms a layer of 9 heads
x 1024 tokens); the torch operations stay for GPUs, eager sources and a record that keeps the
attention, and are what the compiled loop is tested beside.

The pass is what a capture costs beyond the model's own forward pass (issue 12), so each block
is read as few times as possible: scores are masked only where a row of the block may not look
(the diagonal square of a causal block), each row's entropy comes from the scores the block came
from (-sum p log p = -sum p (s - lse): a product and a sum, no logarithm), the key shares from the
column sums that the received attention needs anyway, and the thumbnails pool the block's rows in
place instead of a copy padded to the full width. On the CPU a long prompt's layer is not even
attended by the kernel first: the pass computes each row's log-sum-exp from its block's scores
and the layer's output from its probabilities (``summarize_layer(..., values=)``), so q.k is
computed once per layer, not twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from models import cpu_blocks
from models.record import EXP_FLOOR, HEAD_STATS, STAT_OFFSETS, Capture

BLOCK_BYTES = 32 * 1024 * 1024  # most bytes of float32 probabilities in one row block, all heads
# A GPU's blocks: as many rows as this allows, not BLOCK_ROWS (a CPU's cache size). On a GPU a
# block's arithmetic takes microseconds and its launches don't: each block is a few dozen small
# kernels (scores, exp, masks, pooling; the prefix statistics with a host sync). On an H200, a
# SmolLM2 capture in 128-row blocks took 0.93 s at 1024 tokens (about 3.7 ms a prefix block) and
# 1.55 s at 4096 (0.9 ms a block past the prefix) beside a 31-35 ms forward pass. 256 MiB holds a
# 1024-token SmolLM2 layer in one block and a 4096-token one in three.
GPU_BLOCK_BYTES = 256 * 1024 * 1024
CPU = torch.device("cpu")
SCRATCH_MAX_BYTES = 64 * 1024 * 1024  # the largest buffer Scratch keeps between reads
# Query rows a block reads. Each block is one q.k product, one hand-over of its heads to the
# fold's threads (~0.1 ms on a 2-vCPU VM) and, on a causal diagonal, half a square of wasted
# cells: a SmolLM2 layer took 9.7 / 28.6 / 112-118 ms at 1024 / 2048 / 4096 tokens in blocks of
# 128 rows, 11.0 / 32.7 ms in blocks of 512 rows (and 148-159 ms at 4096 in blocks of 32).
BLOCK_ROWS = 128
# Query rows of one head a layer attended here reads at a time (LayerFold.attend): its q.k, fold and
# P @ V in one thread, the block in that core's cache. Fewer, larger blocks pay fewer calls per
# block: a SmolLM2 layer at 1024 / 2048 / 4096 tokens took 17.8 / 41.9 / 132.9 ms (medians of
# 12) in blocks of 128 rows, 15.6 / 37.8 / 122.9 in blocks of 256, 16.6 / 41.1 / 137.4 in blocks
# of 512. Fewer rows where a block's scores would pass ATTEND_BLOCK_BYTES, never fewer than
# BLOCK_ROWS (:func:`attend_rows`).
ATTEND_ROWS = 256
ATTEND_BLOCK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class MaskSpans:
    """One mask of a pass, read once for all the layers that share it: which key columns each
    query row may see, so a block computes only those and masks only where a row may not look."""

    allowed: torch.Tensor  # [N, N] bool, True = may attend
    first: np.ndarray  # [N] first key each row may see (0 for a row that sees none)
    last: np.ndarray  # [N] one past the last key each row may see (0 for a row that sees none)
    contiguous: bool  # every row sees exactly the keys [first, last)
    readable: torch.Tensor  # [N] bool: rows that see any key
    visible: torch.Tensor  # [N] float32 queries that may see each key (at least 1)

    @classmethod
    def of(cls, allowed: torch.Tensor) -> MaskSpans:
        n_keys = allowed.shape[-1]
        readable = allowed.any(dim=-1)
        first = allowed.to(torch.uint8).argmax(dim=-1)
        last = n_keys - allowed.flip(-1).to(torch.uint8).argmax(dim=-1)
        first, last = torch.where(readable, first, 0), torch.where(readable, last, 0)
        contiguous = bool((allowed.sum(dim=-1) == last - first).all())
        visible = allowed.sum(dim=0).clamp(min=1).float()
        return cls(allowed, first.cpu().numpy(), last.cpu().numpy(), contiguous, readable, visible)

    def columns(self, r0: int, r1: int) -> tuple[int, int, int, int]:
        """(c0, c1): the keys any row of rows r0..r1 may see; (lo, hi): those every row may see
        (an empty span when the rows' keys are not contiguous runs)."""
        first, last = self.first[r0:r1], self.last[r0:r1]
        c0, c1 = int(first.min()), int(last.max())
        lo, hi = (int(first.max()), int(last.min())) if self.contiguous else (c0, c0)
        return c0, c1, lo, max(lo, hi)


@dataclass
class Block:
    """Attention of rows r0.. over keys c0.. of every head: ``p`` [H, r, c] float32, 0 where the
    mask forbids, and where the source has scores ``log_p`` [H, r, c] = score - row log-sum-exp
    (finite where the mask forbids, so that p log p is 0 there). The buffers are the source's,
    reused by its next block: :meth:`entropy` consumes ``log_p``."""

    p: torch.Tensor
    log_p: torch.Tensor | None = None

    def prefix(self, rows: int, width: int) -> Block:
        """The block's first ``rows`` rows and ``width`` keys."""
        log_p = None if self.log_p is None else self.log_p[:, :rows, :width]
        return Block(self.p[:, :rows, :width], log_p)

    def entropy(self) -> torch.Tensor:
        """[H, r] -sum p log p over the block's keys: from the scores where there are some (a
        product in place and a sum, 10x cheaper than the logarithms; a fresh product tensor per
        block cost its page faults), else from p. Overwrites ``log_p``."""
        if self.log_p is None:
            return -torch.xlogy(self.p, self.p).sum(-1)
        return -self.log_p.mul_(self.p).sum(-1)


class Buffers:
    """Float32 tensors a blocked read writes and reads again (scores, probabilities, the pooled
    thumbnails, a layer's grouped keys), one per ``slot``, reused from call to call. ``kept``
    is :class:`Scratch`'s, lent to one reader at a time, or this reader's own."""

    def __init__(self, kept: dict[str, torch.Tensor] | None = None):
        self.kept = {} if kept is None else kept

    def get(self, slot: str, shape: tuple[int, ...], like: torch.Tensor, room: int = 0) -> torch.Tensor:
        """A ``shape`` view of slot ``slot`` (its contents left from before), on ``like``'s
        device; a slot that must grow is made ``room`` cells large if that is more."""
        cells = int(np.prod(shape))
        buffer = self.kept.get(slot)
        if buffer is None or buffer.numel() < cells or buffer.device != like.device:
            buffer = self.kept[slot] = like.new_empty(max(cells, room), dtype=torch.float32)
        return buffer[:cells].view(shape)


class Scratch:
    """The CPU buffers that blocked reads lend each other. A fresh multi-MB tensor costs the
    kernel's page faults where it is first written (glibc hands blocks of 8 MiB and up, and after
    each capture every free page, back to the kernel: app.cache), and on a small VM that costs
    more than the work: the q.k products of a 128-token SmolLM2 record's 270 heads took 7.0 ms
    into fresh memory and 2.2 ms into memory written before. One reader borrows them at a time
    (:meth:`lend`); another, meanwhile (a second model's capture), gets buffers of its own.
    Kept: the largest of each slot so far, at most ``SCRATCH_MAX_BYTES`` each."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kept: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def lend(self) -> Iterator[Buffers]:
        if not self._lock.acquire(blocking=False):
            yield Buffers()
            return
        try:
            buffers = Buffers(self._kept)
            yield buffers
        finally:
            for slot, buffer in list(self._kept.items()):
                if buffer.device.type != "cpu" or buffer.numel() * 4 > SCRATCH_MAX_BYTES:
                    del self._kept[slot]  # a GPU's allocator keeps its own; too large to hold on to
            self._lock.release()


SCRATCH = Scratch()


class LayerSource:
    """Where a layer's attention blocks come from; ``buffers``: where reading them works."""

    buffers: Buffers

    def block(self, r0: int, r1: int, c0: int, c1: int) -> Block:
        """Rows r0..r1 over keys c0..c1 of every head."""
        raise NotImplementedError


class FusedSource(LayerSource):
    """Blocks of softmax(q.k * scaling + mask) as exp(score - row log-sum-exp): each block costs
    its own r x c x d product, never the rest of its rows. ``queries`` and ``keys`` are [H, N, d]
    float32 (grouped keys already repeated), ``lse`` [H, N] float32."""

    def __init__(self, queries, keys, lse, scaling: float, spans: MaskSpans, buffers: Buffers | None = None):
        self.queries = queries if scaling == 1.0 else queries * scaling  # [H, N, d]: scaled once, not per block
        self.keys, self.lse, self.spans = keys, lse, spans
        self.buffers = Buffers() if buffers is None else buffers

    def _view(self, slot: str, shape: tuple[int, int, int]) -> torch.Tensor:
        """An [H, r, c] view of buffer ``slot`` ("scores" or "probabilities"), kept across blocks:
        a fresh multi-MB tensor per block costs the kernel's page faults each time (about as long
        as the exp that fills it). A block is read before the next one is made, so one buffer of
        each serves them all (made as wide as any block of as many rows: a causal pass's blocks
        widen row by row); the compiled pass (models.cpu_blocks) never asks for the second."""
        return self.buffers.get(slot, shape, self.queries, room=shape[0] * shape[1] * self.keys.shape[1])

    def scores(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """[H, r, c] q.k * scaling of rows r0..r1 over keys c0..c1, in the buffer the block's
        log-probabilities take (valid until the next block)."""
        log_p = self._view("scores", (self.queries.shape[0], r1 - r0, c1 - c0))
        return torch.matmul(self.queries[:, r0:r1], self.keys[:, c0:c1].transpose(1, 2), out=log_p)

    def block(self, r0: int, r1: int, c0: int, c1: int) -> Block:
        log_p = self.scores(r0, r1, c0, c1)
        p = self._view("probabilities", log_p.shape)
        log_p.sub_(self.lse[:, r0:r1, None]).clamp_(min=EXP_FLOOR)
        torch.exp(log_p, out=p)  # masked after: exp(-inf) takes the CPU's slow path too
        for start, stop, where in self._forbidden(r0, r1, c0, c1):
            p[..., start:stop].masked_fill_(where, 0.0)
        return Block(p, log_p)

    def _forbidden(self, r0: int, r1: int, c0: int, c1: int) -> list[tuple[int, int, torch.Tensor]]:
        """(start, stop, [r, stop - start] bool) of the block's columns where some row may not
        look: a causal block's diagonal square, not the whole block."""
        _, _, lo, hi = self.spans.columns(r0, r1)
        spans = ((c0, max(c0, min(lo, c1))), (max(c0, hi), c1)) if lo < hi else ((c0, c1),)
        return [(a - c0, b - c0, ~self.spans.allowed[r0:r1, a:b]) for a, b in spans if b > a]


class EagerSource(LayerSource):
    """Slices of the [H, N, N] weights an eager layer returned (not softmax(q.k): no scores)."""

    def __init__(self, weights: torch.Tensor, buffers: Buffers | None = None):
        self.weights = weights
        self.buffers = Buffers() if buffers is None else buffers

    def block(self, r0, r1, c0, c1):
        return Block(self.weights[:, r0:r1, c0:c1].float())


def grouped_keys(keys: torch.Tensor, groups: int, scaling: float, buffers: Buffers) -> torch.Tensor:
    """[..., KV * groups, N, d]: keys [..., KV, N, d] repeated for the query heads that read each
    (as ``repeat_interleave`` does) and times ``scaling``, in one product into ``buffers``: a
    :class:`FusedSource` of them takes the queries as they are, with scaling 1."""
    *lead, kv, n, d = keys.shape
    out = buffers.get("keys", (*lead, kv, groups, n, d), keys)
    torch.mul(keys.float().unsqueeze(-3).expand(*lead, kv, groups, n, d), scaling, out=out)
    return out.view(*lead, kv * groups, n, d)


@dataclass
class LayerSummary:
    """What one layer leaves in the record, still as tensors on the model's device."""

    thumbnails: torch.Tensor  # [H, t, t] max-pooled attention
    received: torch.Tensor  # [layers, N] attention each key receives, summed over a layer's heads and queries
    head_stats: torch.Tensor  # [H, S] the HEAD_STATS of the analysed prefix
    key_shares: torch.Tensor  # [H, P] mean attention each prefix key gets from the prefix's rows
    attention: torch.Tensor | None  # [H, N, N] only when the record keeps it
    output: torch.Tensor | None = None  # [N, H, d] the attention output, when the pass computed it


def row_blocks(spans: MaskSpans, rows: int) -> Iterator[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of each block of ``rows`` query rows and the keys they may see; blocks
    whose rows may see nothing (another segment's rows) are left out."""
    n = spans.allowed.shape[-2]
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        c0, c1, _, _ = spans.columns(r0, r1)
        if c1 > c0:
            yield r0, r1, c0, c1


def block_bytes(device: torch.device) -> int:
    """The most bytes of float32 probabilities a block of all heads holds on ``device``."""
    return GPU_BLOCK_BYTES if device.type == "cuda" else BLOCK_BYTES


def block_rows(heads: int, n_tokens: int, device: torch.device = CPU) -> int:
    """Query rows per block: on a CPU ``BLOCK_ROWS``, on a GPU as many as fit; never more than
    :func:`block_bytes` of float32."""
    cap = block_bytes(device) // (4 * heads * n_tokens)
    return max(1, min(n_tokens, cap, BLOCK_ROWS if device.type != "cuda" else n_tokens))


def attend_rows(n_tokens: int) -> int:
    """Query rows per block of one head that a layer attended here reads (``ATTEND_ROWS``)."""
    return max(1, min(ATTEND_ROWS, n_tokens, max(BLOCK_ROWS, ATTEND_BLOCK_BYTES // (4 * n_tokens))))


class _Bins:
    """The bins of PyTorch's adaptive max pooling over N positions into t: bin i covers
    [floor(i N / t), ceil((i + 1) N / t)), so neighbours may share a position. The thumbnails
    pool each block's rows into their bins (one read of the block, no copy), then the columns of
    the small [H, t, N] result."""

    def __init__(self, n: int, t: int):
        index = np.arange(t)
        self.starts, self.ends = (index * n) // t, -((-(index + 1) * n) // t)
        self.t = t

    def pool_rows(self, block: torch.Tensor, r0: int, c0: int, into: torch.Tensor) -> None:
        """Max each row bin's share of a block (rows r0.., columns c0..) into ``into`` [H, t, N]:
        a bin the block cuts gets the rest of its rows from the blocks beside it."""
        r1, c1 = r0 + block.shape[1], c0 + block.shape[2]
        for i in np.flatnonzero((self.starts < r1) & (self.ends > r0)):
            lo, hi = max(int(self.starts[i]), r0) - r0, min(int(self.ends[i]), r1) - r0
            target = into[:, i, c0:c1]
            torch.maximum(target, block[:, lo:hi].amax(dim=1), out=target)


def summarize_layer(
    source: LayerSource,
    spans: MaskSpans,
    *,
    heads: int,
    thumb: int,
    stats_tokens: int,
    causal: bool,
    keep: torch.dtype | None = None,
    layers: int = 1,
    values: torch.Tensor | None = None,
) -> LayerSummary:
    """Read one layer's attention block by block. ``stats_tokens`` is the analysed prefix P;
    ``causal`` as the head statistics define it (see app.analysis.head_roles.choice_rows);
    ``keep`` the dtype to keep the full attention in, or None to keep none. ``layers`` > 1: the
    source's heads are that many layers' heads side by side (one pass for all of them), and
    ``received`` is summed per layer. ``values`` [KV, N, d] float32: the pass computes the
    attention itself and its ``output`` (the compiled pass only, from a :class:`FusedSource`
    whose ``lse`` it writes, each row's keys one run). On the CPU the fused kernel's q.k, softmax
    and P @ V cost about what reading its blocks again costs (SmolLM2 at 4096 tokens: 115 ms a
    layer against 130), so a layer whose blocks are read anyway is attended in them."""
    n = spans.allowed.shape[-1]
    device = spans.allowed.device
    bins = _Bins(n, thumb)
    pooled = source.buffers.get("pooled", (heads, thumb, n), spans.allowed).zero_()  # [H, t, N] columns' row-bin maxima
    columns = torch.zeros((heads, n), device=device)  # [H, N] attention each key receives, per head
    stats = _PrefixStats(heads, stats_tokens, causal, device)
    attention = torch.zeros((heads, n, n), dtype=keep, device=device) if keep is not None else None
    output = None
    if attention is None and isinstance(source, FusedSource) and cpu_blocks.available(device):
        output = _compiled_pass(source, spans, bins, stats, columns, pooled, values)
    elif values is not None:
        raise ValueError("only the compiled pass computes attention (models.cpu_blocks.available)")
    else:
        _torch_pass(source, spans, bins, stats, columns, pooled, attention)
    # max over column bins of the row-pooled maps: separable, so equal to a 2-D adaptive max pool
    if cpu_blocks.available(device):
        thumbnails = cpu_blocks.pool_columns(pooled.reshape(-1, n), bins.starts, bins.ends).view(heads, thumb, thumb)
    else:
        thumbnails = F.adaptive_max_pool1d(pooled.reshape(-1, n), thumb).view(heads, thumb, thumb)
    head_stats, key_shares = stats.result()
    received = columns.view(layers, -1, n).sum(dim=1)  # [layers, N]
    return LayerSummary(thumbnails, received, head_stats, key_shares, attention, output)


def prepare_blocked_pass() -> None:
    """Compile (or load from numba's cache) the CPU loop before a capture or a view needs it: 2 s
    the first time on a machine, 0.8 s from the cache (numba and LLVM starting). On the CPU
    whatever device the model runs on: the views read records there (on a GPU server each
    view's first call paid it, ~0.3 s)."""
    if cpu_blocks.available(CPU):
        spans = MaskSpans.of(torch.ones(2, 2, dtype=torch.bool).tril())
        source = FusedSource(torch.ones(1, 2, 1), torch.ones(1, 2, 1), torch.ones(1, 2), 1.0, spans)
        summarize_layer(source, spans, heads=1, thumb=1, stats_tokens=2, causal=True)


def _torch_pass(source, spans, bins, stats, columns, pooled, attention) -> None:
    """The blocks' sums, maxima and statistics in torch operations: any source, any device."""
    prefix = stats.prefix
    for r0, r1, c0, c1 in row_blocks(spans, block_rows(columns.shape[0], columns.shape[1], columns.device)):
        block = source.block(r0, r1, c0, c1)
        block_columns = block.p.sum(dim=1)  # [H, c]
        columns[:, c0:c1] += block_columns
        bins.pool_rows(block.p, r0, c0, pooled)
        if r0 < prefix and c0 < prefix:
            whole = r1 <= prefix and c1 <= prefix
            stats.add(block.prefix(prefix - r0, prefix - c0), r0, c0, block_columns if whole else None)
        if attention is not None:
            attention[:, r0:r1, c0:c1] = block.p


def _compiled_pass(source: FusedSource, spans, bins, stats, columns, pooled, values) -> torch.Tensor | None:
    """The same from q.k blocks on the CPU, each cell's work in one compiled loop (models.cpu_blocks);
    with ``values`` [KV, N, d], each row normalised there, and the attention output returned."""
    normalise = values is not None
    fold = cpu_blocks.LayerFold(source.lse, spans, bins.starts, bins.ends, stats, columns, pooled, normalise)
    heads, n = columns.shape
    if not normalise:
        for r0, r1, c0, c1 in row_blocks(spans, block_rows(heads, n)):
            fold.add(source.scores(r0, r1, c0, c1), r0, c0)  # [H, r, c]
        return None
    d = source.queries.shape[2]
    blocks = list(row_blocks(spans, attend_rows(n)))
    # rows that see no key are in no block: their output is 0
    output = values.new_empty((n, heads, d)) if bool(spans.readable.all()) else values.new_zeros((n, heads, d))
    fold.attend(source.queries, source.keys, values, blocks, output)
    return output


def pooled_maps(
    source: LayerSource, spans: MaskSpans, *, heads: int, thumb: int, weigh: Callable[[Block, int, int], torch.Tensor]
) -> torch.Tensor:
    """[M, t, t] max-pooled pictures of one layer's attention seen through ``weigh(block, c0, c1)``,
    which turns each block into M maps [M, r, c] (a view's colouring: norms, shares, the layer's
    summed map). The same blocks and bins as the capture's thumbnails, so nothing N x N is held."""
    n = spans.allowed.shape[-1]
    bins = _Bins(n, thumb)
    pooled: torch.Tensor | None = None  # [M, t, N]
    for r0, r1, c0, c1 in row_blocks(spans, block_rows(heads, n, spans.allowed.device)):
        maps = weigh(source.block(r0, r1, c0, c1), c0, c1)  # [M, r, c]
        if pooled is None:
            pooled = maps.new_zeros((maps.shape[0], thumb, n))
        bins.pool_rows(maps, r0, c0, pooled)
    if pooled is None:
        return torch.zeros((heads, thumb, thumb), device=spans.allowed.device)
    return F.adaptive_max_pool1d(pooled.reshape(-1, n), thumb).view(-1, thumb, thumb)


def record_sources(
    capture: Capture, layers: Iterable[int], n: int | None = None
) -> Iterator[tuple[LayerSource, MaskSpans]]:
    """(source, spans) of each of ``layers`` of a stored record, over its first ``n`` tokens;
    each distinct mask is read once, however many layers share it."""
    n = capture.n_tokens if n is None else n
    spans: dict[int, MaskSpans] = {}
    for layer in layers:
        index = int(capture.mask_index[layer])
        if index not in spans:
            spans[index] = MaskSpans.of(torch.from_numpy(capture.masks[index][:n, :n]))
        yield record_source(capture, layer, spans[index], n), spans[index]


def record_source(capture: Capture, layer: int, spans: MaskSpans, n: int | None = None) -> LayerSource:
    """Where one layer of a stored record's attention comes from (its first ``n`` tokens): the
    weights it kept, else its q, k and each row's log-sum-exp, on the CPU."""
    n = capture.n_tokens if n is None else n
    if capture.attention is not None:
        return EagerSource(torch.from_numpy(capture.attention[layer, :, :n, :n]))
    # views of float32 records, not copies (a 4096-token rollout copied 0.1 s of them)
    queries = torch.from_numpy(np.asarray(capture.queries[layer, :, :n], np.float32))  # [H, n, d]
    keys = torch.from_numpy(np.asarray(capture.keys[layer][capture.kv_map, :n], np.float32))  # [H, n, d]
    lse = torch.from_numpy(np.asarray(capture.row_lse[layer, :, :n], np.float32))  # [H, n]
    return FusedSource(queries, keys, lse, float(capture.scaling[layer]), spans)


class _PrefixStats:
    """Sums over the analysed prefix's rows of the per-row head statistics; the means are
    app.analysis.head_roles.head_metrics over the [H, P, P] prefix block, computed here in the
    same pass instead of recomputing the prefix later."""

    def __init__(self, heads: int, prefix: int, causal: bool, device):
        self.prefix, self.causal = prefix, causal
        self.sums = torch.zeros((heads, len(HEAD_STATS)), dtype=torch.float64, device=device)
        self.counts = torch.zeros((heads, len(HEAD_STATS)), dtype=torch.float64, device=device)
        self.key_sums = torch.zeros((heads, prefix), dtype=torch.float64, device=device)
        self.rows = torch.zeros(heads, dtype=torch.float64, device=device)

    def add(self, attention: Block, r0: int, c0: int, columns=None) -> None:
        """``attention``: [H, r, w] of prefix rows r0.. over prefix keys c0.. (the keys left of c0
        and right of c0 + w are masked for these rows: they hold zeros); ``columns`` its column
        sums [H, w] when the caller has them."""
        block = attention.p
        rows, width, p = block.shape[1], block.shape[2], self.prefix
        device = block.device
        query = torch.arange(r0, r0 + rows, device=device)  # [r]
        keys = torch.arange(c0, c0 + width, device=device)  # [w]
        allowed_keys = query + 1 if self.causal else torch.full_like(query, p)  # [r]
        row_sums = block.sum(-1)  # [H, r]
        weight = ((row_sums > 0) & (allowed_keys > 1)).float()  # [H, r] the rows head_metrics averages
        entropy = attention.entropy()  # [H, r] nats
        # sum_k p |q - k| = q sum_k p - sum_k p k, plus twice the part where k > q (none if causal)
        distance = query * row_sums - block @ keys.float()  # [H, r]
        if not self.causal and c0 + width - 1 > r0:
            ahead = (keys[None, :] - query[:, None]).clamp(min=0).float()  # [r, w]
            distance += 2 * (block * ahead).sum(-1)
        log_allowed = torch.log(allowed_keys.clamp(min=2).float())  # [r]
        per_row = [entropy, entropy / log_allowed, distance]  # 3 of [H, r]
        valid = [torch.ones_like(query, dtype=torch.bool)] * 3
        for offset in STAT_OFFSETS:
            column = query + offset - c0  # [r] column of key q + offset in this block
            valid.append((query + offset >= 0) & (query + offset < p))  # the key exists in the prefix
            index = column.clamp(0, width - 1)[None, :, None].expand(block.shape[0], -1, 1)  # [H, r, 1]
            inside = (column >= 0) & (column < width)  # else masked for the row: attention 0
            per_row.append(block.gather(2, index)[..., 0] * inside)
        counted = weight[..., None] * torch.stack(valid, dim=-1)[None]  # [H, r, S]
        self.sums += (torch.stack(per_row, dim=-1) * counted).sum(1).double()
        self.counts += counted.sum(1).double()
        self.key_sums[:, c0 : c0 + width] += self._weighted_columns(block, weight, row_sums, columns).double()
        self.rows += weight.sum(1).double()

    @staticmethod
    def _weighted_columns(block, weight, row_sums, columns) -> torch.Tensor:
        """[H, w] sum over the rows head_metrics averages of each key's attention: the block's
        column sums less the few rows it leaves out (a causal prompt's first row sees only
        itself; rows that see nothing add nothing)."""
        if columns is None:
            columns = block.sum(dim=1)
        left_out = (weight == 0) & (row_sums > 0)  # [H, r]
        rows = torch.nonzero(left_out.any(dim=0))[:, 0]
        if not len(rows):
            return columns
        return columns - (block[:, rows] * left_out[:, rows, None]).sum(dim=1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([H, S] means over the choice rows, 0 where no row counts; [H, P] mean key shares)."""
        means = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1), 0.0)
        shares = self.key_sums / self.rows.clamp(min=1)[:, None]
        return means.float(), shares.float()
