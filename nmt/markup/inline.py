"""Inline markup carried across a translation by the model's own word alignment.

A block of a document (an HTML paragraph, a Markdown list item) becomes a `Unit`: the plain text
the model translates, and its inline elements (bold, links, code, ...) as character spans of
that text. After translation each element goes onto the target words that the source words
inside it are aligned to (the hard links `--alignments-out` writes), the way Bergamot moves
tags with Marian's alignments. `place` decides where (target word intervals), `weave` turns
the intervals into a stream of text and tag events that the HTML and Markdown writers render.

The placement rule keeps the output well-formed whatever the alignment (crossing links, words
aligned to nothing), and keeps every element of the source:

1. An element's candidate target words are those linked to any source word that overlaps it.
2. Siblings (children of one parent, the block being the root) share out their parent's target
   interval: a target word belongs to the first sibling, in source order, that claims it. Each
   sibling takes the contiguous run of target words that holds the most of its own words and
   none of another's (unclaimed words in between come along, ends are its own).
3. A sibling left with nothing, while it has source words, takes the longest run of free target
   words between the targets of its nearest linked source neighbours (left and right), else a
   free word right beside the place after its left neighbour's targets.
4. Anything still unplaced (an empty element such as <img>, or no free word) becomes an empty
   element at the target position after its left neighbour's targets (after an earlier sibling
   that shares a source word with it), moved out of any sibling it would fall into.
5. Children are placed inside their parent's interval only, so nesting is kept as in the source.

An opaque element (inline code, raw HTML) keeps its content verbatim: the target words it is
placed on are replaced by it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

Span = tuple[int, int]  # [start, end) characters, or target words for an interval
Link = tuple[int, int]  # (source word, target word)


@dataclass(frozen=True)
class Inline:
    """An inline element of a unit: characters [start, end) of the unit's text, the index of
    the element it sits in (None: directly in the block), and whether its content is kept
    verbatim (`opaque`)."""

    start: int
    end: int
    parent: int | None = None
    opaque: bool = False


@dataclass
class Unit:
    """A block's text for the model and its inline elements, parents before children."""

    text: str
    inlines: list[Inline] = field(default_factory=list)


@dataclass(frozen=True)
class Aligned:
    """A unit's translation and the model's word alignment between the two texts."""

    translation: str
    src_words: list[str]
    tgt_words: list[str]
    links: list[Link]


Event = tuple[str, "int | str"]  # ("text", s) | ("open", k) | ("close", k) | ("opaque", k)


# ---- words as character spans ------------------------------------------------------------------


def locate_words(words: Sequence[str], text: str) -> list[Span]:
    """Character span of each word in `text`, in order. The words are the model's (its
    SentencePiece pieces joined, normalised and perhaps lowercased), so they are matched
    case-insensitively, and when they no longer spell the text (NFKC, an unknown piece) by a
    character alignment (difflib). A word found nowhere gets an empty span where it would be."""
    spans = _exact_spans(words, text)
    if spans is not None:
        return spans
    joined = "".join(words)
    owner = [k for k, word in enumerate(words) for _ in word]
    found: list[list[int]] = [[] for _ in words]
    matcher = difflib.SequenceMatcher(None, joined.lower(), text.lower(), autojunk=False)
    for block in matcher.get_matching_blocks():
        for d in range(block.size):
            found[owner[block.a + d]].append(block.b + d)
    out: list[Span] = []
    position = 0
    for k, chars in enumerate(found):
        if chars:
            start, end = max(min(chars), position), max(chars) + 1
            following = min((min(c) for c in found[k + 1 :] if c), default=len(text))
            while end < following and not text[end].isspace():
                end += 1  # characters that normalisation changed belong to the word they touch
            out.append((start, max(start, end)))
            position = max(position, end)
        else:
            out.append((position, position))
    return out


def _exact_spans(words: Sequence[str], text: str) -> list[Span] | None:
    """The spans when the words appear in order, separated by whitespace only."""
    lowered = text.lower() if len(text.lower()) == len(text) else text
    spans = []
    position = 0
    for word in words:
        k = lowered.find(word.lower(), position)
        if k < 0 or lowered[position:k].strip():
            return None
        spans.append((k, k + len(word)))
        position = k + len(word)
    return spans


