"""Stand-in translators for the markup tests: they "translate" with a known word alignment, so
that where each element must land is fixed by hand (the model's own alignment is tested in
tests/markup/test_model_alignment.py)."""

from __future__ import annotations

import random
from collections.abc import Callable

from nmt.markup.inline import Aligned

Translate = Callable[[list[str]], list[Aligned]]


def identity(texts: list[str]) -> list[Aligned]:
    """Each word translated as itself, in place: a monotone one-to-one alignment."""
    out = []
    for text in texts:
        words = text.split()
        out.append(Aligned(text, words, words, [(i, i) for i in range(len(words))]))
    return out


def reverse(texts: list[str]) -> list[Aligned]:
    """The words in reverse order, upper-cased, each linked to its source word."""
    out = []
    for text in texts:
        words = text.split()
        tgt = [w.upper() for w in reversed(words)]
        n = len(words)
        out.append(Aligned(" ".join(tgt), words, tgt, [(n - 1 - j, j) for j in range(n)]))
    return out


def scrambled(seed: int) -> Translate:
    """Words shuffled and links drawn at random (crossing, many-to-one, missing): whatever the
    alignment, the output must stay well-formed."""
    rng = random.Random(seed)

    def translate(texts: list[str]) -> list[Aligned]:
        out = []
        for text in texts:
            words = text.split()
            tgt = [w.lower() for w in words] + (["extra"] if rng.random() < 0.5 else [])
            rng.shuffle(tgt)
            links = [(rng.randrange(len(words)), j) for j in range(len(tgt))
                     if words and rng.random() < 0.7]  # fmt: skip
            out.append(Aligned(" ".join(tgt), words, tgt, links))
        return out

    return translate
