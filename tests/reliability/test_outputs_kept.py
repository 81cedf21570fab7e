"""Nothing a user owns is deleted or overwritten: `export`, `corpus`, `prepare --overwrite` and
`average` replace only an output they wrote themselves, never a folder holding one of their inputs,
and refuse everything else in one line that names the path, leaving every file as it was."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from reliability_support import assert_refused, nmt, snapshot

from nmt.io import OUTPUT_MARKER


def write_pairs(folder: Path, name: str, n: int) -> Path:
    """`name.de` / `name.en`: n short sentences, the target the source upper-cased."""
    words = ["ba", "ce", "do", "fe", "go", "hi", "ka", "lo"]
    src = [" ".join(words[(i + k) % 8] for k in range(2 + i % 5)) for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / f"{name}.en").write_text("\n".join(s.upper() for s in src) + "\n", encoding="utf-8")
    return folder / name


def prepare(raw: Path, out: Path, *more: object) -> object:
    return nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", raw / "train",
               "--valid", raw / "valid", "--vocab-size", 40, "--set", "hard_vocab_limit=false",
               "--out", out, *more)  # fmt: skip


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    write_pairs(tmp_path / "raw", "train", 120)
    write_pairs(tmp_path / "raw", "valid", 10)
    return tmp_path / "raw"


# ---- export --------------------------------------------------------------------------------------


def test_export_into_the_run_it_exports_is_refused(tiny_transformer_run: Path) -> None:
    before = snapshot(tiny_transformer_run)
    line = assert_refused(nmt("export", tiny_transformer_run, "--out", tiny_transformer_run), 2)
    assert f"{tiny_transformer_run}: holds {tiny_transformer_run / 'best.pt'}" in line
    assert snapshot(tiny_transformer_run) == before


def test_export_into_a_folder_that_contains_the_run_is_refused(
    tiny_transformer_run: Path,
) -> None:
    parent = tiny_transformer_run.parent
    before = snapshot(parent)
    assert_refused(nmt("export", tiny_transformer_run / "best.pt", "--out", parent), 2,
                   f"{parent}: holds {tiny_transformer_run / 'best.pt'}")  # fmt: skip
    assert snapshot(parent) == before


def test_export_into_a_users_folder_is_refused(tiny_transformer_run: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    assert_refused(nmt("export", tiny_transformer_run, "--out", mine), 2, str(mine), OUTPUT_MARKER)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="needs ctranslate2")
def test_export_replaces_its_own_export_but_not_a_file_added_to_it(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ct2"
    assert nmt("export", tiny_transformer_run, "--out", out).exit_code == 0
    assert nmt("export", tiny_transformer_run, "--out", out).exit_code == 0  # ours: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no temp or .old left
    (out / "README.txt").write_text("my notes\n")
    before = snapshot(tmp_path)
    assert_refused(nmt("export", tiny_transformer_run, "--out", out), 2, "README.txt")
    assert snapshot(tmp_path) == before


# ---- corpus --------------------------------------------------------------------------------------


def test_corpus_into_a_users_folder_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\section{One}\n")
    before = snapshot(tmp_path)
    assert_refused(nmt("corpus", "bible", "--out", mine), 2, f"{mine}:")
    assert snapshot(tmp_path) == before


# ---- prepare -------------------------------------------------------------------------------------


def test_prepare_overwrite_refuses_an_output_that_holds_its_input(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    assert prepare(raw, out).exit_code == 0
    inside = out / "raw"  # the user keeps the corpus inside the prepared folder
    inside.mkdir()
    for path in raw.iterdir():
        (inside / path.name).write_bytes(path.read_bytes())
    before = snapshot(tmp_path)
    line = assert_refused(prepare(inside, out, "--overwrite"), 1, f"{out}: holds", "(the input)")
    assert str(inside / "train") in line
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_refuses_an_output_with_a_file_it_did_not_write(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    assert prepare(raw, out).exit_code == 0
    (out / "notes.md").write_text("which vocab size was best\n")
    before = snapshot(tmp_path)
    assert_refused(prepare(raw, out, "--overwrite"), 1, f"{out}: holds notes.md")
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_refuses_a_folder_prepare_never_wrote(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "manifest.json").write_text('{"cache_key": "mine"}\n')  # looks like ours, is not
    before = snapshot(tmp_path)
    assert_refused(prepare(raw, out, "--overwrite"), 1, f"{out}:", OUTPUT_MARKER)
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_replaces_its_own_output_and_no_sibling(
    raw: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prepared"
    assert prepare(raw, out).exit_code == 0
    sibling = tmp_path / ".prepared.old"  # a name the old code used for its backup
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine\n")
    kept = snapshot(sibling)
    result = prepare(raw, out, "--overwrite", "--vocab-size", 44)
    assert result.exit_code == 0, result.output
    assert snapshot(sibling) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepared.old", "prepared", "raw"]
    assert '"vocab_size": 44' in (out / "manifest.json").read_text()


# ---- average -------------------------------------------------------------------------------------


def test_average_into_a_folder_is_refused_before_writing(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "avg"
    folder.mkdir()
    before, run_before = snapshot(tmp_path), snapshot(tiny_transformer_run)
    assert_refused(nmt("average", tiny_transformer_run, "--last", 1, "--out", folder), 2,
                   f"{folder}: is a folder")  # fmt: skip
    assert snapshot(tmp_path) == before  # no spm.model copied beside it
    assert snapshot(tiny_transformer_run) == run_before


def test_average_over_a_checkpoint_it_did_not_write_is_refused(tiny_transformer_run: Path) -> None:
    before = snapshot(tiny_transformer_run)
    last = tiny_transformer_run / "last.pt"
    assert_refused(nmt("average", tiny_transformer_run, "--last", 1, "--out", last), 2,
                   f"{last}: is also a file of the run folder")  # fmt: skip
    assert snapshot(tiny_transformer_run) == before


def test_average_over_a_users_file_is_refused(tiny_transformer_run: Path, tmp_path: Path) -> None:
    mine = tmp_path / "model.pt"
    mine.write_bytes(b"my own weights\n")
    assert_refused(nmt("average", tiny_transformer_run, "--last", 1, "--out", mine), 2,
                   f"{mine}: exists and is not a checkpoint written by `nmt average`")  # fmt: skip
    assert mine.read_bytes() == b"my own weights\n"


def test_the_demo_deletes_no_earlier_run() -> None:
    demo = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"
    assert "rm " not in demo.read_text(encoding="utf-8")
