"""Attention Atlas against the bare forward pass and against BertViz, on prompts of 32 to 4096
tokens, in one run on one machine. Not a test: it prints a table and can write
docs/benchmarks.md. A full run with the defaults takes 15-25 minutes on a 2-core CPU.

    .venv/bin/python -m benchmarks.run                       # smollm2, all sizes, BertViz too
    .venv/bin/python -m benchmarks.run --sizes 32,128 --skip-bertviz
    .venv/bin/python -m benchmarks.run --out docs/benchmarks.md

Steps, one heavy thing at a time: (1) build prompts of exactly N tokens (several distinct ones
per size up to TRIAL_MAX_TOKENS); (2) start the real server (``python -m app serve``) on a fresh
results cache; per prompt, time the bare forward pass (sdpa, no attention output) in this
process, each run after LOAD_WINDOW_SECONDS idle as the analysis meets it (and, up to 512 tokens,
back to back too, reported beside), then right after it click Analyze in headless Chromium and
wait for the painted model view; per size, time repeated cached analyses with a Socket.IO
client, then open every other view; (3) per size, make BertViz's HTML in a memory-capped worker
and time its rendering in headless Chromium, until it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import browser, prompts, report  # noqa: E402
from benchmarks.machine import CpuMeter, describe_machine, wait_for_idle, wait_for_quiet  # noqa: E402
from benchmarks.server import AtlasClient, Server, cached_repeats  # noqa: E402

DEFAULT_SIZES = "32,128,512,1024,2048,4096"
BENCH_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-atlas-bench"
FIRST_VIEW_LIMIT = 600  # s from Analyze to the painted model view before a size counts as failed
BERTVIZ_LIMIT = 120  # s for BertViz's page to draw
BERTVIZ_HTML_LIMIT = 600  # s for BertViz's worker to run the model and write its HTML
BERTVIZ_MEMORY_CAP = 12 << 30  # bytes of address space for the BertViz worker, at most...
BERTVIZ_MEMORY_SHARE = 0.6  # ...and at most this share of the memory available when it starts
TRIAL_MAX_TOKENS = 1024  # prompts up to this long are measured --trials times (best kept)
WARM_UP_TEXT = "Warm-up: the first request pays one-time costs that no later request does."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"prompt lengths in tokens (default {DEFAULT_SIZES})")
    parser.add_argument("--model", default="smollm2", help="registered model name (default smollm2)")
    parser.add_argument("--skip-bertviz", action="store_true", help="measure Attention Atlas only")
    parser.add_argument("--repeats", type=int, default=200, help="cached repeats per size (default 200)")
    parser.add_argument(
        "--trials",
        type=int,
        default=3,
        help=f"distinct uncached prompts per size up to {TRIAL_MAX_TOKENS} tokens; the best "
        "figures are kept (default 3)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        metavar="SECONDS",
        help="before each measurement wait up to this long for other processes to leave "
        "the CPU mostly idle (default 30; 0 = don't wait)",
    )
    parser.add_argument("--port", type=int, default=5063, help="port for the server (default 5063)")
    parser.add_argument("--out", type=Path, help="write the results into this Markdown file (docs/benchmarks.md)")
    parser.add_argument("--label", help="name of this run's block in --out (default: the model name)")
    parser.add_argument("--json", type=Path, help="also save the raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary folder")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="measure nothing: print (and --out) the results saved earlier with --json",
    )
    args = parser.parse_args(argv)
    args.sizes = sorted({int(size) for size in args.sizes.split(",") if size.strip()})
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_prompts(source: str, sizes: list[int], trials: int) -> dict[int, list[str]]:
    """Per size, distinct prompts of exactly that many tokens: ``trials`` of them up to
    TRIAL_MAX_TOKENS, one above (a long prompt takes a minute per run)."""
    from benchmarks.weights import load_tokenizer

    tokenizer = load_tokenizer(source)
    text = prompts.source_text()
    return {
        n: [
            prompts.exact_prompt(tokenizer, n, text, variant)
            for variant in range(trials if n <= TRIAL_MAX_TOKENS else 1)
        ]
        for n in sizes
    }


# The server sizes a job's torch team to the cores other processes left free over the last half
# second (app.cores); the bare pass and Chromium's page load just before Analyze would count.
LOAD_WINDOW_SECONDS = 0.6


def first_view_trials(args, chromium, server: Server, bare, texts: list[str]) -> dict:
    """Each prompt: the bare forward pass, then right after it (so both meet the same load from
    other processes) Attention Atlas from Analyze to the painted model view on a fresh page.
    Keeps every trial and the best (minimum) of each figure; returns the last page for more."""
    trials = []
    for text in texts:
        wait_for_quiet(args.quiet_wait)
        meter = CpuMeter()
        floor = bare.seconds(text, idle=LOAD_WINDOW_SECONDS)  # from idle, as the analysis below starts
        back_to_back = bare.seconds(text) if bare.repeats(text) > 1 else None  # warm: reported beside
        page, frames = browser.open_atlas(chromium, server.url)
        time.sleep(LOAD_WINDOW_SECONDS)  # the bare pass and the page load are this run's work, not load on the server
        trial = {
            "bare": floor,
            "bare_back_to_back": back_to_back,
            **browser.atlas_first_view(page, frames, args.model, text, FIRST_VIEW_LIMIT),
            "background_cpu": meter.other_share(),
        }
        trials.append(trial)
        if text is not texts[-1]:
            page.context.close()
    best = {
        name: min(trial[name] for trial in trials)
        for name in ("bare", "capture_seconds", "forward_seconds", "overview", "painted")
    }
    warm = [trial["bare_back_to_back"] for trial in trials if trial["bare_back_to_back"]]
    best["bare_back_to_back"] = min(warm) if warm else None
    load = sum(trial["background_cpu"] for trial in trials) / len(trials)
    return {**trials[0], **best, "background_cpu": load, "trials": trials, "page": page, "frames": frames}


def measure_atlas(args, cache_dir: Path, run_dir: Path, variants: dict[int, list[str]], bare) -> dict:
    """Per size: the bare forward pass and the first view (best of the trials), every other
    view, cached repeats, server memory."""
    server = Server(args.port, cache_dir, args.model, run_dir / "server.log")
    results: dict = {"sizes": {}}
    try:
        results["server_start_seconds"] = server.wait_ready()
        log(f"server ready on {server.url} (pid {server.pid}, {server.rss() / 2**20:.0f} MiB)")
        client = AtlasClient(server.url)
        with browser.Chromium() as chromium:
            results["page_bytes"] = browser.page_asset_bytes(chromium, server.url)
            page, frames = browser.open_atlas(chromium, server.url)
            browser.atlas_first_view(page, frames, args.model, WARM_UP_TEXT, FIRST_VIEW_LIMIT)
            page.context.close()
            for n, texts in sorted(variants.items()):
                entry: dict = {}
                rss_start = server.rss()  # the results cache still holds the smaller sizes (<= 1 GiB)
                server.reset_peak()
                try:
                    entry = first_view_trials(args, chromium, server, bare, texts)
                    page, frames = entry.pop("page"), entry.pop("frames")
                    log(
                        f"atlas N={n}: bare {entry['bare']:.2f} s, capture {entry['capture_seconds']:.2f} s, "
                        f"painted {entry['painted']:.2f} s, {entry['bytes_first_view'] / 1024:.0f} KB before the view "
                        f"(best of {len(texts)}; other processes' CPU load {entry['background_cpu']:.0%})"
                    )
                    wait_for_quiet(args.quiet_wait)  # before the views: their work would slow the server
                    wait_for_idle(server.pid, args.quiet_wait)  # and the server has stored the record
                    entry["cached"] = cached_repeats(client, args.model, texts[-1], args.repeats)
                    entry["views"] = browser.atlas_views(page, frames)
                    entry["bytes_all_views"] = frames.received(0)
                    page.context.close()
                    log(
                        f"atlas N={n}: cached p50 {entry['cached']['p50'] * 1000:.1f} ms p99 "
                        f"{entry['cached']['p99'] * 1000:.1f} ms; views {report.views_summary(entry['views'])}"
                    )
                except RuntimeError as error:
                    entry["error"] = str(error)
                    log(f"atlas N={n}: FAILED {error}")
                entry["rss_start"], entry["peak_rss"] = rss_start, server.peak_rss()
                results["sizes"][n] = entry
        client.close()
    finally:
        server.stop()
    return results


def measure_bertviz(source: str, texts: dict[int, str], run_dir: Path, quiet_wait: float) -> dict:
    """Per size and view: HTML bytes and seconds, render seconds, or where it failed. A view
    that failed at one size is not tried at larger ones."""
    import psutil

    cdn_files = browser.local_cdn_files(BENCH_CACHE / "js")
    failed: dict[str, int] = {}
    results: dict = {}
    for n, text in sorted(texts.items()):
        views = [view for view in ("model_view", "head_view") if view not in failed]
        entry: dict = {view: {"skipped": f"failed at {failed[view]} tokens"} for view in failed}
        results[n] = entry
        if not views:
            continue
        work = run_dir / f"bertviz-{n}"
        work.mkdir()
        wait_for_quiet(quiet_wait)
        meter = CpuMeter()
        (work / "prompt.txt").write_text(text, encoding="utf-8")
        memory = int(min(BERTVIZ_MEMORY_CAP, BERTVIZ_MEMORY_SHARE * psutil.virtual_memory().available))
        command = [
            sys.executable,
            "-m",
            "benchmarks.bertviz_html",
            source,
            str(work / "prompt.txt"),
            str(work),
            str(memory),
            ",".join(views),
        ]
        try:
            done = subprocess.run(command, cwd=report.REPO, capture_output=True, text=True, timeout=BERTVIZ_HTML_LIMIT)
            made = json.loads(done.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            made = {"error": f"no HTML within {BERTVIZ_HTML_LIMIT} s"}
        except (ValueError, IndexError):
            made = {"error": f"the worker failed: {done.stderr.strip()[-300:]}"}
        entry["forward_seconds"] = made.get("forward_seconds")
        entry["memory_limit"] = memory
        entry["background_cpu"] = meter.other_share()  # HTML generation only; rendering runs after
        for view in views:
            result = dict(made.get(view) or {"error": made.get("error", "no result")})
            if "path" in result:
                html = Path(result.pop("path"))
                result.update(browser.bertviz_render(html, cdn_files, BERTVIZ_LIMIT))
                html.unlink()
            if "error" in result:
                failed[view] = n
            entry[view] = result
            log(f"bertviz N={n} {view}: {report.bertviz_summary(result)}")
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return publish(args, json.loads(args.from_json.read_text()))
    from benchmarks.weights import BareForward, weights_source

    run_dir = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    cache_dir = run_dir / "cache"
    cache_dir.mkdir()
    converted = BENCH_CACHE / "converted"  # dequantized GGUF weights, kept between runs
    converted.mkdir(parents=True, exist_ok=True)
    (cache_dir / "converted").symlink_to(converted)
    started = time.perf_counter()
    try:
        log(f"preparing {args.model} (the first run converts GGUF weights, ~25 s)")
        source = weights_source(args.model, converted)
        variants = build_prompts(source, args.sizes, args.trials)
        results = {
            "model": args.model,
            "label": args.label or args.model,
            "machine": describe_machine(),
            "repeats": args.repeats,
        }
        bare = BareForward(source)
        try:
            results["atlas"] = measure_atlas(args, cache_dir, run_dir, variants, bare)
        finally:
            bare.close()
        if not args.skip_bertviz:
            results["bertviz"] = measure_bertviz(
                source, {n: texts[0] for n, texts in variants.items()}, run_dir, args.quiet_wait
            )
        results["seconds"] = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            log(f"kept {run_dir}")

    return publish(args, json.loads(json.dumps(results)))  # int keys -> str, as in a saved file


def publish(args, results: dict) -> int:
    if args.label:
        results["label"] = args.label
    print(report.render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.out:
        report.write_markdown(args.out, results)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
