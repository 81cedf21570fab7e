"""Tiny generated parallel corpora for the data-pipeline tests (no real text is in the repo)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from nmt.config import PrepareConfig

MULTI30K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "multi30k"

# A toy "German" -> "English" word mapping; sentences are random word strings mapped word by word.
LEXICON = {
    "der": "the",
    "hund": "dog",
    "katze": "cat",
    "mann": "man",
    "frau": "woman",
    "kind": "child",
    "läuft": "runs",
    "springt": "jumps",
    "sitzt": "sits",
    "auf": "on",
    "unter": "under",
    "dem": "the",
    "tisch": "table",
    "gras": "grass",
    "rot": "red",
    "blau": "blue",
    "groß": "big",
    "klein": "small",
    "schnell": "quickly",
    "und": "and",
    "ein": "a",
    "straße": "street",
    "ball": "ball",
    "spielt": "plays",
    "mit": "with",
}


def make_pairs(
    n: int, seed: int = 0, min_words: int = 3, max_words: int = 10
) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = sorted(LEXICON)
    pairs = []
    for _ in range(n):
        sentence = [rng.choice(words) for _ in range(rng.randint(min_words, max_words))]
        pairs.append((" ".join(sentence), " ".join(LEXICON[w] for w in sentence)))
    return pairs


def write_pair_files(prefix: Path, pairs: list[tuple[str, str]], gz: bool = False) -> None:
    """`prefix.de` and `prefix.en` (with `.gz` when asked), one sentence per line."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for lang, side in (("de", 0), ("en", 1)):
        data = "".join(pair[side] + "\n" for pair in pairs).encode("utf-8")
        if gz:
            # mtime=0: the same text gives the same bytes, so input hashes are reproducible.
            with gzip.GzipFile(prefix.with_name(f"{prefix.name}.{lang}.gz"), "wb", mtime=0) as f:
                f.write(data)
        else:
            prefix.with_name(f"{prefix.name}.{lang}").write_bytes(data)


def write_corpus(root: Path, n_train: int = 300) -> dict[str, str]:
    """train / valid / test prefixes under `root`; returns their SPECs."""
    write_pair_files(root / "train", make_pairs(n_train, seed=1))
    write_pair_files(root / "valid", make_pairs(30, seed=2))
    write_pair_files(root / "test", make_pairs(20, seed=3))
    return {"train": str(root / "train"), "valid": str(root / "valid"), "test": str(root / "test")}


def tiny_config(**changes: object) -> PrepareConfig:
    """Settings for the tiny corpus: a small vocabulary, one SentencePiece thread."""
    base = {"vocab_size": 60, "spm_threads": 1, "seed": 7}
    base.update(changes)
    return PrepareConfig(**base)  # type: ignore[arg-type]