def source_words_of(inline: Inline, src_spans: Sequence[Span]) -> set[int]:
    """The source words that overlap an element's characters."""
    if inline.end <= inline.start:
        return set()
    return {i for i, (a, b) in enumerate(src_spans) if a < inline.end and inline.start < b}


# ---- placement ---------------------------------------------------------------------------------


def place(
    inlines: Sequence[Inline], src_spans: Sequence[Span], tgt_count: int, links: Sequence[Link]
) -> list[Span]:
    """Target word interval [a, b) of each element (a == b: an empty element before target word
    a), by the rule in the module docstring. Intervals of siblings never overlap and a child's
    lies inside its parent's."""
    targets: dict[int, set[int]] = {}
    for i, j in links:
        if 0 <= j < tgt_count:
            targets.setdefault(i, set()).add(j)
    words = [source_words_of(inline, src_spans) for inline in inlines]
    claims = [set().union(*(targets.get(i, set()) for i in w)) for w in words]
    children: dict[int | None, list[int]] = {}
    for k, inline in enumerate(inlines):
        children.setdefault(inline.parent, []).append(k)
    intervals: list[Span] = [(0, 0)] * len(inlines)
    pending: list[tuple[int | None, Span]] = [(None, (0, tgt_count))]
    while pending:
        parent, bounds = pending.pop()
        kids = children.get(parent, [])
        placed = _share(kids, bounds, claims, words, inlines, src_spans, targets)
        for k in kids:
            intervals[k] = placed[k]
            pending.append((k, placed[k]))
    return intervals


def _share(
    kids: Sequence[int],
    bounds: Span,
    claims: Sequence[set[int]],
    words: Sequence[set[int]],
    inlines: Sequence[Inline],
    src_spans: Sequence[Span],
    targets: dict[int, set[int]],
) -> dict[int, Span]:
    """Rules 2-4 for the children `kids` of one parent whose interval is `bounds`."""
    lo, hi = bounds
    owner: dict[int, int] = {}
    for k in kids:
        for j in sorted(claims[k]):
            if lo <= j < hi:
                owner.setdefault(j, k)
    placed: dict[int, Span] = {}
    for k in kids:
        run = _best_run(k, lo, hi, owner)
        if run is not None:
            placed[k] = run
    taken = {j for a, b in placed.values() for j in range(a, b)} | set(owner)
    for k in kids:
        if k in placed or not words[k]:
            continue
        left, right = _neighbours(inlines[k], src_spans, targets, lo, hi)
        start = lo if left is None else left + 1
        stop = hi if right is None else right
        run = _longest_free(start, stop, taken)
        if run is not None:
            placed[k] = run
            taken |= set(range(*run))
    for k in kids:  # rule 3, second chance: a free word right beside where it would stand
        if k in placed or not words[k]:
            continue
        left, _ = _neighbours(inlines[k], src_spans, targets, lo, hi)
        q = lo if left is None else left + 1
        for j in (q, q - 1):
            if lo <= j < hi and j not in taken:
                placed[k] = (j, j + 1)
                taken.add(j)
                break
    for k in kids:
        if k in placed:
            continue
        left, right = _neighbours(inlines[k], src_spans, targets, lo, hi)
        q = left + 1 if left is not None else (right if right is not None else lo)
        for m, (_, b) in placed.items():  # after an earlier sibling in the same word
            if m < k and words[m] & words[k]:
                q = max(q, b)
        q = min(max(q, lo), hi)
        for a, b in placed.values():
            if a < q < b:
                q = b
        placed[k] = (q, q)
    return placed


def _best_run(k: int, lo: int, hi: int, owner: dict[int, int]) -> Span | None:
    """The run of positions owned by `k` or by nobody, with both ends owned by `k`, that holds
    the most of `k`'s positions (the first of equals)."""
    best: Span | None = None
    best_count = 0
    j = lo
    while j < hi:
        if owner.get(j, k) != k:
            j += 1
            continue
        start = j
        while j < hi and owner.get(j, k) == k:
            j += 1
        own = [p for p in range(start, j) if owner.get(p) == k]
        if len(own) > best_count:
            best, best_count = (own[0], own[-1] + 1), len(own)
    return best


