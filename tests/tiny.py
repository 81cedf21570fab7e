"""The tiny models and runs the tests share, their settings written once (JoeyNMT keeps its test
fixtures in one place too). A test varies them with `--set`-style overrides or keyword changes,
so what it changes is visible where it is called.

- `FAST`: the run config of the training, resume and reliability tests: a Transformer of ~25k
  parameters (an RNN of about as many) with dropout on, so that RNG state matters, deterministic
  kernels on one thread; a few ms per update.
- `trained(steps, arch)`: what the translate, evaluate, export, guided-alignment and serve tests
  train once per session: no dropout, two decoder layers (so that a layer can be chosen),
  positions for 31 subwords, one checkpoint at the end and a decode section of its own.
- `model_config` / `random_model`: randomly initialised models for the model and decoding tests,
  small enough for exhaustive checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt.config import ModelConfig, RunConfig, dump_yaml, from_dict, merge, parse_overrides

FAST: dict[str, Any] = {
    "model": {
        "arch": "transformer",
        "transformer": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1,
                        "ffn_dim": 64, "dropout": 0.1, "attn_dropout": 0.0},
        "rnn": {"emb_dim": 32, "hidden_size": 32, "attn_dim": 32, "dropout": 0.1},
    },
    "train": {"max_steps": 8, "batch_tokens": 400, "lr": 3e-3, "warmup_steps": 5,
              "log_every": 2, "valid_every": 4, "save_every": 2, "keep_last": 3,
              "valid_metric": "loss", "deterministic": True, "num_threads": 1,
              # The same maths on every CPU (auto is bf16 where the CPU computes it natively).
              "precision": "fp32"},
}  # fmt: skip


def tiny_config(*overrides: str, base: dict[str, Any] = FAST) -> RunConfig:
    """`base` with `--set`-style overrides, e.g. `tiny_config("train.max_steps=4")`."""
    return from_dict(RunConfig, merge(base, parse_overrides(list(overrides))))


def tiny_yaml(path: Path, *overrides: str, base: dict[str, Any] = FAST) -> Path:
    """`tiny_config(*overrides)` written as a config file at `path`."""
    path.write_text(dump_yaml(tiny_config(*overrides, base=base)), encoding="utf-8")
    return path


def trained(steps: int, arch: str = "transformer", *overrides: str) -> RunConfig:
    """The config of a run that translate-side tests use, trained for `steps` updates."""
    base = {
        "model": {
            "arch": arch,
            "transformer": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 2,
                            "ffn_dim": 64, "dropout": 0.0, "max_positions": 32},
            "rnn": {"emb_dim": 32, "hidden_size": 32, "attn_dim": 32, "dropout": 0.0},
        },
        "train": {"max_steps": steps, "batch_tokens": 600, "lr": 3e-3, "warmup_steps": 5,
                  "valid_every": steps, "save_every": steps, "valid_metric": "loss",
                  "num_threads": 1, "device": "cpu", "precision": "fp32"},
        "decode": {"beam_size": 3, "max_len_a": 1.2, "max_len_b": 4, "min_len": 1},
    }  # fmt: skip
    return tiny_config(*overrides, base=base)


def train_run(cfg: RunConfig, prepared: Path, out: Path) -> Path:
    """Train `cfg` on `prepared` into the run folder `out`; the caller's torch thread count is
    restored afterwards (training sets its own)."""
    from nmt.training.loop import train

    threads = torch.get_num_threads()
    train(cfg, prepared, out)
    torch.set_num_threads(threads)
    return out


SMALL = {
    "transformer": {"d_model": 16, "heads": 2, "enc_layers": 2, "dec_layers": 2, "ffn_dim": 32,
                    "dropout": 0.0, "attn_dropout": 0.0, "max_positions": 64},
    "rnn": {"emb_dim": 8, "hidden_size": 16, "attn_dim": 8, "dropout": 0.0},
}  # fmt: skip


def model_config(arch: str, **changes: Any) -> ModelConfig:
    """The small model of `arch` with `changes` to its section (`heads=4`, `attention="hard"`)."""
    section = {**SMALL[arch], **changes}
    return from_dict(ModelConfig, {"arch": arch, arch: section}, "model")


def random_model(
    arch: str, vocab: int, seed: int = 0, sharpen: float = 1.0, **changes: Any
) -> nn.Module:
    """`model_config(arch, **changes)` built from `seed` with a joint vocabulary of `vocab`, every
    parameter multiplied by `sharpen` (sharper distributions separate hypotheses well), in eval
    mode."""
    from nmt.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_config(arch, **changes), vocab, vocab, shared_vocab=True)
    if sharpen != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(sharpen)
    return model.eval()
