"""One layer's attention read in row blocks: everything the first views need, never all N x N.

The recorder hands :func:`summarize_layer` a way to produce any block of attention probabilities
(from q, k and each row's log-sum-exp after the fused kernel, or a slice of the weights an eager
layer returned) and the layer's mask. One pass over row blocks, each only as wide as the keys its
rows may see (half of a causal matrix is never computed), gathers the thumbnails, the attention
each key receives, the head statistics of the analysed prefix and, only when asked, the full
attention. A block holds at most ``BLOCK_BYTES`` of float32, so memory stays bounded at any
length. Torch, on the model's device: on a GPU none of it leaves the device until the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from models.record import HEAD_STATS, STAT_OFFSETS

BLOCK_BYTES = 32 * 1024 * 1024  # bytes of float32 probabilities in one row block, all heads

Probabilities = Callable[[int, int, int, int], torch.Tensor]  # (r0, r1, c0, c1) -> [H, r1 - r0, c1 - c0] float32


@dataclass
class LayerSummary:
    """What one layer leaves in the record, still as tensors on the model's device."""

    thumbnails: torch.Tensor  # [H, t, t] max-pooled attention
    received: torch.Tensor  # [N] attention each key receives, summed over heads and queries
    head_stats: torch.Tensor  # [H, S] the HEAD_STATS of the analysed prefix
    key_shares: torch.Tensor  # [H, P] mean attention each prefix key gets from the prefix's rows
    attention: torch.Tensor | None  # [H, N, N] only when the record keeps it


def block_rows(heads: int, n_tokens: int) -> int:
    """Query rows per block so one block of float32 probabilities fits ``BLOCK_BYTES``."""
    return max(1, min(n_tokens, BLOCK_BYTES // (4 * heads * n_tokens)))


def visible_span(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] first, [N] one past the last) key each query row may see; (0, 0) for a row that
    sees none. Lets a block skip the keys no row of it may read."""
    n_keys = allowed.shape[-1]
    seen = allowed.any(dim=-1)
    first = allowed.to(torch.uint8).argmax(dim=-1)
    last = n_keys - allowed.flip(-1).to(torch.uint8).argmax(dim=-1)
    return torch.where(seen, first, 0), torch.where(seen, last, 0)


def fused_probabilities(
    queries: torch.Tensor, keys: torch.Tensor, lse: torch.Tensor, scaling: float, allowed: torch.Tensor
) -> Probabilities:
    """Blocks of softmax(q.k * scaling + mask) as exp(score - row log-sum-exp): each block costs
    its own r x c x d product, never the rest of its rows. ``queries`` and ``keys`` are [H, N, d]
    float32 (grouped keys already repeated), ``lse`` [H, N] float32, ``allowed`` [N, N] bool."""

    def block(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        scores = torch.matmul(queries[:, r0:r1], keys[:, c0:c1].transpose(1, 2))  # [H, r, c]
        scores.mul_(scaling).sub_(lse[:, r0:r1, None])
        return scores.masked_fill_(~allowed[r0:r1, c0:c1], float("-inf")).exp_()

    return block


def summarize_layer(
    probabilities: Probabilities,
    allowed: torch.Tensor,
    *,
    heads: int,
    thumb: int,
    stats_tokens: int,
    causal: bool,
    keep: torch.dtype | None = None,
) -> LayerSummary:
    """Read one layer's attention block by block. ``allowed`` is its [N, N] bool mask;
    ``stats_tokens`` the analysed prefix P; ``causal`` as the head statistics define it (see
    app.analysis.head_roles.choice_rows); ``keep`` the dtype to keep the full attention in, or
    None to keep none."""
    n = allowed.shape[-1]
    device = allowed.device
    first, last = visible_span(allowed)
    pooled = torch.zeros((heads, n, thumb), device=device)  # [H, N, t] each row max-pooled over key bins
    received = torch.zeros(n, device=device)
    stats = _PrefixStats(heads, stats_tokens, causal, device)
    attention = torch.zeros((heads, n, n), dtype=keep, device=device) if keep is not None else None
    step = block_rows(heads, n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        c0, c1 = int(first[r0:r1].min()), int(last[r0:r1].max())
        if c1 <= c0:
            continue  # no row of this block may attend anywhere (another segment's rows)
        block = probabilities(r0, r1, c0, c1)  # [H, r, c]
        received[c0:c1] += block.sum(dim=(0, 1))
        wide = block if (c0, c1) == (0, n) else F.pad(block, (c0, n - c1))  # [H, r, N]
        pooled[:, r0:r1] = F.adaptive_max_pool1d(wide.reshape(-1, n), thumb).view(heads, r1 - r0, thumb)
        if r0 < stats_tokens and c0 < stats_tokens:
            stats.add(block[:, : stats_tokens - r0, : stats_tokens - c0], r0, c0)
        if attention is not None:
            attention[:, r0:r1, c0:c1] = block
    # max over row bins of the row-pooled maps: separable, so equal to a 2-D adaptive max pool
    thumbnails = F.adaptive_max_pool1d(pooled.transpose(1, 2).reshape(-1, n), thumb).view(heads, thumb, thumb)
    head_stats, key_shares = stats.result()
    return LayerSummary(thumbnails.transpose(1, 2), received, head_stats, key_shares, attention)


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

    def add(self, block: torch.Tensor, r0: int, c0: int) -> None:
        """``block``: [H, r, w] probabilities of prefix rows r0.. over prefix keys c0.. (the keys
        left of c0 and right of c0 + w are masked for these rows: they hold zeros)."""
        rows, width, p = block.shape[1], block.shape[2], self.prefix
        device = block.device
        query = torch.arange(r0, r0 + rows, device=device)  # [r]
        keys = torch.arange(c0, c0 + width, device=device)  # [w]
        allowed_keys = query + 1 if self.causal else torch.full_like(query, p)  # [r]
        row_sums = block.sum(-1)  # [H, r]
        weight = ((row_sums > 0) & (allowed_keys > 1)).float()  # [H, r] the rows head_metrics averages
        entropy = -torch.xlogy(block, block).sum(-1)  # [H, r] nats
        # sum_k p |q - k| = q sum_k p - sum_k p k, plus twice the part where k > q (none if causal)
        distance = query * row_sums - block @ keys.float()  # [H, r]
        if c0 + width - 1 > r0:
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
        self.key_sums[:, c0 : c0 + width] += torch.bmm(weight[:, None, :], block)[:, 0].double()
        self.rows += weight.sum(1).double()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([H, S] means over the choice rows, 0 where no row counts; [H, P] mean key shares)."""
        means = torch.where(self.counts > 0, self.sums / self.counts.clamp(min=1), 0.0)
        shares = self.key_sums / self.rows.clamp(min=1)[:, None]
        return means.float(), shares.float()