def _neighbours(
    inline: Inline,
    src_spans: Sequence[Span],
    targets: dict[int, set[int]],
    lo: int,
    hi: int,
) -> tuple[int | None, int | None]:
    """The last target word (inside [lo, hi)) linked to a source word before the element, and
    the first linked to a source word after it."""
    left: int | None = None
    right: int | None = None
    for i, (a, b) in enumerate(src_spans):
        inside = [j for j in targets.get(i, ()) if lo <= j < hi]
        if not inside:
            continue
        if b <= inline.start:
            left = max(inside) if left is None else max(left, *inside)
        elif a >= inline.end:
            right = min(inside) if right is None else min(right, *inside)
    return left, right


def _longest_free(start: int, stop: int, taken: set[int]) -> Span | None:
    best: Span | None = None
    j = start
    while j < stop:
        if j in taken:
            j += 1
            continue
        first = j
        while j < stop and j not in taken:
            j += 1
        if best is None or j - first > best[1] - best[0]:
            best = (first, j)
    return best


# ---- the target text with its elements ---------------------------------------------------------


@dataclass(frozen=True)
class Edges:
    """What surrounds an element in the source: the characters of its first and last words
    that lie outside it (the "!" of `<b>Hallo</b>!`), and whether whitespace stands right
    before and after it. An element placed on target words leaves the same outside characters
    out when the target words carry them; an empty one keeps the source's spacing."""

    outside_before: str = ""
    outside_after: str = ""
    space_before: bool = False
    space_after: bool = False


def edges_of(inline: Inline, text: str, src_spans: Sequence[Span]) -> Edges:
    words = sorted(source_words_of(inline, src_spans))
    before = text[src_spans[words[0]][0] : inline.start] if words else ""
    after = text[inline.end : src_spans[words[-1]][1]] if words else ""
    return Edges(
        before,
        after,
        inline.start == 0 or text[inline.start - 1].isspace(),
        inline.end >= len(text) or text[inline.end].isspace(),
    )


def weave(
    text: str,
    tgt_spans: Sequence[Span],
    inlines: Sequence[Inline],
    intervals: Sequence[Span],
    edges: Sequence[Edges] | None = None,
    exact: dict[int, Span] | None = None,
) -> list[Event]:
    """`text` cut by the elements placed on `intervals` (target word intervals over
    `tgt_spans`), as events in document order: ("text", s), ("open", k), ("close", k), and
    ("opaque", k) for an opaque element, which stands in place of the words it covers. An
    empty element (a == b) goes right after target word a - 1 (before word a when it opens
    its parent), spaced as `edges` says it was in the source. `exact` gives some elements their
    characters directly (`within_copied_words`)."""
    edges = edges or [Edges() for _ in inlines]
    exact = exact or {}
    children: dict[int | None, list[int]] = {}
    for k, inline in enumerate(inlines):
        children.setdefault(inline.parent, []).append(k)
    events: list[Event] = []

    def chars(k: int, parent_lo: int) -> Span:
        if k in exact:
            return exact[k]
        a, b = intervals[k]
        if a < b:
            start, end = tgt_spans[a][0], tgt_spans[b - 1][1]
            before, after = edges[k].outside_before, edges[k].outside_after
            if before and text.startswith(before, start, end):
                start += len(before)
            if after and end - len(after) >= start and text.endswith(after, start, end):
                end -= len(after)
            return start, end
        if not tgt_spans:
            return 0, 0
        if a == parent_lo and a < len(tgt_spans):
            return tgt_spans[a][0], tgt_spans[a][0]
        at = tgt_spans[min(a, len(tgt_spans)) - 1][1]
        return at, at

    def emit(parent: int | None, lo_char: int, hi_char: int, parent_lo: int) -> None:
        kids = children.get(parent, [])
        ranges = {k: chars(k, parent_lo) for k in kids}
        order = sorted(kids, key=lambda k: (ranges[k][0], intervals[k][0] < intervals[k][1], k))
        cursor = lo_char
        for k in order:
            start, end = ranges[k]
            start = min(max(start, cursor), hi_char)
            end = min(max(end, start), hi_char)
            if start > cursor:
                events.append(("text", text[cursor:start]))
            empty = intervals[k][0] == intervals[k][1] and k not in exact
            if empty and edges[k].space_before and start > 0 and not text[start - 1].isspace():
                events.append(("text", " "))
            if inlines[k].opaque:
                events.append(("opaque", k))
            else:
                events.append(("open", k))
                emit(k, start, end, intervals[k][0])
                events.append(("close", k))
            if empty and edges[k].space_after and end < len(text) and not text[end].isspace():
                events.append(("text", " "))
            cursor = end
        if hi_char > cursor:
            events.append(("text", text[cursor:hi_char]))

    emit(None, 0, len(text), 0)
    return events


