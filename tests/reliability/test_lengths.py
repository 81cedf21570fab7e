"""Lengths never crash a run. `prepare` counts words, so pairs longer than the model takes in
subwords reach training: training leaves them out and validation cuts them, with a counted
warning, the same for both model families (model.*.max_positions). An RNN cuts a long source
line at translation time as a Transformer does. A validation that fails keeps the training."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from reliability_support import assert_refused, nmt, tiny_run_yaml

WORDS = [f"{c}{v}" for c in "bcdfghkl" for v in "aeo"]
RNN = ["--set", "model.arch=rnn", "--set", "model.rnn.hidden_size=16", "--set",
       "model.rnn.emb_dim=8", "--set", "model.rnn.attn_dim=8"]  # fmt: skip


def write_side(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def long_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short pairs plus one 60-word pair in train and in valid: within prepare's max_len (250
    words), beyond 32 positions in subwords."""
    root = tmp_path_factory.mktemp("long")
    short = [" ".join(WORDS[(i + k) % 24] for k in range(2 + i % 5)) for i in range(150)]
    long = " ".join(WORDS[(7 * k) % 24] for k in range(60))
    for split, lines in (("train", [*short, long]), ("valid", [*short[:8], long])):
        write_side(root / f"{split}.de", lines)
        write_side(root / f"{split}.en", [line.upper() for line in lines])
    result = nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", root / "train",
                 "--valid", root / "valid", "--vocab-size", 64, "--set", "hard_vocab_limit=false",
                 "--out", root / "prepared")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "prepared"


@pytest.fixture(scope="module")
def rnn_run(long_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rnn")
    config = tiny_run_yaml(folder / "run.yaml", valid_every=2)
    result = nmt("train", config, "--data", long_prepared, "--out", folder / "run", *RNN,
                 "--set", "model.rnn.max_positions=32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "warning: 1 training pairs longer than model.rnn.max_positions=32 left out; "
        "1 validation pairs cut to fit it" in result.output
    )
    return folder / "run"


def test_transformer_training_leaves_out_and_cuts_long_pairs(
    long_prepared: Path, tmp_path: Path
) -> None:
    config = tiny_run_yaml(tmp_path / "run.yaml", valid_every=2)
    result = nmt("train", config, "--data", long_prepared, "--out", tmp_path / "run",
                 "--set", "model.transformer.max_positions=32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "150 training pairs" in result.output
    assert (
        "warning: 1 training pairs longer than model.transformer.max_positions=32 left out; "
        "1 validation pairs cut to fit it" in result.output
    )
    assert (tmp_path / "run" / "best.pt").is_file()


def test_rnn_training_follows_the_same_policy(rnn_run: Path) -> None:
    assert (rnn_run / "last.pt").is_file()  # the warning is checked in the fixture


def test_rnn_translation_cuts_a_very_long_source(rnn_run: Path, tmp_path: Path) -> None:
    line = " ".join(WORDS[k % 24] for k in range(3000))
    write_side(tmp_path / "long.de", [line, "ba ce"])
    write_side(tmp_path / "long.en", [line.upper(), "CE BA"])
    started = time.perf_counter()
    threads = torch.get_num_threads()
    result = nmt("evaluate", rnn_run, "--src", tmp_path / "long.de", "--ref",
                 tmp_path / "long.en", "--beam", 1)  # fmt: skip
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "translated in" in result.stderr and "cut at word boundaries" in result.stderr
    assert "1 sentence(s) longer than the model's maximum of 31" in result.stderr
    assert time.perf_counter() - started < 30


def test_every_pair_too_long_is_refused(long_prepared: Path, tmp_path: Path) -> None:
    config = tiny_run_yaml(tmp_path / "run.yaml")
    result = nmt("train", config, "--data", long_prepared, "--out", tmp_path / "run",
                 "--set", "model.transformer.max_positions=2")  # fmt: skip
    assert_refused(result, 1, "every training pair is longer than the model's 1 subwords")
    assert not (tmp_path / "run").exists()


def test_a_failing_validation_keeps_the_training(
    long_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nmt.training import validation

    def out_of_memory(run: object) -> dict[str, float]:  # the fault, injected by the test
        raise RuntimeError("CPU out of memory while validating\nsecond line")

    monkeypatch.setattr(validation, "validate", out_of_memory)
    config = tiny_run_yaml(tmp_path / "run.yaml", valid_every=3, max_steps=6)
    run = tmp_path / "run"
    result = nmt("train", config, "--data", long_prepared, "--out", run)
    assert_refused(result, 1, "validation at update 3 failed (RuntimeError: CPU out of memory",
                   f"saved in {run / 'last.pt'}", f"nmt train --resume {run}")  # fmt: skip
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.undo()
    resumed = nmt("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 6
