"""Fine-tuning (`nmt train --init`): the weights come over and nothing else, the architecture and
the vocabulary must match (one-line errors otherwise), frozen parts stay bit-identical, and a
fine-tuning run killed with -9 resumes to exactly the unbroken run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from tiny import FAST, tiny_yaml
from training_support import assert_bitwise_equal, kill_when_stalled, weights
from typer.testing import CliRunner

from nmt import checkpoint as ckpt
from nmt.cli import app
from nmt.config import ModelConfig, RNNConfig, TrainConfig, from_dict
from nmt.errors import ConfigError
from nmt.io import read_jsonl, sha256_file
from nmt.models import build_model
from nmt.training.finetune import freeze, resolve_init

# Short runs: no periodic validation, a save every 2 updates.
QUICK = ("--set", "train.valid_every=1000", "--set", "train.save_every=2")


def run(*args: object) -> tuple[int, str]:
    """The CLI in-process; an exception other than the CLI's own exit is a bug and is raised."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# The words of the tiny corpus (tests/conftest.py), and others it never saw.
TINY_WORDS = [f"{c}{v}" for c in "bcdfghkl" for v in "aeo"]
OTHER_WORDS = [f"{c}{v}{c}" for c in "mnprstvz" for v in "iu"]


def write_corpus(folder: Path, name: str, pairs: int, seed: int, words: list[str]) -> Path:
    """`name.de` / `name.en`: 2-6 random `words`, the target reversed. Returns the prefix."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(pairs)]
    (folder / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    tgt = (" ".join(reversed(line.split())) for line in src)
    (folder / f"{name}.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder / name


def one_error_line(out: str) -> str:
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


@pytest.fixture(scope="module")
def init_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-update tiny Transformer run (the "general" model of these tests)."""
    folder = tmp_path_factory.mktemp("init")
    code, out = run("train", tiny_yaml(folder / "tiny.yaml"), "--data", tiny_prepared,
                    "--out", folder / "run")  # fmt: skip
    assert code == 0, out
    return folder / "run"


