"""Failures reach only the client that caused them, as one clear `error`; the server keeps
serving everyone else and no partial result enters the cache: a model that raises, out of
memory inside the forward pass, a model that fails to load, a tokenizer that fails, and clients
that disconnect while queued, while the model runs, or mid-stream on a real server."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from app.protocol import NAMESPACE
from models.registry import ModelSpec
from tests.integration.conftest import collect, socket_client

PROMPT = "Every failure is answered and forgotten."
KEEPS_SERVING = "The server keeps serving the rest of the class."


class PanicException(BaseException):
    """What the Rust tokenizers raise when they crash (pyo3's PanicException, a BaseException)."""


def raising(error: BaseException):
    def hook(module, args):
        raise error

    return hook


def analyze(client, model: str, text: str = PROMPT, rid="r") -> dict:
    client.emit("analyze", {"rid": rid, "model": model, "text": text}, namespace=NAMESPACE)
    return collect(client, rid=rid)[-1]


def assert_nothing_cached(service, model: str, text: str = PROMPT) -> None:
    key = service.key_for(model, text)
    assert service.cache.get(key) is None and key not in service.cache._flights


def assert_still_serving(connect) -> None:
    assert analyze(connect(), "minilm", KEEPS_SERVING, rid="ok")["name"] == "done"


@pytest.mark.parametrize(
    "error, code, words",
    [
        (RuntimeError("an exploding layer"), "internal", "RuntimeError"),
        (KeyError("a missing weight"), "internal", "KeyError"),
        (MemoryError(), "out_of_memory", "out of memory"),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
            "out_of_memory",
            "out of memory",
        ),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            "out_of_memory",
            "out of memory",
        ),
    ],
    ids=["runtime-error", "key-error", "memory-error", "cuda-oom", "cpu-allocator"],
)
def test_a_forward_pass_that_raises_is_one_error_for_its_client(service, connect, test_model, error, code, words):
    name = f"test-raises-{code}"
    test_model(name, forward=raising(error))
    answer = analyze(connect(), name)
    assert (answer["name"], answer["code"], answer["rid"]) == ("error", code, "r")
    assert words in answer["message"] and name in answer["message"]
    assert_nothing_cached(service, name)
    assert_still_serving(connect)


def test_the_same_model_works_again_after_running_out_of_memory(service, connect, test_model):
    failures = [MemoryError()]

    def sometimes(module, args):
        if failures:
            raise failures.pop()

    test_model("test-oom-once", forward=sometimes)
    client = connect()
    assert analyze(client, "test-oom-once", rid=1)["code"] == "out_of_memory"
    done = analyze(client, "test-oom-once", rid=2)
    assert done["name"] == "done" and not done["cached"]


@pytest.mark.parametrize(
    "files", [{}, {"config.json": "{not json", "tokenizer.json": "{}"}], ids=["empty-folder", "corrupt-files"]
)
def test_a_model_that_fails_to_load(service, connect, tmp_path, monkeypatch, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setitem(service.registry.specs, "test-broken", ModelSpec(name="test-broken", path=str(tmp_path)))
    answer = analyze(connect(), "test-broken")
    assert answer["code"] == "model_load_failed" and "test-broken" in answer["message"]
    assert not service.loader.is_loaded("test-broken")
    assert_nothing_cached(service, "test-broken")
    assert_still_serving(connect)


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("text input must be of type str"), "bad_request"),
        (PanicException("tokenizers panicked"), "bad_request"),
        (TypeError("an unexpected tokenizer failure"), "internal"),
    ],
    ids=["value-error", "rust-panic", "type-error"],
)
def test_a_tokenizer_that_fails(service, connect, test_model, error, code):
    test_model("test-tokenizer", tokenizer_error=error)
    answer = analyze(connect(), "test-tokenizer")
    assert answer["code"] == code and answer["message"]
    assert_nothing_cached(service, "test-tokenizer")
    assert_still_serving(connect)


