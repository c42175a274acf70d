"""Several server processes share one Redis: Socket.IO's message queue and the result cache.

Starts a real ``redis-server`` on a loopback port (skipped when it is not installed:
``bash scripts/setup --dev`` installs it), then two real ``python -m app serve`` processes with
ATLAS_REDIS_URL, each with its own local cache folder, and a python-socketio client on each."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import numpy as np
import pytest

from app.cache import cache_key, pack
from app.protocol import NAMESPACE
from tests.integration.conftest import free_port, live_server, release_port, socket_client

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server, or bash scripts/setup --dev)",
)
PROMPT = "Fifty students, two server processes, one answer."


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    import redis

    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)
        release_port(port)


@pytest.fixture()
def store(redis_url):
    from app.redis_store import RedisStore

    store = RedisStore(redis_url, ttl_seconds=60, max_entry_bytes=1 << 20)
    yield store
    store.client.flushdb()
    store.client.close()


def test_the_store_round_trips_checksummed_entries_with_an_expiry(store):
    key = cache_key("m", "f", "round trip")
    assert store.read(key) is None
    assert store.write(key, {"values": np.arange(10, dtype=np.float32)})
    np.testing.assert_array_equal(store.read(key)["values"], np.arange(10, dtype=np.float32))
    assert 0 < store.client.ttl(f"atlas:result:{key}") <= 60


def test_a_corrupt_shared_entry_is_removed_not_served(store):
    key = cache_key("m", "f", "corrupt")
    blob = bytearray(pack({"values": np.arange(100)}))
    blob[-10] ^= 0xFF
    store.client.set(f"atlas:result:{key}", bytes(blob))
    assert store.read(key) is None and not store.client.exists(f"atlas:result:{key}")


def test_an_entry_too_large_to_share_is_not_written(store):
    key = cache_key("m", "f", "large")
    assert not store.write(key, {"values": np.zeros(2 << 20, dtype=np.uint8)})
    assert store.read(key) is None


def test_keys_are_validated_before_reaching_redis(store):
    for bad in ("*", "atlas:result:*", "../x", "A" * 64):
        with pytest.raises(ValueError):
            store.read(bad)


def test_an_unreachable_redis_costs_cache_hits_not_answers():
    from app.redis_store import RedisStore

    port = free_port()  # nothing listens there
    try:
        store = RedisStore(f"redis://:secret@127.0.0.1:{port}/0", 60, 1 << 20)
        key = cache_key("m", "f", "offline")
        assert store.read(key) is None and not store.write(key, {"values": np.arange(3)})
        with pytest.raises(RuntimeError, match="cannot reach Redis") as failure:
            store.check()
        assert "secret" not in str(failure.value)
        store.client.close()
    finally:
        release_port(port)


def wait_until_shared(redis_url: str, key: str, seconds: float = 30) -> None:
    """A result reaches Redis from the cache's background writer, after its answer has been
    sent; another process can serve it as cached only from then on."""
    import redis

    from app.redis_store import KEY_PREFIX

    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + seconds
        while not client.exists(KEY_PREFIX + key):
            assert time.monotonic() < deadline, "the result never reached Redis"
            time.sleep(0.05)
    finally:
        client.close()


def test_two_processes_share_sessions_and_results(redis_url, tmp_path):
    import socketio as python_socketio

    with contextlib.ExitStack() as stack:
        url_a = stack.enter_context(live_server(tmp_path / "a", REDIS_URL=redis_url, SECRET_KEY="shared"))
        url_b = stack.enter_context(live_server(tmp_path / "b", REDIS_URL=redis_url, SECRET_KEY="shared"))
        client_a, client_b = socket_client(url_a), socket_client(url_b)
        stack.callback(client_a.close)
        stack.callback(client_b.close)

        client_a.emit("analyze", {"rid": "a", "text": PROMPT, "layers": [0]}, namespace=NAMESPACE)
        answers_a = {a["name"]: a for a in client_a.wait("a")}
        assert answers_a["done"]["cached"] is False
        wait_until_shared(redis_url, answers_a["done"]["key"])

        client_b.emit("analyze", {"rid": "b", "text": PROMPT, "layers": [0]}, namespace=NAMESPACE)
        answers_b = {a["name"]: a for a in client_b.wait("b")}
        assert answers_b["done"]["cached"] is True and answers_b["done"]["key"] == answers_a["done"]["key"]
        assert "progress" not in answers_b  # no model work in process B
        streamed_only = ("rid", "streamed", "thumbnails")  # A's thumbnails came layer by layer, B's in its overview
        for name in ("tokens", "overview", "layer"):
            same = {k: v for k, v in answers_a[name].items() if k not in streamed_only}
            assert same == {k: v for k, v in answers_b[name].items() if k not in streamed_only}, name
        assert answers_b["tokens"]["text"] == PROMPT

        key = answers_a["done"]["key"]  # a detail request on B for the analysis A computed
        client_b.emit("token", {"rid": "t", "key": key, "index": 1}, namespace=NAMESPACE)
        assert client_b.wait("t", until=("token", "error"))[-1]["name"] == "token"

        # the message queue: a process that holds no socket reaches B's client through Redis
        emitter = python_socketio.RedisManager(redis_url, channel="attention-atlas", write_only=True)
        emitter.emit(
            "progress",
            {"rid": "via-redis", "stage": "hello", "fraction": 0.0},
            namespace=NAMESPACE,
            room=client_b.get_sid(NAMESPACE),
        )
        assert client_b.wait("via-redis", until=("progress",))[-1]["stage"] == "hello"
        emitter.redis.close()
