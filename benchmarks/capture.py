"""The capture alone, in one process: the recorded forward pass against the bare sdpa forward pass
of the same loaded model, and every view's payload at the longest prompt. Not a test: it prints
figures and ratios (and, with --out, writes them into docs/benchmarks.md). Runs on the CPU or,
with --device cuda, on a GPU (scripts/device-check).

    .venv/bin/python -m benchmarks.capture                         # smollm2, 128 / 1024 / 4096 tokens
    .venv/bin/python -m benchmarks.capture --device cuda --out docs/benchmarks.md

Each size: one warm-up capture, then the best of --repeats of (bare forward, capture) timed back
to back, so a busy machine slows both alike and the ratio stays honest. Peak memory: this
process's peak RSS on the CPU, the allocator's peak on CUDA.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: python benchmarks/capture.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from app.wsgi import prepare_models  # noqa: E402

prepare_models()  # as the server's entry points do, before torch loads

DEFAULT_SIZES = "128,1024,4096"
MARK = "capture-benchmark"  # the docs block this script owns, between <!-- MARK:label --> lines
VIEW_TARGET = 1.0  # s: every view at the longest prompt within this (issue 12)
CAPTURE_TARGET = 1.3  # capture / bare forward (issue 12; in-process, without the server's share)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="registered model name (default smollm2)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"prompt lengths in tokens (default {DEFAULT_SIZES})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed (forward, capture) pairs per size (best kept)")
    parser.add_argument("--out", type=Path, help="write the figures into this Markdown file")
    parser.add_argument("--label", help="name of this run's block in --out (default: model and device)")
    return parser.parse_args(argv)


def load(name: str, device: str):
    """The app's own loader (float16 on CUDA, float32 on the CPU), moved to ``device``."""
    import torch

    from app.config import default_cache_dir
    from models.loading import ModelLoader
    from models.registry import load_registry

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    handle = ModelLoader(load_registry(), Path(default_cache_dir()) / "converted").get(name)
    if device == "cuda" and handle.device.type != "cuda":
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_grad_enabled(False)
    return handle


def bare_seconds(handle, ids) -> float:
    """model(input_ids) with transformers' sdpa attention, last logits only."""
    import torch

    from models.recorder import ATTENTION_IMPLEMENTATION

    handle.model.set_attn_implementation("sdpa")
    try:
        _sync(handle)
        started = time.perf_counter()
        with torch.inference_mode():
            handle.model(input_ids=ids, use_cache=False, **({"logits_to_keep": 1} if handle.is_causal else {}))
        _sync(handle)
        return time.perf_counter() - started
    finally:
        handle.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def capture_seconds(handle, text: str):
    from models.capture import run_capture

    _sync(handle)
    started = time.perf_counter()
    capture = run_capture(handle, text)
    _sync(handle)
    return time.perf_counter() - started, capture


def _sync(handle) -> None:
    import torch

    if handle.device.type == "cuda":
        torch.cuda.synchronize()


def view_seconds(capture) -> dict[str, float]:
    """Seconds each view's payload takes to shape from the record (what a click waits for,
    less the wire): the server's own functions, first call, nothing memoised."""
    from app import insights, shaping

    middle, layer = capture.n_tokens // 2, capture.n_layers // 2
    views = {
        "overview": lambda: shaping.overview_payload("k", capture),
        "layer (head view)": lambda: shaping.layer_payload("k", capture, layer, "attention", 128, 8),
        "matrix (one head)": lambda: shaping.matrix_payload("k", capture, layer, 0, "attention", 0, None, 0, None, 256),
        "token": lambda: shaping.token_payload("k", capture, middle),
        "neuron": lambda: shaping.neuron_payload("k", capture, layer, 0, middle),
        "statistics (head summary)": lambda: insights.heads_payload("k", capture, insights.summary(capture)),
        "rollout": lambda: insights.rollout_payload("k", capture, "mean", 0),
    }
    timings = {}
    for name, make in views.items():
        started = time.perf_counter()
        make()
        timings[name] = time.perf_counter() - started
    return timings


def peak_bytes(handle) -> int:
    import torch

    if handle.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> dict:
    import torch

    from benchmarks.prompts import exact_prompt, source_text

    handle = load(args.model, args.device)
    source = source_text()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows, views = [], {}
    capture_seconds(handle, exact_prompt(handle.tokenizer, 32, source))  # warm-up: one-time costs
    for size in sizes:
        text = exact_prompt(handle.tokenizer, size, source)
        ids = torch.tensor([handle.tokenizer(text)["input_ids"]], device=handle.device)
        best_bare = best_capture = float("inf")
        for _ in range(args.repeats):
            best_bare = min(best_bare, bare_seconds(handle, ids))
            seconds, capture = capture_seconds(handle, text)
            best_capture = min(best_capture, seconds)
        rows.append(
            {
                "tokens": size,
                "bare": best_bare,
                "capture": best_capture,
                "ratio": best_capture / best_bare,
                "record_mib": capture.nbytes / 2**20,
                "path": capture.info["attention_path"],
                "peak_mib": peak_bytes(handle) / 2**20,
            }
        )
        print(_row_line(rows[-1]), flush=True)
        if size == max(sizes):
            views = view_seconds(capture)
        del capture
    return {"model": args.model, "device": describe_device(handle), "rows": rows, "views": views}


def describe_device(handle) -> str:
    import torch

    if handle.device.type == "cuda":
        return f"{torch.cuda.get_device_name()} ({handle.describe()['dtype']})"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads ({handle.describe()['dtype']})"


def _row_line(row: dict) -> str:
    return (
        f"{row['tokens']:>5} tokens: bare {row['bare']:.3f} s, capture {row['capture']:.3f} s, "
        f"ratio {row['ratio']:.2f}, record {row['record_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB, "
        f"{row['path']}"
    )


def markdown(results: dict, label: str) -> str:
    lines = [
        f"Model `{results['model']}` on {results['device']}, {time.strftime('%Y-%m-%d')}, "
        "`python -m benchmarks.capture` (in one process; best of the repeats).",
        "",
        "| tokens | bare sdpa forward (s) | capture (s) | capture / bare | target | record (MiB) | peak (MiB) |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["rows"]:
        met = "met" if row["ratio"] <= CAPTURE_TARGET else "missed"
        lines.append(
            f"| {row['tokens']} | {row['bare']:.3f} | {row['capture']:.3f} | {row['ratio']:.2f}x | "
            f"<= {CAPTURE_TARGET}x: {met} | {row['record_mib']:.0f} | {row['peak_mib']:.0f} |"
        )
    longest = max(row["tokens"] for row in results["rows"])
    lines += ["", f"Views at {longest} tokens (payload shaping, first call):", ""]
    lines += ["| view | seconds | within 1 s |", "|---|---:|---|"]
    for name, seconds in results["views"].items():
        lines.append(f"| {name} | {seconds:.3f} | {'yes' if seconds <= VIEW_TARGET else 'no'} |")
    paths = sorted({row["path"] for row in results["rows"]})
    lines += ["", f"Attention path: {', '.join(paths)}."]
    return f"<!-- {MARK}:{label} -->\n" + "\n".join(lines) + f"\n<!-- /{MARK}:{label} -->\n"


def publish(path: Path, block: str, label: str) -> None:
    """Replace this label's block in ``path`` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {MARK}:{label} -->", f"<!-- /{MARK}:{label} -->\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = measure(args)
    for name, seconds in results["views"].items():
        print(f"view {name}: {seconds:.3f} s", flush=True)
    if args.out:
        label = args.label or f"{args.model}-{args.device}"
        publish(args.out, markdown(results, label), label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