def test_an_unknown_model_over_both_doors(connect, client):
    assert analyze(connect(), "no-such-model")["code"] == "unknown_model"
    response = client.post(
        "/api/analyze", json={"model": "no-such-model", "text": PROMPT}, environ_base={"REMOTE_ADDR": "10.3.0.1"}
    )
    assert response.status_code == 404 and response.get_json()["code"] == "unknown_model"


def test_a_bug_in_the_http_api_answers_json_500(client, service, monkeypatch):
    monkeypatch.setattr(service, "models", lambda: 1 / 0)
    response = client.get("/api/models", environ_base={"REMOTE_ADDR": "10.3.0.2"})
    assert response.status_code == 500 and response.get_json()["code"] == "internal"
    assert "ZeroDivisionError" not in response.get_data(as_text=True)


# --- clients that leave ----------------------------------------------------------------------------


def test_a_client_that_leaves_while_queued_is_dropped_and_a_twin_takes_over(service, connect, blocked, monkeypatch):
    import models.capture

    ran, real = [], models.capture.run_capture
    monkeypatch.setattr(
        models.capture, "run_capture", lambda handle, text, **options: ran.append(text) or real(handle, text, **options)
    )
    text = "Two students, one sentence, one of them closes the laptop."
    leaver, twin = connect(), connect()
    leaver.emit("analyze", {"rid": "l", "model": "minilm", "text": text}, namespace=NAMESPACE)
    collect(leaver, until=("progress",))  # waiting in the queue
    twin.emit("analyze", {"rid": "t", "model": "minilm", "text": text}, namespace=NAMESPACE)
    time.sleep(0.1)
    leaver.disconnect(namespace=NAMESPACE)
    collect(twin, until=("progress",), rid="t")  # the twin now waits in the queue with its own job
    blocked.release()
    done = collect(twin, rid="t")[-1]
    assert done["name"] == "done" and not done["cached"] and ran == [text]  # one pass, for the twin


def test_a_client_that_leaves_during_the_forward_pass(service, connect, test_model):
    """The pass completes and is cached whole; nothing is sent to the gone client; the next
    client is answered from the cache."""
    entered, release = threading.Event(), threading.Event()

    def slow(module, args):
        entered.set()
        release.wait(30)

    test_model("test-slow", forward=slow)
    leaver = connect()
    leaver.emit("analyze", {"rid": "l", "model": "test-slow", "text": PROMPT}, namespace=NAMESPACE)
    assert entered.wait(30)
    leaver.disconnect(namespace=NAMESPACE)
    release.set()
    deadline = time.monotonic() + 30
    while service.cache.get(service.key_for("test-slow", PROMPT)) is None:
        assert time.monotonic() < deadline, "the completed pass was not cached"
        time.sleep(0.02)
    done = analyze(connect(), "test-slow")
    assert done["name"] == "done" and done["cached"]


def test_a_real_client_that_disconnects_mid_stream(live_url):
    """python-socketio clients on a real server: one leaves as soon as its tokens arrive."""
    leaver, other = socket_client(live_url), socket_client(live_url)
    try:
        leaver.on("tokens", lambda payload: leaver.disconnect(), namespace=NAMESPACE)
        leaver.emit("analyze", {"rid": "gone", "text": "I leave as soon as the tokens arrive."}, namespace=NAMESPACE)
        deadline = time.monotonic() + 60
        while leaver.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not leaver.connected
        other.emit("analyze", {"rid": "stay", "text": "I stay for the whole stream."}, namespace=NAMESPACE)
        answers = other.wait("stay")
        assert [a["name"] for a in answers if a["name"] not in ("progress", "overview_layer")] == [
            "tokens",
            "overview",
            "done",
        ]
        other.emit("analyze", {"rid": "again", "text": "I leave as soon as the tokens arrive."}, namespace=NAMESPACE)
        assert other.wait("again")[-1]["cached"]  # the left client's analysis was completed and kept
    finally:
        leaver.close()
        other.close()
