"""The capture alone, in one process: the recorded forward pass against the bare sdpa forward pass
of the same loaded model, and every view's payload at the longest prompt. Not a test: it prints
figures and ratios (and, with --out, writes them into docs/benchmarks.md). Runs on the CPU or,
with --device cuda, on a GPU (scripts/device-check).

    .venv/bin/python -m benchmarks.capture                         # smollm2, 128 / 1024 / 4096 tokens
    .venv/bin/python -m benchmarks.capture --device cuda --out docs/benchmarks.md
    .venv/bin/python -m benchmarks.capture --device cuda --random-weights \
        --model llama-8b=benchmarks/configs/llama-3.1-8b --tokenizer smollm2

``--model`` takes a registered name or NAME=FOLDER_OR_HUB_ID. With --random-weights the model is
built from its config alone (a folder holding config.json; the tokenizer is --tokenizer's): a
capture does the same work whatever the weights are, so a model whose weights are not on the
machine (a Llama-3.1-8B on a lent GPU) is timed, and its memory measured against models.budget's
plan.

Each size: one warm-up capture, then the best of --repeats of (bare forward, capture) timed back
to back, so a busy machine slows both alike and the ratio stays honest. Peak memory: this
process's peak RSS on the CPU, the allocator's peak on CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
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
PEAK_MEANS = {  # what the peak column measures, by device (True: the CPU)
    True: "the process's peak RSS",
    False: "the CUDA allocator's peak during the size, weights included",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="registered name or NAME=FOLDER_OR_HUB_ID (default smollm2)")
    parser.add_argument("--random-weights", action="store_true", help="build the model from its config, weights random")
    parser.add_argument("--tokenizer", help="with --random-weights: whose tokenizer (NAME or NAME=FOLDER)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"prompt lengths in tokens (default {DEFAULT_SIZES})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed (forward, capture) pairs per size (best kept)")
    parser.add_argument("--out", type=Path, help="write the figures into this Markdown file")
    parser.add_argument("--label", help="name of this run's block in --out (default: model and device)")
    parser.add_argument("--profile", action="store_true", help="then profile one capture of the longest size")
    return parser.parse_args(argv)


def load(args: argparse.Namespace):
    """The app's own loader (its precision: models.loading.model_dtype), moved to ``--device``;
    or, with --random-weights, the model built from its config on that device."""
    import torch

    from app.config import default_cache_dir
    from models.loading import ModelLoader
    from models.registry import load_registry

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    registry = load_registry(extra_args=[spec for spec in (args.model, args.tokenizer or "") if "=" in spec])
    name = args.model.partition("=")[0]
    if args.random_weights:
        words = registry.get((args.tokenizer or name).partition("=")[0])
        handle = random_handle(registry.get(name), words)
    else:
        handle = ModelLoader(registry, Path(default_cache_dir()) / "converted").get(name)
    if args.device == "cuda" and handle.device.type != "cuda":
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_grad_enabled(False)
    return handle


def random_handle(spec, words):
    """``spec``'s model with seeded random weights, built on the loader's device in its dtype with
    the capture attention; its tokenizer is ``words``'s (any whose ids fit the vocabulary)."""
    import threading

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from models.blocks import prepare_blocked_pass
    from models.loading import ModelHandle, model_class, model_dtype, pick_device
    from models.recorder import ATTENTION_IMPLEMENTATION, register_capture_attention

    register_capture_attention()
    device = pick_device()
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(spec.source(), **_gguf(spec))
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class(config, bool(spec.gguf_file)).from_config(
            config, attn_implementation=ATTENTION_IMPLEMENTATION, dtype=model_dtype(config, device)
        )
    prepare_blocked_pass()  # as the loader does
    tokenizer = AutoTokenizer.from_pretrained(words.source(), **_gguf(words))
    seconds = time.perf_counter() - started
    longest = dataclasses.replace(spec, max_tokens=getattr(config, "max_position_embeddings", None) or spec.max_tokens)
    return ModelHandle(spec.name, longest, model.eval(), tokenizer, device, "random", seconds, threading.Lock())


