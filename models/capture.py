"""One forward pass of a decoder-only or encoder-only model -> one :class:`models.record.Capture`.

The hook and the recorder live in :mod:`models.recorder`; this module decides what the pass reads
(one sequence) and where the residual-stream norms come from. Encoder-decoder models have their
own driver, :mod:`models.seq2seq`, which :func:`run_capture` hands them to so that callers have
one entry point.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from models.errors import UnsupportedModelError
from models.record import Capture
from models.recorder import (
    ATTENTION_KEEP_BYTES,
    LayerDone,
    Recorder,
    assemble,
    new_recorder,
    recorded_forward,
    state_norms,
    tokenize,
)
from models.seq2seq import run_seq2seq_capture


def run_capture(
    handle,
    text: str,
    *,
    target: str = "",
    precision: str = "float16",
    keep_attention_bytes: int = ATTENTION_KEEP_BYTES,
    max_tokens: int | None = None,
    on_layer: LayerDone | None = None,
    reserve: Callable[[int], None] | None = None,
) -> Capture:
    """Tokenize ``text`` and run one forward pass of ``handle`` (a models.loading.ModelHandle).

    ``target`` is what the decoder of an encoder-decoder model reads (see :mod:`models.seq2seq`);
    other models refuse one.

    ``on_layer(layer, total, thumbnails)`` is called as each attention layer finishes, with that
    layer's [H, t, t] float16 thumbnails: progress on long prompts, and a model view that fills
    in while the model runs. ``reserve(nbytes)`` is called before the forward pass with the memory
    the capture will need, the record included (:func:`models.budget.plan_capture`), so the
    caller can free that much first (cached results).

    ``precision`` is the dtype arrays are stored in: float16 for the app (half the memory and
    disk), float32 for exact comparisons in tests. Raises TooManyTokensError, ValueError for an
    empty prompt, UnsupportedModelError for an architecture this hook cannot read.
    """
    if getattr(handle.config, "is_encoder_decoder", False):
        return run_seq2seq_capture(
            handle,
            text,
            target,
            precision=precision,
            max_tokens=max_tokens,
            keep_attention_bytes=keep_attention_bytes,
            on_layer=on_layer,
            reserve=reserve,
        )
    if target:
        raise ValueError(f"{handle.name} has no decoder to read a target text; leave it empty")
    started = time.perf_counter()
    description = handle.describe()
    tokenized = tokenize(handle.tokenizer, text, min(max_tokens or handle.max_tokens, handle.max_tokens))
    n = len(tokenized.ids)
    recorder = new_recorder(Recorder, handle, n, precision, keep_attention_bytes, on_layer)
    output, forward_seconds = recorded_forward(
        handle,
        recorder,
        reserve,
        input_ids=torch.tensor([tokenized.ids], device=handle.device),
        **({"logits_to_keep": 1} if handle.is_causal else {}),
    )
    if not recorder.layers:
        raise UnsupportedModelError(
            f"{type(handle.model).__name__} does not dispatch attention through transformers' "
            "AttentionInterface, so its attention cannot be captured"
        )
    hidden = output.hidden_states
    hidden_norms = torch.stack([state_norms(h) for h in hidden]).cpu().numpy()  # [L+1, N]
    del output, hidden
    return assemble(
        handle.name,
        text,
        tokenized,
        recorder,
        hidden_norms,
        description,
        forward_seconds,
        started,
    )
