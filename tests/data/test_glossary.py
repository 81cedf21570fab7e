"""Glossary files and the matching rule (nmt/data/glossary.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from nmt.data.glossary import Glossary
from nmt.errors import DataError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def found(glossary: Glossary, sentence: str) -> list[tuple[str, int, int]]:
    return [(m.term.src, m.first_word, m.last_word) for m in glossary.find(sentence)]


# ---- the file ---------------------------------------------------------------------------------


def test_file_with_comments_blank_lines_and_multiword_terms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "terms.tsv",
        "# source\ttarget\n\nFahrrad\tbicycle\n  # indented comment\nrotes  Auto\tred car\n",
    )
    glossary = Glossary.from_file(path)
    assert [(t.src, t.tgt, t.where) for t in glossary.terms] == [
        ("Fahrrad", "bicycle", f"{path}:3"),
        ("rotes Auto", "red car", f"{path}:5"),  # whitespace runs read as one space
    ]
    with gzip.open(tmp_path / "terms.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("Hund\tdog\n")
    assert len(Glossary.from_file(tmp_path / "terms.tsv.gz")) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Fahrrad\tbicycle\nHund dog\n", ":2: expected 2 tab-separated columns (source term, "
         "target term), found 1"),
        ("Hund\tdog\tcanine\n", ":1: expected 2 tab-separated columns (source term, target term), "
         "found 3"),
        ("Hund\t \n", ":1: empty target term"),
        ("\tdog\n", ":1: empty source term"),
        ("Hund\tdog\n#\nHund\thound\n", ":3: source term 'Hund' is already given (GLOSSARY:1)"),
    ],
    ids=["one-column", "three-columns", "empty-target", "empty-source", "twice"],
)  # fmt: skip
def test_bad_lines_are_one_error_naming_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "g.tsv", text)
    with pytest.raises(DataError) as info:
        Glossary.from_file(path)
    assert str(info.value).startswith(f"{path}:")
    assert message.replace("GLOSSARY", str(path)) in str(info.value)


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        Glossary.from_file(tmp_path / "missing.tsv")
    (tmp_path / "latin1.tsv").write_bytes(b"Hund\tdog\nStra\xdfe\tstreet\n")
    with pytest.raises(DataError, match=r"latin1.tsv:2: not valid UTF-8"):
        Glossary.from_file(tmp_path / "latin1.tsv")


# ---- the matching rule ------------------------------------------------------------------------


def test_terms_match_on_word_boundaries_only() -> None:
    glossary = Glossary.from_pairs([("Rad", "wheel"), ("C++", "C++")], "test")
    assert found(glossary, "Das Rad dreht sich.") == [("Rad", 1, 1)]
    assert found(glossary, "Ein Fahrrad und ein Radweg") == []  # inside other words
    assert found(glossary, "(Rad), Rad. Rad_x") == [("Rad", 0, 0), ("Rad", 1, 1)]
    assert found(glossary, "Ich mag C++ sehr") == [("C++", 2, 2)]


def test_smart_case_lowercase_terms_ignore_case() -> None:
    glossary = Glossary.from_pairs([("fahrrad", "bicycle"), ("Apple", "Apple")], "test")
    assert found(glossary, "FAHRRAD, Fahrrad und fahrrad") == [
        ("fahrrad", 0, 0),
        ("fahrrad", 1, 1),
        ("fahrrad", 3, 3),
    ]
    assert found(glossary, "an apple from Apple") == [("Apple", 3, 3)]


def test_longest_match_wins_and_text_is_normalised() -> None:
    glossary = Glossary.from_pairs(
        [("Fahrrad", "bicycle"), ("rotes Fahrrad", "red bike"), ("Straße", "street")], "test"
    )
    assert found(glossary, "ein rotes   Fahrrad und ein Fahrrad") == [
        ("rotes Fahrrad", 1, 2),
        ("Fahrrad", 5, 5),
    ]
    # NFKC: the ligature "ﬀ" and a no-break space read as "ff" and a space.
    ligature = Glossary.from_pairs([("Stoffe", "fabrics")], "test")
    assert found(ligature, "die\u00a0Sto\ufb00e") == [("Stoffe", 1, 1)]


def test_extended_glossaries_replace_terms_with_the_same_source() -> None:
    base = Glossary.from_pairs([("Fahrrad", "bicycle"), ("Hund", "dog")], "file")
    line = base.extended([("Hund", "hound"), ("Katze", "cat")], "line 3")
    assert [(t.src, t.tgt, t.where) for t in line.terms] == [
        ("Fahrrad", "bicycle", "file"),
        ("Hund", "hound", "line 3"),
        ("Katze", "cat", "line 3"),
    ]
    assert [t.tgt for t in base.terms] == ["bicycle", "dog"]  # the file's glossary stays