def _gguf(spec) -> dict:
    return {"gguf_file": spec.gguf_file} if spec.gguf_file else {}


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
    """The allocator's peak since the size began on CUDA (weights included); peak RSS on the CPU."""
    import torch

    if handle.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args) -> dict:
    import torch

    from benchmarks.prompts import exact_prompt, source_text

    handle = load(args)
    source = source_text()
    sizes = [int(size) for size in args.sizes.split(",")]
    rows, views = [], {}
    capture_seconds(handle, exact_prompt(handle.tokenizer, 32, source))  # warm-up: one-time costs
    for size in sizes:
        text = exact_prompt(handle.tokenizer, size, source)
        ids = torch.tensor([handle.tokenizer(text)["input_ids"]], device=handle.device)
        if handle.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
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
                "plan_mib": planned_bytes(handle, size) / 2**20,
            }
        )
        print(_row_line(rows[-1]), flush=True)
        if size == max(sizes):
            views = view_seconds(capture)
        del capture
    return {
        "model": args.model.partition("=")[0] + (" (random weights)" if args.random_weights else ""),
        "device": describe_device(handle),
        "weights_mib": weight_bytes(handle) / 2**20,
        "rows": rows,
        "views": views,
        "handle": handle,
    }


def weight_bytes(handle) -> int:
    tensors = (*handle.model.parameters(), *handle.model.buffers())
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def planned_bytes(handle, tokens: int) -> int:
    """What models.budget plans beyond the weights for this capture (the recorder's own check)."""
    from models.recorder import capture_plan

    return capture_plan(handle)(tokens).total


def describe_device(handle) -> str:
    import torch

    if handle.device.type == "cuda":
        return f"{torch.cuda.get_device_name()} ({handle.describe()['dtype']})"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads ({handle.describe()['dtype']})"


def _row_line(row: dict) -> str:
    return (
        f"{row['tokens']:>5} tokens: bare {row['bare']:.3f} s, capture {row['capture']:.3f} s, "
        f"ratio {row['ratio']:.2f}, record {row['record_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB "
        f"(plan beyond the weights {row['plan_mib']:.0f} MiB), "
        f"{row['path']}"
    )


def markdown(results: dict, label: str) -> str:
    lines = [
        f"Model `{results['model']}` on {results['device']}, {time.strftime('%Y-%m-%d')}, "
        "`python -m benchmarks.capture` (in one process; best of the repeats). "
        f"Weights {results['weights_mib']:,.0f} MiB; peak: {PEAK_MEANS[results['device'].startswith('CPU')]}; "
        "plan: models.budget's estimate beyond the weights, which the recorder checks before a pass.",
        "",
        "| tokens | bare sdpa forward (s) | capture (s) | capture / bare | target | record (MiB) | peak (MiB) "
        "| plan (MiB) |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        met = "met" if row["ratio"] <= CAPTURE_TARGET else "missed"
        lines.append(
            f"| {row['tokens']} | {row['bare']:.3f} | {row['capture']:.3f} | {row['ratio']:.2f}x | "
            f"<= {CAPTURE_TARGET}x: {met} | {row['record_mib']:.0f} | {row['peak_mib']:,.0f} | {row['plan_mib']:,.0f} |"
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


def profile(handle, text: str) -> str:
    """Where one capture's time goes: the host's functions by their own time (cProfile) and, on
    CUDA, the kernels by theirs (torch.profiler)."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    host = cProfile.Profile()
    host.enable()
    capture_seconds(handle, text)
    host.disable()
    report = io.StringIO()
    pstats.Stats(host, stream=report).sort_stats("tottime").print_stats(30)
    if handle.device.type == "cuda":
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as kernels:
            capture_seconds(handle, text)
        report.write(kernels.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
    return report.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = measure(args)
    for name, seconds in results["views"].items():
        print(f"view {name}: {seconds:.3f} s", flush=True)
    if args.out:
        label = args.label or f"{args.model}-{args.device}"
        publish(args.out, markdown(results, label), label)
    if args.profile:
        from benchmarks.prompts import exact_prompt, source_text

        handle = results["handle"]
        longest = max(int(size) for size in args.sizes.split(","))
        print(profile(handle, exact_prompt(handle.tokenizer, longest, source_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
