"""What the numbers were measured on, and how busy the rest of the machine was meanwhile."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _command(*command: str) -> str:
    try:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def describe_machine() -> dict:
    dirty = bool(_command("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "torch_threads": _torch_threads(),
        "chromium": _command("/usr/bin/chromium", "--version").splitlines()[0:1] or ["unknown"],
        "bertviz": _version("bertviz"),
        "commit": _command("git", "rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else ""),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _own_processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _busy(times) -> float:
    return sum(getattr(times, name, 0.0) for name in BUSY_FIELDS)


class CpuMeter:
    """Share of the machine's CPU used by processes other than this benchmark and its children
    (other people's builds and tests), from creation until ``other_share()``: 0.0 = idle,
    1.0 = every core busy. Processes of ours that exit before the end are counted as others'."""

    def __init__(self):
        self.started = time.perf_counter()
        self.system = _busy(psutil.cpu_times())
        self.own = self._own_busy()

    @staticmethod
    def _own_busy() -> dict[int, float]:
        busy = {}
        for process in _own_processes():
            try:
                times = process.cpu_times()
                busy[process.pid] = times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                pass
        return busy

    def other_share(self) -> float:
        wall = time.perf_counter() - self.started
        system = _busy(psutil.cpu_times()) - self.system
        now = self._own_busy()
        own = sum(busy - self.own.get(pid, 0.0) for pid, busy in now.items())
        return max(0.0, system - own) / max(wall * (os.cpu_count() or 1), 1e-9)


QUIET_SHARE = 0.25  # other processes' CPU share below which the machine counts as quiet
QUIET_WINDOW = 2.0  # s per sample


def wait_for_quiet(max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under QUIET_SHARE of the CPU
    over a QUIET_WINDOW, so a measurement does not start in the middle of someone's test run.
    Returns the share measured last."""

    def others() -> float:
        meter = CpuMeter()
        time.sleep(QUIET_WINDOW)
        return meter.other_share()

    return _wait_below(others, max_wait)


def wait_for_idle(pid: int, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until process ``pid`` uses under QUIET_SHARE of one core over
    a QUIET_WINDOW: the server's background work after an analysis (storing its record: a
    4096-token SmolLM2 record is 425 MB, packed, hashed and fsynced) is over. Returns the last share."""
    process = psutil.Process(pid)

    def its_own() -> float:
        before, started = process.cpu_times(), time.perf_counter()
        time.sleep(QUIET_WINDOW)
        after = process.cpu_times()
        return (after.user + after.system - before.user - before.system) / (time.perf_counter() - started)

    return _wait_below(its_own, max_wait)


def _wait_below(sample: Callable[[], float], max_wait: float) -> float:
    """``sample()`` (a CPU share over one QUIET_WINDOW) until it is under QUIET_SHARE or
    ``max_wait`` s have passed; the share measured last."""
    deadline = time.perf_counter() + max_wait
    while True:
        share = sample()
        if share < QUIET_SHARE or time.perf_counter() >= deadline:
            return share


def model_arguments(description: str, sizes: str, cache_name: str) -> argparse.ArgumentParser:
    """The options every in-process model benchmark takes: --model, --sizes (prompt lengths in
    tokens) and --cache-dir (a results cache of its own, under the system's temporary folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sizes", default=sizes)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), cache_name))
    return parser


def loaded_model(args: argparse.Namespace):
    """(service, handle): the app's service over ``args.cache_dir`` and ``args.model`` loaded by
    it from local files only, as the server loads it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from app import create_app

    service = create_app({"CACHE_DIR": args.cache_dir}).extensions["atlas"]
    return service, service.loader.get(args.model)
