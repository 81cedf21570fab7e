"""A file system that says no (a full disk, a file where a folder is needed, a folder where a file
is meant) stops each writing command in one line naming the path, with a non-zero exit; every file
that was there stays as it was. The tests run as root, so permissions cannot be taken away; these
faults fail for root too: /dev/full is a disk that is always full, and a path under a regular
file cannot be created."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_support import assert_refused, nmt, snapshot

DEV_FULL = Path("/dev/full")


def dev_full_is_a_device() -> bool:
    return DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)


@pytest.fixture()
def blocker(tmp_path: Path) -> Path:
    """A regular file: anything "under" it cannot be created."""
    path = tmp_path / "a_file"
    path.write_text("mine\n", encoding="utf-8")
    return path


@pytest.fixture()
def texts(tmp_path: Path) -> dict[str, Path]:
    files = {
        "src": ("src.de", "ba ce do\nfe\n"),
        "ref": ("ref.en", "DO CE BA\nFE\n"),
        "gold": ("gold.align", "0-0 1-1\n0-0\n"),
        "hyp": ("hyp.align", "0-0 1-0\n0-0\n"),
    }
    out = {}
    for key, (name, text) in files.items():
        out[key] = tmp_path / name
        out[key].write_text(text, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def attention_npz(tiny_transformer_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("attention")
    (folder / "in.de").write_text("ba ce do\n", encoding="utf-8")
    out = folder / "attn.npz"
    result = nmt(
        "translate",
        tiny_transformer_run,
        "-i",
        folder / "in.de",
        "-o",
        folder / "out.en",
        "--attention-out",
        out,
    )
    assert result.exit_code == 0, result.output
    return out


def refused_untouched(tmp_path: Path, command: Callable[[], object], code: int, *needles: str):
    before = snapshot(tmp_path)
    line = assert_refused(command(), code, *needles)
    assert snapshot(tmp_path) == before
    return line


def test_prepare_out_under_a_file(tmp_path: Path, blocker: Path, texts: dict[str, Path]) -> None:
    for side in ("de", "en"):
        (tmp_path / f"train.{side}").write_text("ba ce\nce do\n", encoding="utf-8")
    refused_untouched(
        tmp_path,
        lambda: nmt(
            "prepare",
            "--src-lang",
            "de",
            "--tgt-lang",
            "en",
            "--train",
            tmp_path / "train",
            "--valid",
            tmp_path / "train",
            "--vocab-size",
            12,
            "--set",
            "hard_vocab_limit=false",
            "--out",
            blocker / "prepared",
        ),
        1,
        f"{blocker}: exists and is not a folder",
    )


def test_train_out_under_a_file(tiny_prepared: Path, tmp_path: Path, blocker: Path) -> None:
    from reliability_support import tiny_run_yaml

    config = tiny_run_yaml(tmp_path / "run.yaml")
    refused_untouched(
        tmp_path,
        lambda: nmt("train", config, "--data", tiny_prepared, "--out", blocker / "run"),
        1,
        str(blocker),
    )


def test_evaluate_report_that_is_a_folder_fails_before_translating(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    folder = tmp_path / "scores"
    folder.mkdir()
    line = refused_untouched(
        tmp_path,
        lambda: nmt(
            "evaluate",
            tiny_transformer_run,
            "--src",
            texts["src"],
            "--ref",
            texts["ref"],
            "--report",
            folder,
        ),
        1,
        f"{folder}: is a folder",
    )
    assert line


@pytest.mark.parametrize("flag", ["--report", "--hyp-out"])
def test_evaluate_output_under_a_file_fails_before_translating(
    tiny_transformer_run: Path, tmp_path: Path, blocker: Path, texts: dict[str, Path], flag: str
) -> None:
    refused_untouched(
        tmp_path,
        lambda: nmt(
            "evaluate",
            tiny_transformer_run,
            "--src",
            texts["src"],
            "--ref",
            texts["ref"],
            flag,
            blocker / "out.txt",
        ),
        1,
        f"{blocker}: a part of this path is a file",
    )


@pytest.mark.skipif(not dev_full_is_a_device(), reason="needs /dev/full")
def test_evaluate_report_on_a_full_disk(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    refused_untouched(
        tmp_path,
        lambda: nmt(
            "evaluate",
            tiny_transformer_run,
            "--src",
            texts["src"],
            "--ref",
            texts["ref"],
            "--report",
            DEV_FULL,
        ),
        1,
        "/dev/full: no space left on the device",
    )
    assert dev_full_is_a_device()  # written in place, never replaced by a renamed file


@pytest.mark.skipif(not dev_full_is_a_device(), reason="needs /dev/full")
def test_align_eval_report_on_a_full_disk(tmp_path: Path, texts: dict[str, Path]) -> None:
    refused_untouched(
        tmp_path,
        lambda: nmt(
            "align-eval", "--gold", texts["gold"], "--hyp", texts["hyp"], "--report", DEV_FULL
        ),
        1,
        "/dev/full: no space left on the device",
    )
    assert dev_full_is_a_device()


def test_align_eval_report_that_is_a_folder(tmp_path: Path, texts: dict[str, Path]) -> None:
    folder = tmp_path / "report"
    folder.mkdir()
    refused_untouched(
        tmp_path,
        lambda: nmt(
            "align-eval", "--gold", texts["gold"], "--hyp", texts["hyp"], "--report", folder
        ),
        1,
        f"{folder}: is a folder",
    )


def test_average_out_under_a_file(tiny_transformer_run: Path, tmp_path: Path, blocker: Path):
    before = snapshot(tiny_transformer_run)
    refused_untouched(
        tmp_path,
        lambda: nmt("average", tiny_transformer_run, "--last", 1, "--out", blocker / "avg.pt"),
        1,
        f"{blocker}: exists and is not a folder",
    )
    assert snapshot(tiny_transformer_run) == before


def test_export_out_under_a_file(tiny_transformer_run: Path, tmp_path: Path, blocker: Path):
    pytest.importorskip("ctranslate2")
    refused_untouched(
        tmp_path,
        lambda: nmt("export", tiny_transformer_run, "--out", blocker / "ct2"),
        1,
        f"{blocker}: exists and is not a folder",
    )


def test_corpus_out_under_a_file(tmp_path: Path, blocker: Path) -> None:
    refused_untouched(
        tmp_path, lambda: nmt("corpus", "bible", "--out", blocker / "raw"), 1, str(blocker)
    )


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_plot_out_cannot_be_written(
    attention_npz: Path, tmp_path: Path, blocker: Path, where: str
) -> None:
    target = blocker / "p.png" if where == "under_a_file" else tmp_path / "p.png"
    if where == "a_folder":
        target.mkdir()
    refused_untouched(
        tmp_path,
        lambda: nmt("plot", attention_npz, "--out", target),
        1,
        str(blocker if where == "under_a_file" else target),
    )
