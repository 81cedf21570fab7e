"""A killed command leaves `.NAME.xxxxxxxx.tmp` files and folders beside its output; the next run of
the same command removes them, and only them: the names our atomic writes give for that output,
last changed before the run started, not locked by a live writer, and never through a symlink."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from reliability_support import nmt, tiny_prepare

A_DAY_AGO = time.time() - 86400


def make_temp(path: Path, folder: bool, age: float | None = A_DAY_AGO) -> Path:
    if folder:
        path.mkdir()
        (path / "half-written.arrow").write_bytes(b"\0" * 64)
    else:
        path.write_bytes(b"half")
    if age is not None:
        os.utime(path, (age, age))
    return path


def leftovers(parent: Path, name: str) -> tuple[list[Path], list[Path]]:
    """(stale temps of `name` that must go, look-alikes that must stay) created in `parent`."""
    stale = [
        make_temp(parent / f".{name}.abcd_123.tmp", folder=True),
        make_temp(parent / f".{name}.x9y8z7w6.tmp", folder=False),
    ]
    keep = [
        make_temp(parent / f".{name}.fresh000.tmp", folder=True, age=None),  # a live run's
        make_temp(parent / f".{name}.ABCDEFGH.tmp", folder=False),  # not mkstemp's alphabet
        make_temp(parent / f".{name}.abcd1234.old", folder=True),  # an old output moved aside
        make_temp(parent / f".{name}x.abcd1234.tmp", folder=False),  # another output's
        make_temp(parent / f"{name}.abcd1234.tmp", folder=False),  # not hidden: not ours
    ]
    link = parent / f".{name}.link1234.tmp"
    link.symlink_to(parent / f".{name}.abcd1234.old")
    keep.append(link)
    return stale, keep


def hold_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize("first", ["fresh", "reused"])
def test_prepare_removes_its_own_stale_temps(tmp_path: Path, first: str) -> None:
    prepare = tiny_prepare(tmp_path)

    if first == "reused":
        assert prepare().exit_code == 0
    stale, keep = leftovers(tmp_path, "prep")
    locked = make_temp(tmp_path / ".prep.locked00.tmp", folder=True)
    fd = hold_lock(locked)  # another process still building it
    try:
        result = prepare()
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() or p.is_symlink() for p in stale)
    assert all(p.exists() or p.is_symlink() for p in [*keep, locked])
    assert (tmp_path / ".prep.abcd1234.old" / "half-written.arrow").is_file()  # not followed


def test_a_file_write_removes_the_stale_temps_of_that_file(tmp_path: Path) -> None:
    (tmp_path / "hyp.en").write_text("A B\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("A B\n", encoding="utf-8")
    stale, keep = leftovers(tmp_path, "scores.json")
    result = nmt("evaluate", "--hyp", tmp_path / "hyp.en", "--ref", tmp_path / "ref.en",
                 "--report", tmp_path / "scores.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale)
    assert all(p.exists() or p.is_symlink() for p in keep)
    assert (tmp_path / "scores.json").is_file()


def test_an_input_named_like_a_stale_temp_is_never_removed(tmp_path: Path) -> None:
    """A day-old file named exactly as a temp of the report would be, given as the input: the
    command reads it and keeps it; a true leftover beside it still goes."""
    hyp = make_temp(tmp_path / ".scores.json.abcdefgh.tmp", folder=False)
    hyp.write_text("A B\n", encoding="utf-8")
    os.utime(hyp, (A_DAY_AGO, A_DAY_AGO))
    (tmp_path / "ref.en").write_text("A B\n", encoding="utf-8")
    stale = make_temp(tmp_path / ".scores.json.zyxwvuts.tmp", folder=False)
    result = nmt("evaluate", "--hyp", hyp, "--ref", tmp_path / "ref.en",
                 "--report", tmp_path / "scores.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert hyp.read_text(encoding="utf-8") == "A B\n" and not stale.exists()
    assert (tmp_path / "scores.json").is_file()


def test_a_folder_named_like_a_stale_temp_that_holds_an_input_is_kept(tmp_path: Path) -> None:
    """prepare --out prep, its corpus inside a day-old folder named `.prep.abcdefgh.tmp`."""
    raw = tmp_path / ".prep.abcdefgh.tmp"
    raw.mkdir()
    for side, text in (("de", "ba ce\nce do\ndo fe\n"), ("en", "CE BA\nDO CE\nFE DO\n")):
        (raw / f"train.{side}").write_text(text * 5, encoding="utf-8")
    os.utime(raw, (A_DAY_AGO, A_DAY_AGO))
    result = nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", raw / "train",
                 "--valid", raw / "train", "--vocab-size", 40, "--set", "hard_vocab_limit=false",
                 "--out", tmp_path / "prep")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in raw.iterdir()) == ["train.de", "train.en"]
