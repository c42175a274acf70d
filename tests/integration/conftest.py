"""Fixtures for the reliability tests: socket clients that collect answers, test-only models
inserted into the service's loader (to make a forward pass or a tokenizer fail on purpose), and
a device queue held busy by a job that waits until released."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from app.extensions import socketio
from app.globalview.background import Builds
from app.protocol import NAMESPACE
from models.loading import ModelHandle
from models.registry import ModelSpec
from tests.browser.server import running_server
from tests.conftest import build_tiny

ANSWER_SECONDS = 60  # the longest a test waits for an answer


def collect(client, until=("done", "error"), timeout=ANSWER_SECONDS, rid=None) -> list[dict]:
    """Events received by ``client`` up to the first one named in ``until`` (for ``rid``)."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += [{"name": e["name"], **e["args"][0]} for e in client.get_received(NAMESPACE)]
        if any(e["name"] in until and (rid is None or e.get("rid") == rid) for e in events):
            return events
        time.sleep(0.01)
    raise AssertionError(f"no {until} within {timeout} s; got {[e['name'] for e in events]}")


@pytest.fixture(scope="module", autouse=True)
def own_atlas_builds(app):
    """Each module gets its own background builder of global views, stopped when the module ends:
    a build one module started and did not wait for (the fuzzer asks for the built-in corpus's
    atlas: 370 texts, a piece of model work each) must not take the model queue's turns while a
    later module's tests count them."""
    service = app.extensions["atlas"]
    service.atlas_builds = Builds(service.atlas_builds.shared)
    yield
    service.atlas_builds.stop()


@pytest.fixture()
def connect(app):
    """``connect()`` opens one more Flask-SocketIO test client; all are closed afterwards."""
    clients = []

    def open_client():
        client = socketio.test_client(app, namespace=NAMESPACE)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        if client.is_connected(NAMESPACE):
            client.disconnect(namespace=NAMESPACE)


class Tokenizer:
    """The real tokenizer, except that calling it raises ``error``."""

    def __init__(self, real, error: BaseException):
        self.real, self.error = real, error

    def __call__(self, *args, **kwargs):
        raise self.error

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.real, name)


@pytest.fixture()
def test_model(service, minilm, tmp_path, monkeypatch):
    """``test_model(name, forward=..., tokenizer_error=...)`` registers a tiny BERT under
    ``name``, already "loaded": ``forward(module, args)`` runs as a forward pre-hook (raise in
    it to fail the forward pass), ``tokenizer_error`` is raised by its tokenizer."""

    def add(name: str, forward=None, tokenizer_error: BaseException | None = None) -> ModelHandle:
        spec = ModelSpec(name=name, title=name, path=str(tmp_path), max_tokens=128)
        tiny = build_tiny("tiny-bert", minilm.tokenizer)
        tokenizer = Tokenizer(minilm.tokenizer, tokenizer_error) if tokenizer_error else minilm.tokenizer
        handle = ModelHandle(name, spec, tiny.model, tokenizer, tiny.device, name, 0.0, threading.Lock())
        if forward:
            handle.model.register_forward_pre_hook(forward)
        monkeypatch.setitem(service.registry.specs, name, spec)
        monkeypatch.setitem(service.loader._handles, name, handle)
        monkeypatch.setattr(service, "_counters", {})  # no tokenizer copy left from another test
        return handle

    return add


class Blocker:
    """A job that holds the device's only worker slot until ``release()``."""

    def __init__(self, service, name: str = "minilm"):
        self.service, self.release_event, started = service, threading.Event(), threading.Event()
        self.queue = service._queue()

        def hold(handle) -> None:
            started.set()
            self.release_event.wait()

        self.thread = threading.Thread(target=service.model_work, args=(name, hold))
        self.thread.start()
        # Its own job, not the queue's count: an earlier test's request may still be running
        # (answered after that test released its blocker), and this job then waits behind it.
        if not started.wait(ANSWER_SECONDS) or self.queue.running < self.queue.workers:
            self.release()  # else the job, once it runs, holds the device for every later test
            raise AssertionError("the blocking job never started, or the device has another worker free")

    def release(self) -> None:
        self.release_event.set()
        self.thread.join(ANSWER_SECONDS)


