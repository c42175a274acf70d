"""Pack a safetensors model folder's weights as int8 rows with float32 scales (a quarter of the
bytes), and unpack them to float32 where they are used: how minilm travels to a GPU machine that
takes at most a few tens of MB and reaches no package index (scripts/offline-bundle). The unpacked
model is minilm with its matrices rounded to 8 bits a row; the capture tests compare a model with
its own eager attention, so they hold for it as for any weights.

    python scripts/int8_weights.py pack SOURCE_FOLDER TARGET_FOLDER
    python scripts/int8_weights.py unpack FOLDER
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PACKED = "packed.safetensors"
WEIGHTS = "model.safetensors"


def pack(source: Path, target: Path) -> None:
    """Copy ``source`` without its weights; its 2-D float tensors as int8 rows and scales."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS, "*.onnx", "onnx", "openvino", "*.bin"))
    packed = {}
    for name, tensor in load_file(source / WEIGHTS).items():
        if tensor.ndim == 2 and tensor.is_floating_point():
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            packed[f"{name}.q"] = torch.round(tensor / scale).to(torch.int8)
            packed[f"{name}.s"] = scale.float()
        else:
            packed[name] = tensor
    save_file(packed, target / PACKED)


def unpack(folder: Path) -> None:
    """Write ``folder``'s float32 weights from its packed ones."""
    packed = load_file(folder / PACKED)
    weights = {
        name.removesuffix(".q"): tensor.float() * packed[name.removesuffix(".q") + ".s"]
        for name, tensor in packed.items()
        if name.endswith(".q")
    }
    weights.update({name: tensor for name, tensor in packed.items() if not name.endswith((".q", ".s"))})
    save_file(weights, folder / WEIGHTS, metadata={"format": "pt"})


if __name__ == "__main__":
    if sys.argv[1:2] == ["pack"] and len(sys.argv) == 4:
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["unpack"] and len(sys.argv) == 3:
        unpack(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
