"""Two tiny trained models (a Transformer and an RNN) and one real `nmt serve` over both, shared by
the server and page tests of the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="nmt serve needs starlette (pip install 'nmt[serve]')")
pytest.importorskip("uvicorn", reason="nmt serve needs uvicorn (pip install 'nmt[serve]')")

from serve_support import Server  # noqa: E402

# Limits the server under test runs with; the tests check them.
MAX_SENTENCES = 8
MAX_CHARS = 400


def train_tiny(arch: str, steps: int, prepared: Path, out: Path) -> Path:
    """A tiny model of `arch` trained for `steps` updates on one thread."""
    import torch

    from nmt.config import RunConfig, from_dict
    from nmt.training.loop import train

    cfg = from_dict(
        RunConfig,
        {
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
        },
    )  # fmt: skip
    threads = torch.get_num_threads()
    train(cfg, prepared, out)  # sets one thread
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def served_runs(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The runs served, named by their folders: tiny-transformer (the default; 400 updates, so
    that it writes several words for the page tests to hover over) and tiny-rnn (120 updates)."""
    root = tmp_path_factory.mktemp("served")
    return [
        train_tiny("transformer", 400, tiny_prepared, root / "tiny-transformer"),
        train_tiny("rnn", 120, tiny_prepared, root / "tiny-rnn"),
    ]


@pytest.fixture(scope="session")
def server(served_runs: list[Path]) -> Iterator[Server]:
    """`nmt serve` over both runs on a free loopback port. A long batching wait (50 ms) makes
    concurrent requests share a decoding call reliably."""
    args = ["--max-sentences", str(MAX_SENTENCES), "--max-chars", str(MAX_CHARS),
            "--max-wait-ms", "50"]  # fmt: skip
    running = Server(served_runs, args).start()
    yield running
    running.stop()
