"""Every limit answers with a clear error before any model work: prompt size, tokens per model,
generation length, allowed models, message size, queue length, per-client streams and rate.
The device queue is FIFO within an address and serves addresses in turn, reports positions,
shares identical work, and never delays cached answers. An address handles at most its turns at
once."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import warnings

import pytest

from app.config import Config
from app.limits import (
    JobCancelled,
    JobQueue,
    QueueStage,
    RateLimiter,
    Turns,
    cancel_scope,
    cancelled,
    turn_given_back,
)
from app.protocol import NAMESPACE, AtlasError
from app.service import AtlasService, most_tokens
from tests.integration.conftest import collect, socket_client

CACHED = "A prompt that is already cached when the queue is blocked."


@pytest.fixture(scope="module")
def cached_key(service) -> str:
    return service.analyze("minilm", CACHED).key


@pytest.fixture()
def model_work_calls(service, monkeypatch) -> list[str]:
    """Names passed to service.model_work for requests during the test (the work still runs).
    The global view's background builder (thread "atlas-builds", started by an earlier test of
    this session's app) may take its turns meanwhile: it is not a request of this test."""
    calls, real = [], service.model_work

    def spy(name, work, progress=None):
        if threading.current_thread().name != "atlas-builds":
            calls.append(name)
        return real(name, work, progress)

    monkeypatch.setattr(service, "model_work", spy)
    return calls


def analyze(client, text: str, rid="r", **fields) -> None:
    client.emit("analyze", {"rid": rid, "model": "minilm", "text": text, **fields}, namespace=NAMESPACE)


# --- prompt limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, text, message",
    [
        ({"MAX_CHARS": 40}, "x" * 41, "the limit is 40"),
        ({"MAX_TOKENS": 8}, "one two three four five six seven eight nine ten", "at most 8"),
        ({"MODEL_MAX_TOKENS": {"minilm": 6}}, "one two three four five six seven", "at most 6"),
    ],
)
def test_prompt_limits_answer_too_long_before_model_work(
    connect, client, limit, minilm, model_work_calls, settings, text, message
):
    limit(**settings)
    socket = connect()
    analyze(socket, text, rid="long")
    error = collect(socket)[-1]
    assert (error["name"], error["code"], error["rid"]) == ("error", "too_long", "long") and message in error["message"]
    response = client.post(
        "/api/analyze", json={"model": "minilm", "text": text}, environ_base={"REMOTE_ADDR": "10.1.0.1"}
    )
    assert response.status_code == 400 and response.get_json()["code"] == "too_long"
    assert model_work_calls == []  # refused before a place in the queue


@pytest.mark.parametrize("name", ["minilm", pytest.param("smollm2", marks=pytest.mark.real_model)])
def test_no_prompt_makes_more_tokens_than_most_tokens_allows(request, name):
    """The bound under which a prompt is not counted before it takes a place in the queue holds
    for the packaged tokenizers (WordPiece, byte-level BPE) on text made to split finely."""
    tokenizer = request.getfixturevalue(name).tokenizer
    texts = [
        "a",
        " ",
        " \n\t \r\n ",
        "\u00e9" * 40,
        "\U0001f642" * 50,
        "\u4e2d\u6587\u5b57" * 30,
        "e\u0301" * 60,
        "\u200b" * 40,
        "".join(chr(code) for code in range(1, 0x250)),
        "a.b,c;d!" * 40,
        "x" * 500,
    ]
    for text in texts:
        assert len(tokenizer(text)["input_ids"]) <= most_tokens(text), repr(text[:20])


def test_generation_length_has_a_limit(connect, limit, model_work_calls):
    limit(MAX_GENERATE_TOKENS=4)
    socket = connect()
    socket.emit("generate", {"rid": "g", "text": "Once upon a time", "max_new_tokens": 5}, namespace=NAMESPACE)
    error = collect(socket)[-1]
    assert error["code"] == "too_long" and "4" in error["message"] and model_work_calls == []


def test_only_allowed_models_are_served(tmp_path):
    config = {name: getattr(Config, name) for name in dir(Config) if name.isupper()}
    service = AtlasService({**config, "CACHE_DIR": str(tmp_path), "ALLOWED_MODELS": ["minilm"]})
    assert [model["name"] for model in service.models()] == ["minilm"]
    with pytest.raises(AtlasError) as refused:
        service.analyze("smollm2", "Only minilm is allowed here.")
    assert refused.value.code == "unknown_model" and refused.value.status == 404
    with pytest.raises(ValueError, match="ALLOWED_MODELS"):
        AtlasService({**config, "CACHE_DIR": str(tmp_path), "ALLOWED_MODELS": ["no-such-model"]})


