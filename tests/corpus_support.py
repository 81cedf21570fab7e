"""Tiny corpora that tests write for themselves (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import random
from pathlib import Path


def write_reverse_corpus(
    folder: Path, name: str, pairs: int, seed: int, max_words: int = 8
) -> None:
    """`name.de` / `name.en`: random 2-`max_words` word sentences over a 24-word vocabulary; the
    target is the source reversed and upper-cased (both model families learn it in a few hundred
    steps)."""
    rng = random.Random(seed)
    words = [f"{c}{d}" for c in "bcdfghkl" for d in "aeo"]
    src, tgt = [], []
    for _ in range(pairs):
        sentence = [rng.choice(words) for _ in range(rng.randint(2, max_words))]
        src.append(" ".join(sentence))
        tgt.append(" ".join(reversed(sentence)).upper())
    (folder / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / f"{name}.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
