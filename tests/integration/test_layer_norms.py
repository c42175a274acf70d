"""The layer modes on the packaged decoder (SmolLM2: 30 layers, 9 query heads sharing 3 key/value
heads): the stored Grams give Kobayashi et al. (2020)'s ||sum_h alpha^h_ij f_h(x_j)|| as the
formula written out from the model's own weights does (tests/unit/test_layer_norms.py), and the
four views' requests answer in the layer modes over HTTP."""

from __future__ import annotations

import pytest

from models.capture import run_capture
from tests.unit.test_layer_norms import assert_layer_maps, reference_layer_maps
from tests.wire import decode_array

PROMPT = "The cat sat on the mat because it was tired."


@pytest.mark.real_model
def test_smollm2_layer_maps_follow_kobayashi_et_al(smollm2):
    capture = run_capture(smollm2, PROMPT, precision="float32")
    assert capture.info["output_norms_exact"] and capture.n_heads == 9 and len(set(capture.kv_map)) == 3
    assert_layer_maps(capture, reference_layer_maps(smollm2, PROMPT))


@pytest.mark.real_model
def test_every_view_answers_in_the_layer_modes(client, smollm2):
    key = client.post("/api/analyze", json={"model": "smollm2", "text": PROMPT}).get_json()["key"]
    requests = (("layer?layer=3", "layer"), ("matrix?layer=3&head=5", "layer_share"), ("token?index=4", "layer"))
    for path, mode in requests:
        response = client.get(f"/api/analysis/{key}/{path}&mode={mode}")
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["mode"] == mode
    thumbnails = client.get(f"/api/analysis/{key}/thumbnails?mode=layer_share").get_json()
    assert thumbnails["heads"] == 1 and decode_array(thumbnails["thumbnails"]).shape[:2] == (30, 1)
    refused = client.get(f"/api/analysis/{key}/token?index=4&mode=layer_share")
    assert refused.status_code == 400 and "attention, norm, layer" in refused.get_json()["message"]
