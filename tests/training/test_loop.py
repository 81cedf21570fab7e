"""The training loop end to end on a tiny corpus: learning, exact resume after a real kill -9,
non-finite losses, the wall-clock budget, early stopping, precision and device choices."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
from tiny import tiny_config, tiny_yaml
from training_support import assert_bitwise_equal, kill_when_stalled, poison_losses, weights
from typer.testing import CliRunner

from nmt import checkpoint as ckpt
from nmt.cli import app
from nmt.device import resolve_device
from nmt.errors import ConfigError, TrainingError
from nmt.io import read_jsonl
from nmt.models.row_buckets import bucket_linear_rows
from nmt.training import loop
from nmt.training.device import make_autocast, precision_note, resolve_precision
from nmt.training.loop import train


def _rows(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == kind]


def test_resume_after_kill_9_equals_the_uninterrupted_run(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    # 12 updates of ~9 batches an epoch: the kill falls inside epoch 0 and training crosses into
    # epoch 1 after the resume. Dropout is on, so the RNG states must come back too.
    overrides = ("train.max_steps=12", "train.batch_tokens=800", "train.save_every=4")
    straight = tmp_path / "straight"
    train(tiny_config(*overrides), tiny_prepared, straight)

    killed = tmp_path / "killed"
    config = tiny_yaml(tmp_path / "tiny.yaml", *overrides)
    kill_when_stalled(config, tiny_prepared, killed, 7)  # updates 5-6 only in memory
    assert ckpt.load_checkpoint(killed / "last.pt")["step"] == 4

    result = CliRunner().invoke(app, ["train", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert "resuming at update 4" in result.output

    assert_bitwise_equal(weights(straight / "last.pt"), weights(killed / "last.pt"))
    a = ckpt.load_checkpoint(straight / "last.pt")["train_state"]
    b = ckpt.load_checkpoint(killed / "last.pt")["train_state"]
    for key in ("step", "epoch", "batches_done", "tgt_tokens", "best_score", "schedule"):
        assert a[key] == b[key], key
    assert a["epoch"] == 1
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, sa in a["optimizer"]["state"].items():
        sb = b["optimizer"]["state"][key]
        assert_bitwise_equal(sa, sb)
    # The log repeats too: what the killed run logged after update 4 was dropped and redone.
    assert [(r["step"], r["loss"]) for r in _rows(straight, "train")] == [
        (r["step"], r["loss"]) for r in _rows(killed, "train")
    ]
    valid = [r["nll"] for r in _rows(straight, "valid")]
    assert valid == sorted(valid, reverse=True) and valid[-1] < valid[0] - 0.3  # it learns
    # The wall clock goes on across the resume, from the time saved with update 4.
    saved = ckpt.load_checkpoint(killed / "checkpoint_4.pt")["train_state"]["wall_seconds"]
    rows = _rows(killed, "train") + _rows(killed, "valid")
    rows.sort(key=lambda r: (r["step"], r["kind"] == "valid"))
    walls = [r["wall_seconds"] for r in rows]
    assert walls == sorted(walls)
    assert all(r["wall_seconds"] > saved for r in rows if r["step"] > 4)
    assert all(r["train_seconds"] <= r["wall_seconds"] for r in _rows(killed, "train"))


def test_rnn_with_bahdanau_attention_trains(tiny_prepared: Path, tmp_path: Path) -> None:
    cfg = tiny_config(
        "model.arch=rnn", "train.max_steps=12", "train.lr=1e-2", "train.schedule=plateau"
    )
    summary = train(cfg, tiny_prepared, tmp_path / "rnn")
    valid = [r["nll"] for r in _rows(tmp_path / "rnn", "valid")]
    assert summary["step"] == 12 and len(valid) == 3 and valid[-1] < valid[0]
    assert summary["precision"] == "fp32"  # train.precision auto on a CPU


def test_a_non_finite_loss_is_skipped_and_counted(
    tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_losses(monkeypatch, {3})
    summary = train(tiny_config("train.max_steps=6"), tiny_prepared, tmp_path / "run")
    assert summary["step"] == 6 and summary["nan_steps"] == 1
    assert [(r["step"], r["attempt"]) for r in _rows(tmp_path / "run", "nan")] == [(2, 3)]
    state = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["train_state"]["nan_steps"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_repeated_non_finite_losses_stop_and_keep_the_last_good_checkpoint(
    tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = tiny_config("train.max_steps=20", "train.save_every=4", "train.max_nan_steps=3")
    poison_losses(monkeypatch, set(range(6, 99)))
    with pytest.raises(TrainingError, match=r"3 updates in a row .* non-finite .*update 4\)"):
        train(cfg, tiny_prepared, run)
    assert ckpt.load_checkpoint(run / "last.pt")["step"] == 4
    assert (run / "last.pt").read_bytes() == (run / "checkpoint_4.pt").read_bytes()
    assert all(torch.isfinite(t).all() for t in weights(run / "last.pt").values())


def test_the_wall_clock_budget_stops_cleanly_with_validation_and_checkpoint(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    cfg = tiny_config("train.max_steps=100000", "train.max_minutes=0.03", "train.valid_every=1000")
    summary = train(cfg, tiny_prepared, tmp_path / "run")
    assert "max_minutes" in summary["stop_reason"]
    assert 0 < summary["step"] < 100000
    assert _rows(tmp_path / "run", "valid")[-1]["step"] == summary["step"]
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == summary["step"]
    assert summary["wall_seconds"] >= 0.03 * 60
    # The budget is the run's: resumed with the same budget, it is already spent.
    again = train(cfg, tiny_prepared, tmp_path / "run", resume=True)
    assert again["step"] == summary["step"] and "max_minutes" in again["stop_reason"]


def test_a_failing_final_validation_keeps_the_trained_state(
    tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_validation(run: object) -> dict[str, float]:
        raise RuntimeError("out of memory while decoding the validation set")

    monkeypatch.setattr("nmt.training.validation.validate", broken_validation)
    cfg = tiny_config("train.max_steps=5", "train.valid_every=1000", "train.save_every=1000")
    with pytest.raises(TrainingError, match="validation at update 5 failed .*out of memory"):
        train(cfg, tiny_prepared, tmp_path / "run")
    assert ckpt.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5


def test_early_stopping_after_patience_validations_without_improvement(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    # An LR of 1e-30 leaves every weight where it is, so the validation loss cannot improve.
    cfg = tiny_config(
        "train.lr=1e-30",
        "train.schedule=constant",
        "train.max_steps=100",
        "train.valid_every=2",
        "train.patience=2",
    )
    summary = train(cfg, tiny_prepared, tmp_path / "run")
    assert summary["step"] == 6 and "early stopping" in summary["stop_reason"]
    assert summary["best_step"] == 2


def test_bf16_autocast_on_cpu(tiny_prepared: Path, tmp_path: Path, monkeypatch) -> None:
    bucketed: list[torch.nn.Module] = []

    def record(model: torch.nn.Module) -> list:
        bucketed.append(model)
        return bucket_linear_rows(model)

    monkeypatch.setattr(loop, "bucket_linear_rows", record)
    # bf16 runs on any CPU, emulated where it is not native; a native one keeps the test the same
    # on every machine.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    layer = torch.nn.Linear(4, 4)
    with make_autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with make_autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    summary = train(
        tiny_config("train.precision=bf16", "train.max_steps=4"), tiny_prepared, tmp_path / "r"
    )
    assert summary["nan_steps"] == 0 and math.isfinite(summary["best_score"])
    assert summary["precision"] == "bf16"
    # bf16 on the CPU pads linear layers' rows into a few shapes (oneDNN builds each once)...
    assert len(bucketed) == 1
    train(tiny_config("train.precision=fp32", "train.max_steps=2"), tiny_prepared, tmp_path / "f")
    assert len(bucketed) == 1  # ... and float32 (MKL, nothing to build) does not


def test_precision_and_device_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True}, raising=False)
    assert resolve_precision("auto", cpu) == "bf16"  # native bf16 is the faster (NOTES.md)
    assert resolve_precision("bf16", cpu) == "bf16"
    assert precision_note("bf16", "bf16", cpu) is None
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True}, raising=False)
    assert resolve_precision("bf16", cpu) == "fp32"  # emulated bf16 is slower than float32
    assert resolve_precision("auto", cpu) == "fp32"
    assert precision_note("bf16", "fp32", cpu) == (
        "warning: train.precision bf16: this CPU has no native bf16, so training in float32"
    )
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        assert resolve_device("auto", "train.device") == cpu
        with pytest.raises(ConfigError, match="train.device cuda: no CUDA GPU"):
            resolve_device("cuda", "train.device")


@pytest.mark.skipif(
    not os.environ.get("NMT_TEST_COMPILE"),
    reason="compiling takes ~60 s on 2 CPU cores (~8 s with a warm inductor cache); "
    "set NMT_TEST_COMPILE=1 to run it",
)
def test_torch_compile_matches_eager(tiny_prepared: Path, tmp_path: Path) -> None:
    # No dropout: compiled code draws its dropout masks from a different generator.
    common = ("train.max_steps=3", "model.transformer.dropout=0.0")
    eager = train(tiny_config(*common), tiny_prepared, tmp_path / "eager")
    compiled = train(tiny_config(*common, "train.compile=true"), tiny_prepared, tmp_path / "c")
    assert compiled["step"] == eager["step"] == 3
    for kind in ("train", "valid"):
        expected = [r["loss"] for r in _rows(tmp_path / "eager", kind)]
        assert [r["loss"] for r in _rows(tmp_path / "c", kind)] == pytest.approx(expected, rel=1e-4)
    # Adam turns float noise in near-zero gradients into steps of up to ~lr (1.8e-3 here).
    for name, tensor in weights(tmp_path / "eager" / "last.pt").items():
        compiled_tensor = weights(tmp_path / "c" / "last.pt")[name]
        torch.testing.assert_close(compiled_tensor, tensor, rtol=0, atol=2e-3)


def test_validation_bleu_is_sacrebleu_of_the_decoded_validation_set(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    import sacrebleu

    from nmt.data.store import load_prepared
    from nmt.decoding.beam import decode_corpus

    cfg = tiny_config("train.valid_metric=bleu", "train.max_steps=4", "train.lr=1e-2")
    summary = train(cfg, tiny_prepared, tmp_path / "run")
    rows = _rows(tmp_path / "run", "valid")
    assert summary["valid_metric"] == "bleu" and {"bleu", "chrf", "nll"} <= rows[-1].keys()
    best = max(rows, key=lambda r: r["bleu"])
    assert summary["best_score"] == best["bleu"]
    # Recompute the best validation's BLEU from best.pt, outside the training loop.
    model, cfg, _, tgt_tok = ckpt.load_for_inference(tmp_path / "run")
    valid = load_prepared(tiny_prepared).split("valid")
    decode_cfg = dataclasses.replace(cfg.decode, beam_size=1)
    hyps = decode_corpus(model, list(valid["src_ids"]), decode_cfg, "cpu")
    texts = [tgt_tok.decode(h[0].tokens) for h in hyps]
    assert sacrebleu.corpus_bleu(texts, [list(valid["tgt"])]).score == pytest.approx(best["bleu"])


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("transformer-small", None),
        ("rnn-bahdanau", None),
        # The README's results table quotes these, with the recipe's joint 8k vocabulary.
        ("multi30k/transformer", 7_578_624),
        ("multi30k/rnn-bahdanau", 6_381_568),
    ],
)
def test_shipped_configs_load_and_build(name: str, parameters: int | None) -> None:
    from nmt.config import RunConfig, load_config
    from nmt.models import build_model, count_parameters

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cfg = load_config(RunConfig, path)
    assert cfg.model.arch == Path(name).name.split("-")[0]
    if cfg.model.arch == "rnn":
        assert cfg.model.rnn.attention == "bahdanau" and cfg.train.schedule == "plateau"
    model = build_model(cfg.model, 8000, 8000, True)
    assert 1_000_000 < count_parameters(model) < 20_000_000
    if parameters is not None:
        assert count_parameters(model) == parameters
