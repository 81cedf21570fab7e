"""nmt.device: large freed blocks served again from the heap (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from nmt.device import reuse_freed_memory

pytestmark = pytest.mark.skipif(
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


def repeated_allocations(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", REPEATED_ALLOCATION_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
    )
    applied, faults = result.stdout.split()
    return applied, int(faults)


def test_freed_large_tensors_are_reused_instead_of_fresh_pages():
    applied, reused = repeated_allocations("reuse")
    assert applied == "True"
    applied, fresh = repeated_allocations("default")
    assert applied == "None"
    # By default every one of the 20 tensors is mapped anew: 16,384 faults with 4 KiB pages, at
    # least 32 with 2 MiB ones.
    assert fresh >= 20 * 32
    assert reused < fresh / 2


def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert reuse_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert reuse_freed_memory() is False
