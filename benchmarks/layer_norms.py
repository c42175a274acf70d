"""What Kobayashi et al. (2020)'s layer-level map ||sum_h alpha^h_ij f_h(x_j)|| costs on a packaged
model, in-process: the capture's extra work (each layer's Grams f_h(x_j) . f_g(x_j), timed on the
captured layer's own shapes), the bytes they add to the record, and each view's request in the
layer mode beside the per-head norm mode (the model view's thumbnails, the head view's layer, the
matrix view's whole matrix, the token view). A script, not a test: prints seconds with the load.

    .venv/bin/python -m benchmarks.layer_norms --model smollm2 --sizes 1024,4096
"""

from __future__ import annotations

import os
import time

from benchmarks.machine import describe_machine, loaded_model, model_arguments
from benchmarks.prompts import exact_prompt


def seconds(work, *args) -> float:
    started = time.perf_counter()
    work(*args)
    return time.perf_counter() - started


def measure(handle, config: dict, size: int) -> None:
    """Print one prompt length's figures."""
    import torch

    from app import shaping
    from models import contributions
    from models.capture import run_capture

    capture = run_capture(handle, exact_prompt(handle.tokenizer, size), max_tokens=size)
    layers, heads, d = capture.n_layers, capture.n_heads, capture.queries.shape[-1]
    values, projections = torch.randn(heads, size, d), torch.randn(heads, d, handle.model.config.hidden_size)
    grams = seconds(contributions.output_grams, values, projections) * layers
    print(
        f"\n{size} tokens: capture {capture.info['capture_seconds']:.1f} s, of it Grams {grams:.1f} s (all layers); "
        f"Grams {capture.output_grams.nbytes / 2**20:.1f} MB of a {capture.nbytes / 2**20:.0f} MB record"
    )
    key, middle = "b" * 64, layers // 2
    requests = {  # name -> (function, arguments before the mode, after it)
        "model view (thumbnails)": (shaping.norm_thumbnails_payload, (key, capture), ()),
        "head view (one layer)": (
            shaping.layer_payload,
            (key, capture, middle),
            (config["DENSE_LAYER_MAX_TOKENS"], config["LAYER_TOP_K"]),
        ),
        "matrix view (whole)": (
            shaping.matrix_payload,
            (key, capture, middle, 0),
            (0, None, 0, None, config["MATRIX_TILE_MAX"]),
        ),
        "token view": (shaping.token_payload, (key, capture, size // 2), ()),
    }
    print(f"{'request':26} {'norm (per head)':>16} {'layer':>8}  seconds")
    for name, (function, before, after) in requests.items():
        norm, layer = (seconds(function, *before, mode, *after) for mode in ("norm", "layer"))
        print(f"{name:26} {norm:16.2f} {layer:8.2f}")


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0], "1024,4096", "atlas-bench-layer-norms").parse_args()
    service, handle = loaded_model(args)
    print(f"{args.model}; {describe_machine().get('cpu')}; load {os.getloadavg()[0]:.1f}")
    for size in (int(part) for part in args.sizes.split(",")):
        measure(handle, service.config, size)


if __name__ == "__main__":
    main()
