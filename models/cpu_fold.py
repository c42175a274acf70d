"""The blocked pass's work per attention cell on the CPU, compiled (numba): one read of each
block, its rows in the cache. Imported only where the CPU path runs (models.cpu_blocks), as
numba and LLVM take a second to start.

Per row of a block of scores q.k: the probabilities exp(score - lse), the column sums, the
thumbnails' row-bin maxima and the prefix's head statistics. A row either reads its log-sum-exp
from the fused kernel (``normalise`` false: the capture recomputes a layer the kernel attended),
or computes it from its own scores and leaves its probabilities in the block, which the caller
then multiplies by the values (:meth:`models.cpu_blocks.LayerFold.attend`: the layer's
attention computed here, once). ``fold_rows`` reads a block of every head, ``fold_head`` one
head's. The exponential is computed inline because numba's ``math.exp`` is not vectorised without
Intel's SVML.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from models.record import EXP_FLOOR

EXP_CEILING = 80.0  # a normalising row's shift guessed too low: 2^n stays a float32, and the row is read again
OVERFLOW_SUM = 1e30  # a normalising row whose exp sum reaches this (an argument near the ceiling) is read again
SHIFT_SAMPLES = 32  # scores of a normalising row read to guess its maximum
LOG2E = 1.4426950408889634
LN2_HIGH = 0.693145751953125  # ln 2 in two parts (Cody and Waite): n * LN2_HIGH is exact in float32
LN2_LOW = 1.4286068203094173e-06


@intrinsic
def _float_bits(typingctx, bits):
    """The float32 whose bits are the int32 ``bits``: 2^n as ``(n + 127) << 23`` in a register
    (a store through an int32 view, as before, cost a store and a load per cell)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(inline="always", fastmath=True)
def _exp(x):
    """exp(x) for float32 x in [EXP_FLOOR, EXP_CEILING]: x = n ln 2 + r, |r| <= ln2 / 2, exp(r)
    by its degree-6 Taylor polynomial, times 2^n built from its bits."""
    n = np.floor(x * np.float32(LOG2E) + np.float32(0.5))
    r = x - n * np.float32(LN2_HIGH) - n * np.float32(LN2_LOW)
    poly = np.float32(1.0 / 120) + r * np.float32(1.0 / 720)  # Horner, from the highest power
    poly = np.float32(1.0 / 24) + r * poly
    poly = np.float32(1.0 / 6) + r * poly
    poly = np.float32(0.5) + r * poly
    poly = np.float32(1.0) + r * poly
    poly = np.float32(1.0) + r * poly
    return poly * _float_bits((np.int32(n) + np.int32(127)) << 23)


@numba.njit(inline="always", fastmath=True)
def _exp_row(scores, shift, p, log_p, keep_log):
    """p[j] = exp(scores[j] - shift), the argument clamped to the exp's range; log_p[j] the
    argument when ``keep_log``. Returns sum p."""
    total = np.float32(0.0)
    for j in range(scores.shape[0]):
        x = min(max(scores[j] - shift, np.float32(EXP_FLOOR)), np.float32(EXP_CEILING))
        if keep_log:
            log_p[j] = x
        e = _exp(x)
        p[j] = e
        total += e
    return total


