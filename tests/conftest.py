"""Shared test set-up: nothing may touch the network."""

import os
from pathlib import Path

import pytest
from corpus_support import write_reverse_corpus

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- a tiny prepared corpus, built once per session (training and CLI tests) ------------------


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared de-en directory (400 train / 40 valid pairs, joint vocabulary of <= 64)."""
    from rich.console import Console

    from nmt.config import PrepareConfig
    from nmt.pipeline import prepare

    root = tmp_path_factory.mktemp("tiny_corpus")
    write_reverse_corpus(root, "train", 400, seed=1)
    write_reverse_corpus(root, "valid", 40, seed=2)
    cfg = PrepareConfig(src_lang="de", tgt_lang="en", vocab_size=64, hard_vocab_limit=False)
    out = root / "prepared"
    prepare(cfg, str(root / "train"), str(root / "valid"), {}, out, False, Console(quiet=True))
    return out


@pytest.fixture(scope="session")
def tiny_transformer_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a tiny Transformer trained for 120 updates on one thread (translate,
    evaluate and export tests). The caller's thread count is restored afterwards."""
    import torch

    from nmt.config import RunConfig, from_dict
    from nmt.training.loop import train

    cfg = from_dict(
        RunConfig,
        {
            "model": {
                "arch": "transformer",
                "transformer": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 2,
                                "ffn_dim": 64, "dropout": 0.0, "max_positions": 32},
            },
            "train": {"max_steps": 120, "batch_tokens": 600, "lr": 3e-3, "warmup_steps": 5,
                      "valid_every": 120, "save_every": 120, "valid_metric": "loss",
                      "num_threads": 1, "device": "cpu", "precision": "fp32"},
            "decode": {"beam_size": 3, "max_len_a": 1.2, "max_len_b": 4, "min_len": 1},
        },
    )  # fmt: skip
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("transformer") / "run"
    train(cfg, tiny_prepared, out)  # sets one thread
    torch.set_num_threads(threads)
    return out
