"""Glossaries: source terms whose translation is fixed ("Fahrrad" -> "bicycle"), found in the
sentences to translate, and where their target terms ended up in the translation.

File format (`--glossary FILE`): UTF-8 text (.gz allowed), one entry per line, the source term, a
tab, the target term. Blank lines and lines whose first non-blank character is "#" are skipped.
A term may hold several words; a source term may be listed once.

Matching rule: a source term matches where the sentence holds it as whole words: the characters
just before and after it are not letters, digits or "_" (regex `\\w`). Case follows "smart case":
a source term written all in lowercase matches in any case ("fahrrad" matches "Fahrrad" and
"FAHRRAD"); a term with an uppercase letter matches only as written ("Apple" leaves "apple"
alone). Terms and sentences are NFKC-normalised and their whitespace runs read as one space, as
the model's own cleaning does. Where terms overlap, the longest match wins (the earliest, then
the first listed, on a tie), so "rotes Fahrrad" takes precedence over "Fahrrad" inside it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.data.corpus import binary_lines, decode_line
from nmt.data.spm import word_groups
from nmt.errors import DataError

# A placed target term whose attention points further than this many source words from its
# source term gets a warning: the search may have put it where another word belonged.
FAR_WORDS = 2


@dataclass(frozen=True)
class Term:
    """One glossary entry; `where` names it in messages ("terms.tsv:12", "request")."""

    src: str
    tgt: str
    where: str


@dataclass(frozen=True)
class TermMatch:
    """A term found in a sentence: its first and last word (0-based, whitespace-separated words
    of the cleaned sentence)."""

    term: Term
    first_word: int
    last_word: int


def normalise(text: str) -> str:
    """NFKC, whitespace runs to one space, trimmed: the text terms are matched in."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


class Glossary:
    """Terms and the rule that finds them in a sentence (see the module docstring)."""

    def __init__(self, terms: Iterable[Term]) -> None:
        self.terms: list[Term] = []
        seen: dict[str, Term] = {}
        for term in terms:
            src, tgt = normalise(term.src), normalise(term.tgt)
            if not src or not tgt:
                side = "source" if not src else "target"
                raise DataError(f"{term.where}: empty {side} term")
            if src in seen:
                raise DataError(
                    f"{term.where}: source term {src!r} is already given ({seen[src].where}); "
                    "give each source term one translation"
                )
            seen[src] = term = Term(src, tgt, term.where)
            self.terms.append(term)
        self._patterns = [_pattern(term.src) for term in self.terms]

    @classmethod
    def from_file(cls, path: str | Path) -> Glossary:
        """Read a glossary file; bad lines are a DataError naming file and line."""
        path = Path(path)
        terms = []
        for number, raw in enumerate(binary_lines(path), 1):
            line = decode_line(raw, path, number, hint="save the glossary as UTF-8")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            columns = line.split("\t")
            if len(columns) != 2:
                raise DataError(
                    f"{path}:{number}: expected 2 tab-separated columns (source term, target "
                    f"term), found {len(columns)}"
                )
            terms.append(Term(columns[0], columns[1], f"{path}:{number}"))
        return cls(terms)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], where: str) -> Glossary:
        """A glossary from (source term, target term) pairs; `where` names them in errors."""
        return cls(Term(src, tgt, where) for src, tgt in pairs)

    def __len__(self) -> int:
        return len(self.terms)

    def find(self, sentence: str) -> list[TermMatch]:
        """The terms in `sentence`, left to right, overlaps resolved (longest match wins)."""
        text = normalise(sentence)
        found = []  # (start, end, term index)
        for index, pattern in enumerate(self._patterns):
            found += [(m.start(), m.end(), index) for m in pattern.finditer(text)]
        found.sort(key=lambda f: (f[0] - f[1], f[0], f[2]))
        taken: list[tuple[int, int, int]] = []
        for start, end, index in found:
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, index))
        return [
            TermMatch(self.terms[index], _word_at(text, start), _word_at(text, end - 1))
            for start, end, index in sorted(taken)
        ]


def _pattern(term: str) -> re.Pattern[str]:
    flags = 0 if any(c.isupper() for c in term) else re.IGNORECASE
    return re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", flags)


def _word_at(text: str, position: int) -> int:
    """Index of the whitespace-separated word holding character `position` of `text`."""
    return text.count(" ", 0, position)


# ---- where the target terms ended up ------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A matched term in one translation: where its target term stands (first and last target
    word, or None when it is not in the translation) and the source words the attention links
    it to (hard alignment), with their distance in words from the source term (0 inside it;
    None without links)."""

    match: TermMatch
    tgt_words: tuple[int, int] | None
    linked_src_words: list[int]
    distance: int | None

    @property
    def is_placed(self) -> bool:
        return self.tgt_words is not None

    @property
    def is_far(self) -> bool:
        return self.distance is not None and self.distance > FAR_WORDS

    def to_dict(self) -> dict[str, object]:
        """The JSON form: a "terms" entry of a translation."""
        return {
            "src": self.match.term.src,
            "tgt": self.match.term.tgt,
            "src_words": [self.match.first_word, self.match.last_word],
            "placed": self.is_placed,
            "tgt_words": None if self.tgt_words is None else list(self.tgt_words),
            "aligned_src_words": self.linked_src_words,
            "distance": self.distance,
        }


def place_terms(
    matches: Sequence[TermMatch],
    term_ids: Sequence[Sequence[int]],
    tokens: Sequence[int],
    tgt_pieces: Sequence[str],
    links: Iterable[tuple[int, int]],
) -> list[Placement]:
    """Where each match's target term (`term_ids`, its token ids) stands in a translation's
    `tokens` (whose pieces are `tgt_pieces`), and which source words the hard alignment `links`
    (source word, target word) tie it to. A term matched n times is looked for at its n-th
    occurrence, or its last one when the translation holds it fewer times."""
    groups = word_groups(tgt_pieces)
    word_of = {piece: w for w, group in enumerate(groups) for piece in group}
    linked: dict[int, set[int]] = {}
    for s, t in links:
        linked.setdefault(t, set()).add(s)
    seen: dict[tuple[int, ...], int] = {}
    out = []
    for match, ids in zip(matches, term_ids, strict=True):
        spans = _occurrences(tokens, ids)
        nth = seen.get(tuple(ids), 0)
        seen[tuple(ids)] = nth + 1
        if not spans:
            out.append(Placement(match, None, [], None))
            continue
        first, last = spans[min(nth, len(spans) - 1)]
        words = (word_of[first], word_of[last])
        src_words = sorted({s for t in range(words[0], words[1] + 1) for s in linked.get(t, ())})
        distance = None
        if src_words:
            distance = min(max(match.first_word - s, s - match.last_word, 0) for s in src_words)
        out.append(Placement(match, words, src_words, distance))
    return out


def _occurrences(tokens: Sequence[int], ids: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) token positions of each occurrence of `ids` in `tokens`."""
    n = len(ids)
    if n == 0:
        return []
    return [
        (i, i + n - 1) for i in range(len(tokens) - n + 1) if list(tokens[i : i + n]) == list(ids)
    ]


__all__ = [
    "FAR_WORDS",
    "Glossary",
    "Placement",
    "Term",
    "TermMatch",
    "normalise",
    "place_terms",
]