def test_init_then_a_tiny_update_translates_like_the_init_model(
    tiny_transformer_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    tuned = tmp_path / "tuned"
    code, out = run("train", "--init", tiny_transformer_run, "--data", tiny_prepared,
                    "--out", tuned, "--set", "train.max_steps=1", "--set", "train.lr=1e-6",
                    "--set", "train.warmup_steps=1", *QUICK)  # fmt: skip
    assert code == 0, out
    best = tiny_transformer_run / "best.pt"
    assert f"weights from best.pt of run directory {tiny_transformer_run}" in out
    # The start is recorded: config.yaml, every checkpoint, and the first metrics line.
    sha = sha256_file(best)
    stored = yaml.safe_load((tuned / "config.yaml").read_text())["train"]
    assert (stored["init"], stored["init_sha256"]) == (str(best.resolve()), sha)
    assert ckpt.load_checkpoint(tuned / "last.pt")["config"]["train"]["init_sha256"] == sha
    first = read_jsonl(tuned / "metrics.jsonl")[0]
    assert (first["kind"], first["init"], first["init_sha256"]) == (
        "init",
        str(best.resolve()),
        sha,
    )
    # Counters and optimizer start fresh: one update, one Adam step.
    state = ckpt.load_checkpoint(tuned / "last.pt")["train_state"]
    assert state["step"] == 1 and state["best_step"] == 1
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {1}
    # One update at lr 1e-6 moved the weights, by no more than about the learning rate.
    before, after = weights(best), weights(tuned / "last.pt")
    moved = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert 0 < moved < 3e-6
    # ... so both models translate the same.
    src = write_corpus(tmp_path, "sample", 30, 7, TINY_WORDS).with_suffix(".de")
    hyps = []
    for model in (tiny_transformer_run, tuned):
        code, out = run("translate", model, "-i", src, "-o", tmp_path / f"{model.name}.hyp")
        assert code == 0, out
        hyps.append((tmp_path / f"{model.name}.hyp").read_text())
    assert hyps[0] == hyps[1] and hyps[0].strip()


def test_without_config_everything_comes_from_the_init_run(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    code, out = run("train", "--init", init_run, "--data", tiny_prepared, "--out",
                    tmp_path / "ft", "--set", "train.max_steps=2",
                    "--set", "model.transformer.dropout=0.3", *QUICK)  # fmt: skip
    assert code == 0, out
    stored = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert stored["model"]["transformer"]["ffn_dim"] == FAST["model"]["transformer"]["ffn_dim"]
    assert stored["model"]["transformer"]["dropout"] == 0.3  # regularisation may differ
    assert stored["train"]["batch_tokens"] == FAST["train"]["batch_tokens"]


def test_a_model_section_that_differs_is_a_one_line_error(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    changes = ("model.transformer.ffn_dim=48", "model.transformer.dec_layers=2",
               "model.transformer.dropout=0.3")  # fmt: skip
    config = tiny_yaml(tmp_path / "other.yaml", *changes)
    code, out = run("train", config, "--init", init_run, "--data", tiny_prepared,
                    "--out", tmp_path / "ft")  # fmt: skip
    assert code == 2
    line = one_error_line(out)
    assert "model.transformer.dec_layers: 1 in the checkpoint, 2 requested" in line
    assert "model.transformer.ffn_dim: 64 in the checkpoint, 48 requested" in line
    assert "dropout" not in line.split("requested")[-2]  # listed: only the two shape fields
    assert not (tmp_path / "ft").exists()
    # A config without a model section takes the checkpoint's.
    (tmp_path / "no-model.yaml").write_text(yaml.safe_dump({"train": FAST["train"]}))
    code, out = run("train", tmp_path / "no-model.yaml", "--init", init_run, "--data",
                    tiny_prepared, "--out", tmp_path / "ft2", "--set", "train.max_steps=1",
                    *QUICK)  # fmt: skip
    assert code == 0, out


def test_data_with_another_sentencepiece_model_is_refused_with_the_fix(
    init_run: Path, tmp_path: Path
) -> None:
    write_corpus(tmp_path, "train", 200, 11, OTHER_WORDS)
    write_corpus(tmp_path, "valid", 20, 12, OTHER_WORDS)
    prepare = ("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", tmp_path / "train",
               "--valid", tmp_path / "valid", "--set", "hard_vocab_limit=false")  # fmt: skip
    code, out = run(*prepare, "--vocab-size", "48", "--out", tmp_path / "own")
    assert code == 0, out
    code, out = run("train", "--init", init_run, "--data", tmp_path / "own", "--out",
                    tmp_path / "ft")  # fmt: skip
    assert code == 1
    line = one_error_line(out)
    assert "prepared with another SentencePiece model" in line
    assert f"--set spm_model={init_run / 'spm.model'}" in line
    assert not (tmp_path / "ft").exists()
    # Following the advice works.
    code, out = run(*prepare, "--set", f"spm_model={init_run / 'spm.model'}",
                    "--out", tmp_path / "same")  # fmt: skip
    assert code == 0, out
    code, out = run("train", "--init", init_run, "--data", tmp_path / "same", "--out",
                    tmp_path / "ft", "--set", "train.max_steps=1", *QUICK)  # fmt: skip
    assert code == 0, out


def test_init_and_resume_together_and_a_missing_init_are_errors(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    code, out = run("train", "--resume", init_run, "--init", init_run)
    assert code == 2 and "give one" in one_error_line(out)
    code, out = run("train", "--init", tmp_path / "nowhere", "--data", tiny_prepared, "--out",
                    tmp_path / "ft")  # fmt: skip
    assert code == 1 and "no such checkpoint or run directory" in one_error_line(out)
    code, out = run("train", "--init", init_run, "--data", tiny_prepared, "--out", tmp_path / "ft",
                    "--set", "train.freeze=[encoder,emb]")  # fmt: skip
    line = one_error_line(out)
    assert code == 2 and "unknown part 'emb'; valid parts: encoder, decoder, embeddings" in line


def test_resume_may_not_change_the_init(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    code, out = run("train", "--init", init_run, "--data", tiny_prepared, "--out", tmp_path / "ft",
                    "--set", "train.max_steps=2", *QUICK)  # fmt: skip
    assert code == 0, out
    code, out = run("train", "--resume", tmp_path / "ft", "--set", "train.init=/elsewhere.pt")
    assert code == 2 and "train.init" in one_error_line(out)


def test_a_run_directory_means_averaged_then_best_then_last(tmp_path: Path) -> None:
    for name in ("last.pt", "best.pt", "averaged.pt"):
        (tmp_path / name).write_bytes(b"")
        assert resolve_init(tmp_path)[0] == tmp_path / name
    assert resolve_init(tmp_path / "best.pt")[0] == tmp_path / "best.pt"


def test_frozen_parts_stay_bit_identical(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    tuned = tmp_path / "ft"
    code, out = run("train", "--init", init_run, "--data", tiny_prepared, "--out", tuned,
                    "--set", "train.max_steps=4", "--set", "train.freeze=[encoder,embeddings]",
                    *QUICK)  # fmt: skip
    assert code == 0, out
    assert "frozen: encoder, embeddings" in out
    before, after = weights(init_run / "best.pt"), weights(tuned / "last.pt")
    # The start line counts every parameter, the frozen ones too, and a tied tensor once (the
    # joint vocabulary ties the source embeddings and the output layer to tgt_embed).
    tied = ("src_embed.weight", "output.weight")
    every = sum(t.numel() for k, t in before.items() if k not in tied)
    assert f"with {every:,} parameters" in out
    fixed = [k for k in before if k.startswith(("encoder", "src_embed", "tgt_embed", "output.w"))]
    assert "tgt_embed.weight" in fixed and "encoder_layers.0.ffn.fc1.weight" in fixed
    assert_bitwise_equal({k: before[k] for k in fixed}, {k: after[k] for k in fixed})
    trained = [k for k in before if k not in fixed]
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained)
    # The optimizer holds the trainable tensors only.
    state = ckpt.load_checkpoint(tuned / "last.pt")["train_state"]["optimizer"]
    held = sum(len(group["params"]) for group in state["param_groups"])
    assert held == len(trained)


@pytest.mark.parametrize("arch", ["transformer", "rnn"])
@pytest.mark.parametrize("shared", [True, False])
def test_what_each_part_covers(arch: str, shared: bool) -> None:
    cfg = ModelConfig(arch=arch, rnn=RNNConfig(emb_dim=8, hidden_size=8, attn_dim=8))
    parts = {}
    for part in ("encoder", "decoder", "embeddings"):
        model = build_model(cfg, 20, 20 if shared else 24, shared)
        freeze(model, [part])
        parts[part] = {n for n, p in model.named_parameters() if not p.requires_grad}
    every = {n for n, _ in build_model(cfg, 20, 20 if shared else 24, shared).named_parameters()}
    assert set.union(*parts.values()) == every  # every parameter belongs to a part ...
    assert sum(len(p) for p in parts.values()) == len(every)  # ... and to one only
    # The output layer is tied to the target embeddings: one tensor, frozen with "embeddings".
    assert "tgt_embed.weight" in parts["embeddings"]
    assert ("src_embed.weight" in parts["embeddings"]) is not shared  # shared: one tensor, once
    assert all(n.startswith("encoder") for n in parts["encoder"])


def test_freeze_is_checked_when_the_config_loads() -> None:
    assert from_dict(TrainConfig, {"freeze": "decoder"}).freeze == ("decoder",)
    with pytest.raises(ConfigError, match="valid parts: encoder, decoder, embeddings"):
        from_dict(TrainConfig, {"freeze": ["decoders"]})


def test_a_fine_tuning_run_killed_and_resumed_equals_the_unbroken_one(
    init_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    code, out = run("train", "--init", init_run, "--data", tiny_prepared, "--out", straight,
                    "--set", "train.max_steps=8", "--set", "train.save_every=4",
                    "--set", "train.freeze=[embeddings]", "--set", "train.lr=1e-3")  # fmt: skip
    assert code == 0, out

    # The same fine-tuning run (its stored config names the init), stalled inside update 7 and
    # killed there: updates 5-6 exist only in memory.
    killed = tmp_path / "killed"
    kill_when_stalled(straight / "config.yaml", tiny_prepared, killed, 7)
    assert ckpt.load_checkpoint(killed / "last.pt")["step"] == 4

    code, out = run("train", "--resume", killed)
    assert code == 0, out
    assert "resuming at update 4" in out
    assert_bitwise_equal(weights(straight / "last.pt"), weights(killed / "last.pt"))
    a = ckpt.load_checkpoint(straight / "last.pt")["train_state"]
    b = ckpt.load_checkpoint(killed / "last.pt")["train_state"]
    for key in ("step", "epoch", "batches_done", "best_score", "schedule"):
        assert a[key] == b[key], key
    rows = read_jsonl(killed / "metrics.jsonl")
    assert rows[0]["kind"] == "init" and [r["kind"] for r in rows].count("init") == 1
