"""Interventions through the app on the packaged SmolLM2: the ablation's next-token comparison
against a reference written here (forward pre-hooks on each layer's o_proj that zero the head's
slice of its input), the ablated run as an analysis every view opens, patching over HTTP, and the
errors a user gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.protocol import NAMESPACE
from tests.integration.conftest import collect
from tests.wire import decode_array

pytestmark = pytest.mark.real_model

PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Paul gave a drink to"
HEADS = [2 * 9 + 4, 5 * 9 + 1, 20 * 9 + 8]  # L2 H4, L5 H1, L20 H8 (SmolLM2: 30 layers x 9 heads)


def reference_logits(handle, text: str, heads: list[int]) -> torch.Tensor:
    """Next-token logits with ``heads`` zeroed before each layer's output projection."""
    per_layer = handle.describe()["heads"]
    projections = [layer.self_attn.o_proj for layer in handle.model.model.layers]

    def zero(layer_heads):
        def hook(module, args):
            x = args[0].reshape(*args[0].shape[:-1], per_layer, -1).clone()
            x[:, :, layer_heads] = 0.0
            return (x.reshape(args[0].shape),)

        return hook

    by_layer: dict[int, list[int]] = {}
    for flat in heads:
        by_layer.setdefault(flat // per_layer, []).append(flat % per_layer)
    hooks = [projections[layer].register_forward_pre_hook(zero(chosen)) for layer, chosen in by_layer.items()]
    try:
        ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            return handle.model(input_ids=ids).logits[0, -1].float()
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def key(service) -> str:
    return service.analyze("smollm2", PROMPT).key


def test_ablation_effect_equals_the_hook_reference(client, service, smollm2, key):
    answer = client.post(f"/api/analysis/{key}/ablate", json={"heads": HEADS, "mode": "zero"})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    effect = result["effect"]
    before, after = reference_logits(smollm2, PROMPT, []), reference_logits(smollm2, PROMPT, HEADS)
    predicted = int(before.argmax())
    assert effect["predicted"] == predicted and effect["predicted_after"] == int(after.argmax())
    assert effect["logit_change"] == pytest.approx(float(after[predicted] - before[predicted]), abs=1e-4)
    p, q = torch.softmax(before, -1), torch.softmax(after, -1)
    assert effect["prob_before"] == pytest.approx(float(p[predicted]), abs=1e-5)
    assert effect["prob_after"] == pytest.approx(float(q[predicted]), abs=1e-5)
    assert effect["kl"] == pytest.approx(float((p * (p.log() - q.log())).sum()), abs=1e-4)
    assert effect["kl"] > 0
    top = {row["id"]: row for row in effect["top"]}
    for token in torch.topk(p, 8).indices.tolist():
        assert top[token]["before"] == pytest.approx(float(p[token]), abs=1e-5)
        assert top[token]["after"] == pytest.approx(float(q[token]), abs=1e-5)

    ablated = service.lookup(result["ablated"])  # an analysis every view opens by key
    assert ablated.info["ablation"] == {"ablate": sorted(HEADS), "ablate_mode": "zero"}
    original = service.lookup(key)
    assert ablated.tokens == original.tokens
    np.testing.assert_array_equal(ablated.queries[:3], original.queries[:3])  # layers 0-2 read unablated input
    assert np.abs(ablated.queries[3].astype(np.float32) - original.queries[3].astype(np.float32)).max() > 1e-2
    again = client.post(f"/api/analysis/{key}/ablate", json={"heads": list(reversed(HEADS)), "mode": "zero"})
    assert again.get_json() == result  # the same ablation in another order: one cache entry, one answer


def test_ablation_over_the_socket_and_its_errors(socket_client, key):
    def ask(fields: dict) -> tuple[str, dict]:
        socket_client.emit("ablate", {"rid": "a", "key": key, **fields}, namespace=NAMESPACE)
        answer = collect(socket_client, until=("ablate", "error"), rid="a")[-1]
        return answer["name"], answer

    name, payload = ask({"heads": [HEADS[0]], "mode": "mean"})
    assert name == "ablate" and payload["mode"] == "mean" and payload["effect"]["kl"] >= 0
    name, payload = ask({"heads": [270], "mode": "zero"})
    assert name == "error" and payload["code"] == "bad_request" and "does not exist" in payload["message"]
    name, payload = ask({"heads": [], "mode": "zero"})
    assert name == "error" and "at least one head" in payload["message"]
    name, payload = ask({"heads": [1], "mode": "half"})
    assert name == "error" and payload["code"] == "bad_request"


def test_patching_over_http(client, key):
    answer = client.post(f"/api/analysis/{key}/patch", json={"corrupt": CORRUPT})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    restored = decode_array(result["restored"]).reshape(30, 9)
    assert np.isfinite(restored).all()
    assert result["answer_text"].strip() and result["answer"] != result["foil"]
    assert result["clean_difference"] > result["corrupt_difference"]
    assert restored.max() > 0.05  # some head carries the name

    longer = client.post(f"/api/analysis/{key}/patch", json={"corrupt": CORRUPT + " him"})
    assert longer.status_code == 400 and "same length" in longer.get_json()["message"]


def test_patching_needs_a_causal_model(client, service):
    encoder = service.analyze("minilm", "An encoder has no next token.").key
    answer = client.post(f"/api/analysis/{encoder}/patch", json={"corrupt": "An encoder has no next word."})
    assert answer.status_code == 400 and answer.get_json()["code"] == "unsupported_model"
    ablated = client.post(f"/api/analysis/{encoder}/ablate", json={"heads": [0, 13]}).get_json()
    assert ablated["effect"] is None and ablated["ablated"] != encoder  # views of the ablated encoder run
