"""Shared test set-up: nothing may touch the network."""

import os
from pathlib import Path

import pytest
from corpus_support import write_reverse_corpus
from tiny import train_run, trained

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- a tiny prepared corpus, built once per session (training and CLI tests) ------------------


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared de-en directory (400 train / 40 valid pairs, joint vocabulary of <= 64)."""
    from rich.console import Console

    from nmt.config import PrepareConfig
    from nmt.pipeline.prepare import prepare

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
    evaluate and export tests)."""
    return train_run(trained(120), tiny_prepared, tmp_path_factory.mktemp("transformer") / "run")
