"""How fast the global view opens from the cache: a fresh server (`python -m app serve`) on a
cache that holds a model's atlas (`python -m app atlas --model NAME` first), then the `atlas`
answer and one head after another over HTTP, the first read of each from disk, and again from
memory. Prints seconds per request and the answer sizes; a script, not a test.

    .venv/bin/python -m benchmarks.globalview --cache-dir DIR --model smollm2 --heads 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.browser.server import running_server


def timed_get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    seconds = time.perf_counter() - started
    json.loads(body)
    return seconds, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--corpus", default="builtin")
    parser.add_argument("--heads", type=int, default=5, help="heads to open, spread over the layers")
    args = parser.parse_args()
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