def transfer(unit: Unit, aligned: Aligned) -> list[Event]:
    """Events of a unit's translation with its elements placed by the alignment."""
    src_spans = locate_words(aligned.src_words, unit.text)
    tgt_spans = locate_words(aligned.tgt_words, aligned.translation)
    intervals = place(unit.inlines, src_spans, len(tgt_spans), aligned.links)
    edges = [edges_of(inline, unit.text, src_spans) for inline in unit.inlines]
    exact = within_copied_words(unit, aligned, src_spans, tgt_spans, intervals)
    for k, (j, _) in exact.items():
        intervals[k] = (j, j + 1)
    chars = {k: span for k, (_, span) in exact.items()}
    return weave(aligned.translation, tgt_spans, unit.inlines, intervals, edges, chars)


def within_copied_words(
    unit: Unit,
    aligned: Aligned,
    src_spans: Sequence[Span],
    tgt_spans: Sequence[Span],
    intervals: Sequence[Span],
) -> dict[int, tuple[int, Span]]:
    """Elements inside part of one source word that the translation copies unchanged (a name, a
    number, "Strg+C"): element -> (target word, the same characters in it). Only where the
    parent's interval holds that word and no other sibling's does."""
    found: dict[int, tuple[int, Span]] = {}
    for k, inline in enumerate(unit.inlines):
        words = source_words_of(inline, src_spans) or {
            i for i, (a, b) in enumerate(src_spans) if a < inline.start < b
        }
        if len(words) != 1:
            continue
        i = words.pop()
        a, b = src_spans[i]
        if a == inline.start and b == inline.end:
            continue  # the whole word: the words' own placement is exact
        word = unit.text[a:b]
        copies = [j for s, j in aligned.links if s == i and j < len(tgt_spans)
                  and aligned.translation[tgt_spans[j][0] : tgt_spans[j][1]] == word]  # fmt: skip
        if not copies:
            continue
        j = copies[0]
        parent = inline.parent
        if parent is not None and not intervals[parent][0] <= j < intervals[parent][1]:
            continue
        others = [m for m in range(len(intervals)) if m != k and m not in found
                  and unit.inlines[m].parent == parent]  # fmt: skip
        if any(intervals[m][0] <= j < intervals[m][1] for m in others):
            continue
        start = tgt_spans[j][0] + inline.start - a
        found[k] = (j, (start, start + inline.end - inline.start))
    return found


class CollapsedText:
    """Text built piece by piece with each run of whitespace collapsed to one space and none
    at the start, as a browser shows HTML; `length` is where the next piece starts."""

    def __init__(self, spaces: str = " \t\n\r\f") -> None:
        self.spaces = spaces
        self.parts: list[str] = []
        self.length = 0
        self.after_space = True

    def add(self, text: str) -> None:
        for ch in text:
            if ch in self.spaces:
                if not self.after_space:
                    self.parts.append(" ")
                    self.length += 1
                self.after_space = True
            else:
                self.parts.append(ch)
                self.length += 1
                self.after_space = False

    def text(self) -> str:
        return "".join(self.parts).rstrip(" ")


__all__ = [
    "Aligned",
    "CollapsedText",
    "Edges",
    "Event",
    "Inline",
    "Unit",
    "edges_of",
    "locate_words",
    "place",
    "source_words_of",
    "transfer",
    "weave",
]
