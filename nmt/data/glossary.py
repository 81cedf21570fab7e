"""Glossaries: source terms whose translation is fixed ("Fahrrad" -> "bicycle"), read from a file
and found in the sentences to translate. Their target terms become constraints of the search, and
nmt/decoding/constraints.py says where they ended up.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nmt.data.corpus import binary_lines, decode_line
from nmt.errors import DataError


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

    def extended(self, pairs: Iterable[tuple[str, str]], where: str) -> Glossary:
        """This glossary with more terms; one whose source term is already here replaces it."""
        added = Glossary.from_pairs(pairs, where)
        replaced = {term.src for term in added.terms}
        return Glossary([t for t in self.terms if t.src not in replaced] + added.terms)

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


__all__ = ["Glossary", "Term", "TermMatch", "normalise"]
