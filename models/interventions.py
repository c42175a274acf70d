"""Interventions on attention heads: switch heads off (ablation) or copy them from another prompt
(activation patching), and measure what that does to the next-token prediction.

Both edit the heads' outputs inside the capture's attention hook (:mod:`models.editing`), so they
run on every model the capture supports, with no model code of their own. An ablated run is
captured like any prompt (:func:`capture_ablated`), so every view can show it.

Conventions (docs/analyses.md, "Interventions"):
- Zero ablation sets a head's output to 0; mean ablation replaces it, at every position, by its
  mean over the prompt's positions (Wang et al. 2022 average over a reference distribution; here
  the prompt itself is the reference, so no second dataset is needed).
- Patching denoises: the corrupted prompt runs with one head's output taken from the clean run,
  and the score is the share of the logit difference it restores,
  (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt), LD = logit(answer) - logit(foil), with the
  clean prediction as the answer and the corrupted prediction as the foil (Meng et al. 2022;
  Wang et al. 2022; Heimersheim & Nanda 2024).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from models import editing
from models.ablation import PATCH_MAX_TOKENS, Ablation
from models.capture import run_capture
from models.errors import UnsupportedModelError
from models.language import require_causal
from models.record import Capture
from models.recorder import tokenize

TOP_TOKENS = 8  # next-token candidates shown before and after an intervention

LayerProgress = Callable[[int, int], None]  # (layers done, layers in all)


def editor_for(ablation: Ablation) -> editing.HeadEditor:
    """The edits that switch ``ablation``'s heads off during a forward pass."""
    edit = editing.zeroed if ablation.mode == "zero" else editing.mean_replaced
    return editing.HeadEditor({layer: edit(heads) for layer, heads in ablation.by_layer().items()})


def capture_ablated(handle, text: str, ablation: Ablation, **capture_options) -> Capture:
    """The capture of ``text`` with ``ablation``'s heads switched off: every view can show it."""
    editor = editor_for(ablation)
    with editing.editing(editor):
        capture = run_capture(handle, text, **capture_options)
    _require_reached(handle, editor, max(ablation.by_layer()))
    capture.info["ablation"] = ablation.option()  # the page says what was switched off
    return capture


def ablation_effect(handle, text: str, ablation: Ablation, max_tokens: int) -> dict:
    """The next-token distribution at the prompt's last position before and after the ablation:
    top candidates with both probabilities, and the predicted token's probability and logit change
    and KL(before || after), in nats."""
    require_causal(handle)
    ids = tokenize(handle.tokenizer, text, min(max_tokens, handle.max_tokens)).ids
    before = next_token_logits(handle, [ids])[0]
    editor = editor_for(ablation)
    after = next_token_logits(handle, [ids], editor)[0]
    _require_reached(handle, editor, max(ablation.by_layer()))
    return compare_predictions(handle, before, after)


def compare_predictions(handle, before: torch.Tensor, after: torch.Tensor) -> dict:
    """What changed between two next-token logit vectors ([V] each)."""
    log_before, log_after = torch.log_softmax(before, -1), torch.log_softmax(after, -1)
    predicted = int(before.argmax())
    candidates = dict.fromkeys(
        log_before.topk(TOP_TOKENS).indices.tolist() + log_after.topk(TOP_TOKENS).indices.tolist()
    )
    return {
        "predicted": predicted,
        "predicted_after": int(after.argmax()),
        "logit_change": float(after[predicted] - before[predicted]),
        "prob_before": float(log_before[predicted].exp()),
        "prob_after": float(log_after[predicted].exp()),
        "kl": float((log_before.exp() * (log_before - log_after)).sum()),
        "top": [
            {
                "id": token,
                "text": handle.tokenizer.decode([token]),
                "before": float(log_before[token].exp()),
                "after": float(log_after[token].exp()),
            }
            for token in candidates
        ],
    }


