"""What interventions cost on a packaged model, in-process: a bare forward pass, the ablation's
next-token comparison (two passes), the ablated capture (every view's data), and activation
patching of every head (one batched pass per layer), at prompts of N tokens up to the patching
limit. Prints seconds and ratios to the bare pass measured in the same run; a script, not a test.

    .venv/bin/python -m benchmarks.interventions --model smollm2 --sizes 16,32,64
"""

from __future__ import annotations

import os
import time

from benchmarks.machine import describe_machine, loaded_model, model_arguments
from benchmarks.prompts import exact_prompt


def timed(work, *args) -> float:
    started = time.perf_counter()
    work(*args)
    return time.perf_counter() - started


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0], "16,32,64", "atlas-bench-interventions").parse_args()
    service, handle = loaded_model(args)

    from models.ablation import Ablation
    from models.interventions import ablation_effect, capture_ablated, next_token_logits, patch_heads
    from models.recorder import tokenize

    layers, heads = handle.describe()["layers"], handle.describe()["heads"]
    ablation = Ablation.of([layer * heads for layer in range(0, layers, 3)], "zero", layers, heads)
    machine = describe_machine()
    print(f"{args.model}: {layers} layers x {heads} heads; {machine.get('cpu')}; load {os.getloadavg()[0]:.1f}")
    print("tokens  bare pass  ablation effect  ablated capture  patch every head  patch / bare")
    for size in (int(part) for part in args.sizes.split(",")):
        clean = exact_prompt(handle.tokenizer, size)
        corrupt = exact_prompt(handle.tokenizer, size, variant=1)
        ids = tokenize(handle.tokenizer, clean, size).ids
        next_token_logits(handle, [ids])  # warm up
        bare = min(timed(next_token_logits, handle, [ids]) for _ in range(3))
        effect = timed(ablation_effect, handle, clean, ablation, size)
        capture = timed(capture_ablated, handle, clean, ablation)
        patch = timed(patch_heads, handle, clean, corrupt)
        print(f"{size:6d}  {bare:9.3f}  {effect:15.3f}  {capture:15.3f}  {patch:16.2f}  {patch / bare:12.0f}x")


if __name__ == "__main__":
    main()
