"""`nmt train` and `nmt average` through the command line: files written, overrides, resume
rules, and one-line errors with the right exit codes for user mistakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_config
from typer.testing import CliRunner

from nmt.checkpoint import load_checkpoint, load_for_inference
from nmt.cli import app
from nmt.config import dump_yaml

# tests/tiny.py's FAST run, 4 updates with validation and checkpoints every 2.
TINY_YAML = dump_yaml(
    tiny_config("model.transformer.attn_dropout=0.1", "train.max_steps=4", "train.warmup_steps=2",
                "train.valid_every=2", "train.keep_last=5")
)  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML, encoding="utf-8")
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def trained(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-update run made through the CLI with two overrides."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tiny.yaml").write_text(TINY_YAML, encoding="utf-8")
    code, out = run(
        "train", folder / "tiny.yaml", "--data", tiny_prepared, "--out", folder / "run",
        "--set", "model.transformer.ffn_dim=40", "--set", "train.keep_last=2",
    )  # fmt: skip
    assert code == 0, out
    assert "done: reached train.max_steps=4" in out
    assert "update 2: loss" in out and "ETA" not in out  # log lines, no progress bar, in a pipe
    return folder / "run"


def test_train_writes_the_run_directory_with_overrides_applied(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "data.json", "spm.model", "last.pt", "best.pt", "metrics.jsonl"} <= names
    assert {"checkpoint_2.pt", "checkpoint_4.pt"} <= names
    stored = yaml.safe_load((trained / "config.yaml").read_text())
    assert stored["model"]["transformer"]["ffn_dim"] == 40
    assert stored["train"]["keep_last"] == 2 and stored["train"]["max_steps"] == 4
    payload = load_checkpoint(trained / "last.pt")
    assert payload["config"] == stored
    shapes = [tuple(t.shape) for t in payload["model"].values()]
    assert (40, 32) in shapes and (32, 40) in shapes  # the override shaped the model


def test_average_through_the_cli(trained: Path) -> None:
    code, out = run("average", trained, "--last", "5")
    assert code == 0, out
    assert "averaged 2 checkpoints (updates 2, 4)" in out
    model, cfg, _, _ = load_for_inference(trained / "averaged.pt")
    assert cfg.model.transformer.ffn_dim == 40 and not model.training
    code, out = run("average", trained, "--last", "0")
    assert code == 2 and "--last must be >= 1" in out


def test_missing_prepared_dir_is_a_data_error(config: Path, tmp_path: Path) -> None:
    code, out = run("train", config, "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert code == 1
    assert "prepared data not found" in out and "nmt prepare" in out
    assert not (tmp_path / "r").exists()


def test_unknown_config_key_names_the_closest(
    config: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    config.write_text(TINY_YAML.replace("max_steps", "max_step"), encoding="utf-8")
    code, out = run("train", config, "--data", tiny_prepared, "--out", tmp_path / "r")
    assert code == 2
    assert "unknown config key 'train.max_step'; did you mean 'train.max_steps'?" in out
    code, out = run(
        "train", config.with_name("x.yaml"), "--data", tiny_prepared, "--out", tmp_path / "r"
    )
    assert code == 2 and "config file not found" in out


def test_unknown_override_names_the_closest(
    config: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    args = ("train", config, "--data", tiny_prepared, "--out", tmp_path / "r")
    code, out = run(*args, "--set", "model.transformer.head=4")
    assert code == 2 and "did you mean 'model.transformer.heads'?" in out
    code, out = run(*args, "--set", "model.arch=lstm")
    assert code == 2 and "expected one of 'rnn', 'transformer'" in out
    code, out = run(*args, "--set", "train.precision=fp16")
    assert code == 2 and "fp16 needs a CUDA device" in out
    code, out = run("train", config, "--out", tmp_path / "r")
    assert code == 2 and "--data" in out


def test_an_existing_run_is_not_overwritten(
    trained: Path, config: Path, tiny_prepared: Path
) -> None:
    before = (trained / "last.pt").read_bytes()
    code, out = run("train", config, "--data", tiny_prepared, "--out", trained)
    assert code == 2 and f"nmt train --resume {trained}" in out
    assert (trained / "last.pt").read_bytes() == before


def test_resume_refuses_changed_model_settings_listing_them(trained: Path) -> None:
    code, out = run(
        "train", "--resume", trained, "--set", "model.transformer.d_model=64",
        "--set", "train.lr=1e-3", "--set", "train.max_steps=9",
    )  # fmt: skip
    assert code == 2
    assert "model.transformer.d_model: 32 -> 64" in out and "train.lr: 0.003 -> 0.001" in out
    assert "max_steps" not in out  # resume-safe: allowed to change
    code, out = run("train", "config.yaml", "--resume", trained)
    assert code == 2 and "drop CONFIG" in out


def test_resume_errors(trained: Path, tmp_path: Path) -> None:
    code, out = run("train", "--resume", tmp_path)
    assert code == 1 and "nothing to resume" in out
    # A run directory whose stored config no longer fits its checkpoint's weights.
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)  # folders too: tensorboard/ when tensorboard is installed
    text = (broken / "config.yaml").read_text().replace("ffn_dim: 40", "ffn_dim: 36")
    (broken / "config.yaml").write_text(text)
    code, out = run("train", "--resume", broken, "--set", "train.max_steps=6")
    assert code == 1 and "weights do not fit" in out and "(40, 32) vs (36, 32)" in out
