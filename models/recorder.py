"""The recording hook: what one forward pass leaves behind, as numpy arrays on the CPU.

The capture mechanism is a registered transformers attention implementation. Every model whose
attention modules dispatch through ``ALL_ATTENTION_FUNCTIONS`` (BERT, GPT-2, Llama, Mistral,
Qwen, Gemma, T5-style encoders in transformers 5) hands it the query and key states exactly as it
uses them: after rotary embedding, before grouped-query expansion, with its own mask and scaling.

While a :func:`recording` context is active in this thread, a layer whose attention is
softmax(q.k * scaling + mask) runs through PyTorch's fused scaled-dot-product kernel, which also
returns each row's log-sum-exp (:mod:`models.kernels`); the :class:`Recorder` keeps q, k and that
log-sum-exp and reads everything else in bounded row blocks (:mod:`models.blocks`). On the CPU, a
prompt longer than BATCH_TOKENS with a causal mask or none skips the kernel: the blocks that read
the layer compute its attention too (:meth:`Recorder.attend`), the same softmax(q.k) in float32. A layer whose
attention is something else (soft-capped scores, T5's position bias, learned sinks, ALiBi: named
by its arguments, or caught by a sampled check against the model's own eager attention) runs the
model's eager attention and the record keeps its weights. Without a recorder (a plain forward
pass, ``output_attentions``), every layer runs the model's eager attention.

The drivers that decide what a forward pass reads, :mod:`models.capture` (one sequence) and
:mod:`models.seq2seq` (encoder + decoder), share everything through this module; only capture
knows seq2seq (it hands encoder-decoder models on), so the two import no private names and form
no cycle.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import mmap
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
from transformers.utils import output_capturing

from models import budget, contributions, cpu_blocks, editing, kernels
from models.blocks import SCRATCH, EagerSource, FusedSource, MaskSpans, block_bytes, grouped_keys, summarize_layer
from models.errors import TooManyTokensError, UnsupportedModelError
from models.record import STATS_TOKENS, Capture

ATTENTION_IMPLEMENTATION = "atlas_capture"
OVERVIEW_BUDGET_BYTES = 192 * 1024  # bytes of uint8 thumbnails for the whole model view
THUMBNAIL_MAX_SIDE = budget.THUMBNAIL_MAX_SIDE  # pixels; the model view never needs more per head
THUMBNAIL_MIN_SIDE = 8
ATTENTION_KEEP_BYTES = 0  # bytes of full attention a record keeps; none: any block is recomputed
BATCH_TOKENS = 128  # prompts up to this long are summarised once for all layers, after the pass (Recorder.finish)
# 0: every fused layer runs the kernel and is read again (Recorder.attends_in_blocks; a check, a comparison)
ATTEND_IN_BLOCKS = os.environ.get("ATLAS_ATTEND_IN_BLOCKS", "1") != "0"
SCORE_CHECK_ROWS = 128  # query rows sampled by the score check
SCORE_CHECK_TOLERANCE = 1e-3  # max |softmax(scores) - weights| before a layer must run eager
EAGER_ARGUMENTS = ("position_bias", "softcap", "sinks", "s_aux", "alibi")  # attention that is not softmax(q.k)

LayerDone = Callable[[int, int, np.ndarray], None]  # (layer index, layers in all, its [H, t, t] thumbnails)
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}  # storage precision -> torch dtype
NUMPY_DTYPES = {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32)}  # torch dtypes numpy has
_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("atlas_recorder", default=None)


def thumbnail_side(n_layers: int, n_heads: int, n_tokens: int) -> int:
    """Side of each head's thumbnail so the whole overview stays within its byte budget."""
    side = int((OVERVIEW_BUDGET_BYTES / max(1, n_layers * n_heads)) ** 0.5)
    return max(1, min(n_tokens, THUMBNAIL_MAX_SIDE, max(THUMBNAIL_MIN_SIDE, side)))


def _generic_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain attention for modules whose modeling file has no ``eager_attention_forward``."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _eager_for(module):
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", _generic_eager)


def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: the fused kernel where it computes the model's own
    attention and a recorder listens, else the model's own eager math; recording either way, and
    handing the heads' output to the active intervention (:mod:`models.editing`) last."""
    recorder = _ACTIVE.get()
    scaling = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    if recorder is not None and recorder.fused_is_exact(module, query, key, value, attention_mask, scaling, kwargs):
        mask = recorder.kernel_mask(attention_mask)
        if recorder.attends_in_blocks(query, key, value, mask):
            output = recorder.attend(module, query, key, value, attention_mask, scaling)
        else:
            output, lse = kernels.attention_with_lse(query, key, value, mask, scaling)
            recorder.record(module, query, key, value, attention_mask, scaling, lse=lse)
        return editing.edited(module, output), None
    output, weights = _eager_for(module)(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    if recorder is not None:
        recorder.record(module, query, key, value, attention_mask, scaling, weights=weights)
    return editing.edited(module, output), weights


def register_capture_attention() -> None:
    """Make ``attn_implementation="atlas_capture"`` known to transformers (idempotent)."""
    if ATTENTION_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ATTENTION_IMPLEMENTATION, capture_attention)
        AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)


