"""Interventions at the service level: switch heads off in a stored analysis's prompt (ablation),
or copy them from it into a corrupted prompt (patching). Validated, cached, run as model work.

An ablated run is an analysis like any other, keyed by its prompt and its ablation, so every view
opens it by key and a share link restores it; the next-token comparison and the patching grid are
single answers the dispatcher memoises per request.
"""

from __future__ import annotations

from app.protocol import AtlasError, encode_array
from app.service import check_text
from app.stream import progress_events
from models.ablation import Ablation
from models.record import Capture


def ablation_of(capture: Capture, heads: list[int], mode: str) -> Ablation:
    """The request's ablation, checked against the analysis it applies to."""
    if capture.info.get("ablation"):
        raise AtlasError("bad_request", "this analysis is already an ablated run; switch heads off in the original")
    try:
        return Ablation.of(heads, mode, capture.n_layers, capture.n_heads)
    except ValueError as error:
        raise AtlasError("bad_request", str(error)) from None


def on_ablate(call, fields: dict) -> dict:
    """The prompt of analysis ``key`` run again with ``heads`` switched off: the ablated run's
    analysis key (every view opens it), and for a causal LM the next-token prediction before and
    after (models.interventions.ablation_effect)."""
    key, service = fields["key"], call.service
    capture = service.lookup(key)
    ablation = ablation_of(capture, fields["heads"], fields["mode"])
    progress = progress_events(call)
    target = capture.info.get("target", "") if capture.info.get("encoder_decoder") else ""
    ablated = service.analyze(capture.model, capture.text, progress, target=target, ablation=ablation)
    effect = None
    if capture.info.get("causal"):

        def work(handle) -> dict:
            from models.interventions import ablation_effect  # after the loader imported model code

            return ablation_effect(handle, capture.text, ablation, service.token_limit(capture.model))

        effect = service.model_work(capture.model, work, progress)
    return {"key": key, "ablated": ablated.key, "heads": list(ablation.heads), "mode": ablation.mode, "effect": effect}


def on_patch(call, fields: dict) -> dict:
    """Per head, the share of the logit difference between analysis ``key``'s prompt (clean) and
    ``corrupt`` that copying the head's clean output into the corrupted run restores."""
    key, service = fields["key"], call.service
    capture = service.lookup(key)
    if not capture.info.get("causal") or capture.info.get("ablation"):
        raise AtlasError(
            "unsupported_model",
            "patching compares next-token predictions, so it needs the analysis of a causal language model "
            "(such as smollm2) without switched-off heads",
        )
    corrupt = check_text(fields["corrupt"], service.config["MAX_CHARS"])
    progress = progress_events(call)

    def work(handle) -> dict:
        from models.interventions import patch_heads  # after the loader imported model code

        def layer_done(done: int, layers: int) -> None:
            progress(f"patching heads: layer {done} of {layers}", done / layers)

        return patch_heads(handle, capture.text, corrupt, layer_done)

    result = service.model_work(capture.model, work, progress)
    return {"key": key, "corrupt": corrupt, **result, "restored": encode_array(result["restored"], "float32")}
