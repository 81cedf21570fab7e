"""Sentences of an input line, and the line put back together from their translations.

A line of real text (an e-mail paragraph, a web page's block) holds several sentences, and a
model trained on one sentence per line translates only the first of them well. The segmenter is
sentencex (Wikimedia's rule-based splitter: abbreviation lists and fallback chains for ~300
languages, no model to download, a few microseconds per line); README "Translating documents"
says why it was chosen over pysbd. A sentence is a character span of the line with the
whitespace around it left outside, so the line is rebuilt from the translations and the line's
own spacing. `cut_long` cuts a sentence that is longer than a model takes into pieces at word
boundaries, so that nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import sentencex

Span = tuple[int, int]  # [start, end) character offsets into a line

# Scripts written without spaces between sentences (and words): joining such sentences needs no
# space, and a spaced language joins their translations with one.
SPACELESS_LANGS = frozenset({"ja", "zh", "yue", "wuu", "th", "lo", "km", "my", "bo"})
DEFAULT_LANG = "en"  # sentencex's rules for a model whose source language is not recorded
_WORD = re.compile(r"\S+")
_CLAUSE_END = re.compile(r"[,;:\u3001\uff0c\uff1b\uff1a)\]]$")


def split_sentences(line: str, lang: str | None) -> list[Span]:
    """The sentences of `line` as spans with surrounding whitespace excluded, in order; [] for a
    blank line. The spans hold every non-space character of the line (checked: were the
    segmenter ever to drop text, the whole line is one sentence instead)."""
    spans: list[Span] = []
    for boundary in sentencex.get_sentence_boundaries(lang or DEFAULT_LANG, line):
        start, end = int(boundary["start_index"]), int(boundary["end_index"])
        piece = line[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
    if not _covers(line, spans):
        whole = line.strip()
        return [(line.index(whole), line.index(whole) + len(whole))] if whole else []
    return spans


def _covers(line: str, spans: Sequence[Span]) -> bool:
    """True when the spans are in order, inside the line, and leave out only whitespace."""
    end = 0
    for start, stop in spans:
        if start < end or stop <= start or stop > len(line) or line[end:start].strip():
            return False
        end = stop
    return not line[end:].strip()


def whole_line(line: str) -> list[Span]:
    """The line as one sentence (no splitting): all of it, spaces included."""
    return [(0, len(line))]


def join_sentences(
    line: str,
    spans: Sequence[Span],
    translations: Sequence[str],
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> tuple[str, list[Span]]:
    """The translation of `line` from its sentences' `translations`: the line's own whitespace
    before, between and after the sentences is kept, except that sentences that touched in a
    spaceless source language get one space in a spaced target language, and spaces between
    sentences are dropped in a spaceless target language. Returns the text and each
    translation's span in it. Raises ValueError when the counts differ (a sentence lost)."""
    if len(spans) != len(translations):
        raise ValueError(f"{len(spans)} sentences in but {len(translations)} translations out")
    if not spans:
        return "", []
    parts: list[str] = []
    out_spans: list[Span] = []
    position = 0
    end = 0
    for k, ((start, stop), text) in enumerate(zip(spans, translations, strict=True)):
        gap = line[end:start]
        if k > 0:
            gap = _between(gap, src_lang, tgt_lang)
        parts.append(gap)
        position += len(gap)
        out_spans.append((position, position + len(text)))
        parts.append(text)
        position += len(text)
        end = stop
    if not "".join(translations).strip():
        return "", [(0, 0) for _ in spans]  # a blank line stays empty, not a row of spaces
    parts.append(line[end:])
    return "".join(parts), out_spans


def _between(gap: str, src_lang: str | None, tgt_lang: str | None) -> str:
    src_spaceless = (src_lang or "") in SPACELESS_LANGS
    tgt_spaceless = (tgt_lang or "") in SPACELESS_LANGS
    if not gap and src_spaceless and not tgt_spaceless:
        return " "
    if tgt_spaceless and not src_spaceless and gap and not gap.strip(" \t"):
        return ""
    return gap


def cut_long(text: str, span: Span, count: Callable[[str], int], limit: int) -> list[Span]:
    """Cut the sentence `text[span]` into pieces of at most `limit` subwords (`count` gives a
    text's subwords) at word boundaries, preferring a boundary after a clause mark (, ; :) in
    the second half of a piece. A single word longer than `limit` stays one piece (the caller
    truncates it). Returns spans of `text`, whitespace between them left out."""
    start, stop = span
    words = [(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:stop])]
    if not words:
        return [span]
    sizes = [count(text[a:b]) for a, b in words]
    pieces: list[Span] = []
    first = 0
    while first < len(words):
        last = first  # inclusive; a piece holds at least one word
        total = sizes[first]
        while last + 1 < len(words) and total + sizes[last + 1] <= limit:
            last += 1
            total += sizes[last]
        if last + 1 < len(words):
            last = _clause_break(text, words, first, last)
        while last > first and count(text[words[first][0] : words[last][1]]) > limit:
            last -= 1  # subwords of a piece can exceed the sum over its words
        pieces.append((words[first][0], words[last][1]))
        first = last + 1
    return pieces


def _clause_break(text: str, words: Sequence[Span], first: int, last: int) -> int:
    """The last word of a piece: the latest one in the piece's second half that ends a clause,
    else `last`."""
    for k in range(last, first + (last - first) // 2, -1):
        if _CLAUSE_END.search(text[words[k][0] : words[k][1]]):
            return k
    return last


__all__ = ["Span", "cut_long", "join_sentences", "split_sentences", "whole_line"]