@dataclass
class LayerStack:
    """The record's per-layer arrays, each written into one [L, ...] array as its layer finishes.
    Stacking them at the end held every layer twice, and the model's own q and k tensors stayed
    alive until then: ~0.4 GB more at the peak of a 4096-token SmolLM2 capture."""

    expected: int  # layers the pass should record; more (never seen so far) grow the arrays
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    written: dict[str, set[int]] = field(default_factory=dict)  # the layers each array holds

    def put(self, name: str, index: int, value: np.ndarray) -> None:
        """Store ``value`` as layer ``index`` of ``name``."""
        self._room(name, index, value.shape, value.dtype)[index] = value
        self.written[name].add(index)

    def put_many(self, name: str, indices: list[int], values: np.ndarray) -> None:
        """Store ``values[i]`` as layer ``indices[i]`` of ``name``: one copy for a run of layers."""
        array = self._room(name, max(indices), values.shape[1:], values.dtype)
        array[_run(indices) or indices] = values
        self.written[name].update(indices)

    def put_tensors(self, name: str, indices: list[int], tensors: list[torch.Tensor]) -> torch.Tensor:
        """Store the layers' tensors as layers ``indices`` of ``name`` (as :func:`_stored` keeps
        them) and return them stacked [G, ...] on their device. CPU tensors of a run of layers
        are stacked straight into the stored array: one copy, not two."""
        run, first = _run(indices), tensors[0]
        if run is None or first.device.type != "cpu" or first.dtype not in NUMPY_DTYPES:
            stacked = torch.stack(tensors)
            self.put_many(name, indices, _stored(stacked))
            return stacked
        array = self._room(name, run.stop - 1, tuple(first.shape), NUMPY_DTYPES[first.dtype])
        stacked = torch.stack(tensors, out=torch.from_numpy(array[run]))
        self.written[name].update(indices)
        return stacked

    def _room(self, name: str, last: int, shape: tuple[int, ...], dtype) -> np.ndarray:
        """The array of ``name``, made (or grown) to hold layers up to ``last`` of ``shape``."""
        array = self.arrays.get(name)
        if array is None:
            array = populated_empty((max(self.expected, last + 1), *shape), dtype)
        elif last >= len(array):
            array = np.concatenate([array, np.empty((last + 1 - len(array), *shape), array.dtype)])
        self.arrays[name] = array
        self.written.setdefault(name, set())
        return array

    def take(self, name: str, count: int, dtype=None) -> np.ndarray:
        """[count, ...] the first ``count`` layers of ``name`` (a view when the pass recorded the
        expected layers), in ``dtype`` if given."""
        if self.written.get(name) != set(range(count)):
            raise ValueError(f"the pass did not record '{name}' for each of its {count} layers")
        array = self.arrays[name][:count]
        if count < len(self.arrays[name]):
            array = array.copy()  # not a view that keeps the unused layers' memory alive
        return array if dtype is None else array.astype(dtype, copy=False)


def _run(indices: list[int]) -> slice | None:
    """The slice of ``indices`` when they are consecutive layers in order, else None."""
    run = slice(indices[0], indices[0] + len(indices))
    return run if list(range(run.start, run.stop)) == indices else None


POPULATE_MIN_BYTES = 8 * 1024 * 1024  # from here up, glibc maps fresh memory anyway (app.cache.map_large_blocks)


def populated_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty`` whose pages the kernel maps in one call (Linux ``MAP_POPULATE``), for the
    record's large arrays. Each capture's arrays are fresh memory, and faulting it in page by
    page as the layers were written cost 0.6 s for the 283 MiB of a 4096-token SmolLM2 record's
    queries (1.0 s of the capture with the keys and the rest); populated at once, 0.09 s. The
    array keeps its mapping alive; it is unmapped when the last view of it goes."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < POPULATE_MIN_BYTES or not hasattr(mmap, "MAP_POPULATE"):
        return np.empty(shape, dtype)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype).reshape(shape)


# Devices whose captures compute their output norms and Grams after the first view, from the kept
# value vectors: on the CPU they cost a fifth of a short prompt's pass (SmolLM2 at 128 tokens: 1.57x
# the bare pass with them, 1.35x without); a GPU computes them in the pass in microseconds.
DEFERRED_OUTPUT_DEVICES = ("cpu",)