@pytest.fixture()
def blocked(service, minilm):
    """The device queue with its worker busy (minilm loaded first, so loading never queues)."""
    blocker = Blocker(service)
    yield blocker
    blocker.release()


@pytest.fixture()
def limit(app, monkeypatch):
    """``limit(NAME=value, ...)`` changes configuration for one test."""

    def set_limits(**values):
        for name, value in values.items():
            monkeypatch.setitem(app.config, name, value)

    return set_limits


# --- real servers on loopback ------------------------------------------------------------------

PORTS = range(5081, 5120)  # the loopback ports these tests may listen on
WEBSOCKET_CLOSE_SECONDS = 0.2  # how long a closing client waits for the server's close frame
_taken: set[int] = set()


def free_port() -> int:
    """A free loopback port from PORTS not handed out before in this session."""
    for port in PORTS:
        if port in _taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    pytest.skip(f"no free loopback port left in {PORTS.start}-{PORTS.stop - 1}")


def release_port(port: int) -> None:
    _taken.discard(port)


@contextlib.contextmanager
def live_server(cache_dir: Path, **env: str):
    """``python -m app serve`` on a free loopback port with ATLAS_* ``env``; yields its URL and
    stops it afterwards."""
    port = free_port()
    try:
        with running_server(
            cache_dir,
            cache_dir.with_suffix(f".{port}.log"),
            {f"ATLAS_{name}": value for name, value in env.items()},
            port=port,
        ) as url:
            yield url
    finally:
        release_port(port)


def socket_client(url: str, transport: str = "websocket"):
    """A real python-socketio client on the /atlas namespace; ``.answers`` collects what it
    receives, ``.wait(rid)`` returns the answers to one request up to its last one, ``.close()``
    disconnects and releases its HTTP connections."""
    import requests

    from scripts.loadtest import in_order_client

    session = requests.Session()  # ours to close: the client drops its own without closing it
    client = in_order_client(reconnection=False, http_session=session)
    client.answers = []
    client.on("*", lambda event, payload: client.answers.append({"name": event, **payload}), namespace=NAMESPACE)

    def wait(rid, until=("done", "error"), timeout=ANSWER_SECONDS) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [a for a in client.answers if a.get("rid") == rid]
            if any(a["name"] in until for a in mine):
                return mine
            time.sleep(0.02)
        raise AssertionError(f"no answer to {rid} within {timeout} s: {client.answers[-5:]}")

    def close() -> None:
        client.disconnect()
        session.close()
        if websocket is not None:  # engine.io forgets, unclosed, a websocket the server closed
            websocket.close()

    client.wait, client.close = wait, close
    client.connect(url, namespaces=[NAMESPACE], transports=[transport], wait_timeout=10)
    websocket = client.eio.ws
    if websocket is not None:  # Werkzeug's dev server never echoes the close frame: do not wait 3 s for it
        websocket.close = functools.partial(websocket.close, timeout=WEBSOCKET_CLOSE_SECONDS)
    return client


@pytest.fixture(scope="session")
def live_url(tmp_path_factory):
    """One real server for the session, with 64 KiB Socket.IO messages at most."""
    with live_server(
        tmp_path_factory.mktemp("live") / "cache",
        MAX_MESSAGE_BYTES="65536",
        MAX_CHARS="10000",
        PRELOAD_MODELS='["minilm"]',
    ) as url:
        wait_until_loaded(url, "minilm")
        yield url


def wait_until_loaded(url: str, model: str, timeout: float = 300) -> None:
    """Wait for a preloaded model, so a test's deadline measures the server, not a busy
    machine's model load (minilm took 85 s to load once beside four other test runs)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{url}/api/models") as response:
            listed = {entry["name"]: entry["loaded"] for entry in json.load(response)["models"]}
        if listed.get(model):
            return
        assert time.monotonic() < deadline, f"{model} was not loaded within {timeout} s"
        time.sleep(0.2)
