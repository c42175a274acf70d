"""scripts/int8_weights.py: what it packs comes back within half a step of each row's int8 grid,
everything else exactly, and the folder's other files travel with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "int8_weights.py"


def load_script():
    spec = importlib.util.spec_from_file_location("int8_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weights_come_back_within_half_a_step_of_their_row(tmp_path):
    weights = load_script()
    source, target = tmp_path / "model", tmp_path / "packed"
    source.mkdir()
    torch.manual_seed(0)
    tensors = {"dense.weight": torch.randn(6, 10) * torch.arange(1, 7)[:, None], "dense.bias": torch.randn(6)}
    save_file(tensors, source / weights.WEIGHTS)
    (source / "config.json").write_text("{}")

    weights.pack(source, target)
    assert not (target / weights.WEIGHTS).exists() and (target / "config.json").read_text() == "{}"
    weights.unpack(target)
    back = load_file(target / weights.WEIGHTS)
    assert back.keys() == tensors.keys()
    assert torch.equal(back["dense.bias"], tensors["dense.bias"])
    step = tensors["dense.weight"].abs().amax(dim=1, keepdim=True) / 127  # each row's int8 step
    assert bool(((back["dense.weight"] - tensors["dense.weight"]).abs() <= step / 2 + 1e-6).all())