@dataclass
class _Mask:
    """One distinct mask of the pass: its place in the record and what its booleans say, on the device."""

    index: int
    spans: MaskSpans


@dataclass(frozen=True)
class _Waiting:
    """A short prompt's fused layer as the model handed it over, read with the others by
    :meth:`Recorder.finish`. The model's own tensors are kept as they are (views; 9 MB of
    SmolLM2 at 128 tokens): per layer, copying and converting them cost a tenth of the bare pass."""

    index: int
    module: torch.nn.Module
    query: torch.Tensor  # [H, N, d]
    key: torch.Tensor  # [KV, N, d]
    value: torch.Tensor  # [KV, N, d]
    lse: torch.Tensor  # [H, N] the kernel's
    scaling: float
    mask: _Mask


@dataclass
class Recorder:
    """Collects per-layer arrays during one forward pass, on the CPU; kept attention in ``dtype``."""

    n_tokens: int
    thumb: int
    keep_attention: bool
    dtype: np.dtype
    names: dict[int, str]
    on_layer: Callable[[int, np.ndarray], None] | None = None  # (layer index, its thumbnails)
    causal: bool = False  # whether the head statistics treat rows as causal (the model is a causal LM)
    scores_exact: bool = True
    eager_reasons: list[str] = field(default_factory=list)  # why layers ran eager, once each
    layers: list[dict] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    _known_masks: dict[int, tuple[torch.Tensor | None, _Mask]] = field(default_factory=dict)
    _spans: list[MaskSpans] = field(default_factory=list)  # MaskSpans of each distinct mask, by index
    _kernel_masks: dict[int, tuple[torch.Tensor | None, kernels.KernelMask]] = field(default_factory=dict)
    _verdicts: dict[tuple, str] = field(default_factory=dict)  # layer signature -> "" (fused) or why eager
    parents: dict[int, torch.nn.Module] = field(default_factory=dict)  # id(module) -> the module holding it
    norms_exact: bool = True  # False when a layer's output projection was not found (||v||, W_O = I then)
    _projections: dict[int, torch.Tensor | None] = field(default_factory=dict)  # id(module) -> [H, d, D] or None
    defer_outputs: bool = False  # output norms and Grams computed after the first view (a pass on the CPU)
    _values: dict[int, contributions.LayerValues] = field(default_factory=dict)  # by layer, when deferred
    stack: LayerStack = field(default_factory=lambda: LayerStack(0))  # new_recorder sizes it
    _waiting: list[_Waiting] = field(default_factory=list)  # a short prompt's fused layers, left for finish()

    def _outputs(self, index: int, module, value: torch.Tensor, groups: int) -> dict[str, np.ndarray]:
        """Layer ``index``'s ``output_norms`` [H, N] ||f_h(x_j)|| and ``output_grams`` [N, H, H]
        f_h(x_j) . f_g(x_j) (models.contributions) from its values [KV, N, d], or nothing when the
        record computes them after the first view (``defer_outputs``: the values are kept for
        that). ||v_j|| and diagonal Grams where the architecture hides its output projection
        (info says so)."""
        heads = value.shape[0] * groups
        if id(module) not in self._projections:
            weight = contributions.output_weight(module, self.parents.get(id(module)))
            fits = weight is not None and weight.shape[0] == heads * value.shape[-1]
            self._projections[id(module)] = contributions.head_projections(weight, heads) if fits else None
        projections = self._projections[id(module)]
        self.norms_exact &= projections is not None
        if self.defer_outputs:
            self._values[index] = (value.float(), projections, groups)
            return {}
        grams = contributions.layer_grams(value, projections, groups)
        return {"output_norms": contributions.norms_of(grams).cpu().numpy(), "output_grams": grams.cpu().numpy()}

    def output_arrays(self, count: int) -> dict:
        """The record's ``output_norms`` and ``output_grams`` of its ``count`` layers: deferred
        (computed from the kept value vectors when first used) or as the layers stored them."""
        if not self.defer_outputs:
            return {name: self.stack.take(name, count, np.float32) for name in ("output_norms", "output_grams")}
        if sorted(self._values) != list(range(count)):
            raise ValueError(f"the pass kept value vectors for {len(self._values)} of its {count} layers")
        norms, grams = contributions.deferred_outputs([self._values[index] for index in range(count)])
        return {"output_norms": norms, "output_grams": grams}

    def fused_is_exact(self, module, query, key, value, attention_mask, scaling, kwargs) -> bool:
        """Whether the fused kernel computes this layer's attention: never when its arguments name
        something softmax(q.k * scaling + mask) lacks; else a sample of rows of the first layer of
        each kind (module class, self- or cross-attention) is checked against the model's eager
        attention, and the verdict holds for the pass."""
        if query.shape[0] != 1 or not kernels.supported(query, key, value):
            return False
        named = [name for name in EAGER_ARGUMENTS if kwargs.get(name) is not None or _has_tensor(module, name)]
        signature = (type(module), query.shape[-2] == key.shape[-2], tuple(named))
        if signature not in self._verdicts:
            verdict = f"its attention takes {', '.join(named)}" if named else ""
            if not verdict and not self._sample_matches(module, query, key, value, attention_mask, scaling, kwargs):
                verdict = "softmax(q.k * scaling + mask) does not reproduce its attention"
            self._verdicts[signature] = verdict
            if verdict:
                self.scores_exact = False
                self.keep_attention = True
                self.eager_reasons.append(f"{type(module).__name__}: {verdict}")
        return not self._verdicts[signature]

    def _sample_matches(self, module, query, key, value, attention_mask, scaling, kwargs) -> bool:
        """Run the model's eager attention on a sample of query rows and compare its weights with
        softmax(q.k * scaling + mask) on the same rows (a long prompt's check costs little).

        Both run in float32 on the same q and k: in half precision the eager weights alone are off
        by up to ~5e-3 (minilm's scores on a GPU), which would send every layer of every model the
        eager way, while what the check looks for (soft-capping, a bias, learned sinks) changes the
        weights far more than float32 rounding."""
        rows = torch.linspace(0, query.shape[-2] - 1, min(SCORE_CHECK_ROWS, query.shape[-2])).long()
        mask = attention_mask
        if mask is not None and mask.shape[-2] == query.shape[-2]:
            mask = mask[..., rows.to(mask.device), :]
        if mask is not None and mask.is_floating_point():
            mask = mask.float()
        sample = (query[:, :, rows].float(), key.float(), value.float())
        _, weights = _eager_for(module)(module, *sample, mask, scaling=scaling, **kwargs)
        if weights is None:
            return False
        groups = query.shape[1] // key.shape[1]
        scores = query[0][:, rows].float() @ key[0].float().repeat_interleave(groups, 0).transpose(1, 2) * scaling
        if mask is not None:
            mask = mask[0, 0, :, : scores.shape[-1]]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        readable = torch.isfinite(scores).any(dim=-1, keepdim=True)  # rows a query may read at all
        probabilities = torch.softmax(scores.masked_fill(~readable, 0.0), dim=-1) * readable
        return bool((probabilities - weights[0].float()).abs().max() <= SCORE_CHECK_TOLERANCE)

    def kernel_mask(self, attention_mask) -> kernels.KernelMask:
        """How the kernel reads this mask: none, causal (blocks above the diagonal skipped) or
        the model's additive mask; read once per mask tensor, which the layers of a pass share."""
        known = self._kernel_masks.get(id(attention_mask))
        if known is None or known[0] is not attention_mask:
            allowed = None if attention_mask is None else allowed_positions(attention_mask[0, 0])
            known = (attention_mask, kernels.kernel_mask(attention_mask, allowed))
            self._kernel_masks[id(attention_mask)] = known
        return known[1]

    def record(self, module, query, key, value, attention_mask, scaling: float, weights=None, lse=None) -> None:
        """Record one layer from the eager ``weights`` [1, H, N, N] or the fused kernel's
        ``lse`` [1, H, N] (one of the two). A short prompt's fused layers wait for
        :meth:`finish`, which reads them all at once."""
        index, mask, groups = self._new_layer(module, query, key, attention_mask, scaling)
        if lse is not None and not self.keep_attention and self.n_tokens <= BATCH_TOKENS:
            self._waiting.append(_Waiting(index, module, query[0], key[0], value[0], lse[0], scaling, mask))
            return
        arrays = self._layer_arrays(index, module, query, key, value, groups)
        with SCRATCH.lend() as buffers:
            if lse is None:
                source = EagerSource(weights[0], buffers)  # [H, N, N]
                keys = key[0].float().repeat_interleave(groups, 0)  # [H, N, d]
                row_lse = _row_logsumexp(query[0].float(), keys, weights[0].float(), scaling)
            else:
                # a row that reads nothing (another segment's rows in an encoder-decoder record) stores 0
                row_lse = torch.where(mask.spans.readable, lse[0].float(), 0.0)  # [H, N]
                keys = grouped_keys(key[0], groups, scaling, buffers)  # [H, N, d], scaled
                source = FusedSource(query[0].float(), keys, row_lse, 1.0, mask.spans, buffers)
            arrays["row_lse"] = row_lse.cpu().numpy()  # [H, N]
            self._store(index, arrays)
            self._summarize([index], source, mask)

    def attends_in_blocks(self, query, key, value, mask: kernels.KernelMask) -> bool:
        """Whether a fused layer's attention is computed in the blocks that read it
        (blocks.summarize_layer with values), not by the kernel first: on the CPU, in float32, past
        BATCH_TOKENS (shorter prompts are read after the pass, all layers at once), nothing
        kept, a mask whose rows each see one run of keys (causal or none), and queries and keys
        over the record's whole token axis (an encoder-decoder record places each segment's
        layer on that axis first: models.seq2seq, through :meth:`record`)."""
        return (
            ATTEND_IN_BLOCKS
            and mask.additive is None
            and not self.keep_attention
            and self.n_tokens > BATCH_TOKENS
            and query.shape[-2] == key.shape[-2] == self.n_tokens
            and all(states.dtype == torch.float32 for states in (query, key, value))
            and cpu_blocks.available(query.device)
        )

    def attend(self, module, query, key, value, attention_mask, scaling: float) -> torch.Tensor:
        """Record one fused layer (see :meth:`attends_in_blocks`) and return its attention output
        [1, N, H, d], computed in the same blocks as its summary: each block's q.k once, not
        once by the kernel and again by the summary."""
        index, mask, groups = self._new_layer(module, query, key, attention_mask, scaling)
        arrays = self._layer_arrays(index, module, query, key, value, groups)
        lse = torch.zeros(query.shape[1], query.shape[2])  # [H, N], written by the pass
        with SCRATCH.lend() as buffers:
            keys = grouped_keys(key[0], groups, scaling, buffers)  # [H, N, d], scaled
            source = FusedSource(query[0], keys, lse, 1.0, mask.spans, buffers)
            self._store(index, arrays)
            output = self._summarize([index], source, mask, value[0])
        self.stack.put("row_lse", index, lse.numpy())
        return output.unsqueeze(0)

    def _new_layer(self, module, query, key, attention_mask, scaling: float) -> tuple[int, _Mask, int]:
        """(index, mask, query heads per key head) of a layer the pass now records."""
        if query.shape[0] != 1 or query.shape[-2] != key.shape[-2]:
            raise UnsupportedModelError(
                f"{type(module).__name__}: only self-attention over one sequence can be captured "
                f"(got queries {tuple(query.shape)} and keys {tuple(key.shape)})"
            )
        mask = self._mask(attention_mask, query.device)
        groups = query.shape[1] // key.shape[1]
        index = len(self.layers)
        name = self.names.get(id(module), type(module).__name__)
        self.layers.append(
            {"name": name, "heads": query.shape[1], "scaling": scaling, "mask": mask.index, "groups": groups}
        )
        return index, mask, groups

    def _layer_arrays(self, index: int, module, query, key, value, groups: int) -> dict[str, np.ndarray]:
        """What a layer read on its own (not with the pass's others) stores besides its summary."""
        shrink_hidden_states()
        return {
            "queries": _stored(query[0]),  # [H, N, d]
            "keys": _stored(key[0]),  # [KV, N, d]
            **self._outputs(index, module, value[0], groups),  # output_norms [H, N], output_grams [N, H, H]
        }

    def _store(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            self.stack.put(name, index, array)

    def finish(self) -> None:
        """Read the layers a short prompt's pass left waiting: the layers that share a mask (and
        shapes and scaling) stacked in one copy each and summarised in one blocked pass, their
        heads side by side. Up to BATCH_TOKENS, reading layer by layer costs mostly the
        interpreter's time per torch operation (SmolLM2 at 128 tokens: 70 ms layer by layer, 35
        ms in one pass). Their layers are not announced (``on_layer``): the overview that
        carries them follows at once, and a pass that ran past app.stream.LIVE_AFTER_SECONDS
        had sent all 30 just before it, which the page then drew one by one (0.3 s more to the
        first view at 128 tokens). Called by :func:`assemble`; a second call does nothing."""
        waiting, self._waiting = self._waiting, []
        alike: dict[tuple, list[_Waiting]] = {}
        for layer in waiting:
            kind = (layer.mask.index, tuple(layer.query.shape), tuple(layer.key.shape), layer.scaling)
            alike.setdefault(kind, []).append(layer)
        with torch.inference_mode():  # after the pass: W_O^h are parameters
            for group in alike.values():
                self._read_together(group)

    def _read_together(self, group: list[_Waiting]) -> None:
        """Store and summarise waiting layers of one kind. The summary's keys are repeated for
        their query heads and scaled in one product, so its queries are the stored ones."""
        indices, first = [layer.index for layer in group], group[0]
        queries = self.stack.put_tensors("queries", indices, [layer.query for layer in group])  # [G, H, N, d]
        keys = self.stack.put_tensors("keys", indices, [layer.key for layer in group])  # [G, KV, N, d]
        lse = torch.stack([layer.lse for layer in group]).float()  # [G, H, N]
        row_lse = torch.where(first.mask.spans.readable, lse, 0.0)  # a row that reads nothing stores 0
        self.stack.put_many("row_lse", indices, row_lse.cpu().numpy())
        _, kv, n, d = keys.shape
        groups = queries.shape[1] // kv
        for layer in group:
            for name, array in self._outputs(layer.index, layer.module, layer.value, groups).items():
                self.stack.put(name, layer.index, array)
        with SCRATCH.lend() as buffers:
            scaled_keys = grouped_keys(keys, groups, first.scaling, buffers).view(-1, n, d)  # [G * H, N, d]
            queries = queries.float().view(-1, n, d)  # [G * H, N, d], the stored array itself on the CPU
            source = FusedSource(queries, scaled_keys, row_lse.view(-1, n), 1.0, first.mask.spans, buffers)
            self._summarize(indices, source, first.mask, announce=False)

    def _summarize(
        self, indices: list[int], source, mask: _Mask, values: torch.Tensor | None = None, announce: bool = True
    ) -> torch.Tensor | None:
        """Read the attention of layers ``indices`` (their heads side by side in ``source``) and
        record what the first views need of each; ``values``: the pass computes the attention,
        and its output is returned (summarize_layer); ``announce``: tell ``on_layer`` of each."""
        heads, count = self.layers[indices[0]]["heads"], len(indices)
        summary = summarize_layer(
            source,
            mask.spans,
            heads=heads * count,
            thumb=self.thumb,
            stats_tokens=min(self.n_tokens, STATS_TOKENS),
            causal=self.causal,
            keep=TORCH_DTYPES[self.dtype.name] if self.keep_attention else None,
            layers=count,
            values=values,
        )

        def per_layer(values: torch.Tensor) -> np.ndarray:  # [count * H, ...] -> [count, H, ...]
            return values.reshape(count, heads, *values.shape[1:]).cpu().numpy()

        arrays = {
            "received": (summary.received / (heads * mask.spans.visible)).cpu().numpy(),  # [count, N]
            "thumbnails": per_layer(summary.thumbnails.to(torch.float16)),  # [count, H, t, t]
            "head_stats": per_layer(summary.head_stats),  # [count, H, S]
            "key_shares": per_layer(summary.key_shares),  # [count, H, P]
        }
        if summary.attention is not None:
            arrays["attention"] = per_layer(summary.attention)  # [count, H, N, N]
        for name, values in arrays.items():
            self.stack.put_many(name, indices, values)
        if self.on_layer and announce:
            for index in indices:
                self.on_layer(index, self.stack.arrays["thumbnails"][index])
        return summary.output

    def _mask(self, attention_mask, device) -> _Mask:
        """Each distinct mask of the pass once: the layers of a pass share one mask tensor, so it
        is read (compared, stored as booleans) once, not per layer."""
        known = self._known_masks.get(id(attention_mask))
        if known is not None and known[0] is attention_mask:
            return known[1]
        n = self.n_tokens
        if attention_mask is None:
            allowed = torch.ones((n, n), dtype=torch.bool, device=device)
        else:
            allowed = allowed_positions(attention_mask[0, 0, :n, :n])
        host = allowed.cpu().numpy()
        index = next((i for i, seen in enumerate(self.masks) if np.array_equal(seen, host)), len(self.masks))
        if index == len(self.masks):
            self.masks.append(host)
        if index == len(self._spans):  # each distinct mask read once, however many tensors carry it
            self._spans.append(MaskSpans.of(allowed))
        mask = _Mask(index, self._spans[index])
        self._known_masks[id(attention_mask)] = (attention_mask, mask)
        return mask


@dataclass(frozen=True)
class HiddenNorms:
    """What a recorded pass keeps of one hidden state: its norm per token [N], not [1, N, D]."""

    norms: torch.Tensor


def shrink_hidden_states() -> None:
    """Replace every hidden state transformers has collected so far in this pass by its norms.

    The record keeps only the residual stream's norms, but ``output_hidden_states`` holds each
    layer's [N, D] state to the end of the pass: 271 MiB of a 4096-token SmolLM2 capture's
    peak. Each recorded layer of a prompt longer than BATCH_TOKENS (a short one's states are a
    few MB) shrinks the states collected before it (the last one stays whole,
    transformers swaps it for the final normed state). Models that collect hidden states their
    own way keep them whole; :func:`state_norms` reads both. The collector is an internal of
    transformers 5 (the version requirements.txt pins): if a release renames it, states stay
    whole (more memory, the same record), and test_capture's check of what a pass holds fails.
    """
    collector = getattr(output_capturing, "_active_collector", None)
    collected = collector.get() if collector is not None else None
    states = collected.get("hidden_states") if isinstance(collected, dict) else None
    if not isinstance(states, list):
        return
    for index, state in enumerate(states):
        if isinstance(state, torch.Tensor) and state.dim() == 3:
            states[index] = HiddenNorms(state[0].float().norm(dim=-1))


def state_norms(state) -> torch.Tensor:
    """[N] per-token norms of one entry of a recorded pass's hidden states (whole or shrunk)."""
    return state.norms if isinstance(state, HiddenNorms) else state[0].float().norm(dim=-1)


def _has_tensor(module, name: str) -> bool:
    return isinstance(getattr(module, name, None), torch.Tensor)


def stored_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a record keeps q and k in: the model's, float32 for one numpy lacks (bfloat16,
    widened exactly)."""
    return dtype if dtype in NUMPY_DTYPES else torch.float32


def _stored(states: torch.Tensor) -> np.ndarray:
    """[heads, N, d] as the model computed them, in :func:`stored_dtype`."""
    return states.detach().to(stored_dtype(states.dtype)).cpu().numpy()


def _row_logsumexp(queries, keys, weights, scaling: float):
    """[H, N] log-sum-exp of each row's scores, read off each row's largest weight.

    p_ij = exp(s_ij - lse_i) for every j, so lse_i = s_ij* - log p_ij* at the argmax j*, whose
    weight is >= 1/N and never underflows. Costs one gather instead of a second N x N product.
    """
    best = weights.argmax(dim=-1)  # [H, N]
    best_keys = torch.gather(keys, 1, best[..., None].expand(-1, -1, keys.shape[-1]))  # [H, N, d]
    best_scores = (queries * best_keys).sum(-1) * scaling
    best_weights = torch.gather(weights, -1, best[..., None])[..., 0]
    # a row that reads nothing (another segment's rows in an encoder-decoder record) stores 0
    return torch.where(best_weights > 0, best_scores - torch.log(best_weights), 0.0)


def allowed_positions(mask: torch.Tensor) -> torch.Tensor:
    """Bool: True where a mask lets a query attend, for boolean masks and additive ones (which
    put the dtype's minimum, or -inf, where they forbid)."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def new_recorder(
    recorder_class: type[Recorder],
    handle,
    n: int,
    precision: str,
    keep_attention_bytes: int,
    on_layer: LayerDone | None,
    **fields,
) -> Recorder:
    """A recorder for one pass of ``handle`` (a models.loading.ModelHandle) over ``n`` tokens:
    attention kept when it fits ``keep_attention_bytes``, ``on_layer`` told how many layers
    there are, output norms and Grams deferred on the devices that defer them."""
    description = handle.describe()
    layers, heads = description["layers"], description["heads"]
    dtype = np.dtype(precision)
    keep = layers * heads * n * n * dtype.itemsize <= keep_attention_bytes
    callback = (lambda layer, thumbnails: on_layer(layer, layers, thumbnails)) if on_layer else None
    recorder = recorder_class(
        n,
        thumbnail_side(layers, heads, n),
        keep,
        dtype,
        {},
        on_layer=callback,
        causal=handle.is_causal,
        defer_outputs=handle.device.type in DEFERRED_OUTPUT_DEVICES,
        **fields,
    )
    recorder.stack = LayerStack(layers)
    return recorder


