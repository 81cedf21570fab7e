"""Placing inline elements on a translation by the word alignment (nmt/markup/inline.py): the
rule of the module docstring, with alignments written by hand."""

from __future__ import annotations

import random

import pytest

from nmt.markup.inline import Aligned, Inline, Unit, locate_words, place, transfer, weave


def words_at(text: str) -> list[tuple[int, int]]:
    return locate_words(text.split(), text)


def render(unit: Unit, aligned: Aligned) -> str:
    """Events as bracketed text: [k ... k] for element k, {k} for an opaque one."""
    out = []
    for kind, value in transfer(unit, aligned):
        out.append({"text": str(value), "open": f"[{value} ", "close": f" {value}]",
                    "opaque": f"{{{value}}}"}[kind])  # fmt: skip
    return "".join(out)


def test_locate_words_matches_normalised_and_lowercased_words() -> None:
    assert locate_words(["ein", "hund"], "Ein  Hund") == [(0, 3), (5, 9)]
    # NFKC turned "…" into "..." in the model's words: the character alignment still finds them.
    assert locate_words(["warte...", "ja"], "Warte… ja") == [(0, 6), (7, 9)]
    assert locate_words(["x", "zzz"], "x") == [(0, 1), (1, 1)]  # a word found nowhere


def test_monotone_alignment_keeps_elements_on_the_same_words() -> None:
    text = "a big red car"
    unit = Unit(text, [Inline(2, 9), Inline(6, 9, parent=0)])  # [big [red]]
    aligned = Aligned("A BIG RED CAR", text.split(), "A BIG RED CAR".split(),
                      [(0, 0), (1, 1), (2, 2), (3, 3)])  # fmt: skip
    assert render(unit, aligned) == "A [0 BIG [1 RED 1] 0] CAR"


def test_reordering_follows_the_links() -> None:
    # de "das rote Auto" -> fr "la voiture rouge": <b>rote</b> lands on "rouge".
    text = "das rote Auto"
    unit = Unit(text, [Inline(4, 8)])
    aligned = Aligned("la voiture rouge", text.split(), ["la", "voiture", "rouge"],
                      [(0, 0), (2, 1), (1, 2)])  # fmt: skip
    assert render(unit, aligned) == "la voiture [0 rouge 0]"


def test_crossing_siblings_share_out_the_words_without_overlap() -> None:
    # [a] [b]: a's words are target 0 and 2, b's word is target 1 between them.
    text = "a b"
    unit = Unit(text, [Inline(0, 1), Inline(2, 3)])
    aligned = Aligned("x y z", ["a", "b"], ["x", "y", "z"], [(0, 0), (1, 1), (0, 2)])
    assert render(unit, aligned) == "[0 x 0] [1 y 1] z"


def test_a_child_stays_inside_its_parent() -> None:
    text = "p q r"
    unit = Unit(text, [Inline(0, 3), Inline(2, 3, parent=0)])  # [p [q]] r
    # q is linked to a target word outside p's run: the child is empty inside its parent.
    aligned = Aligned("x y z", ["p", "q", "r"], ["x", "y", "z"], [(0, 0), (2, 1), (1, 2)])
    intervals = place(unit.inlines, words_at(text), 3, aligned.links)
    assert intervals[0] == (0, 1) or intervals[0][0] <= intervals[1][0]
    a, b = intervals[0]
    c, d = intervals[1]
    assert a <= c <= d <= b


def test_unaligned_element_takes_the_free_word_between_its_neighbours() -> None:
    text = "der große Hund"
    unit = Unit(text, [Inline(4, 9)])
    aligned = Aligned("the big dog", text.split(), ["the", "big", "dog"], [(0, 0), (2, 2)])
    assert render(unit, aligned) == "the [0 big 0] dog"


def test_empty_elements_and_empty_alignment() -> None:
    text = "one two"
    unit = Unit(text, [Inline(3, 3, opaque=True), Inline(4, 7)])  # one{0} [two]
    aligned = Aligned("eins zwei", ["one", "two"], ["eins", "zwei"], [])
    out = render(unit, aligned)
    assert out.count("{0}") == 1 and out.count("[1 ") == 1 and out.count(" 1]") == 1
    assert render(unit, Aligned("", ["one", "two"], [], [])) == "{0}[1  1]"


def test_opaque_elements_replace_the_words_they_land_on_and_keep_outside_punctuation() -> None:
    text = "run make test."
    unit = Unit(text, [Inline(4, 13, opaque=True)])  # run {make test}.
    aligned = Aligned("starte make test.", text.split(), ["starte", "make", "test."],
                      [(0, 0), (1, 1), (2, 2)])  # fmt: skip
    assert render(unit, aligned) == "starte {0}."


@pytest.mark.parametrize("seed", range(40))
def test_any_alignment_gives_valid_nesting_and_keeps_every_element(seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{k}" for k in range(rng.randint(1, 9))]
    text = " ".join(words)
    spans = locate_words(words, text)
    inlines: list[Inline] = []
    open_stack: list[tuple[int, int]] = []  # (element, start word)
    for i in range(len(words) + 1):  # elements open and close at word boundaries, nested
        while open_stack and rng.random() < 0.5:
            k, first = open_stack.pop()
            end = spans[i - 1][1] if i else 0
            inlines[k] = Inline(inlines[k].start, max(end, inlines[k].start), inlines[k].parent)
        if i < len(words) and rng.random() < 0.6:
            parent = open_stack[-1][0] if open_stack else None
            inlines.append(Inline(spans[i][0], spans[i][0], parent, opaque=rng.random() < 0.2))
            open_stack.append((len(inlines) - 1, i))
    for k, _ in open_stack:
        inlines[k] = Inline(inlines[k].start, len(text), inlines[k].parent)
    inlines = [x if not x.opaque or not any(y.parent == k for y in inlines) else
               Inline(x.start, x.end, x.parent) for k, x in enumerate(inlines)]  # fmt: skip
    tgt = [f"t{j}" for j in range(rng.randint(0, 10))]
    links = [(rng.randrange(len(words)), j) for j in range(len(tgt)) if rng.random() < 0.8]
    intervals = place(inlines, spans, len(tgt), links)
    for k, (a, b) in enumerate(intervals):
        assert 0 <= a <= b <= len(tgt)
        parent = inlines[k].parent
        if parent is not None:
            assert intervals[parent][0] <= a and b <= intervals[parent][1]
        for m in range(k):
            if (
                inlines[m].parent == inlines[k].parent
                and a < b
                and intervals[m][0] < intervals[m][1]
            ):
                assert b <= intervals[m][0] or intervals[m][1] <= a  # siblings never overlap
    events = weave(" ".join(tgt), locate_words(tgt, " ".join(tgt)), inlines, intervals)
    stack: list[int] = []
    seen: list[int] = []
    for kind, value in events:
        if kind == "open":
            stack.append(int(value))
            seen.append(int(value))
        elif kind == "close":
            assert stack.pop() == value
        elif kind == "opaque":
            seen.append(int(value))
    assert not stack and sorted(seen) == list(range(len(inlines)))
