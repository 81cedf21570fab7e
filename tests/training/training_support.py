"""Helpers shared by the training tests: weights, bitwise comparison, a run killed mid-update,
losses made non-finite (the tiny configs are in tests/tiny.py)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from process_support import kill_when_it_says

from nmt.checkpoint import load_checkpoint
from nmt.training import loop


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]}"


# A training of CONFIG on DATA into RUN whose update UPDATE never ends: its loss function, wrapped
# here, announces itself on stderr and waits to be killed (nmt itself has no such hook).
STALLING_RUN = """
import sys, time
from nmt.config import RunConfig, load_config
from nmt.training import loop
cfg = load_config(RunConfig, sys.argv[1])
stall_at, calls, real_loss = int(sys.argv[4]), [0], loop.training_loss
def stalling_loss(*args, **kwargs):
    calls[0] += 1
    if calls[0] == stall_at:
        print(f"stalled in update attempt {stall_at}", file=sys.stderr, flush=True)
        while True:
            time.sleep(1)
    return real_loss(*args, **kwargs)
loop.training_loss = stalling_loss
loop.train(cfg, sys.argv[2], sys.argv[3])
"""


def kill_when_stalled(config: Path, data: Path, run: Path, update: int) -> None:
    """Train in a child process and `kill -9` it while it stalls inside `update` (one batch per
    update: update_freq 1), so that the updates since its last checkpoint exist only in memory
    when it dies."""
    argv = [sys.executable, "-c", STALLING_RUN, str(config), str(data), str(run), str(update)]
    kill_when_it_says(argv, "stalled", timeout=120)


def poison_losses(monkeypatch: pytest.MonkeyPatch, attempts: set[int]) -> None:
    """Make the loss of the given update attempts (1-based, counting skipped ones; one batch per
    update) NaN, as a diverging run would: the loop's loss function is wrapped, not changed."""
    real_loss, calls = loop.training_loss, itertools.count(1)

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        out = real_loss(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan")) if next(calls) in attempts else out

    monkeypatch.setattr(loop, "training_loss", poisoned)
