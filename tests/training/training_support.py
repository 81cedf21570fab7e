"""Small configs and helpers shared by the training tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from process_support import kill_when_it_says

from nmt.checkpoint import load_checkpoint
from nmt.config import RunConfig, from_dict, merge, parse_overrides

# A Transformer of ~25k parameters: a few ms per update on one CPU thread.
TINY: dict[str, Any] = {
    "model": {
        "arch": "transformer",
        "transformer": {
            "d_model": 32,
            "heads": 2,
            "enc_layers": 1,
            "dec_layers": 1,
            "ffn_dim": 64,
            "dropout": 0.1,
            "attn_dropout": 0.0,
        },
        "rnn": {"emb_dim": 32, "hidden_size": 32, "attn_dim": 32, "dropout": 0.1},
    },
    "train": {
        "max_steps": 8,
        "batch_tokens": 400,
        "lr": 3e-3,
        "warmup_steps": 5,
        "log_every": 2,
        "valid_every": 4,
        "save_every": 2,
        "keep_last": 3,
        "valid_metric": "loss",
        "deterministic": True,
        "num_threads": 1,
        "precision": "fp32",  # the same maths on every CPU (auto is bf16 where that is native)
    },
}


def tiny_config(*overrides: str) -> RunConfig:
    """The tiny config with `--set`-style overrides, e.g. `tiny_config("train.max_steps=4")`."""
    return from_dict(RunConfig, merge(TINY, parse_overrides(list(overrides))))


def tiny_yaml(path: Path, *overrides: str) -> Path:
    from nmt.config import dump_yaml

    path.write_text(dump_yaml(tiny_config(*overrides)), encoding="utf-8")
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]}"


# A training of CONFIG on DATA into RUN that stalls inside update UPDATE, after its first backward.
STALLING_RUN = """
import sys
from nmt.config import RunConfig, load_config
from nmt.training.loop import TrainDebug, train
cfg = load_config(RunConfig, sys.argv[1])
train(cfg, sys.argv[2], sys.argv[3], debug=TrainDebug(stall_at=int(sys.argv[4])))
"""


def kill_when_stalled(config: Path, data: Path, run: Path, update: int) -> None:
    """Train in a child process and `kill -9` it while it stalls inside `update`, so that the
    updates since its last checkpoint exist only in memory when it dies."""
    argv = [sys.executable, "-c", STALLING_RUN, str(config), str(data), str(run), str(update)]
    kill_when_it_says(argv, "stalled", timeout=120)
