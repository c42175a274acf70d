"""The cores niced model work uses (app.cores): read from /proc/stat's busy time at normal
priority; niced work leaves a core free. The figures are ticks, as /proc/stat gives them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from app.cores import SAMPLE_SECONDS, FreeCores, busy_and_total, free_cores, own_kernel_ticks


def stat_line(user=0, nice=0, system=0, idle=0, iowait=0, irq=0, softirq=0, steal=0) -> str:
    return f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\ncpu0 1 2 3 4\n"


def test_busy_time_is_work_at_normal_priority_and_in_the_kernel():
    assert busy_and_total(stat_line(user=10, nice=20, system=3, idle=50, iowait=2, irq=1, softirq=1, steal=3)) == (
        18,
        90,
    )


@pytest.mark.parametrize(
    ("busy_share", "cores", "free"),
    [(0.0, 2, 2), (0.2, 2, 2), (0.26, 2, 1), (0.5, 2, 1), (1.0, 2, 1), (0.0, 8, 8), (0.3, 8, 6), (0.45, 8, 4)],
)
def test_a_core_is_taken_when_others_kept_it_busy_half_the_time(busy_share, cores, free):
    """Busy share of all the cores' time -> cores left: a core counts as taken from half its time on."""
    total = 1000
    before, after = (0, 0), (int(busy_share * total), total)
    assert free_cores(cores, before, after) == free


def test_niced_work_leaves_every_core_free():
    before = busy_and_total(stat_line(user=100, nice=100, idle=100))
    after = busy_and_total(stat_line(user=100, nice=300, idle=100))  # two cores' time, all of it niced
    assert free_cores(2, before, after) == 2


@pytest.mark.parametrize(("own_share", "free"), [(1.0, 2), (0.0, 1)])
def test_this_process_s_own_kernel_time_is_the_team_s_not_others_work(tmp_path, own_share, free):
    """Two cores' time, half of it in the kernel: when that kernel time is this process's own (the
    team's page faults and system calls, which /proc/stat files under ``system``, not ``nice``),
    both cores stay the team's; when it is another process's, one core is taken."""
    stat, own = tmp_path / "stat", [0]
    stat.write_text(stat_line())
    sizer = FreeCores(2, stat, own_kernel=lambda: own[0])
    assert sizer.now() == 2  # one reading: every core
    own[0] = int(100 * own_share)
    stat.write_text(stat_line(system=100, nice=100))
    time.sleep(SAMPLE_SECONDS * 3)
    assert sizer.now() == free


def test_own_kernel_ticks_count_this_process_s_time_in_the_kernel():
    """Page faults of fresh memory are kernel work: the count rises."""
    before = own_kernel_ticks()
    deadline = time.monotonic() + 2
    while own_kernel_ticks() == before and time.monotonic() < deadline:
        bytearray(b"\x01") * (64 << 20)  # touches 64 MiB of new pages
    assert own_kernel_ticks() > before


def test_an_unreadable_stat_file_means_every_core(tmp_path):
    assert FreeCores(4, tmp_path / "absent").now() == 4


@pytest.mark.skipif(sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="reads Linux's /proc/stat")
def test_a_core_kept_busy_at_normal_priority_is_left_to_it():
    """A process spinning at normal priority takes a core from niced model work within a second;
    this machine's other load can only take more."""
    cores = os.cpu_count() or 1
    sizer = FreeCores(cores)
    sizer.now()  # starts sampling
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while sizer.now() > cores - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sizer.now() <= cores - 1
    finally:
        spinner.kill()
        spinner.wait()