@numba.njit(inline="always", fastmath=True)
def _fold_row(  # noqa: PLR0912, PLR0915 - the per-row body of both loops
    row_scores,  # [c] float32 scores of ``row`` over keys c0..; when normalising, left as its probabilities
    h,
    row,
    c0,
    p,  # [>= c] float32 scratch
    log_p,  # [>= c] float32 scratch
    fold,  # models.cpu_blocks.LayerFold.arguments, unpacked below
):
    (
        lse,  # [H, N] float32, read; written when normalising
        normalise,  # whether the row's log-sum-exp is computed here (from its scores) or read
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
    ) = fold
    width = row_scores.shape[0]
    a, b = max(first[row] - c0, 0), min(last[row] - c0, width)
    if b <= a:  # the row sees none of these keys
        if normalise:
            row_scores[:] = np.float32(0.0)
            lse[h, row] = np.float32(0.0)
        return
    # loops over views from 0: numba then knows no index is negative, and vectorises
    m, seen_scores, keep_log = b - a, row_scores[a:b], row < prefix
    if normalise:
        shift = seen_scores[0]  # a guess of the row's maximum from a few of its scores
        for j in range(0, m, max(1, m // SHIFT_SAMPLES)):
            shift = max(shift, seen_scores[j])
        total = _exp_row(seen_scores, shift, p, log_p, keep_log)
        if not total < np.float32(OVERFLOW_SUM):  # the guess was far below the maximum
            for j in range(m):
                shift = max(shift, seen_scores[j])
            total = _exp_row(seen_scores, shift, p, log_p, keep_log)
        log_total = np.float32(math.log(total))
        lse[h, row] = shift + log_total
        scale = np.float32(1.0) / total
    else:
        _exp_row(seen_scores, lse[h, row], p, log_p, keep_log)
        log_total, scale = np.float32(0.0), np.float32(1.0)
    if allowed.shape[0] > 0:
        row_allowed = allowed[row, c0 + a : c0 + b]
        for j in range(m):
            p[j] = p[j] if row_allowed[j] else np.float32(0.0)
    # the probabilities go where the scores were (normalising: P @ V reads them there), else to p
    out = seen_scores if normalise else p[:m]
    row_columns = columns[h, c0 + a : c0 + b]
    t0, t1 = bins[0, row], bins[1, row]
    into = pooled[h, t0, c0 + a : c0 + b]  # the row's first thumbnail bin, read in the same loops
    keys = row + 1 if causal else prefix  # the keys head_metrics says this row may read
    counted = np.float32(1.0) if keys > 1 else np.float32(0.0)  # row 0 of a causal prompt adds no key share
    # a prefix row's keys in the prefix (all of a causal row's): their statistics in the same loop
    stats_end = max(0, min(b, prefix - c0) - a) if keep_log else 0
    row_keys = key_sums[h, c0 + a : c0 + a + stats_end]
    gap0 = row - (c0 + a)  # row - key at j = 0
    row_sum, weighted_log, distance = 0.0, 0.0, 0.0
    for j in range(stats_end):
        q = p[j] * scale
        out[j] = q
        row_columns[j] += q
        into[j] = max(into[j], q)
        row_keys[j] += q * counted
        row_sum += q
        weighted_log += q * log_p[j]
        distance += q * ((gap0 - j) if causal else abs(gap0 - j))
    rest_p, rest_out = p[stats_end:m], out[stats_end:]  # the rest of the row's keys: no statistics
    rest_columns, rest_into = row_columns[stats_end:], into[stats_end:]
    for j in range(m - stats_end):
        q = rest_p[j] * scale
        rest_out[j] = q
        rest_columns[j] += q
        rest_into[j] = max(rest_into[j], q)
    for t in range(t0 + 1, t1):  # a row that two thumbnail bins share
        into = pooled[h, t, c0 + a : c0 + b]
        for j in range(m):
            into[j] = max(into[j], out[j])
    _zero_outside(row_scores, a, b, normalise)
    if not keep_log:
        return
    entropy = log_total * row_sum - weighted_log  # -sum q (log_p - log_total)
    if not (row_sum > 0 and keys > 1):
        return  # a row head_metrics leaves out of its means (it added no key shares: q is 0, or keys is 1)
    values = (entropy, entropy / math.log(max(keys, 2)), distance)
    for s in range(3):
        sums[h, s] += values[s]
        counts[h, s] += 1.0
    for s in range(offsets.shape[0]):
        key = row + offsets[s]
        if 0 <= key < prefix:
            sums[h, 3 + s] += out[key - c0 - a] if 0 <= key - c0 - a < stats_end else 0.0
            counts[h, 3 + s] += 1.0
    weighted_rows[h] += 1.0


@numba.njit(inline="always")
def _zero_outside(row_scores, a, b, normalise):
    """A normalised row is its probabilities: 0 where it may not look (left of a, from b on)."""
    if normalise:
        row_scores[:a] = np.float32(0.0)
        row_scores[b:] = np.float32(0.0)


@numba.njit(nogil=True, fastmath=True, cache=True)
def fold_head(scores, fold, r0, c0, h):
    """Fold the scores [r, c] of head ``h`` (rows r0.., keys c0..) into ``fold``
    (models.cpu_blocks.LayerFold.arguments)."""
    p = np.empty(scores.shape[1], np.float32)
    log_p = np.empty(scores.shape[1], np.float32)
    for i in range(scores.shape[0]):
        _fold_row(scores[i], h, r0 + i, c0, p, log_p, fold)


@numba.njit(nogil=True, fastmath=True, cache=True)
def fold_rows(scores, fold, r0, c0, h0, h1):
    """Fold a block of scores [H, r, c] of heads h0..h1 into ``fold``, head by head."""
    for h in range(h0, h1):
        fold_head(scores[h], fold, r0, c0, h)


@numba.njit(nogil=True, fastmath=True, cache=True)
def pool_columns(pooled, starts, ends, out):
    """``out[r, j]`` = the maximum of ``pooled[r, starts[j]:ends[j]]`` for each row of ``pooled``
    [R, N]: the column half of the thumbnails' adaptive max pooling, whose rows the fold pooled."""
    for r in range(pooled.shape[0]):
        row = pooled[r]
        for j in range(starts.shape[0]):
            top, cells = np.float32(-np.inf), row[starts[j] : ends[j]]
            for c in range(cells.shape[0]):
                top = cells[c] if cells[c] > top else top  # a select, which LLVM vectorises (max() it did not)
            out[r, j] = top
