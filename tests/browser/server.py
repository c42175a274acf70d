"""The browser harness shared by the browser tests and scripts/screenshots.py: the real app
(`python -m app serve`) on a free loopback port, and how to launch Debian's Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60  # the server imports Flask and Bokeh, not torch, before it answers
CHROMIUM = "/usr/bin/chromium"  # Debian's build; never `playwright install`
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(cache_dir: str | Path, log: Path, env: dict[str, str] | None = None, port: int | None = None):
    """Yield the base URL of a fresh server that caches in `cache_dir` and writes its output to
    `log`; stop it afterwards. Raises RuntimeError (with the log's tail) if it exits or does not
    answer within START_SECONDS."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "app",
        "--cache-dir",
        str(cache_dir),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no answer from {url} in {START_SECONDS} s:\n{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
