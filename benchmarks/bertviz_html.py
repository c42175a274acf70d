"""Worker: make BertViz's ``head_view`` and ``model_view`` HTML for one prompt, the way its
README does (an eager model run with ``output_attentions=True``, ``html_action="return"``).

Runs in its own process under an address-space limit, so a prompt too long for BertViz fails
with MemoryError here instead of pushing the machine into swap or the OOM killer. Prints one
JSON object: forward seconds, and per view the HTML bytes and seconds, or the error.

    python -m benchmarks.bertviz_html SOURCE PROMPT_FILE OUT_DIR MEMORY_LIMIT_BYTES [VIEWS]

VIEWS is a comma-separated subset of model_view,head_view (default both).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path

VIEWS = ("model_view", "head_view")


def _limit_memory(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _failure(error: BaseException) -> str:
    """One line naming the error; allocation failures inside torch say so too."""
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:200]


def main(source: str, prompt_file: str, out_dir: str, memory_limit: int, views=VIEWS) -> dict:
    _limit_memory(memory_limit)
    import torch

    from benchmarks.weights import load

    result: dict = {"memory_limit": memory_limit}
    try:
        model, tokenizer, causal = load(source, "eager")
        ids = tokenizer(Path(prompt_file).read_text(encoding="utf-8"))["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        extra = {"logits_to_keep": 1} if causal else {}
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids[:8]]), output_attentions=True, use_cache=False, **extra)  # warm-up
        started = time.perf_counter()
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False, **extra)
        attention = output.attentions  # L x [1, H, N, N]
        result["forward_seconds"] = time.perf_counter() - started
        del output, model
    except (MemoryError, RuntimeError) as error:
        result["error"] = f"forward pass: {_failure(error)}"
        return result

    import bertviz

    for view in views:
        started = time.perf_counter()
        try:
            html = getattr(bertviz, view)(attention, tokens, html_action="return").data
            path = Path(out_dir) / f"{view}.html"
            path.write_text(html, encoding="utf-8")
            result[view] = {
                "html_seconds": time.perf_counter() - started,
                "bytes": path.stat().st_size,
                "path": str(path),
            }
            del html
        except (MemoryError, RuntimeError, OverflowError) as error:
            result[view] = {"html_seconds": time.perf_counter() - started, "error": _failure(error)}
    return result


if __name__ == "__main__":
    try:
        chosen = tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else VIEWS
        outcome = main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), chosen)
    except Exception as error:  # report, don't crash: the benchmark records what failed
        outcome = {"error": _failure(error), "traceback": traceback.format_exc()[-2000:]}
    print(json.dumps(outcome))
