"""Scale-out over one real ``redis-server``: classroom state shared by real ``python -m app serve``
processes, and model work on real ``python -m app worker`` processes. A presenter on process A
and followers on process B share one room; a short link made on A opens on B, also after both
restart; Redis restarting while clients are connected costs presentations a moment, never the
server; two web processes without models and one worker serve one prompt with one forward
pass; a job whose worker is killed is answered once, by another worker.

Each test starts its own processes on loopback ports; Redis is started by :class:`RedisServer`,
which can stop and start it again on the same port and folder (skipped when redis-server is not
installed: ``bash scripts/setup --dev`` installs it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import config
from app.protocol import NAMESPACE
from app.tasks import NO_WORKER
from tests.browser.server import REPO_ROOT
from tests.integration.conftest import ANSWER_SECONDS, free_port, live_server, release_port, socket_client

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server, or bash scripts/setup --dev)",
)
VIEW = "model=minilm&text=The+cat+sat&view=head&layer=3"
START_SECONDS = 10  # redis-server starts in milliseconds; this allows for a loaded machine


class RedisServer:
    """A real redis-server on a loopback port, saving to ``folder`` on shutdown (as a production
    Redis with persistence would), so a restart keeps what was in it."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            + ["--save", "", "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru"],
            stdout=subprocess.DEVNULL,
        )
        client, deadline = redis.Redis.from_url(self.url), time.monotonic() + START_SECONDS
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down, saving the data set (SHUTDOWN SAVE), as a maintenance restart does."""
        import redis

        with contextlib.suppress(redis.ConnectionError), redis.Redis.from_url(self.url) as client:
            client.shutdown(save=True)
        self.process.wait(10)


@pytest.fixture()
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()
    release_port(server.port)


def web(stack: contextlib.ExitStack, folder: Path, redis_url: str) -> str:
    """One more ``python -m app serve`` sharing ``redis_url``, with a cache folder of its own."""
    return stack.enter_context(live_server(folder, REDIS_URL=redis_url, SECRET_KEY="shared"))


def connected(stack: contextlib.ExitStack, url: str):
    client = socket_client(url)
    stack.callback(client.close)
    return client


def latest(client, name: str, after: int = 0, timeout: float = ANSWER_SECONDS) -> dict:
    """The first ``name`` event among the client's answers from index ``after`` on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [answer for answer in client.answers[after:] if answer["name"] == name]
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no {name} within {timeout} s: {client.answers[-5:]}")


def followers(client, count: int) -> None:
    """Wait until the presenter hears ``count`` followers."""
    deadline = time.monotonic() + ANSWER_SECONDS
    while not any(a["name"] == "present_followers" and a["followers"] == count for a in client.answers[-3:]):
        assert time.monotonic() < deadline, f"the presenter never heard {count} followers: {client.answers[-5:]}"
        time.sleep(0.01)


def start_presenting(teacher) -> dict:
    teacher.emit("present_start", {"rid": "start"}, namespace=NAMESPACE)
    started = teacher.wait("start", until=("present_started", "error"))[-1]
    assert started["name"] == "present_started", started
    return {"code": started["code"], "secret": started["secret"]}


