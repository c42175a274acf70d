"""What the global view costs, in two parts; a script that prints figures, not a test.

Reads (the default): a fresh server (`python -m app serve`) on a cache that holds a model's atlas
(`python -m app atlas --model NAME` first), then the `atlas` answer and one head after another
over HTTP, the first read of each from disk, and again from memory.

Build (``--build N``): the atlas of an N-text corpus computed in this process into an empty cache
folder, phase by phase: the model over every text, storing the index and layers with every head's
PCA, the index's size on disk, the process's memory, t-SNE and UMAP of one head; then the reads
above on that folder. The corpus is the built-in one, then (past its 370 texts) texts made
deterministically from it: the first half of one built-in text's words and the second half of
another's, so lengths and vocabulary stay those of the built-in corpus. ``--scale K`` also times
``--methods`` on one stored head's vectors repeated K times with a little noise: what a K times
larger corpus gives one head to project (the projections' time depends on the number of points).

    .venv/bin/python -m benchmarks.globalview --cache-dir DIR --model smollm2 --heads 5
    .venv/bin/python -m benchmarks.globalview --cache-dir NEW_DIR --model smollm2 --build 1000
    .venv/bin/python -m benchmarks.globalview --cache-dir DIR --corpus ID --scale 10 --methods pca,umap
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from tests.browser.server import running_server

NOISE = 0.01  # of each coordinate's spread, added to the repeated vectors of --scale


def timed_get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    seconds = time.perf_counter() - started
    json.loads(body)
    return seconds, len(body)


def texts_of(count: int) -> tuple[str, ...]:
    """``count`` texts: the built-in ones, then halves of two of them joined (seeded by position)."""
    from app.globalview.corpus import builtin_corpus

    builtin = builtin_corpus().texts
    texts = list(builtin[:count])
    for i in range(len(texts), count):
        first, second = np.random.default_rng(i).choice(len(builtin), 2, replace=False)
        a, b = builtin[first].split(), builtin[second].split()
        texts.append(" ".join(a[: len(a) // 2] + b[len(b) // 2 :]))
    return tuple(texts)


def memory_mb() -> tuple[float, float]:
    """(resident now, peak resident) of this process, MB (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def timed(what: str, work):
    started = time.perf_counter()
    result = work()
    print(f"{what}: {time.perf_counter() - started:.2f} s", flush=True)
    return result


def project_head(queries: np.ndarray, keys: np.ndarray, label: str, methods: list[str]) -> None:
    from app.globalview.embedding import joint_embedding

    for method in methods:
        timed(
            f"{method} of one head, {label} ({len(queries) + len(keys):,} points)",
            lambda m=method: joint_embedding(queries, keys, m),
        )


def scaled(args: argparse.Namespace) -> None:
    """Project the middle layer's head 0 of the stored atlas ``args.corpus``, its vectors
    repeated ``args.scale`` times with NOISE: what a corpus that many times larger gives one head."""
    from app import create_app
    from app.globalview.atlas import open_atlas

    service = create_app({"CACHE_DIR": args.cache_dir}).extensions["atlas"]
    stored = open_atlas(service, args.model, args.corpus)
    vectors = stored.entry(f"atlas:layer:{stored.meta['layers'] // 2}")
    noisy = np.random.default_rng(0)

    def repeated(points: np.ndarray) -> np.ndarray:
        tiled = np.tile(points, (args.scale, 1))
        return tiled + noisy.normal(0, NOISE, tiled.shape).astype(np.float32) * points.std(axis=0)

    queries = vectors["queries"][0].astype(np.float32)  # stored as float16: its sums of squares overflow
    keys = vectors["keys"][vectors["kv_map"][0]].astype(np.float32)
    print(f"load average: {os.getloadavg()}", flush=True)
    project_head(repeated(queries), repeated(keys), f"vectors repeated {args.scale} times", args.methods.split(","))


def build(args: argparse.Namespace) -> str:
    """Compute the atlas of ``args.build`` texts phase by phase; returns the corpus id."""
    from app import create_app
    from app.globalview import atlas
    from app.globalview.corpus import Corpus

    print(f"load average at start: {os.getloadavg()}", flush=True)
    service = create_app({"CACHE_DIR": args.cache_dir}).extensions["atlas"]
    name = service.model_name(args.model)
    corpus = Corpus(f"bench{args.build}", texts_of(args.build))
    timed(f"load {name}", lambda: service.model_work(name, lambda handle: None))
    before, _ = memory_mb()
    done = [0]

    def progress(count: int, total: int) -> None:
        done[0] = count
        if count % 100 == 0:
            print(f"  {count} of {total} texts, load {os.getloadavg()[0]:.2f}", flush=True)

    sentences = timed(
        f"the model over {args.build} texts", lambda: atlas.capture_texts(service, name, corpus, progress)
    )
    tokens = sum(len(s.tokens) for s in sentences)
    grown = memory_mb()[0] - before
    print(f"{len(sentences)} texts, {tokens:,} tokens; memory {grown:,.0f} MB over the loaded model", flush=True)
    key = atlas.atlas_key(service, name, corpus.id)

    def store() -> None:
        service.memo.get_or_compute(
            key, "atlas:matrix", lambda: atlas.store(service.memo, key, name, corpus, sentences)
        )

    timed("store: index, layers, PCA of every head", store)
    timed("write to disk (flush)", service.cache.flush)
    peak = memory_mb()[1]
    print(f"memory: model loaded {before:,.0f} MB, peak {peak:,.0f} MB (build {peak - before:,.0f} MB over the model)")
    print(f"cache on disk: {folder_mb(Path(args.cache_dir) / 'results'):,.0f} MB")
    layer, head = len(sentences[0].queries) // 2, 0
    vectors = atlas.layer_arrays(sentences, layer)
    queries = vectors["queries"][head].astype(np.float32)
    keys = vectors["keys"][vectors["kv_map"][head]].astype(np.float32)
    project_head(queries, keys, f"{args.build} texts", ["pca", "tsne", "umap"])
    print(f"load average at end: {os.getloadavg()}", flush=True)
    return corpus.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--corpus", default="builtin")
    parser.add_argument("--heads", type=int, default=5, help="heads to open, spread over the layers")
    parser.add_argument(
        "--build", type=int, default=0, help="first compute the atlas of this many texts (empty --cache-dir)"
    )
    parser.add_argument("--scale", type=int, default=1, help="also project one head repeated this many times")
    parser.add_argument("--methods", default="pca,tsne,umap", help="projections timed by --scale")
    args = parser.parse_args()
    if args.build:
        args.corpus = build(args)
    if args.scale > 1:
        scaled(args)
    log = Path(tempfile.mkdtemp()) / "server.log"
    with running_server(args.cache_dir, log) as url:
        base = f"{url}/api/atlas/{args.model}"
        seconds, size = timed_get(f"{base}?corpus={args.corpus}")
        print(f"atlas (tiles + corpus), first: {seconds:.3f} s, {size / 1024:.0f} KB of JSON")
        atlas = json.loads(urllib.request.urlopen(f"{base}?corpus={args.corpus}", timeout=600).read())
        layers, heads = atlas["layers"], atlas["heads"]
        for i in range(args.heads):
            layer, head = (i * layers) // args.heads, (i * 5) % heads
            first, size = timed_get(f"{base}/{layer}/{head}?corpus={args.corpus}&method=pca")
            again, _ = timed_get(f"{base}/{layer}/{head}?corpus={args.corpus}&method=pca")
            print(f"head {layer}.{head}: first {first:.3f} s, again {again:.3f} s, {size / 1024:.0f} KB of JSON")


if __name__ == "__main__":
    main()