def test_an_oversized_http_body_is_refused_with_413(client, app):
    body = b'{"text": "' + b"x" * app.config["MAX_MESSAGE_BYTES"] + b'"}'
    response = client.post(
        "/api/analyze", data=body, content_type="application/json", environ_base={"REMOTE_ADDR": "10.1.0.2"}
    )
    assert response.status_code == 413 and response.get_json()["code"] == "too_long"


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_an_oversized_socket_message_closes_only_that_connection(live_url, transport):
    """Engine.IO cannot parse a message past max_http_buffer_size, so it drops the connection;
    MAX_CHARS keeps every prompt within the limit far below that size (config.check)."""
    bystander = socket_client(live_url)
    sender = socket_client(live_url, transport)
    try:
        sender.emit("analyze", {"rid": "big", "text": "x" * 70_000}, namespace=NAMESPACE)
        deadline = time.monotonic() + 10
        while sender.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sender.connected and not [a for a in sender.answers if a.get("rid") == "big"]
        bystander.emit("analyze", {"rid": "ok", "text": "The server keeps serving."}, namespace=NAMESPACE)
        assert bystander.wait("ok")[-1]["name"] == "done"
    finally:
        sender.close()
        bystander.close()
        with warnings.catch_warnings():  # requests drops, unclosed, the socket the server reset
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def test_the_prompt_limit_fits_in_a_message():
    with pytest.raises(ValueError, match="MAX_MESSAGE_BYTES"):
        from app import create_app

        create_app({"TESTING": True, "MAX_MESSAGE_BYTES": 100_000, "MAX_CHARS": 60_000})


