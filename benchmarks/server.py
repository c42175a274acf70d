"""The real Attention Atlas server as a subprocess, its memory, and a Socket.IO client that
times repeated (cached) analyses the way the browser sends them."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
import socketio

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "/atlas"  # app.protocol.NAMESPACE (not imported: that would import the app here)
START_TIMEOUT = 180  # s for the server to answer and load its model
REQUEST_TIMEOUT = 900  # s for one analysis, however long the prompt
# The per-client rate limits exist to stop exactly what the cached-repeat measurement does
# (hundreds of back-to-back analyses from one connection), so the benchmark's server runs without.
CACHED_TIME_LIMIT = 60  # s of cached repeats per prompt at most; fewer repeats are reported as such
SERVER_ENV = {"ATLAS_RATE_ANALYZE_PER_MINUTE": "0", "ATLAS_RATE_EVENTS_PER_SECOND": "0"}


class Server:
    """``python -m app serve`` on ``port`` with ``cache_dir``, the model preloaded.

    Raises RuntimeError (with the server's log tail) when it does not come up in time.
    """

    def __init__(self, port: int, cache_dir: Path, model: str, log_path: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.model = model
        self.log_path = log_path
        command = [
            sys.executable,
            "-m",
            "app",
            "--cache-dir",
            str(cache_dir),
            "serve",
            "--port",
            str(port),
            "--preload",
            model,
        ]
        env = {**os.environ, **SERVER_ENV, "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "wb")  # noqa: SIM115  (open for the server's lifetime, closed in stop())
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> float:
        """Seconds until the page answers and the model reports loaded."""
        started = time.perf_counter()
        while time.perf_counter() - started < START_TIMEOUT:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                models = requests.get(f"{self.url}/api/models", timeout=2).json()["models"]
                if any(entry["name"] == self.model and entry["loaded"] for entry in models):
                    return time.perf_counter() - started
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the server did not load {self.model} in {START_TIMEOUT} s:\n{self.log_tail()}")

    def peak_rss(self) -> int:
        """Bytes: the kernel's high-water mark of the server's resident memory (VmHWM)."""
        return _status_bytes(self.pid, "VmHWM")

    def rss(self) -> int:
        return _status_bytes(self.pid, "VmRSS")

    def reset_peak(self) -> None:
        """Restart the high-water mark from the current RSS (Linux: ``5`` > clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


class AtlasClient:
    """One Socket.IO connection (WebSocket transport, like the page) that runs analyses."""

    def __init__(self, url: str):
        # websocket-client checks every text frame for valid UTF-8 in pure Python (1 ms per 3 KB) before
        # Python decodes it again, strictly, in C; a browser pays neither, so the check is skipped
        self.client = socketio.Client(reconnection=False, websocket_extra_options={"skip_utf8_validation": True})
        _handle_messages_in_order(self.client)
        self._answers: dict = {}
        self._done = threading.Condition()
        for event in ("progress", "tokens", "overview", "layer", "done", "error"):
            self.client.on(event, self._handler(event), namespace=NAMESPACE)
        self.client.connect(url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10)
        self._rid = 0

    def _handler(self, event: str):
        def handle(payload):
            at = time.perf_counter()
            with self._done:
                self._answers.setdefault(payload.get("rid"), []).append((event, at, payload))
                self._done.notify_all()

        return handle

    def analyze(self, model: str, text: str, timeout: float = REQUEST_TIMEOUT) -> dict:
        """Send ``analyze`` and wait for ``done``: seconds to each event and the done payload.

        Raises RuntimeError on an ``error`` event or when no answer comes in ``timeout`` s.
        """
        self._rid += 1
        rid = self._rid
        started = time.perf_counter()
        self.client.emit("analyze", {"rid": rid, "model": model, "text": text}, namespace=NAMESPACE)
        with self._done:
            finished = self._done.wait_for(
                lambda: any(event in ("done", "error") for event, _, _ in self._answers.get(rid, [])), timeout
            )
            answers = self._answers.pop(rid, [])
        if not finished:
            raise RuntimeError(f"no answer to analyze in {timeout:.0f} s")
        for event, _, payload in answers:
            if event == "error":
                raise RuntimeError(f"analyze failed: {payload.get('code')}: {payload.get('message')}")
        seconds = {event: at - started for event, at, _ in answers}
        done = next(payload for event, _, payload in answers if event == "done")
        return {"seconds": seconds, "done": done}

    def close(self) -> None:
        self.client.disconnect()


def _handle_messages_in_order(client: socketio.Client) -> None:
    """python-engineio's client hands each message to a new thread, so a binary attachment can
    be decoded before the event it belongs to (a ValueError in the client, the event lost).
    The handlers here only record a timestamp, so they run in the reading thread, in order."""
    trigger = client.eio._trigger_event

    def in_order(event, *args, **kwargs):
        kwargs["run_async"] = False
        return trigger(event, *args, **kwargs)

    client.eio._trigger_event = in_order


def cached_repeats(client: AtlasClient, model: str, text: str, repeats: int) -> dict:
    """p50/p99 of ``repeats`` analyses of one (already cached) prompt: analyze -> done round
    trips seen by the client, and the server's own ``done.seconds``. Stops early after
    CACHED_TIME_LIMIT s (``count`` says how many ran). Raises RuntimeError if any answer was not
    served from the cache."""
    round_trips, server = [], []
    deadline = time.perf_counter() + CACHED_TIME_LIMIT
    for _ in range(repeats):
        if time.perf_counter() > deadline:
            break
        answer = client.analyze(model, text, CACHED_TIME_LIMIT)
        if not answer["done"]["cached"]:
            raise RuntimeError("a repeated prompt was not served from the cache")
        round_trips.append(answer["seconds"]["done"])
        server.append(answer["done"]["seconds"])
    return {
        "p50": percentile(round_trips, 50),
        "p99": percentile(round_trips, 99),
        "lookup_p50": percentile(server, 50),
        "lookup_p99": percentile(server, 99),
        "count": len(round_trips),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (statistics' 'inclusive' method)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)
