"""Edits to attention heads' outputs, made inside the capture's attention hook.

An intervention (switching heads off, patching them from another run) changes what a head writes
to the residual stream: its slice of the attention output, before the output projection mixes the
heads. The registered attention function (:func:`models.recorder.capture_attention`) hands every
layer's output, [batch, tokens, heads, head size], to :func:`edited` before returning it to the
model's own attention module, so interventions need no forked model code and work on every model
the capture supports.

Layers are numbered as the record numbers them: distinct attention modules in the order the
forward pass first calls them (encoder, then decoder self and cross blocks on encoder-decoder
models), so "layer 3" means the same thing in a view and in an intervention.

This module only edits; :mod:`models.interventions` runs the forward passes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

Edit = Callable[[torch.Tensor], torch.Tensor]  # one layer's [B, N, H, d] output -> its edited output
_ACTIVE: contextvars.ContextVar[HeadEditor | None] = contextvars.ContextVar("atlas_head_editor", default=None)


class HeadEditor:
    """Applies per-layer edits to head outputs during one forward pass, and counts the layers it
    saw (a pass that saw none ran attention this hook does not reach)."""

    def __init__(self, edits: dict[int, Edit]):
        self.edits = edits
        self.order: dict[int, int] = {}  # id(attention module) -> layer index

    def __call__(self, module, output: torch.Tensor) -> torch.Tensor:
        layer = self.order.setdefault(id(module), len(self.order))
        edit = self.edits.get(layer)
        return output if edit is None else edit(output)

    @property
    def layers_seen(self) -> int:
        return len(self.order)


def edited(module, output: torch.Tensor) -> torch.Tensor:
    """The attention hook's output after the active editor's edit (unchanged without one)."""
    editor = _ACTIVE.get()
    return output if editor is None else editor(module, output)


@contextlib.contextmanager
def editing(editor: HeadEditor) -> Iterator[HeadEditor]:
    """Activate ``editor`` for forward passes in this thread; always deactivates."""
    token = _ACTIVE.set(editor)
    try:
        yield editor
    finally:
        _ACTIVE.reset(token)


def zeroed(heads: list[int]) -> Edit:
    """Switch ``heads`` off: they write nothing to the residual stream."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, :, heads] = 0
        return output

    return edit


def mean_replaced(heads: list[int]) -> Edit:
    """Replace ``heads``' output at every position by its mean over the prompt's positions: the
    head keeps its average contribution and loses what depends on the token it reads."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, :, heads] = output[:, :, heads].mean(dim=1, keepdim=True)
        return output

    return edit


def patched(rows: list[int], heads: list[int], source: torch.Tensor) -> Edit:
    """Batch row ``rows[i]`` takes head ``heads[i]``'s output from ``source`` ([1, N, H, d], the
    same layer of another run): one head patched per row, so one batched pass tries many heads."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, head in zip(rows, heads, strict=True):
            output[row, :, head] = source[0, :, head].to(output.dtype)
        return output

    return edit


def recorded(into: dict[int, torch.Tensor], layer: int) -> Edit:
    """Keep a copy of the layer's output (the source of later patches); change nothing."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        into[layer] = output.detach().clone()
        return output

    return edit
