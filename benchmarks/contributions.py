"""What the on-demand contribution analyses cost on a packaged model, in-process: the bare forward
pass, context mixing (every layer, Kobayashi et al. 2021), the feed-forward maps of one layer
(Kobayashi et al. 2023) and the information-flow routes' importances (Ferrando & Voita 2024), at
prompts of N tokens up to each one's limit. Prints seconds and ratios to the bare pass measured
in the same run, with the machine's load (these run on shared 2-core machines); a script, not a test.

    .venv/bin/python -m benchmarks.contributions --model smollm2 --sizes 32,64,96,128
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


def cell(limit: int, size: int, work, *args) -> str:
    """Seconds of the best of two runs, or '-' above the analysis's token limit."""
    return f"{min(timed(work, *args) for _ in range(2)):8.2f}" if size <= limit else f"{'-':>8}"


def main() -> None:
    parser = model_arguments(__doc__.splitlines()[0], "32,64,96,128", "atlas-bench-contributions")
    parser.add_argument("--layer", type=int, default=2, help="the layer of the feed-forward maps")
    args = parser.parse_args()
    service, handle = loaded_model(args)

    import torch

    from models.feedforward import FF_MAX_TOKENS, feed_forward_mixing
    from models.information_flow import ROUTES_MAX_TOKENS, route_importances
    from models.mixing import MIXING_MAX_TOKENS, context_mixing

    print(f"{args.model}; {describe_machine().get('cpu')}; load {os.getloadavg()[0]:.1f}")
    print("tokens  bare pass    mixing  FF layer    routes  (seconds; '-' above the limit)")
    for size in (int(part) for part in args.sizes.split(",")):
        text = exact_prompt(handle.tokenizer, size)
        ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]

        def bare(ids=ids) -> None:
            with torch.inference_mode():
                handle.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)

        bare()  # warm up: a process's first pass at a length is slow
        floor = min(timed(bare) for _ in range(3))
        mixing = cell(MIXING_MAX_TOKENS, size, context_mixing, handle, text)
        ff = cell(FF_MAX_TOKENS, size, feed_forward_mixing, handle, text, args.layer)
        routes = cell(ROUTES_MAX_TOKENS, size, route_importances, handle, text)
        print(f"{size:6d}  {floor:9.3f}  {mixing}  {ff}  {routes}   load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