def capture_plan(handle) -> Callable[[int], budget.CapturePlan]:
    """tokens -> the plan of a capture of ``handle`` (:mod:`models.budget`), with what its device
    and precision decide: half-precision activations on a GPU, q and k stored as :func:`_stored`
    keeps them, the values kept for the Grams on a CPU, the device's blocks."""
    dtype = next(handle.model.parameters()).dtype
    geometry = budget.Geometry.of(handle.config, handle.describe()["layers"], handle.is_causal)
    return functools.partial(
        budget.plan_capture,
        geometry,
        itemsize=dtype.itemsize,
        keeps_values=handle.device.type in DEFERRED_OUTPUT_DEVICES,
        block_bytes=block_bytes(handle.device),
        stored_itemsize=stored_dtype(dtype).itemsize,
    )


def recorded_forward(handle, recorder: Recorder, reserve: Callable[[int], None] | None, **inputs):
    """(output, seconds) of one forward pass with ``recorder`` active; ``reserve`` hears first the
    memory the capture will need beyond the weights, the record included (:mod:`models.budget`:
    the results cache makes that much room, so cached records and this capture together stay
    within its budget; a 4096-token SmolLM2 capture plans 1.0 GiB). Raises TooManyTokensError,
    before the pass, when the capture would not fit in the memory the device has free."""
    plan = capture_plan(handle)
    if reserve:
        reserve(plan(recorder.n_tokens).total)
    where = f"this machine's {handle.device.type.upper()}"
    budget.check_fits(plan, recorder.n_tokens, budget.available_bytes(handle.device), where)
    with handle.lock, torch.inference_mode(), recording(handle, recorder):
        started = time.perf_counter()
        output = handle.model(**inputs, output_hidden_states=True, use_cache=False)
        return output, time.perf_counter() - started


