"""nmt.device: large freed blocks served again from the heap (glibc only); work on a passing
thread leaves no OpenMP team behind."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys

import pytest
import torch

from nmt.device import on_passing_thread, reuse_freed_memory

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's"
)

# Page faults of 20 more 64 MiB tensors, each freed before the next, in a fresh process (a
# training step's logits are this size and come and go every step). Small allocations between
# them may take part of a freed block, so some of them still need new pages.
REPEATED_ALLOCATION_FAULTS = """
import resource, sys, torch
from nmt.device import reuse_freed_memory
print(reuse_freed_memory() if sys.argv[1] == "reuse" else None)
torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(16 * 2**20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def fresh_process(script: str, argument: str, env: dict[str, str]) -> list[str]:
    """The words `script` prints, run with `argument` in a new Python process."""
    result = subprocess.run(
        [sys.executable, "-c", script, argument],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return result.stdout.split()


def repeated_allocations(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    applied, faults = fresh_process(REPEATED_ALLOCATION_FAULTS, mode, env)
    return applied, int(faults)


@glibc_only
def test_freed_large_tensors_are_reused_instead_of_fresh_pages():
    applied, reused = repeated_allocations("reuse")
    assert applied == "True"
    applied, fresh = repeated_allocations("default")
    assert applied == "None"
    # By default every one of the 20 tensors is mapped anew: 16,384 faults with 4 KiB pages, at
    # least 32 with 2 MiB ones.
    assert fresh >= 20 * 32
    assert reused < fresh / 2


@glibc_only
def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert reuse_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert reuse_freed_memory() is False


# Threads of a fresh process (2 torch threads) before and after a parallel torch operation, run
# on the main thread or on a passing thread: OpenMP's worker threads belong to the thread that
# started them and stay until it ends (then they leave within a moment).
OPENMP_TEAM = """
import os, sys, time, torch
from nmt.device import on_passing_thread
torch.set_num_threads(2)
def threads():
    return len(os.listdir("/proc/self/task"))
before = threads()
work = lambda: (torch.ones(2**22) * 2).sum().item()
result = work() if sys.argv[1] == "main" else on_passing_thread(work)
for _ in range(50):  # ended threads leave /proc a moment after the join returns
    if sys.argv[1] == "main" or threads() <= before:
        break
    time.sleep(0.1)
print(before, threads(), result)
"""


def threads_around_parallel_work(where: str) -> tuple[int, int]:
    before, after, value = fresh_process(OPENMP_TEAM, where, {**os.environ, "OMP_NUM_THREADS": "2"})
    assert float(value) == 2.0 * 2**22
    return int(before), int(after)


def torch_uses_gnu_openmp() -> bool:
    """Whether this process runs torch on libgomp (a team per thread; Intel's OpenMP differs)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return "OpenMP" in torch.__config__.parallel_info() and "libgomp" in maps.read()
    except OSError:  # no /proc: not Linux
        return False


@pytest.mark.skipif(not torch_uses_gnu_openmp(), reason="needs Linux and torch on GNU OpenMP")
def test_work_on_a_passing_thread_leaves_no_openmp_team_behind():
    before, after = threads_around_parallel_work("main")
    assert after > before  # the main thread's team stays: a second one would make both sleep
    before, after = threads_around_parallel_work("passing")
    assert after == before


def test_a_passing_thread_returns_the_result_and_raises_the_error():
    assert on_passing_thread(lambda: 42) == 42
    with pytest.raises(KeyError, match="missing"):
        on_passing_thread(lambda: {}["missing"])


# Ctrl-C while a passing thread works: the caller waits for the work, then is interrupted (a
# process that shuts down under a thread inside torch can abort).
INTERRUPTED = """
import time
from nmt.device import on_passing_thread
def work():
    print("working", flush=True)
    time.sleep(1.0)
    print("work done", flush=True)
try:
    on_passing_thread(work)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_an_interrupted_caller_waits_for_the_work_then_stops():
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "working\n"
    child.send_signal(signal.SIGINT)  # to the process: its main thread is the one waiting
    rest, _ = child.communicate(timeout=60)
    assert rest.splitlines() == ["work done", "interrupted"]
