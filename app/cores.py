"""How many cores niced model work should use now: the ones the rest of the machine left free.

torch splits each operation of a forward pass among its OpenMP team and waits for the slowest
thread. Model work runs niced (:class:`app.limits.ModelThreads`), so while anything at normal
priority keeps a core busy, the team's thread on that core gets a tenth of it and every operation
waits for that thread. Measured on 2 cores (minilm, one 60-token pass, nice 10): 14 ms idle; with
one core busy at nice 0, 544 ms with two threads and 21.5 ms with one. Under a hostile client the
class's analyses took 0.7-1.4 s instead of 0.05 (docs/reliability.md). So before each job the
team is sized to the cores that work at normal priority left free over the last half second,
and sized again every quarter second while the job runs (a browser on the same laptop loading the
page just before Analyze made a 1024-token capture run on one thread throughout: 3.8 s, not 3.1).

Busy time comes from /proc/stat. Work at positive niceness (this process's own model threads,
the cache writer, anything else in the background) counts as free: the team is not starved by
it. So does this process's own time in the kernel: /proc/stat counts a niced thread's page faults
and system calls as ``system``, not ``nice``, and a capture's own kernel time (a tenth of its CPU)
plus a browser's click on the same 2 cores had shrunk a 128-token capture's team to one thread in
3 of 5 analyses. Where /proc/stat cannot be read, every core is used.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PROC_STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.1
WINDOW_SAMPLES = 5  # the cores' use over the last 0.5 s
TAKEN_SHARE = 0.5  # a core counts as taken when work at normal priority used at least this share of it
RESIZE_SECONDS = 0.25  # how often a running job sizes its team again
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit, per second


def busy_and_total(stat_text: str) -> tuple[int, int]:
    """(ticks spent on work at normal priority or in the kernel, ticks in all) of every core
    since boot, from /proc/stat's first line (``cpu user nice system idle iowait irq softirq
    steal ...``). ``nice`` is the user time of niced work: counted as neither."""
    fields = [int(value) for value in stat_text.split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    busy = user + system + irq + softirq + steal
    return busy, busy + nice + idle + iowait


def free_cores(cores: int, before: tuple[int, int], after: tuple[int, int]) -> int:
    """Cores left free between two readings of :func:`busy_and_total`: all ``cores`` less each
    one work at normal priority kept busy (``TAKEN_SHARE`` of it or more); at least one."""
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return cores
    taken = int(cores * busy / total + 1 - TAKEN_SHARE)
    return max(1, min(cores, cores - taken))


def own_kernel_ticks() -> int:
    """Ticks every thread of this process has spent in the kernel, in /proc/stat's unit."""
    return round(os.times().system * CLOCK_TICKS)


class FreeCores:
    """Samples /proc/stat every ``SAMPLE_SECONDS`` on a daemon thread, from the first call of
    :meth:`now` on; :meth:`now` answers from the last ``WINDOW_SAMPLES`` readings. Each reading's
    busy time leaves out ``own_kernel()``: this process's own kernel time, which is the team's."""

    def __init__(self, cores: int, stat: Path = PROC_STAT, own_kernel: Callable[[], int] = own_kernel_ticks):
        self.cores, self.stat, self.own_kernel = max(1, cores), stat, own_kernel
        self._readings: collections.deque[tuple[int, int]] = collections.deque(maxlen=WINDOW_SAMPLES + 1)
        self._lock = threading.Lock()
        self._sampler: threading.Thread | None = None

    def now(self) -> int:
        """The cores model work should use now (all of them until two readings exist)."""
        self._start()
        with self._lock:
            if len(self._readings) < 2:
                return self.cores
            return free_cores(self.cores, self._readings[0], self._readings[-1])

    def _read(self) -> tuple[int, int] | None:
        try:
            busy, total = busy_and_total(self.stat.read_text())
        except (OSError, ValueError):
            return None
        return busy - self.own_kernel(), total

    def _start(self) -> None:
        with self._lock:
            if self._sampler is not None:
                return
            self._sampler = threading.Thread(target=self._sample, name="atlas-free-cores", daemon=True)
        first = self._read()
        if first is None:
            return  # nothing to read: every core, always
        with self._lock:
            self._readings.append(first)
        self._sampler.start()

    def _sample(self) -> None:
        while True:
            time.sleep(SAMPLE_SECONDS)
            reading = self._read()
            if reading is not None:
                with self._lock:
                    self._readings.append(reading)


_RUNNING = threading.local()  # on a model thread during a job: its FreeCores and when it last sized its team
_HOOK_LOCK = threading.Lock()
_hooked = False


@contextlib.contextmanager
def sized_team(cores: FreeCores) -> Iterator[None]:
    """Run the body (one job, on this thread) with torch's team sized to ``cores.now()``, and
    sized again every ``RESIZE_SECONDS`` as the job's modules run (:func:`_resize_team`)."""
    _hook_modules()
    _RUNNING.cores = cores
    _fit_team(cores)
    try:
        yield
    finally:
        _RUNNING.cores = None


def _hook_modules() -> None:
    """Install :func:`_resize_team` as a forward pre-hook of every torch module, once."""
    global _hooked
    with _HOOK_LOCK:
        if not _hooked:
            import torch

            torch.nn.modules.module.register_module_forward_pre_hook(_resize_team)
            _hooked = True


def _resize_team(module, args) -> None:
    """Between two modules of a job's forward pass (torch's team can change size only between
    operations, and only from the thread that runs them): follow the cores free now."""
    cores = getattr(_RUNNING, "cores", None)
    if cores is None:
        return  # not a sized job's thread
    if time.monotonic() - _RUNNING.sized_at >= RESIZE_SECONDS:
        _fit_team(cores)


def _fit_team(cores: FreeCores) -> None:
    """Size this thread's torch team to ``cores.now()`` (when it differs) and note when."""
    import torch

    _RUNNING.sized_at = time.monotonic()
    threads = cores.now()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