@contextlib.contextmanager
def recording(handle, recorder: Recorder):
    """Activate ``recorder`` for forward passes of ``handle``'s model in this thread; always deactivates."""
    names, parents = handle.module_maps
    recorder.names.update(names)
    recorder.parents.update(parents)
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


@dataclass
class Tokenized:
    """A prompt as the model reads it (ids) and as the views show it (tokens, spans)."""

    ids: list[int]
    pieces: list[str]
    tokens: list[str]
    spans: np.ndarray  # [N, 2] int32
    special: np.ndarray  # [N] bool


def tokenize(tokenizer, text: str, max_tokens: int) -> Tokenized:
    """Tokenize with character spans; refuse more than ``max_tokens`` before any model work."""
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=False)
    ids = list(encoded["input_ids"])
    if len(ids) > max_tokens:
        raise TooManyTokensError(f"the prompt is {len(ids)} tokens; this model accepts at most {max_tokens}")
    if not ids:
        raise ValueError("the prompt produced no tokens")
    spans = np.asarray(encoded["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    special = np.asarray(encoded["special_tokens_mask"], dtype=bool)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    tokens = [
        piece if is_special or start == end else text[start:end]
        for piece, is_special, (start, end) in zip(pieces, special, spans)
    ]
    return Tokenized(ids, pieces, tokens, spans, special)


def assemble(
    model: str,
    text: str,
    tokenized: Tokenized,
    recorder: Recorder,
    hidden_norms: np.ndarray,
    description: dict,
    forward_seconds: float,
    started: float,
) -> Capture:
    """The record of one finished pass: the recorder's per-layer arrays stacked along a layer axis.

    ``hidden_norms`` is [L + 1, N]; each driver reads it off its own model output, because
    encoder-decoder models return two stacks of hidden states. Both drivers end here, so every
    record has the same layout whichever model produced it. ``started`` (``time.perf_counter``)
    is when the driver began: the capture's seconds count the summary of a short prompt's
    layers, which :meth:`Recorder.finish` makes here after the pass.
    """
    recorder.finish()
    capture_seconds = time.perf_counter() - started
    layers, stack, count = recorder.layers, recorder.stack, len(recorder.layers)
    groups = layers[0]["groups"]
    heads = layers[0]["heads"]
    return Capture(
        model=model,
        text=text,
        tokens=tokenized.tokens,
        pieces=tokenized.pieces,
        layer_names=[layer["name"] for layer in layers],
        info={
            **description,
            "forward_seconds": forward_seconds,
            "capture_seconds": capture_seconds,
            "tokens": len(tokenized.ids),
            "scores_exact": recorder.scores_exact,
            # True: output_norms are Kobayashi et al.'s ||f_h(x_j)||; False: ||v_j|| (no output projection found)
            "output_norms_exact": recorder.norms_exact,
            # "fused": every layer was softmax(q.k * scaling + mask) (the kernel, or attended in blocks); else why not
            "attention_path": "; ".join(recorder.eager_reasons) or "fused",
        },
        spans=tokenized.spans,
        special=tokenized.special,
        queries=stack.take("queries", count),
        keys=stack.take("keys", count),
        kv_map=(np.arange(heads) // groups).astype(np.int32),
        scaling=np.asarray([layer["scaling"] for layer in layers], dtype=np.float32),
        masks=np.stack(recorder.masks),
        mask_index=np.asarray([layer["mask"] for layer in layers], dtype=np.int32),
        row_lse=stack.take("row_lse", count, np.float32),
        received=stack.take("received", count, np.float32),
        **recorder.output_arrays(count),
        hidden_norms=hidden_norms.astype(np.float32),
        thumbnails=stack.take("thumbnails", count),
        head_stats=stack.take("head_stats", count),
        key_shares=stack.take("key_shares", count),
        attention=stack.take("attention", count) if recorder.keep_attention else None,
    )
