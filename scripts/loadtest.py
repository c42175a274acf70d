#!/usr/bin/env python3
"""A lecture hall as a load test: N real Socket.IO clients on loopback for a fixed time.

Each client (a python-socketio client, websocket transport, its own connection) loops: send an
``analyze`` with a unique ``rid`` (a shared prompt that is usually cached, a prompt of its own,
now and then a pasted novel or a prompt with markup), wait for its answer, ask for one to three
details of the result, think for a moment. It checks every event it receives: the rid must be
one it sent, the key must be the content address of the text it sent with that rid.

Reports lost requests (no answer; must be 0), answers delivered to the wrong client or with the
wrong key (must be 0), error codes, p50/p99 latency, and the server's resident memory. Exits 1
when anything was lost or misdelivered. Starts its own server (``python -m app serve`` on a free
port in 5081-5089, a fresh cache folder) unless ``--url`` names one on this machine; stops by
itself after ``--duration`` seconds plus a grace period for answers in flight.

    .venv/bin/python scripts/loadtest.py --clients 50 --duration 150

Long modes (not in CI; figures in docs/reliability.md):

    # 1,000 idle sockets + 50 active clients on the Procfile's gunicorn server: pages p99 <= 200 ms
    .venv/bin/python scripts/loadtest.py --server procfile --idle 1000 --clients 50 --duration 120
    # a hostile client mixing every abuse pattern while 30 honest clients analyse (compare with a
    # quiet run; --hostile-nice 19 leaves the two cores to the server, as if the attacker's CPU
    # were another machine's)
    .venv/bin/python scripts/loadtest.py --server procfile --clients 30 --hostile --duration 120
    .venv/bin/python scripts/loadtest.py --server procfile --clients 30 --hostile --hostile-nice 19 --duration 120
    # scale-out (scripts/scaleout.py, needs redis-server): 500 followers of a presenter over two
    # web processes (delivery p99 <= 500 ms, none missed); 50 clients over 2 web + 2 model workers
    .venv/bin/python scripts/loadtest.py --web 2 --followers 500 --duration 60
    .venv/bin/python scripts/loadtest.py --web 2 --workers 2 --clients 50 --duration 60
    # the hostile client against the Procfile's web process whose model work runs on the
    # Procfile's worker process (the README's setup for a class that may face a hostile client)
    .venv/bin/python scripts/loadtest.py --server procfile --web 1 --workers 1 --clients 30 --hostile --duration 120

``--idle`` opens raw WebSockets that connect the namespace and answer pings, nothing else; a
probe fetches ``/`` and ``/api/models`` every ``PROBE_SECONDS`` throughout and reports their
latency (``pages``). All connections come from 127.0.0.1, so the server it starts allows that
many sockets from one address (``ATLAS_MAX_SOCKETS_PER_ADDRESS``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACE = "/atlas"
MODEL = "minilm"
MAX_CLIENTS = 200  # the script refuses more: it is a classroom, not a flood
MAX_DURATION_SECONDS = 3600
GRACE_SECONDS = 120  # after the last request is sent, how long answers in flight may take
ANSWER_TIMEOUT_SECONDS = 180  # a request without an answer after this long is lost
PORTS = range(5081, 5090)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RSS_SAMPLE_SECONDS = 1.0
PROBE_SECONDS = 0.1  # how often the page probe fetches a page
BROWSER_CONNECT_TIMEOUT_SECONDS = 20  # how long the page's Socket.IO client waits for a connection
PAGES = ("/", "/api/models")  # what the probe fetches, in turn
IDLE_OPENERS = 16  # threads opening the idle sockets
CLASS_ADDRESS = "10.0.0.1"  # with --hostile: the honest class, all behind one NAT
HOSTILE_ADDRESS = "10.66.6.6"  # with --hostile: the attacker (the server trusts one proxy's X-Forwarded-For)
HOSTILE_SOCKETS = 200  # sockets the attacker tries to hold
PACED_SECONDS, PACED_RATE = 10.0, 30.0  # the attacker's paced flood: how long, requests per socket per second
SHARED_PROMPTS = [  # what a class pastes from the slide: mostly cached after the first request
    "The cat sat on the mat because it was tired.",
    "Attention is all you need.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "<script>alert('xss')</script> Tokens are text, never markup.",
    "<img src=x onerror=alert(1)> & &amp; &lt;b&gt; \"quoted\" 'single'",
    "Transformers read every word at once and decide where to look.",
    "Colourless green ideas sleep furiously.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "مرحبا بالعالم، هذا اختبار.",
    "Emoji 🤖🧠 and combining marks: é ñ ü.",
    "def f(x):\n    return x ** 2  # code is text too",
    "The keys to the cabinet are on the table.",
    "A man, a plan, a canal: Panama.",
    "Students paste the same link in the same minute.",
    "</textarea><svg onload=alert(2)>",
]
WORDS = [
    "attention",
    "head",
    "layer",
    "token",
    "query",
    "key",
    "value",
    "model",
    "softmax",
    "weight",
    "student",
    "lecture",
    "prompt",
    "matrix",
    "vector",
    "sentence",
    "grammar",
    "meaning",
    "context",
    "position",
    "embedding",
]
DETAILS = ("token", "layer", "matrix")


@dataclass
class Sent:
    text: str
    kind: str  # shared | own | long | novel
    at: float
    event: str = "analyze"
    key: str | None = None  # the expected key (details: the key asked about)
    answered: float | None = None
    outcome: str | None = None  # done | error code | detail event name
    cached: bool | None = None


@dataclass
class Stats:
    sent: dict[str, Sent] = field(default_factory=dict)  # rid -> request
    wrong_client: int = 0  # events whose rid this client never sent
    wrong_key: int = 0  # events for one of its rids but with another text's key
    wrong_text: int = 0
    max_position: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def in_order_client(**options):
    """A python-socketio client that handles incoming messages in arrival order.

    The stock client handles each Engine.IO message in a new thread, so the binary attachments
    of one packet can be taken out of order (``ValueError: Unexpected binary attachment``,
    python-socketio issue #436): a client-side race that would be counted here as lost answers.
    Browsers decode in order; so does this client.
    """
    import engineio
    import socketio

    class InOrderEngineIO(engineio.Client):
        def _trigger_event(self, event, *args, **kwargs):
            if event == "message":
                kwargs["run_async"] = False
            return super()._trigger_event(event, *args, **kwargs)

    class InOrderClient(socketio.Client):
        def _engineio_client_class(self):
            return InOrderEngineIO

    return InOrderClient(**options)


def expected_key(text: str, fingerprint: str) -> str:
    from app.cache import cache_key
    from app.service import CAPTURE_OPTIONS

    return cache_key(MODEL, fingerprint, text, CAPTURE_OPTIONS)


class Student(threading.Thread):
    """One browser tab: one connection, one request at a time, checks everything it receives."""

    def __init__(self, index: int, url: str, deadline: float, args, fingerprint: str):
        super().__init__(name=f"student-{index}", daemon=True)
        self.index, self.url, self.deadline, self.args = index, url, deadline, args
        self.fingerprint = fingerprint
        self.random = random.Random(args.seed * 1000 + index)
        self.stats = Stats()
        self.answered = threading.Condition()
        self.client = None
        self.failure: str | None = None
        self.sequence = 0

    # --- receiving -------------------------------------------------------------------------------
    def on_event(self, event: str, payload) -> None:
        rid = payload.get("rid") if isinstance(payload, dict) else None
        with self.stats.lock:
            sent = self.stats.sent.get(rid)
            if sent is None:
                if event not in ("present_state",):
                    self.stats.wrong_client += 1
                return
            if event == "progress":
                self.stats.max_position = max(self.stats.max_position, int(payload.get("position") or 0))
                return
            key = payload.get("key")
            if key is not None and sent.key is not None and key != sent.key:
                self.stats.wrong_key += 1
            if event == "tokens" and payload.get("text") != sent.text:
                self.stats.wrong_text += 1
            terminal = event in ("done", "error") if sent.event == "analyze" else event in (sent.event, "error")
            if terminal and sent.answered is None:
                sent.answered = time.monotonic()
                sent.outcome = payload.get("code") if event == "error" else event
                sent.cached = payload.get("cached")
        if terminal:
            with self.answered:
                self.answered.notify_all()

    # --- sending ---------------------------------------------------------------------------------
    def request(self, event: str, payload: dict, sent: Sent) -> Sent:
        self.sequence += 1
        rid = f"s{self.index}-{self.sequence}"
        with self.stats.lock:
            self.stats.sent[rid] = sent
        self.client.emit(event, {"rid": rid, **payload}, namespace=NAMESPACE)
        with self.answered:
            self.answered.wait_for(lambda: sent.answered is not None, timeout=ANSWER_TIMEOUT_SECONDS)
        return sent

    def prompt(self) -> tuple[str, str]:
        roll = self.random.random()
        if roll < self.args.novels:
            return "novel", "It was a dark and stormy night. " * 2200  # ~70,000 characters
        if roll < self.args.novels + self.args.long:
            words = [self.random.choice(WORDS) for _ in range(self.random.randint(250, 380))]
            return "long", f"Student {self.index}, essay {self.sequence}: " + " ".join(words)
        if roll < self.args.novels + self.args.long + self.args.uncached:
            words = [self.random.choice(WORDS) for _ in range(self.random.randint(5, 60))]
            return "own", f"Student {self.index} asks question {self.sequence}: " + " ".join(words) + "?"
        return "shared", self.random.choice(SHARED_PROMPTS)

    def run(self) -> None:
        self.client = in_order_client(reconnection=False, request_timeout=BROWSER_CONNECT_TIMEOUT_SECONDS)
        self.client.on("*", self.on_event, namespace=NAMESPACE)
        try:
            time.sleep(self.random.uniform(0, self.args.ramp))  # the class does not click in the same millisecond
            headers = {"X-Forwarded-For": CLASS_ADDRESS} if self.args.hostile else {}
            self.client.connect(
                self.url, headers=headers, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30
            )
            websocket = self.client.eio.ws  # the dev server never echoes the close frame: do not wait 3 s
            websocket.close = functools.partial(websocket.close, timeout=0.2)
            while time.monotonic() < self.deadline and self.client.connected:
                kind, text = self.prompt()
                key = expected_key(text, self.fingerprint)
                sent = self.request(
                    "analyze", {"model": MODEL, "text": text}, Sent(text, kind, time.monotonic(), key=key)
                )
                if sent.outcome == "done":
                    for _ in range(self.random.randint(0, 3)):
                        self.detail(key)
                time.sleep(self.random.uniform(self.args.think_min, self.args.think_max))
        except Exception as error:  # noqa: BLE001 - reported, counted as a failure of this client
            self.failure = f"{type(error).__name__}: {error}"

    def detail(self, key: str) -> None:
        event = self.random.choice(DETAILS)
        fields = {
            "token": {"index": 1},
            "layer": {"layer": self.random.randint(0, 5)},
            "matrix": {"layer": self.random.randint(0, 5), "head": self.random.randint(0, 11)},
        }[event]
        self.request(event, {"key": key, **fields}, Sent("", "detail", time.monotonic(), event=event, key=key))

    def close(self) -> None:
        if self.client is not None and self.client.connected:
            self.client.disconnect()


# --- idle sockets, the page probe and a hostile client ---------------------------------------------


class IdleSockets(threading.Thread):
    """``count`` raw WebSockets that connect the namespace and then only answer the server's
    pings (Engine.IO v4 text frames: "2" ping, "3" pong): the students with a tab left open.
    One thread serves them all; refusals and sockets the server dropped are counted."""

    def __init__(self, url: str, count: int):
        super().__init__(name="idle-sockets", daemon=True)
        self.url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.count, self.open, self.refused, self.dropped = count, [], [], 0
        self.selector, self.stop, self.lock = selectors.DefaultSelector(), threading.Event(), threading.Lock()

    def open_all(self) -> None:
        threads = [threading.Thread(target=self._open_some, args=(i,)) for i in range(IDLE_OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.start()

    def _open_some(self, part: int) -> None:
        import websocket

        for _ in range(part, self.count, IDLE_OPENERS):
            try:
                ws = websocket.create_connection(self.url, timeout=30)
                ws.recv()  # the Engine.IO open packet
                ws.send(f"40{NAMESPACE},")
                reply = ws.recv()
                if not reply.startswith(f"40{NAMESPACE}"):
                    raise ConnectionError(reply[:120])
            except Exception as error:  # noqa: BLE001 - counted and reported
                with self.lock:
                    self.refused.append(f"{type(error).__name__}: {str(error)[:120]}")
                continue
            with self.lock:
                self.open.append(ws)
                self.selector.register(ws.sock, selectors.EVENT_READ, ws)

    def run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.5):
                ws = key.data
                try:
                    if ws.recv() == "2":
                        ws.send("3")
                except Exception:  # noqa: BLE001 - the server closed it: counted
                    self.selector.unregister(ws.sock)
                    self.dropped += 1

    def close(self) -> None:
        self.stop.set()
        for ws in self.open:
            ws.close(timeout=0.2)


class PageProbe(threading.Thread):
    """Fetches the page and the model list every ``PROBE_SECONDS``: what a student who opens the
    link during the lecture waits for."""

    def __init__(self, url: str):
        super().__init__(name="page-probe", daemon=True)
        self.url, self.latencies, self.failures, self.stop = url, [], [], threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.stop.wait(PROBE_SECONDS):
            path, turn = PAGES[turn % len(PAGES)], turn + 1
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + path, timeout=30) as answer:
                    answer.read()
                self.latencies.append(time.monotonic() - started)
            except OSError as error:
                self.failures.append(f"{path}: {error}")


class HostileProcess:
    """The attacker in a process of its own. A real attacker's CPU is on another machine; in this
    process its thread would hold the GIL while its sockets decode thousands of answers, and the
    honest clients' latencies would measure the load generator, not the server."""

    def __init__(self, url: str, seconds: float, honest_key: str, niceness: int = 0):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # this process already runs threads
        self.answers = context.Queue()
        self.process = context.Process(
            target=run_hostile, args=(url, seconds, honest_key, self.answers, niceness), name="hostile", daemon=True
        )

    def start(self) -> None:
        self.process.start()

    def result(self, started: float, timeout: float = 60.0) -> dict:
        """What the attacker was answered, and when each of its patterns began, in seconds after
        ``started`` (CLOCK_MONOTONIC, the same in both processes)."""
        try:
            answers = self.answers.get(timeout=timeout)
            answers["phases"] = [f"{round(at - started, 1)} s {name}" for name, at in answers["phases"]]
            return answers
        except Exception:  # noqa: BLE001 - a report without the attacker's tally beats none
            return {"hostile process": "no report"}
        finally:
            self.process.join(5)


def run_hostile(url: str, seconds: float, honest_key: str, answers, niceness: int = 0) -> None:
    """The attacker process: attack for ``seconds``, then report what it was answered.
    ``niceness`` lowers its CPU priority, standing in for an attacker on a machine of its own
    (on one small machine its client work otherwise takes the cores the server needs)."""
    os.nice(niceness)
    hostile = Hostile(url, time.monotonic() + seconds, honest_key)
    hostile.run()
    answers.put({**hostile.answers, "phases": hostile.phases})


class Hostile:
    """One attacker behind ``HOSTILE_ADDRESS`` mixing the abuse patterns of issue 15 in turn: as
    many sockets as it may open (again, as the server closes them), floods of model (lens), CPU
    (head summary) and room requests, a flood paced just under the rate limits, short links of
    the longest query, uploads that claim huge records, malformed packets."""

    def __init__(self, url: str, deadline: float, honest_key: str):
        self.url, self.deadline, self.key = url, deadline, honest_key
        self.headers = {"X-Forwarded-For": HOSTILE_ADDRESS}
        self.answers: Counter = Counter()
        self.sockets: list = []
        self.phases: list[tuple[str, float]] = []  # (pattern, when it began: CLOCK_MONOTONIC)

    def run(self) -> None:
        patterns = [self.sockets_flood, self.request_flood, self.paced_flood, self.links, self.uploads]
        turn = 0
        while time.monotonic() < self.deadline:
            pattern = patterns[turn % len(patterns)]
            self.phases.append((pattern.__name__, time.monotonic()))
            try:
                pattern()
            except Exception as error:  # noqa: BLE001 - an attacker shrugs and goes on
                self.answers[f"raised {type(error).__name__}"] += 1
            turn += 1
        for client in self.sockets:
            with contextlib.suppress(Exception):
                client.disconnect()

    def sockets_flood(self) -> None:
        self.sockets = [client for client in self.sockets if client.connected]  # the server closes floods
        while len(self.sockets) < HOSTILE_SOCKETS and time.monotonic() < self.deadline:
            client = in_order_client(reconnection=False)
            client.on("*", lambda event, payload: self.answers.update([event]), namespace=NAMESPACE)
            try:
                client.connect(self.url, headers=self.headers, namespaces=[NAMESPACE], transports=["websocket"])
            except Exception:  # noqa: BLE001 - refused: what the cap is for
                self.answers["socket refused"] += 1
                return
            self.sockets.append(client)

    def request_flood(self) -> None:
        for i, client in enumerate(self.sockets[:20]):
            for j in range(20):
                client.emit("lens", {"rid": f"l{i}-{j}", "key": self.key, "start": j}, namespace=NAMESPACE)
                client.emit("heads", {"rid": f"h{i}-{j}", "key": self.key}, namespace=NAMESPACE)
                client.emit("present_start", {"rid": f"p{i}-{j}"}, namespace=NAMESPACE)
            with contextlib.suppress(Exception):
                client.eio.send("2/atlas,{broken")  # a malformed Socket.IO packet

    def paced_flood(self) -> None:
        """Every socket asks for the head summary just under a connection's rate limit, for
        ``PACED_SECONDS``: never refused, so only fairness between addresses can stop it."""
        started, rounds = time.monotonic(), 0
        while time.monotonic() < min(self.deadline, started + PACED_SECONDS):
            for client in self.sockets:
                with contextlib.suppress(Exception):
                    client.emit("heads", {"rid": f"paced-{rounds}", "key": self.key}, namespace=NAMESPACE)
            rounds += 1
            time.sleep(max(0.0, started + rounds / PACED_RATE - time.monotonic()))

    def links(self) -> None:
        query = "text=" + "%E6%9D%B1" * 30_000
        for _ in range(20):
            self._post("/api/links", json.dumps({"query": query}).encode(), "application/json")

    def uploads(self) -> None:
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, queries=np.zeros((1000, 100, 64, 8), np.float32))
        for _ in range(5):
            self._post("/api/captures", buffer.getvalue(), "application/octet-stream")

    def _post(self, path: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(
            self.url + path, data=body, headers={**self.headers, "Content-Type": content_type}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                self.answers[f"{path} {answer.status}"] += 1
        except urllib.error.HTTPError as error:
            self.answers[f"{path} {error.code}"] += 1


# --- the server ------------------------------------------------------------------------------------


def free_port(ports: range = PORTS) -> int:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SystemExit(f"no free port in {ports.start}-{ports.stop - 1}")


def procfile_line() -> str:
    """The command of the Procfile's ``web:`` line (its ``worker:`` line is for scale-out)."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return next(line.removeprefix("web:") for line in lines if line.startswith("web:"))


def procfile_command(port: int) -> list[str]:
    """The Procfile's ``web`` command as argv on loopback ``port``, run by this Python (its
    environment prefix is :func:`procfile_environment`)."""
    line = procfile_line().replace("${PORT:-5000}", str(port))
    words = [word for word in shlex.split(line.replace("0.0.0.0", "127.0.0.1")) if not _is_assignment(word)]
    return [sys.executable, "-m", *words]


def _is_assignment(word: str) -> bool:
    name = word.split("=", 1)[0]
    return "=" in word and name.isidentifier() and name.isupper()


def procfile_environment() -> dict:
    line = procfile_line()
    return dict(word.split("=", 1) for word in shlex.split(line) if _is_assignment(word))


def start_server(cache_dir: str, env: dict, kind: str = "dev") -> tuple[subprocess.Popen, str]:
    """``python -m app serve`` (``dev``) or the Procfile's gunicorn line (``procfile``) on a free
    loopback port, with a fresh cache folder; returns once the model is loaded."""
    port = free_port()
    log = open(Path(cache_dir) / "server.log", "w")  # noqa: SIM115  (the server's stdout for its lifetime)
    serve = [sys.executable, "-m", "app", "--cache-dir", cache_dir, "serve", "--host", "127.0.0.1", "--port", str(port)]
    command = procfile_command(port) if kind == "procfile" else [*serve, "--preload", MODEL]
    if kind == "procfile":
        env = {**procfile_environment(), "ATLAS_CACHE_DIR": cache_dir, "ATLAS_PRELOAD_MODELS": f'["{MODEL}"]', **env}
    process = subprocess.Popen(  # a session of its own: stopping it stops gunicorn's worker too
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: see {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/api/models", timeout=2) as answer:
                if any(m["loaded"] for m in json.load(answer)["models"] if m["name"] == MODEL):
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise SystemExit(f"the server did not start: see {log.name}")
        time.sleep(0.25)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's whole session, SIGKILL after 15 s. Killing only gunicorn's master
    left its worker running (seen: still serving minutes later), and the next run measured a
    machine with two servers on it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def analysed_key(url: str, text: str) -> str:
    """The key of ``text`` analysed once over HTTP (what the attacker floods with requests)."""
    body = json.dumps({"model": MODEL, "text": text}).encode()
    request = urllib.request.Request(
        f"{url}/api/analyze", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_SECONDS) as answer:
        return json.load(answer)["key"]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's worker), from /proc."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 + sum(rss_bytes(int(child)) for child in children)
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int | None):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while self.pid and not self.stop.wait(RSS_SAMPLE_SECONDS):
            self.samples.append(rss_bytes(self.pid))


# --- the report ------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def latency_line(values: list[float]) -> dict:
    return {
        "count": len(values),
        "p50_ms": _ms(percentile(values, 0.5)),
        "p99_ms": _ms(percentile(values, 0.99)),
        "max_ms": _ms(max(values) if values else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def slowest(requests: list[Sent], started: float, count: int = 5) -> list[list]:
    """The ``count`` slowest requests as [seconds after the run started, event, kind, ms]: when in the run
    the tail happened (the attacker's phases carry the same clock, CLOCK_MONOTONIC)."""
    ordered = sorted(requests, key=lambda r: r.at - r.answered)[:count]
    return [[round(r.at - started, 1), r.event, r.kind, _ms(r.answered - r.at)] for r in ordered]


def analysis_latencies(done: list[Sent], stored_before: set[str]) -> tuple[dict, dict]:
    """(latency lines, the requests of each line) of the analyses the server answered from its
    store, of those that waited for another request's computation of the same text, and of those
    that ran the model. The server says ``cached`` for both of the first two (neither ran the
    model); a request sent before any request of its text had been answered found nothing stored,
    so it waited for a computation."""
    first_answer = {text: float("-inf") for text in stored_before}
    for r in done:
        first_answer[r.text] = min(first_answer.get(r.text, float("inf")), r.answered)
    stored = [r for r in done if r.cached and r.at >= first_answer[r.text]]
    shared = [r for r in done if r.cached and r.at < first_answer[r.text]]
    return {
        "analyze_cached": latency_line([r.answered - r.at for r in stored]),
        "analyze_shared": latency_line([r.answered - r.at for r in shared]),
        "analyze_computed": latency_line([r.answered - r.at for r in done if not r.cached]),
    }, {"analyze_cached": stored, "analyze_computed": [r for r in done if not r.cached]}


def report(
    students: list[Student],
    args,
    seconds: float,
    rss: list[int],
    extras: dict,
    stored_before: set[str],
    started: float,
) -> dict:
    """``stored_before``: texts analysed before the students started (answered from the store);
    ``started``: when the run began (CLOCK_MONOTONIC)."""
    requests = [sent for student in students for sent in student.stats.sent.values()]
    analyses = [r for r in requests if r.event == "analyze"]
    details = [r for r in requests if r.event != "analyze"]
    done = [r for r in analyses if r.outcome == "done"]
    outcome = Counter(r.outcome or "lost" for r in requests)
    analysis_lines, analysis_requests = analysis_latencies(done, stored_before)
    answered_details = [r for r in details if r.answered]
    by_kind = defaultdict(Counter)
    for r in analyses:
        by_kind[r.kind][r.outcome or "lost"] += 1
    return {
        "clients": args.clients,
        "duration_s": round(seconds, 1),
        "requests": len(requests),
        "analyses": len(analyses),
        "details": len(details),
        "lost": outcome["lost"],
        "wrong_client": sum(s.stats.wrong_client for s in students),
        "wrong_key": sum(s.stats.wrong_key for s in students),
        "wrong_text": sum(s.stats.wrong_text for s in students),
        "client_failures": [s.failure for s in students if s.failure],
        "outcomes": dict(outcome),
        "analyses_by_kind": {k: dict(v) for k, v in by_kind.items()},
        "latency": {
            **analysis_lines,
            "too_long_answer": latency_line([r.answered - r.at for r in analyses if r.outcome == "too_long"]),
            "detail": latency_line([r.answered - r.at for r in answered_details]),
        },
        "slowest": {
            **{name: slowest(found, started) for name, found in analysis_requests.items()},
            "detail": slowest(answered_details, started),
        },
        "throughput_per_s": round(len(requests) / seconds, 1),
        "max_queue_position": max(s.stats.max_position for s in students),
        "server_rss_mib": {
            "start": _mib(rss[0] if rss else 0),
            "peak": _mib(max(rss) if rss else 0),
            "end": _mib(rss[-1] if rss else 0),
            "every_30_s": [_mib(value) for value in rss[:: int(30 / RSS_SAMPLE_SECONDS)]],
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        **extras,
    }


def _mib(value: int) -> float:
    return round(value / (1 << 20), 1)


def scaled_out(args) -> int:
    """``--web``/``--workers``/``--followers``: a cluster sharing one Redis (scripts/scaleout.py);
    the students (or followers) spread round robin over its web processes."""
    from models.registry import load_registry
    from scripts import scaleout

    cache = tempfile.TemporaryDirectory(prefix="atlas-scaleout-")
    env = {"ATLAS_MAX_SOCKETS_PER_ADDRESS": str(args.followers + args.clients + 10)}
    env.update({"ATLAS_PROXY_FIX_X_FOR": "1"} if args.hostile else {})
    cluster = scaleout.Cluster(cache.name, args.web, args.workers, env, PORTS, args.server)
    hostile, probe = None, None
    try:
        if args.followers:
            result = scaleout.follow(cluster, args.followers, args.duration, args.every)
            scaleout.print_report(result, args.json)
            return 1 if result["missed"] or result["joined"] < args.followers else 0
        key = analysed_key(cluster.urls[0], SHARED_PROMPTS[0])  # and so the workers' models are loaded
        fingerprint = load_registry().fingerprint(MODEL)
        deadline = time.monotonic() + args.duration
        urls = cluster.urls
        students = [Student(i, urls[i % len(urls)], deadline, args, fingerprint) for i in range(args.clients)]
        if args.hostile:  # the attacker on the first web process, as on a single server
            hostile = HostileProcess(urls[0], args.duration, key, args.hostile_nice)
        probe = PageProbe(urls[0])
        probe.start()
        started = time.monotonic()
        for student in students:
            student.start()
        if hostile is not None:
            hostile.start()
        for student in students:
            student.join(args.duration + GRACE_SECONDS)
        for student in students:
            student.close()
        probe.stop.set()
        extras = {
            "server": args.server,
            "web": args.web,
            "workers": args.workers,
            "pages": {**latency_line(probe.latencies), "failures": probe.failures[:10]},
        }
        if hostile is not None:
            extras["hostile_answers"] = hostile.result(started)
        result = report(students, args, time.monotonic() - started, [], extras, {SHARED_PROMPTS[0]}, started)
    finally:
        if probe is not None:
            probe.stop.set()
        cluster.stop()
        cache.cleanup()
    scaleout.print_report(result, args.json)
    bad = result["lost"] + result["wrong_client"] + result["wrong_key"] + result["wrong_text"]
    return 1 if bad or result["client_failures"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of sending (default 180)")
    parser.add_argument("--url", help="an already running server on this machine (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, to report its memory")
    parser.add_argument("--uncached", type=float, default=0.25, help="share of prompts of a student's own")
    parser.add_argument("--long", type=float, default=0.03, help="share of long prompts (~400 tokens)")
    parser.add_argument("--novels", type=float, default=0.01, help="share of pasted novels (over MAX_CHARS)")
    parser.add_argument("--think-min", type=float, default=2.0, help="seconds a student thinks, at least")
    parser.add_argument("--think-max", type=float, default=5.0)
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which students arrive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument(
        "--server", choices=("dev", "procfile"), default="dev", help="python -m app serve, or the Procfile"
    )
    parser.add_argument("--idle", type=int, default=0, help="idle sockets held open besides the clients")
    parser.add_argument("--hostile", action="store_true", help="add one attacker mixing the abuse patterns")
    parser.add_argument(
        "--hostile-nice", type=int, default=0, help="the attacker's niceness (19: as if its CPU were another machine's)"
    )
    parser.add_argument("--web", type=int, default=1, help="web processes sharing one redis-server (scale-out)")
    parser.add_argument("--workers", type=int, default=0, help="model workers; the web processes then load no model")
    parser.add_argument("--followers", type=int, default=0, help="lecture hall: followers of one presenter instead")
    parser.add_argument("--every", type=float, default=2.0, help="with --followers: seconds between view changes")
    args = parser.parse_args(argv)
    if args.followers or args.web > 1 or args.workers:
        return scaled_out(args)
    if not 1 <= args.clients <= MAX_CLIENTS or not 1 <= args.duration <= MAX_DURATION_SECONDS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --duration 1..{MAX_DURATION_SECONDS}")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a server on this machine (127.0.0.1 or localhost)")

    from models.registry import load_registry

    fingerprint = load_registry().fingerprint(MODEL)
    server, cache = None, None
    if args.url:
        url, pid = args.url.rstrip("/"), args.server_pid
    else:
        cache = tempfile.TemporaryDirectory(prefix="atlas-loadtest-")
        sockets = str(args.idle + args.clients + 10)  # the idle sockets stand for many people on one address
        env = {"ATLAS_MAX_SOCKETS_PER_ADDRESS": sockets, "ATLAS_RATE_CONNECTS_PER_MINUTE": "0"} if args.idle else {}
        server, url = start_server(
            cache.name, {**env, **({"ATLAS_PROXY_FIX_X_FOR": "1"} if args.hostile else {})}, args.server
        )
        pid = server.pid
    print(f"{args.clients} students and {args.idle} idle sockets on {url} for {args.duration:.0f} s", flush=True)
    sampler, probe, idle = RssSampler(pid), PageProbe(url), IdleSockets(url, args.idle)
    idle.open_all()
    sampler.start()
    probe.start()
    started = time.monotonic()
    deadline = started + args.duration
    students = [Student(i, url, deadline, args, fingerprint) for i in range(args.clients)]
    key = analysed_key(url, SHARED_PROMPTS[0]) if args.hostile else ""
    hostile = HostileProcess(url, args.duration, key, args.hostile_nice) if args.hostile else None
    hostile_answers = None
    try:
        for student in students:
            student.start()
        if hostile is not None:
            hostile.start()
        while any(s.is_alive() for s in students) and time.monotonic() < deadline + GRACE_SECONDS:
            time.sleep(1.0)
            if int(time.monotonic() - started) % 30 == 0:
                sent = sum(len(s.stats.sent) for s in students)
                print(f"  {time.monotonic() - started:5.0f} s: {sent} requests", flush=True)
        seconds = time.monotonic() - started
        hostile_answers = hostile.result(started) if hostile is not None else None
        closers = [threading.Thread(target=s.close) for s in students]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(10)
    finally:
        sampler.stop.set()
        probe.stop.set()
        idle.close()
        if server is not None:
            stop_server(server)
        if cache is not None:
            cache.cleanup()
    extras = {
        "server": args.server,
        "pages": {**latency_line(probe.latencies), "failures": probe.failures[:10]},
        "idle_sockets": {
            "asked": args.idle,
            "open": len(idle.open),
            "dropped": idle.dropped,
            "refused": idle.refused[:5],
        },
        "hostile_answers": hostile_answers,
    }
    stored = {SHARED_PROMPTS[0]} if args.hostile else set()
    result = report(students, args, seconds, sampler.samples, extras, stored, started)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    bad = result["lost"] + result["wrong_client"] + result["wrong_key"] + result["wrong_text"]
    return 1 if bad or result["client_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