def test_a_presenter_on_one_process_leads_followers_on_another(redis_server, tmp_path):
    with contextlib.ExitStack() as stack:
        url_a, url_b = web(stack, tmp_path / "a", redis_server.url), web(stack, tmp_path / "b", redis_server.url)
        teacher, student_a, student_b = (connected(stack, url) for url in (url_a, url_b, url_b))
        room = start_presenting(teacher)

        student_b.emit("present_join", {"rid": "j", "code": room["code"].lower()}, namespace=NAMESPACE)
        assert student_b.wait("j", until=("present_state", "error"))[-1]["name"] == "present_state"
        followers(teacher, 1)  # counted on B, heard on A
        student_a.emit("present_join", {"rid": "j", "code": room["code"]}, namespace=NAMESPACE)
        student_a.wait("j", until=("present_state",))
        followers(teacher, 2)

        seen = len(student_b.answers)
        teacher.emit("present_update", {"rid": "u", **room, "state": VIEW}, namespace=NAMESPACE)
        assert latest(student_b, "present_state", seen)["state"] == VIEW  # through the message queue
        assert latest(student_a, "present_state", seen)["state"] == VIEW

        stranger = connected(stack, url_b)  # the secret is checked on every process
        stranger.emit(
            "present_update",
            {"rid": "s", "code": room["code"], "secret": "guess", "state": "view=model"},
            namespace=NAMESPACE,
        )
        assert stranger.wait("s", until=("error",))[-1]["code"] == "forbidden"

        student_b.close()  # a disconnect on B counts on A
        followers(teacher, 1)
        seen = len(student_a.answers)
        teacher.emit("present_end", {"rid": "e", **room}, namespace=NAMESPACE)
        assert latest(student_a, "present_ended", seen)["code"] == room["code"]
        stranger.emit("present_join", {"rid": "late", "code": room["code"]}, namespace=NAMESPACE)
        assert stranger.wait("late", until=("error",))[-1]["code"] == "not_found"


def test_followers_of_a_process_that_stops_leave_the_count(redis_server, tmp_path):
    with contextlib.ExitStack() as stack:
        teacher = connected(stack, web(stack, tmp_path / "a", redis_server.url))
        room = start_presenting(teacher)
        with contextlib.ExitStack() as doomed:  # B stops without telling anyone its clients left
            student = socket_client(web(doomed, tmp_path / "b", redis_server.url))
            student.emit("present_join", {"rid": "j", "code": room["code"]}, namespace=NAMESPACE)
            followers(teacher, 1)
        deadline = time.monotonic() + ANSWER_SECONDS
        while teacher.answers[-1] != {"name": "present_followers", "code": room["code"], "followers": 0}:
            assert time.monotonic() < deadline, f"B's follower is still counted: {teacher.answers[-1]}"
            teacher.emit("present_update", {"rid": "u", **room, "state": VIEW}, namespace=NAMESPACE)
            time.sleep(0.5)


