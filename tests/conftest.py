"""Shared test set-up: nothing may touch the network."""

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- a tiny prepared corpus, built once per session (training and CLI tests) ------------------


def write_reverse_corpus(folder: Path, name: str, pairs: int, seed: int) -> None:
    """`name.de` / `name.en`: random 2-8 word sentences over a 24-word vocabulary; the target is
    the source reversed and upper-cased (both model families learn it in a few hundred steps)."""
    rng = random.Random(seed)
    words = [f"{c}{d}" for c in "bcdfghkl" for d in "aeo"]
    src, tgt = [], []
    for _ in range(pairs):
        sentence = [rng.choice(words) for _ in range(rng.randint(2, 8))]
        src.append(" ".join(sentence))
        tgt.append(" ".join(reversed(sentence)).upper())
    (folder / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / f"{name}.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")


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