def next_token_logits(handle, batch: list[list[int]], editor: editing.HeadEditor | None = None) -> torch.Tensor:
    """[B, V] float32 logits at the last position of each sequence of ``batch`` (equal lengths),
    with ``editor``'s edits made during the pass."""
    active = editing.editing(editor) if editor is not None else contextlib.nullcontext()
    with handle.lock, torch.inference_mode(), active:
        output = handle.model(input_ids=torch.tensor(batch, device=handle.device), logits_to_keep=1, use_cache=False)
    return output.logits[:, -1].float().cpu()


def patch_heads(handle, clean: str, corrupt: str, on_layer: LayerProgress | None = None) -> dict:
    """For every head, the share of the clean-vs-corrupted logit difference restored by running
    the corrupted prompt with that head's output (every position) taken from the clean run.

    One batched pass per layer, a row per head. Returns ``restored`` [L, H] float32, the two
    prompts' logit differences, and the answer and foil tokens. Raises ValueError for prompts of
    different lengths, over :data:`PATCH_MAX_TOKENS`, or whose logit differences are equal.
    """
    require_causal(handle)
    clean_ids, corrupt_ids = (
        tokenize(handle.tokenizer, text, min(PATCH_MAX_TOKENS, handle.max_tokens)).ids for text in (clean, corrupt)
    )
    if len(clean_ids) != len(corrupt_ids):
        raise ValueError(
            f"patching needs prompts of the same length: the clean prompt has {len(clean_ids)} tokens, "
            f"the corrupted one {len(corrupt_ids)}"
        )
    description = handle.describe()
    layers, heads = description["layers"], description["heads"]
    sources: dict[int, torch.Tensor] = {}  # layer -> the clean run's [1, N, H, d] head outputs
    recorder = editing.HeadEditor({layer: editing.recorded(sources, layer) for layer in range(layers)})
    clean_logits = next_token_logits(handle, [clean_ids], recorder)[0]
    _require_reached(handle, recorder, layers - 1)
    corrupt_logits = next_token_logits(handle, [corrupt_ids])[0]
    answer, foil = answer_and_foil(clean_logits, corrupt_logits)
    clean_difference = float(clean_logits[answer] - clean_logits[foil])
    corrupt_difference = float(corrupt_logits[answer] - corrupt_logits[foil])
    if abs(clean_difference - corrupt_difference) < 1e-4:
        raise ValueError("both prompts give the same logit difference, so there is nothing to restore")
    restored = np.zeros((layers, heads), np.float32)
    rows = list(range(heads))
    for layer in range(layers):
        editor = editing.HeadEditor({layer: editing.patched(rows, rows, sources[layer])})
        logits = next_token_logits(handle, [corrupt_ids] * heads, editor)
        difference = (logits[:, answer] - logits[:, foil]).numpy()
        restored[layer] = (difference - corrupt_difference) / (clean_difference - corrupt_difference)
        if on_layer:
            on_layer(layer + 1, layers)
    return {
        "restored": restored,
        "clean_difference": clean_difference,
        "corrupt_difference": corrupt_difference,
        "answer": answer,
        "foil": foil,
        "answer_text": handle.tokenizer.decode([answer]),
        "foil_text": handle.tokenizer.decode([foil]),
        "tokens": len(clean_ids),
    }


def answer_and_foil(clean: torch.Tensor, corrupt: torch.Tensor) -> tuple[int, int]:
    """The clean prediction, and the corrupted prediction (or, when the corruption did not change
    the top token, the corrupted run's best other token)."""
    answer = int(clean.argmax())
    ranked = corrupt.topk(2).indices.tolist()
    return answer, ranked[0] if ranked[0] != answer else ranked[1]


def _require_reached(handle, editor: editing.HeadEditor, last_layer: int) -> None:
    """An intervention the model never let the hook make must not look like "no effect"."""
    if editor.layers_seen <= last_layer:
        raise UnsupportedModelError(
            f"{handle.name}: only {editor.layers_seen} attention layers go through the capture hook, so heads "
            f"in layer {last_layer} cannot be changed"
        )