def make_link(url: str, query: str) -> str:
    request = urllib.request.Request(
        f"{url}/api/links", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["path"]


def opened(url: str, path: str) -> str | None:
    """Where ``path`` redirects to (None for a 404)."""

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        urllib.request.build_opener(Keep).open(url + path)
    except urllib.error.HTTPError as answer:
        return answer.headers.get("Location") if answer.code == 302 else None
    raise AssertionError(f"{path} did not redirect")


def test_short_links_and_rooms_outlive_restarts_of_every_web_process(redis_server, tmp_path):
    with contextlib.ExitStack() as stack:
        url_a = web(stack, tmp_path / "a", redis_server.url)
        path = make_link(url_a, VIEW)
        teacher = connected(stack, url_a)
        room = start_presenting(teacher)
        seen = len(teacher.answers)
        teacher.emit("present_update", {"rid": "u", **room, "state": VIEW}, namespace=NAMESPACE)
        latest(teacher, "present_followers", seen)  # the update is stored
        teacher.close()
    with contextlib.ExitStack() as stack:  # both restarted; B never saw the link or the room
        url_a, url_b = web(stack, tmp_path / "a", redis_server.url), web(stack, tmp_path / "b", redis_server.url)
        assert opened(url_b, path) == "/?" + VIEW
        assert opened(url_b, "/s/aaaaaaaaaa") is None
        student = connected(stack, url_b)
        student.emit("present_join", {"rid": "j", "code": room["code"]}, namespace=NAMESPACE)
        assert student.wait("j", until=("present_state", "error"))[-1]["state"] == VIEW
        teacher = connected(stack, url_a)  # the presenter's tab reconnects with its secret
        seen = len(student.answers)
        teacher.emit("present_update", {"rid": "u", **room, "state": "view=model"}, namespace=NAMESPACE)
        assert latest(student, "present_state", seen)["state"] == "view=model"


def test_a_redis_restart_costs_presentations_a_moment_not_the_server(redis_server, tmp_path):
    with contextlib.ExitStack() as stack:
        url_a, url_b = web(stack, tmp_path / "a", redis_server.url), web(stack, tmp_path / "b", redis_server.url)
        path = make_link(url_a, VIEW)
        teacher, student = connected(stack, url_a), connected(stack, url_b)
        room = start_presenting(teacher)
        student.emit("present_join", {"rid": "j", "code": room["code"]}, namespace=NAMESPACE)
        student.wait("j", until=("present_state",))

        redis_server.stop()
        teacher.emit("present_update", {"rid": "down", **room, "state": VIEW}, namespace=NAMESPACE)
        refused = teacher.wait("down", until=("error",))[-1]
        assert refused["code"] == "busy" and "shared store" in refused["message"]
        assert opened(url_a, path) == "/?" + VIEW  # A made it: its own disk answers
        student.emit("analyze", {"rid": "a", "text": "Redis is down."}, namespace=NAMESPACE)
        assert student.wait("a")[-1]["name"] == "done"  # computed on B, kept in B's memory

        redis_server.start()  # the saved data set is back: the room and the link too
        deadline = time.monotonic() + ANSWER_SECONDS
        while not any(a["name"] == "present_state" and a["state"] == VIEW for a in student.answers):
            assert time.monotonic() < deadline, f"the follower never heard the update: {student.answers[-5:]}"
            teacher.emit("present_update", {"rid": "up", **room, "state": VIEW}, namespace=NAMESPACE)
            time.sleep(0.5)
        assert opened(url_b, path) == "/?" + VIEW


# --- model workers: web processes that load no model --------------------------------------------

PROMPT = "Two web processes, one worker, one forward pass."
WORKERS = {"MODEL_WORKERS": "true"}


@contextlib.contextmanager
def model_worker(folder: Path, redis_url: str, *options: str):
    """``python -m app worker`` sharing ``redis_url``; yields its process, stopped afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.with_suffix(".worker.log")
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--cache-dir", str(folder), "worker", *options],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ATLAS_REDIS_URL": redis_url, "ATLAS_SECRET_KEY": "shared"},
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def thread_niceness(pid: int) -> set[int]:
    """The niceness of each of a process's threads (/proc: field 19 of each task's stat)."""
    tasks = Path(f"/proc/{pid}/task")
    return {int(stat.read_text().rsplit(")", 1)[1].split()[16]) for stat in tasks.glob("*/stat")}


def running_jobs(redis_url: str) -> int:
    import redis
    import rq

    with redis.Redis.from_url(redis_url) as client:
        return rq.Queue("atlas-model", connection=client).started_job_registry.count


def test_two_web_processes_and_two_workers_serve_one_forward_pass(redis_server, tmp_path):
    """Both workers take one of the two identical jobs; the Redis lock lets one compute."""
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(model_worker(tmp_path / name, redis_server.url, "--preload", "minilm"))
            for name in ("w1", "w2")
        ]
        url_a = stack.enter_context(live_server(tmp_path / "a", REDIS_URL=redis_server.url, **WORKERS))
        url_b = stack.enter_context(live_server(tmp_path / "b", REDIS_URL=redis_server.url, **WORKERS))
        client_a, client_b = connected(stack, url_a), connected(stack, url_b)

        for client, rid in ((client_a, "a"), (client_b, "b")):
            client.emit("analyze", {"rid": rid, "text": PROMPT, "layers": [0]}, namespace=NAMESPACE)
        answers = [{a["name"]: a for a in client.wait(rid)} for client, rid in ((client_a, "a"), (client_b, "b"))]
        niced = min(19, os.getpriority(os.PRIO_PROCESS, 0) + config.Config.MODEL_NICE)
        deadline = time.monotonic() + ANSWER_SECONDS  # a worker whose job found the result made by the
        while True:  # other runs model work only in its preload, which may still be starting up
            niceness = [thread_niceness(worker.pid) for worker in workers]
            if all(niced in threads for threads in niceness) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [a["done"]["key"] for a in answers] == [answers[0]["done"]["key"]] * 2, answers
        assert sorted(a["done"]["cached"] for a in answers) == [False, True]  # one forward pass
        for name in ("tokens", "layer"):
            assert answers[0][name] | {"rid": 0} == answers[1][name] | {"rid": 0}

        key = answers[0]["done"]["key"]  # details of the worker's result, from the shared store
        client_b.emit("token", {"rid": "t", "key": key, "index": 1}, namespace=NAMESPACE)
        assert client_b.wait("t", until=("token", "error"))[-1]["name"] == "token"
        with urllib.request.urlopen(f"{url_a}/api/probe?model=minilm&length=8") as response:  # a single answer
            assert json.load(response)["length"] == 8
        request = urllib.request.Request(
            f"{url_b}/api/analyze",
            json.dumps({"text": PROMPT + " Again."}).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:  # an HTTP stream: the worker's events come back
            answer = json.load(response)
        assert answer["cached"] is False and answer["tokens"]["text"] == PROMPT + " Again."
        with urllib.request.urlopen(f"{url_a}/api/models") as response:
            assert not any(model["loaded"] for model in json.load(response)["models"])  # the web loads none
    assert all(niced in threads for threads in niceness), niceness  # the web processes answer first


def test_a_job_whose_worker_is_killed_is_answered_once_by_another(redis_server, tmp_path):
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(live_server(tmp_path / "a", REDIS_URL=redis_server.url, **WORKERS))
        client = connected(stack, url)
        client.emit("analyze", {"rid": "k", "text": PROMPT}, namespace=NAMESPACE)
        assert client.wait("k", until=("progress",))[-1]["stage"] == NO_WORKER  # the page says why it waits
        doomed = stack.enter_context(model_worker(tmp_path / "w1", redis_server.url))
        deadline = time.monotonic() + ANSWER_SECONDS
        while not running_jobs(redis_server.url):  # the worker took it: now loading the model
            assert time.monotonic() < deadline, "the worker never started the job"
            time.sleep(0.05)
        doomed.kill()
        doomed.wait()
        stack.enter_context(model_worker(tmp_path / "w2", redis_server.url))
        answers = client.wait("k")
        assert [a["name"] for a in answers].count("done") == 1 and answers[-1]["name"] == "done", answers[-3:]
        assert any("running the request again" in str(a.get("stage")) for a in answers)
        time.sleep(1)  # nothing more arrives for it
        assert [a["name"] for a in client.answers if a.get("rid") == "k"].count("done") == 1


def test_a_queued_job_leaves_the_queue_with_its_client(redis_server, tmp_path):
    import redis
    import rq

    with contextlib.ExitStack() as stack, redis.Redis.from_url(redis_server.url) as connection:
        url = stack.enter_context(live_server(tmp_path / "a", REDIS_URL=redis_server.url, **WORKERS))
        client = socket_client(url)
        client.emit("analyze", {"rid": "q", "text": PROMPT}, namespace=NAMESPACE)
        assert client.wait("q", until=("progress",))[-1]["stage"] == NO_WORKER
        queue = rq.Queue("atlas-model", connection=connection)
        assert queue.count == 1
        client.close()
        deadline = time.monotonic() + ANSWER_SECONDS
        while queue.count:
            assert time.monotonic() < deadline, "the job stayed queued after its client left"
            time.sleep(0.1)


def test_model_workers_need_redis():
    from app import create_app

    with pytest.raises(ValueError, match="MODEL_WORKERS needs REDIS_URL"):
        create_app({"MODEL_WORKERS": True, "REDIS_URL": None})
