"""Scale-out load tests (``scripts/loadtest.py --web N [--workers M] [--followers F]``): several
real web processes and model workers sharing one real ``redis-server`` on this machine.

- :class:`Cluster` starts redis-server (a port in ``REDIS_PORTS``), ``--web`` processes
  (``python -m app serve``, or the Procfile's gunicorn line with ``--server procfile``; ports
  from loadtest's range) and ``--workers`` model workers (``python -m app worker --preload
  minilm``; the web processes then run ``MODEL_WORKERS``).
- :func:`follow` is the lecture hall: one presenter on the first web process changes the view
  every ``--every`` seconds; ``--followers`` clients spread over the web processes record when
  each view reaches them. Reports the delivery latency (send to receipt, one machine's clock)
  and every view a follower missed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from scripts.loadtest import free_port, in_order_client, procfile_command, procfile_environment

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "/atlas"
REDIS_PORTS = range(6400, 6450)
START_SECONDS = 180  # web processes and workers (a worker loads its model first)
OPENERS = 16  # threads connecting followers
CONNECT_SECONDS = 60


class Cluster:
    """redis-server, ``webs`` web processes and ``workers`` model workers, each with a log in
    ``folder``; :meth:`stop` ends them all."""

    def __init__(self, folder: str, webs: int, workers: int, env: dict, web_ports: range, server: str = "dev"):
        self.folder, self.processes, self.urls = Path(folder), [], []
        redis_port = free_port(REDIS_PORTS)
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis = shutil.which("redis-server") or sys.exit("redis-server is not installed")
        self._spawn("redis", [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""], {})
        shared = {
            "ATLAS_REDIS_URL": self.redis_url,
            "ATLAS_SECRET_KEY": "loadtest",
            **({"ATLAS_MODEL_WORKERS": "true"} if workers else {}),
            **env,
        }
        for index in range(workers):
            cache = str(self.folder / f"worker{index}")
            self._spawn(f"worker{index}", self._app(cache, "worker", "--preload", "minilm"), shared)
        for index in range(webs):
            port = free_port(web_ports)
            cache = str(self.folder / f"web{index}")
            if server == "procfile":
                preload = {} if workers else {"ATLAS_PRELOAD_MODELS": '["minilm"]'}
                environment = {**procfile_environment(), **shared, "ATLAS_CACHE_DIR": cache, **preload}
                self._spawn(f"web{index}", procfile_command(port), environment)
            else:
                serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
                preload = [] if workers else ["--preload", "minilm"]
                self._spawn(f"web{index}", self._app(cache, *serve, *preload), shared)
            self.urls.append(f"http://127.0.0.1:{port}")
            self._answering(self.urls[-1])

    @staticmethod
    def _app(cache: str, *command: str) -> list[str]:
        return [sys.executable, "-m", "app", "--cache-dir", cache, *command]

    def _spawn(self, name: str, command: list[str], env: dict) -> None:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115  (the process's output for its lifetime)
        self.processes.append(
            subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        )

    def _answering(self, url: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/models", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                    self.stop()
                    raise SystemExit(f"{url} did not start: see the logs in {self.folder}") from None
                time.sleep(0.25)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes[1:]]  # not redis

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Follower:
    """One student's tab following the presenter: the time each view (``n=<sequence>``) arrived."""

    def __init__(self, url: str):
        self.url, self.received, self.failure = url, {}, None
        self.client = in_order_client(reconnection=False)
        self.client.on("present_state", self.on_state, namespace=NAMESPACE)

    def on_state(self, payload: dict) -> None:
        fields = dict(pair.split("=", 1) for pair in payload.get("state", "").split("&") if "=" in pair)
        if "n" in fields:
            self.received.setdefault(int(fields["n"]), time.time())

    def join(self, code: str) -> None:
        try:
            self.client.connect(self.url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30)
            websocket = self.client.eio.ws  # the dev server never echoes the close frame: do not wait 3 s
            websocket.close = functools.partial(websocket.close, timeout=0.2)
            self.client.emit("present_join", {"rid": "join", "code": code}, namespace=NAMESPACE)
        except Exception as error:  # noqa: BLE001 - reported, counted as a failure of this follower
            self.failure = f"{type(error).__name__}: {error}"


def follow(cluster: Cluster, followers: int, seconds: float, every: float) -> dict:
    """A presenter on the first web process changes the view every ``every`` seconds for
    ``seconds``; ``followers`` clients, round robin over the web processes, follow it."""
    presenter = in_order_client(reconnection=False)
    started: dict = {}
    presenter.on("present_started", started.update, namespace=NAMESPACE)
    presenter.connect(cluster.urls[0], namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30)
    presenter.emit("present_start", {"rid": "start"}, namespace=NAMESPACE)
    deadline = time.monotonic() + CONNECT_SECONDS
    while "code" not in started and time.monotonic() < deadline:
        time.sleep(0.05)
    room = {"code": started["code"], "secret": started["secret"]}
    tabs = [Follower(cluster.urls[i % len(cluster.urls)]) for i in range(followers)]
    in_parallel([lambda tab=tab: tab.join(room["code"]) for tab in tabs])
    joined = [tab for tab in tabs if tab.failure is None]
    time.sleep(2)  # the last joins reach their rooms
    sent: dict[int, float] = {}
    for sequence in range(int(seconds / every)):
        sent[sequence] = time.time()
        state = f"model=minilm&text=The+cat+sat&view=head&layer={sequence % 6}&n={sequence}"
        presenter.emit("present_update", {"rid": f"u{sequence}", **room, "state": state}, namespace=NAMESPACE)
        time.sleep(every)
    time.sleep(2)  # the last view in flight
    latencies = [tab.received[n] - at for tab in joined for n, at in sent.items() if n in tab.received]
    missed = sum(n not in tab.received for tab in joined for n in sent)
    in_parallel([client.disconnect for client in [presenter, *(tab.client for tab in tabs)] if client.connected])
    latencies.sort()
    return {
        "followers": followers,
        "joined": len(joined),
        "join_failures": sorted({tab.failure for tab in tabs if tab.failure})[:5],
        "web_processes": len(cluster.urls),
        "views_sent": len(sent),
        "deliveries": len(latencies),
        "missed": missed,
        "delivery_ms": {
            "p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(1000 * latencies[-1], 1) if latencies else None,
        },
    }


def in_parallel(calls: list) -> None:
    """Run ``calls`` on OPENERS threads (connecting or closing hundreds of sockets)."""
    threads = [
        threading.Thread(target=lambda part=part: [call() for call in calls[part::OPENERS]]) for part in range(OPENERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def print_report(result: dict, path: str | None) -> None:
    print(json.dumps(result, indent=2))
    if path:
        Path(path).write_text(json.dumps(result, indent=2))
