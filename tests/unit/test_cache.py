"""The per-prompt cache: content addresses, memory LRU by bytes, durable disk store, single flight."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from app import cache as cache_module
from app.cache import CaptureCache, DiskStore, cache_key, is_key
from models.capture import run_capture
from models.record import Capture
from tests.browser.server import REPO_ROOT


@pytest.fixture(scope="module")
def capture(tiny_models) -> Capture:
    return run_capture(tiny_models["tiny-llama"], "A small prompt for the cache tests.")


def make_cache(root, memory_bytes=1 << 30, disk_bytes=1 << 30) -> CaptureCache:
    return CaptureCache(DiskStore(root, disk_bytes), memory_bytes)


def put_and_store(cache: CaptureCache, key: str, capture: Capture) -> None:
    """``put``, then wait for the background write (what a server does before it exits)."""
    cache.put(key, capture)
    assert cache.flush(timeout=30)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"fingerprint": "other"},
        {"text": "A small prompt."},
        {"options": {"precision": "float32"}},
    ],
)
def test_key_changes_with_every_input(change):
    base = {"model": "m", "fingerprint": "f", "text": "A small prompt", "options": {}}
    assert cache_key(**base) != cache_key(**{**base, **change})
    assert cache_key(**base) == cache_key(**base) and is_key(cache_key(**base))


def assert_same(a: Capture, b: Capture) -> None:
    assert a.tokens == b.tokens and a.text == b.text and a.info == b.info
    for name in ("queries", "keys", "row_lse", "masks", "thumbnails", "attention", "spans", "special"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_entries_survive_a_restart(tmp_path, capture):
    key = cache_key("m", "f", capture.text)
    put_and_store(make_cache(tmp_path), key, capture)
    assert_same(make_cache(tmp_path).get(key), capture)


def test_corrupt_entry_is_detected_removed_and_recomputed(tmp_path, capture):
    key = cache_key("m", "f", capture.text)
    put_and_store(make_cache(tmp_path), key, capture)
    path = next(tmp_path.glob("*/*.atlas"))
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    fresh = make_cache(tmp_path)
    assert fresh.get(key) is None and not path.exists()
    result, cached = fresh.get_or_compute(key, lambda: capture)
    assert not cached and fresh.flush(timeout=30) and path.exists()


def test_truncated_entry_from_a_killed_writer_is_not_served(tmp_path, capture):
    key = cache_key("m", "f", capture.text)
    put_and_store(make_cache(tmp_path), key, capture)
    path = next(tmp_path.glob("*/*.atlas"))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (path.parent / ".tmp-leftover").write_bytes(b"partial write")
    assert make_cache(tmp_path).get(key) is None


def test_memory_is_bounded_by_bytes(tmp_path, capture):
    cache = make_cache(tmp_path, memory_bytes=int(capture.nbytes * 2.5))
    keys = [cache_key("m", "f", str(i)) for i in range(4)]
    for key in keys:
        put_and_store(cache, key, capture)
    assert cache._memory.nbytes <= cache.max_bytes and len(cache._memory) == 2
    assert list(cache._memory) == keys[2:]
    assert cache.get(keys[0]) is not None  # evicted from memory, still on disk


def test_memory_makes_room_for_a_long_forward_pass(tmp_path, capture):
    cache = make_cache(tmp_path, memory_bytes=capture.nbytes * 4)
    keys = [cache_key("m", "f", str(i)) for i in range(3)]
    for key in keys:
        put_and_store(cache, key, capture)
    cache.make_room(capture.nbytes * 2)  # the pass needs half the budget: keep the newest two
    assert list(cache._memory) == keys[1:]
    cache.make_room(cache.max_bytes)  # it needs all of it: keep nothing in memory
    assert not cache._memory and cache._memory.nbytes == 0
    assert cache.get(keys[0]) is not None  # everything reloads from disk


def test_making_room_keeps_entries_not_yet_stored(capture):
    store = SlowStore()
    cache = CaptureCache(store, max_bytes=capture.nbytes * 4)
    cache.put(cache_key("m", "f", "pending"), capture)
    cache.make_room(cache.max_bytes)
    assert len(cache._memory) == 1  # the only copy until the writer stores it
    store.release.set()
    assert cache.flush(timeout=30)


def test_a_capture_reserves_memory_for_its_forward_pass_first(tiny_models, monkeypatch):
    from models import budget, recorder

    monkeypatch.setattr(recorder, "BATCH_TOKENS", 0)  # layers announced as they finish, as a long prompt's are

    asked = []
    run_capture(
        tiny_models["tiny-gpt2"],
        "Four score and seven years ago",
        reserve=lambda nbytes: asked.append(nbytes),
        on_layer=lambda *layer: asked.append("layer"),
    )
    handle = tiny_models["tiny-gpt2"]
    n = len(handle.tokenizer("Four score and seven years ago")["input_ids"])
    geometry = budget.Geometry.of(handle.config, handle.describe()["layers"], handle.is_causal)
    planned = budget.plan_capture(geometry, n, 4)  # the record included: it joins the cached results
    assert asked[0] == planned.total > planned.record > 0 and set(asked[1:]) == {"layer"}


def test_disk_is_pruned_oldest_first(tmp_path, capture):
    cache = make_cache(tmp_path)
    keys = [cache_key("m", "f", str(i)) for i in range(3)]
    put_and_store(cache, keys[0], capture)
    size = next(tmp_path.glob("*/*.atlas")).stat().st_size
    cache.store.max_bytes = int(size * 2.5)
    for key in keys[1:]:
        time.sleep(0.01)
        put_and_store(cache, key, capture)
    assert not cache.store._path(keys[0]).exists() and cache.store._path(keys[2]).exists()


class SlowStore:
    """A store whose writes wait for ``release``: shows what is served while a write is pending."""

    def __init__(self):
        self.release, self.written = threading.Event(), {}

    def read(self, key):
        return self.written.get(key)

    def write(self, key, arrays):
        assert self.release.wait(30)
        self.written[key] = arrays
        return True


def test_a_new_entry_is_served_before_it_is_stored(capture):
    store = SlowStore()
    cache = CaptureCache(store, max_bytes=1)  # every older entry leaves memory at once
    first, second = cache_key("m", "f", "1"), cache_key("m", "f", "2")
    assert cache.get_or_compute(first, lambda: capture) == (capture, False)  # returns with the write pending
    cache.put(second, capture)
    assert first not in cache._memory and cache.get(first) is capture  # pending entries stay readable
    assert not store.written and not cache.flush(timeout=0.05)
    store.release.set()
    assert cache.flush(timeout=30) and set(store.written) == {first, second}


class TimedStore(SlowStore):
    """Notes when each write starts."""

    def __init__(self):
        super().__init__()
        self.release.set()
        self.started: dict[str, float] = {}

    def write(self, key, arrays):
        self.started[key] = time.monotonic()
        return super().write(key, arrays)


def test_the_writer_waits_for_the_answer_on_its_way(capture):
    """An entry put while an answer is being sent is written once the answer is out: the write
    does not share the cores with sending the first view."""
    store, key = TimedStore(), cache_key("m", "f", "answered")
    cache = CaptureCache(store, 1 << 30)
    with cache.answering():
        cache.put(key, capture)
        time.sleep(0.1)
        assert key not in store.started
        sent = time.monotonic()
    assert cache.flush(timeout=30) and store.started[key] >= sent


def test_the_writer_waits_at_most_write_hold_seconds_an_entry(capture, monkeypatch):
    """Under answers that never stop (a class at once), each entry still gets written."""
    monkeypatch.setattr(cache_module, "WRITE_HOLD_SECONDS", 0.05)
    store, key = TimedStore(), cache_key("m", "f", "held")
    cache = CaptureCache(store, 1 << 30)
    with cache.answering():
        cache.put(key, capture)
        assert cache.flush(timeout=30) and key in store.written


def test_a_failed_background_write_is_logged_and_the_writer_goes_on(capture, caplog):
    class FailingOnce(SlowStore):
        def write(self, key, arrays):
            if not self.written and not self.release.is_set():
                self.release.set()
                raise OSError("disk gone")
            return super().write(key, arrays)

    store = FailingOnce()
    cache = CaptureCache(store, 1 << 30)
    for text in ("1", "2"):
        cache.put(cache_key("m", "f", text), capture)
    assert cache.flush(timeout=30) and list(store.written) == [cache_key("m", "f", "2")]
    assert "could not store cache entry" in caplog.text


def test_pending_writes_finish_before_the_process_exits(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np
        from app.cache import CaptureCache, DiskStore

        class Entry:
            nbytes = 8
            def to_arrays(self):
                return {{"values": np.arange(1 << 20)}}

        cache = CaptureCache(DiskStore({str(tmp_path)!r}, 1 << 30), 1 << 30)
        for i in range(3):
            cache.put(f"{{i:064x}}", Entry())
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=60)
    store = DiskStore(tmp_path, 1 << 30)
    assert all(store.read(f"{i:064x}") is not None for i in range(3))


def test_concurrent_requests_share_one_computation(tmp_path, capture):
    cache = make_cache(tmp_path)
    calls, results = [], []
    started = threading.Event()

    def compute():
        calls.append(1)
        started.set()
        time.sleep(0.3)
        return capture

    def request():
        results.append(cache.get_or_compute("a" * 64, compute))

    threads = [threading.Thread(target=request) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 5
    assert sorted(cached for _, cached in results) == [False, True, True, True, True]


def test_a_failed_computation_is_not_cached(tmp_path, capture):
    cache = make_cache(tmp_path)

    def fail():
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("b" * 64, fail)
    assert cache.get("b" * 64) is None
    assert cache.get_or_compute("b" * 64, lambda: capture) == (capture, False)


def test_non_keys_never_reach_the_filesystem(tmp_path):
    store = DiskStore(tmp_path, 1 << 20)
    for bad in ("../../etc/passwd", "A" * 64, "", "g" * 64):
        with pytest.raises(ValueError):
            store.read(bad)
