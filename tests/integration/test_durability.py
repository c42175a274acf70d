"""The disk cache survives a writer killed with SIGKILL: every entry reads back intact or not at
all, never corrupt, and the killed writer's temp files are removed when a store opens. A disk
that refuses a write costs the entry, never the answer."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from app.cache import TEMP_PREFIX, CaptureCache, DiskStore, cache_key
from tests.browser.server import REPO_ROOT

KEYS = 12  # distinct entries the writer cycles through, overwriting each again and again
ENTRY_BYTES = 4 << 20  # bytes per entry: large enough that a kill usually lands inside a write
KILLS = 6

WRITER = textwrap.dedent(f"""
    import hashlib, itertools, sys
    import numpy as np
    from app.cache import DiskStore

    store = DiskStore(sys.argv[1], 1 << 40)
    start = int(sys.argv[2])
    for generation in itertools.count(start):
        slot = generation % {KEYS}
        key = hashlib.sha256(f"entry-{{slot}}".encode()).hexdigest()
        store.write(key, {{"values": np.full({ENTRY_BYTES}, generation % 251, dtype=np.uint8),
                          "meta": np.array([slot, generation], dtype=np.int64)}})
        if generation == start:
            print("writing", flush=True)
""")


def key_of(slot: int) -> str:
    return hashlib.sha256(f"entry-{slot}".encode()).hexdigest()


def wait_for_a_temp_file(root: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(root.glob(f"*/{TEMP_PREFIX}*")):
        pass


def check_entries(root: Path) -> int:
    """Open a fresh store like a restarted server; every entry must be whole. Returns how many."""
    store = DiskStore(root, 1 << 40)
    assert not list(root.glob(f"*/{TEMP_PREFIX}*")), "a killed writer's temp file survived the restart"
    present = 0
    for slot in range(KEYS):
        arrays = store.read(key_of(slot))
        if arrays is None:
            continue
        present += 1
        stored_slot, generation = arrays["meta"]
        assert stored_slot == slot and arrays["values"].shape == (ENTRY_BYTES,)
        assert np.all(arrays["values"] == generation % 251), f"entry {slot} is torn"
    return present


def test_a_writer_killed_mid_write_leaves_every_entry_intact_or_absent(tmp_path):
    leftovers, present = 0, 0
    for kill in range(KILLS):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(kill * 1000)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout.readline().strip() == "writing"
        if kill % 2:
            time.sleep(0.05 + 0.07 * kill)  # anywhere in the write cycle
        else:
            wait_for_a_temp_file(tmp_path)  # inside a write, between its first byte and the rename
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()
        leftovers += len(list(tmp_path.glob(f"*/{TEMP_PREFIX}*")))
        present = check_entries(tmp_path)
    assert leftovers >= 1, "no kill landed inside a write; the test proved nothing"
    assert present >= 1


def test_temp_files_of_a_live_writer_are_kept(tmp_path):
    folder = tmp_path / "ab"
    folder.mkdir()
    # pid 1 always runs; Linux pids never exceed 2**22
    alive, dead = folder / f"{TEMP_PREFIX}1-x", folder / f"{TEMP_PREFIX}{2**22 + 17}-y"
    unnamed = folder / f"{TEMP_PREFIX}leftover"
    for temp in (alive, dead, unnamed):
        temp.write_bytes(b"partial")
    DiskStore(tmp_path, 1 << 20)
    assert alive.exists() and not dead.exists() and not unnamed.exists()


def test_a_disk_that_refuses_a_write_costs_the_entry_not_the_answer(tmp_path, monkeypatch):
    cache = CaptureCache(DiskStore(tmp_path, 1 << 30), 1 << 30)
    key = cache_key("m", "f", "a prompt")
    old = {"values": np.arange(4)}
    assert cache.store.write(key, old)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    assert not cache.store.write(key, {"values": np.arange(8)})
    assert not list(tmp_path.glob(f"*/{TEMP_PREFIX}*"))  # the unfinished write was removed
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.store.read(key)["values"], old["values"])  # the old entry is intact


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "header"])
def test_a_damaged_entry_is_never_served(tmp_path, damage):
    store = DiskStore(tmp_path, 1 << 30)
    key = cache_key("m", "f", damage)
    store.write(key, {"values": np.arange(1000)})
    path = store._path(key)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) - 1]
    elif damage == "empty":
        blob = bytearray()
    else:
        blob[0:8] = b"NOTATLAS"
    path.write_bytes(bytes(blob))
    assert DiskStore(tmp_path, 1 << 30).read(key) is None and not path.exists()