# --- the device queue ---------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="threads have a niceness of their own on Linux only")
def test_model_work_runs_at_a_lower_priority_than_the_answers(service):
    """Model work runs on threads niced by MODEL_NICE, in the caller's context (its cancel
    scope); the thread that asked keeps its priority."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    niced, gone = service.model_work(
        "minilm", lambda handle: (os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), cancelled())
    )
    assert niced == min(19, own + service.config["MODEL_NICE"]) and not gone
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    caller = threading.get_native_id()
    with cancel_scope(lambda: threading.get_native_id() != caller), pytest.raises(JobCancelled):
        service.model_work("minilm", lambda handle: None)  # gone as seen from the model thread: the scope reached it


@pytest.mark.skipif(sys.platform != "linux", reason="threads have a niceness of their own on Linux only")
def test_what_a_capture_deferred_is_computed_after_the_answer_at_the_lower_priority(service):
    """A CPU capture's output Grams wait until after the answer: the cache's background writer
    computes them (niced like model work) as it stores the record, and the stored record holds them."""
    import dataclasses

    import numpy as np

    from models.record import Deferred

    capture = service.analyze("minilm", "Deferred until the answer is out.").capture
    assert isinstance(capture.output_grams, Deferred)
    grams = np.asarray(capture.output_grams)
    seen = []

    def compute():
        seen.append((threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return grams

    later = dataclasses.replace(capture, output_grams=Deferred(grams.shape, np.float32, compute))
    key = "d" * 64
    service.cache.put(key, later)
    assert service.cache.flush(30)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert len(seen) == 1 and seen[0][0] != threading.get_native_id()
    assert seen[0][1] == min(19, own + service.config["MODEL_NICE"])
    np.testing.assert_array_equal(service.cache.store.read(key)["output_grams"], grams)


def test_the_queue_is_fifo_and_reports_positions():
    queue, order, reports = JobQueue(capacity=5), [], {}
    gate = threading.Event()

    def job(name: str) -> None:
        with queue.slot(lambda stage, name=name: reports.setdefault(name, []).append(stage.position)):
            order.append(name)
            if name == "first":
                gate.wait()

    threads = [threading.Thread(target=job, args=(name,)) for name in ("first", "a", "b", "c")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # arrive in this order
    assert queue.running == 1 and queue.waiting == 3
    gate.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first", "a", "b", "c"]
    for name, arrival in (("a", 1), ("b", 2), ("c", 3)):  # positions count down from arrival
        assert reports[name][0] == arrival and reports[name] == sorted(set(reports[name]), reverse=True)
    assert queue.running == 0 and queue.waiting == 0


def test_the_queue_serves_owners_in_turn():
    """Round robin by owner (the address holding the caller's turn): one address with three jobs
    waiting delays another's single job by at most one of its own."""
    queue, turns, order = JobQueue(capacity=10), Turns(per_key=10, max_waiting=10), []
    gate = threading.Event()

    def job(owner: str, name: str) -> None:
        with turns.take(owner), queue.slot():
            order.append(name)
            if name == "first":
                gate.wait()

    arrivals = [("x", "first"), ("flood", "f1"), ("flood", "f2"), ("flood", "f3"), ("class", "c1")]
    threads = [threading.Thread(target=job, args=arrival) for arrival in arrivals]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # arrive in this order
    gate.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first", "f1", "c1", "f2", "f3"]


def test_one_owner_holds_at_most_half_the_queue():
    queue, turns, errors = JobQueue(capacity=4), Turns(per_key=10, max_waiting=10), []
    gate = threading.Event()

    def job(owner: str) -> None:
        try:
            with turns.take(owner), queue.slot():
                gate.wait()
        except AtlasError as error:
            errors.append((owner, error.code, error.status))

    threads = [threading.Thread(target=job, args=(owner,)) for owner in ("x", "flood", "flood", "flood", "class")]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    assert errors == [("flood", "busy", 429)]  # its third place; the class still got one
    assert queue.waiting == 3
    gate.set()
    for thread in threads:
        thread.join(5)


# --- turns: the share of handler threads of one address ------------------------------------------


def hold_turns(turns: Turns, keys: list[str], release: threading.Event) -> tuple[list[threading.Thread], dict]:
    """Threads taking a turn of each of ``keys`` and holding it until ``release``; ``seen`` counts
    how many of each key held one at once, at most."""
    seen, now, lock = {}, {}, threading.Lock()

    def hold(key: str) -> None:
        with turns.take(key):
            with lock:
                now[key] = now.get(key, 0) + 1
                seen[key] = max(seen.get(key, 0), now[key])
            release.wait(5)
            with lock:
                now[key] -= 1

    threads = [threading.Thread(target=hold, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    return threads, seen


def test_an_address_handles_at_most_its_turns_at_once_and_others_are_not_held_up():
    turns, release = Turns(per_key=2, max_waiting=10), threading.Event()
    threads, seen = hold_turns(turns, ["flood"] * 6, release)
    time.sleep(0.2)
    assert turns.held("flood") == 2
    started = time.monotonic()
    with turns.take("class"):  # another address is not held up by the flood's waiting threads
        assert time.monotonic() - started < 0.5
    release.set()
    for thread in threads:
        thread.join(5)
    assert seen == {"flood": 2} and turns.held("flood") == 0


def test_too_many_waiting_requests_of_one_address_are_told_busy():
    turns, release = Turns(per_key=1, max_waiting=2), threading.Event()
    threads, _ = hold_turns(turns, ["flood"] * 3, release)  # one holds, two wait
    time.sleep(0.2)
    with pytest.raises(AtlasError) as refused, turns.take("flood"):
        pass
    assert refused.value.code == "busy" and refused.value.status == 429
    release.set()
    for thread in threads:
        thread.join(5)


def test_waiting_on_other_work_gives_the_turn_back():
    """A request waiting for the model (or another request's computation) holds no turn, and
    takes one again before it goes on."""
    turns, waiting, done, order = Turns(per_key=1, max_waiting=10), threading.Event(), threading.Event(), []

    def long_job() -> None:
        with turns.take("class"):
            with turn_given_back():
                waiting.set()
                done.wait(5)
            order.append("long job goes on")

    thread = threading.Thread(target=long_job)
    thread.start()
    waiting.wait(5)
    with turns.take("class"):  # the class's other request runs meanwhile
        order.append("click")
        done.set()
        time.sleep(0.1)
        order.append("click done")
    thread.join(5)
    assert order == ["click", "click done", "long job goes on"]
    assert turns.held("class") == 0


def test_queue_stages_read_as_text_and_carry_the_position():
    assert QueueStage(1, 4) == "next in line for the model"
    stage = QueueStage(3, 4)
    assert stage == "waiting for the model: 2 requests ahead" and stage.position == 3


def test_a_full_queue_answers_busy_and_cached_answers_keep_flowing(connect, limit, cached_key, blocked):
    limit(MAX_QUEUED_JOBS=1)
    waiting, refused, reader = connect(), connect(), connect()
    analyze(waiting, "The first uncached prompt waits its turn.", rid="wait")
    progress = collect(waiting, until=("progress",))[-1]
    assert progress["position"] == 1 and progress["stage"] == "next in line for the model"

    analyze(refused, "A second uncached prompt finds the queue full.", rid="full")
    error = collect(refused, timeout=5)[-1]
    assert (error["name"], error["code"], error["rid"]) == ("error", "busy", "full")

    started = time.monotonic()
    analyze(reader, CACHED, rid="hit")
    done = collect(reader, timeout=5)[-1]
    reader.emit("token", {"rid": "t", "key": cached_key, "index": 1}, namespace=NAMESPACE)
    token = collect(reader, until=("token", "error"), timeout=5)[-1]
    assert done["name"] == "done" and done["cached"] and token["name"] == "token"
    assert time.monotonic() - started < 5  # while the device is still busy

    blocked.release()
    finished = collect(waiting)[-1]
    assert finished["name"] == "done" and not finished["cached"]


def test_a_client_may_run_only_so_many_analyses_at_once(connect, limit, blocked):
    limit(MAX_JOBS_PER_CLIENT=1)
    socket = connect()
    analyze(socket, "One analysis in progress for this client.", rid=1)
    collect(socket, until=("progress",))
    analyze(socket, "A second one at the same time.", rid=2)
    error = collect(socket, rid=2, timeout=5)[-1]
    assert error["code"] == "busy" and error["rid"] == 2
    blocked.release()
    assert collect(socket, rid=1)[-1]["name"] == "done"


def test_a_job_that_waits_too_long_is_answered_busy(connect, limit, blocked):
    limit(MAX_QUEUE_WAIT_SECONDS=0.3)
    socket = connect()
    analyze(socket, "This prompt will not get a turn in time.", rid="late")
    error = collect(socket, timeout=10)[-1]
    assert error["code"] == "busy" and "waited" in error["message"]


def test_identical_requests_in_flight_share_one_forward_pass(connect, blocked, model_work_calls):
    text = "Fifty students paste the same sentence at once."
    first, second = connect(), connect()
    analyze(first, text, rid="a")
    collect(first, until=("progress",))
    analyze(second, text, rid="b")
    time.sleep(0.2)
    blocked.release()
    done = [collect(client)[-1] for client in (first, second)]
    assert [d["name"] for d in done] == ["done", "done"] and done[0]["key"] == done[1]["key"]
    assert sorted(d["cached"] for d in done) == [False, True] and model_work_calls == ["minilm"]


# --- rate limits --------------------------------------------------------------------------------


def test_token_buckets_refill_at_their_rate():
    limiter = RateLimiter(lambda: {"analyze": (10.0, 1.0)})
    limiter.check("c", "analyze")
    with pytest.raises(AtlasError) as limited:
        limiter.check("c", "analyze")
    assert limited.value.code == "rate_limited" and limited.value.status == 429
    limiter.check("other", "analyze")  # every client has its own bucket
    time.sleep(0.12)
    limiter.check("c", "analyze")


def test_a_client_that_floods_analyze_is_rate_limited_alone(connect, limit, cached_key):
    limit(RATE_ANALYZE_PER_MINUTE=6, RATE_ANALYZE_BURST=2)
    flood, other = connect(), connect()
    answers = []
    for rid in range(3):
        analyze(flood, CACHED, rid=rid)
        answers.append(collect(flood, rid=rid)[-1])
    assert [a["name"] for a in answers] == ["done", "done", "error"]
    assert answers[2]["code"] == "rate_limited" and answers[2]["rid"] == 2 and "wait" in answers[2]["message"]
    analyze(other, CACHED, rid="other")
    assert collect(other)[-1]["name"] == "done"


def test_flooding_any_event_is_rate_limited(connect, limit, cached_key):
    limit(RATE_EVENTS_PER_SECOND=3)  # burst of 6
    socket = connect()
    for rid in range(8):
        socket.emit("token", {"rid": rid, "key": cached_key, "index": 0}, namespace=NAMESPACE)
    answers = collect(socket, until=("token", "error"), rid=7, timeout=5)
    codes = {a["rid"]: a.get("code", a["name"]) for a in answers}
    assert [codes[rid] for rid in range(6)] == ["token"] * 6 and codes[6] == codes[7] == "rate_limited"


def test_the_http_api_is_rate_limited_per_address(client, limit):
    limit(RATE_EVENTS_PER_SECOND=2)  # burst of 4
    statuses = [client.get("/api/models", environ_base={"REMOTE_ADDR": "10.2.0.1"}).status_code for _ in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[4:] == [429, 429]
    answer = client.get("/api/models", environ_base={"REMOTE_ADDR": "10.2.0.1"}).get_json()
    assert answer["code"] == "rate_limited"
    assert client.get("/api/models", environ_base={"REMOTE_ADDR": "10.2.0.2"}).status_code == 200


@pytest.mark.parametrize("event", ["disconnect", "connect"])
def test_a_message_named_like_a_lifecycle_event_resets_nothing(connect, limit, cached_key, event):
    """Socket.IO delivers a client message called "disconnect" like any event; it must not
    forget the client's rate limits or its running analyses."""
    limit(RATE_ANALYZE_PER_MINUTE=6, RATE_ANALYZE_BURST=1)
    socket = connect()
    analyze(socket, CACHED, rid=1)
    assert collect(socket, rid=1)[-1]["name"] == "done"
    socket.emit(event, {"rid": "fake"}, namespace=NAMESPACE)
    assert collect(socket, rid="fake", until=("error",))[-1]["code"] == "bad_request"
    analyze(socket, CACHED, rid=2)
    assert collect(socket, rid=2)[-1]["code"] == "rate_limited"


# --- delivery ---------------------------------------------------------------------------------------


def test_concurrent_binary_answers_never_interleave(connect):
    """A binary Socket.IO packet leaves as several Engine.IO messages (header, attachments);
    streams and detail answers emitted from different threads must not interleave them, or a
    client would assemble one answer from the pieces of another."""
    from app.extensions import socketio

    clients = [connect(), connect()]
    sids = [
        client.eio_sid and socketio.server.manager.sid_from_eio_sid(client.eio_sid, NAMESPACE) for client in clients
    ]

    def send(thread: int) -> None:
        for n in range(40):
            for target, sid in enumerate(sids):
                tag = f"{thread}-{n}-{target}"
                socketio.emit("token", {"rid": tag, "a": tag.encode() * 50, "b": bytes(n)}, to=sid, namespace=NAMESPACE)

    threads = [threading.Thread(target=send, args=(thread,)) for thread in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for target, client in enumerate(clients):
        answers = [e["args"][0] for e in client.get_received(NAMESPACE)]
        assert len(answers) == 6 * 40
        for answer in answers:
            thread, n, to = answer["rid"].split("-")
            assert int(to) == target and answer["a"] == answer["rid"].encode() * 50 and answer["b"] == bytes(int(n))


def test_answers_are_not_held_back_by_nagles_algorithm(live_url):
    """Each binary answer is several WebSocket frames; without TCP_NODELAY on Werkzeug's server
    the second frame waits ~40 ms for the client's delayed ACK, on every request."""
    client = socket_client(live_url)
    try:
        client.emit("analyze", {"rid": "a", "text": "Every click should answer at once."}, namespace=NAMESPACE)
        key = client.wait("a")[-1]["key"]
        seconds = []
        for n in range(9):
            started = time.monotonic()
            client.emit("token", {"rid": n, "key": key, "index": 1}, namespace=NAMESPACE)
            client.wait(n, until=("token", "error"))
            seconds.append(time.monotonic() - started)
        assert sorted(seconds)[4] < 0.03, seconds
    finally:
        client.close()


@pytest.mark.parametrize("layers", [[True], [0, False], ["1"], [1.0], list(range(65))])
def test_streamed_layers_are_indices_and_bounded(connect, layers):
    socket = connect()
    analyze(socket, CACHED, rid="l", layers=layers)
    error = collect(socket, rid="l")[-1]
    assert error["code"] == "bad_request" and "layers" in error["message"]


@pytest.mark.skipif(sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="reads Linux's /proc/stat")
def test_niced_model_work_leaves_a_busy_core_to_the_work_that_keeps_it_busy(service):
    """A niced OpenMP team waits for its thread on a busy core at every operation (a 60-token
    pass took 544 ms instead of 21): model work sizes torch's team to the cores left free."""
    import subprocess

    import torch

    cores = torch.get_num_threads()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline, used = time.monotonic() + 10, cores
        while used > cores - 1 and time.monotonic() < deadline:
            used = service.model_work("minilm", lambda handle: torch.get_num_threads())
            time.sleep(0.1)
        assert used <= cores - 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="reads Linux's /proc/stat")
def test_a_running_job_sizes_its_team_again_as_the_load_changes(service):
    """A capture of seconds follows the load while it runs (app.cores.RESIZE_SECONDS): a team
    made small while a browser on the same machine loaded the page must not stay small. (The
    spinner is started here: a process started on a model thread would inherit its niceness.)"""
    import subprocess

    import torch

    cores = torch.get_num_threads()
    layer = torch.nn.Linear(8, 8)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # the sampler sees the spinner
        threading.Timer(1.0, spinner.kill).start()

        def work(handle) -> list[int]:
            seen, started = [], time.monotonic()
            while time.monotonic() - started < 4.0:
                layer(torch.zeros(1, 8))  # between modules, the team is sized again
                seen.append(torch.get_num_threads())
                time.sleep(0.01)
            return seen

        seen = service.model_work("minilm", work)
    finally:
        spinner.kill()
        spinner.wait()
    assert seen[0] <= cores - 1 and seen[-1] == cores
