"""`nmt prepare` through Typer's CliRunner: exit codes, the files written, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_support import make_pairs, write_corpus, write_pair_files  # noqa: E402

from nmt.cli import app  # noqa: E402
from nmt.data.store import load_prepared  # noqa: E402

RUNNER = CliRunner()


def prepare(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, ["prepare", "--src-lang", "de", "--tgt-lang", "en", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, str]:
    return write_corpus(tmp_path / "raw", n_train=150)


def base_args(specs: dict[str, str], out: Path) -> list[str]:
    return [
        "--train", specs["train"], "--valid", specs["valid"], "--test", specs["test"],
        "--vocab-size", "60", "--out", str(out), "--set", "spm_threads=1",
    ]  # fmt: skip


def test_prepare_writes_and_then_reuses(specs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    code, stdout, _ = prepare(*base_args(specs, out), "--test", f"flickr={specs['test']}")
    assert code == 0, stdout
    data = load_prepared(out)
    assert data.split_names == ["train", "valid", "test", "flickr"]
    assert data.src_vocab_size == 60 and data.manifest["config"]["spm_threads"] == 1
    assert "padding" in stdout
    code, stdout, _ = prepare(*base_args(specs, out), "--test", f"flickr={specs['test']}")
    assert code == 0 and "reusing" in stdout


def test_config_file_and_set(specs: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "prepare.yaml").write_text("prepare:\n  model_type: bpe\n  dedup: true\n")
    out = tmp_path / "bpe"
    code, _, stderr = prepare(*base_args(specs, out), "--config", str(tmp_path / "prepare.yaml"))
    assert code == 0, stderr
    assert load_prepared(out).config.model_type == "bpe" and load_prepared(out).config.dedup
    code, _, stderr = prepare(*base_args(specs, tmp_path / "x"), "--set", "vocab_sise=10")
    assert code == 2 and "did you mean 'vocab_size'" in error_line(stderr)
    code, _, stderr = prepare(*base_args(specs, tmp_path / "x"), "--errors", "ignore")
    assert code == 2 and "'strict', 'replace'" in error_line(stderr)


def test_bad_inputs_exit_nonzero_with_one_line(specs: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    missing = dict(specs, train=str(tmp_path / "nope"))
    code, _, stderr = prepare(*base_args(missing, out))
    assert code == 1 and f"{tmp_path / 'nope.de'}: file not found" in error_line(stderr)

    write_pair_files(tmp_path / "short", make_pairs(5))
    (tmp_path / "short.en").write_text("only\none\n")
    code, _, stderr = prepare(*base_args(dict(specs, valid=str(tmp_path / "short")), out))
    assert code == 1 and "has 5 lines but" in error_line(stderr) and "has 2" in error_line(stderr)

    write_pair_files(tmp_path / "bad", make_pairs(5))
    (tmp_path / "bad.en").write_bytes(b"a\nb\n\xc3\x28\nd\ne\n")
    code, _, stderr = prepare(*base_args(dict(specs, test=str(tmp_path / "bad")), out))
    line = error_line(stderr)
    assert (
        code == 1
        and f"{tmp_path / 'bad.en'}:3: not valid UTF-8" in line
        and "--errors replace" in line
    )
    replaced = tmp_path / "replaced"
    code, _, _ = prepare(
        *base_args(dict(specs, test=str(tmp_path / "bad")), replaced), "--errors", "replace"
    )
    assert code == 0 and load_prepared(replaced).split("bad")[2]["tgt"] == "\ufffd("

    code, _, stderr = prepare(*base_args(specs, tmp_path / "tiny"), "--set", "max_len=2")
    assert code == 1 and "no train pairs left after filtering" in error_line(stderr)

    (tmp_path / "cols.tsv").write_text("de\tfr\nein\tun\n")
    code, _, stderr = prepare(*base_args(dict(specs, train=str(tmp_path / "cols.tsv")), out))
    assert code == 1 and "found: de, fr" in error_line(stderr)

    args = base_args(specs, out)
    args[args.index("--vocab-size") + 1] = "9000"
    code, _, stderr = prepare(*args)
    assert code == 1 and "SentencePiece accepts at most" in error_line(stderr)
    assert not out.exists()

    code, _, _ = prepare(*base_args(specs, out))
    assert code == 0
    args[args.index("--vocab-size") + 1] = "50"
    code, _, stderr = prepare(*args)
    assert (
        code == 1
        and "--overwrite" in error_line(stderr)
        and "changed: vocab_size" in error_line(stderr)
    )
    code, _, _ = prepare(*args, "--overwrite")
    assert code == 0 and load_prepared(out).src_vocab_size == 50

    code, _, stderr = prepare(*base_args(specs, tmp_path / "t"), "--test", "train=" + specs["test"])
    assert code == 2 and "test name" in error_line(stderr)


def test_help_lists_prepare_with_examples() -> None:
    result = RUNNER.invoke(app, ["--help"])
    assert result.exit_code == 0 and "prepare" in result.stdout
    result = RUNNER.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout and "--vocab-size" in result.stdout
