"""Bad settings stop a command in one line (exit 2) before any work: NaN and infinity, sizes of
zero or beyond any machine, out-of-range seeds and counts, path-like language codes, and config
files that are not UTF-8, hold a 5,000-digit integer or expand aliases a billion times."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reliability_support import assert_refused, nmt, snapshot, tiny_run_yaml

BAD_TRAIN_SETTINGS = [
    (["train.lr=.nan"], "'train.lr': expected a finite number, got nan"),
    (["train.lr=.inf"], "'train.lr': expected a finite number, got inf"),
    (["decode.temperature=.inf"], "'decode.temperature': expected a finite number"),
    (["decode.len_penalty=.nan"], "'decode.len_penalty': expected a finite number"),
    (["model.transformer.heads=0"], "model.transformer.heads must be in [1,"),
    (["model.transformer.d_model=0"], "model.transformer.d_model must be in [1,"),
    (["model.transformer.ffn_dim=100000000000"], "model.transformer.ffn_dim must be in [1,"),
    (["model.transformer.max_positions=0"], "model.transformer.max_positions must be in [2,"),
    (["train.betas=[0.9,1.0]"], "train.betas must both be in [0, 1)"),
    (["train.betas=[-0.1,0.9]"], "train.betas must both be in [0, 1)"),
    (["model.arch=rnn", "model.rnn.hidden_size=0"], "model.rnn.hidden_size must be in [1,"),
    (["model.arch=rnn", "model.rnn.max_positions=1"], "model.rnn.max_positions must be in [2,"),
    (["train.valid_max_sentences=-1"], "train.valid_max_sentences must be in [0,"),
    (["train.seed=2147483648"], "train.seed must be in [0, 2147483647]"),
    (["train.plateau_factor=0"], "train.plateau_factor must be in (0, 1]"),
    (["decode.beam_size=99999999999"], "decode.beam_size and decode.nbest must be <= 10,000"),
    (["decode.max_len_a=1e308"], "decode.max_len_a, max_len_b and min_len must be <="),
    # Scores that leave float32 would be ranked as infinities and written as such.
    (["decode.len_penalty=-1e308"], "decode.len_penalty must be in [-10, 10], got -1e+308"),
    (["decode.coverage_penalty=1e308"], "decode.coverage_penalty must be in [0, 10], got 1e+308"),
]


@pytest.mark.parametrize(("settings", "needle"), BAD_TRAIN_SETTINGS, ids=lambda v: str(v))
def test_train_refuses_a_bad_setting_before_creating_the_run(
    tiny_prepared: Path, tmp_path: Path, settings: list[str], needle: str
) -> None:
    config = tiny_run_yaml(tmp_path / "run.yaml")
    sets = [arg for item in settings for arg in ("--set", item)]
    before = snapshot(tmp_path)
    assert_refused(
        nmt("train", config, "--data", tiny_prepared, "--out", tmp_path / "run", *sets), 2, needle
    )
    assert snapshot(tmp_path) == before  # no run directory, nothing else touched


def test_train_refuses_a_model_no_memory_can_hold(tiny_prepared: Path, tmp_path: Path) -> None:
    config = tiny_run_yaml(tmp_path / "run.yaml")
    result = nmt("train", config, "--data", tiny_prepared, "--out", tmp_path / "run",
                 "--set", "model.transformer.d_model=131072")  # fmt: skip
    assert_refused(result, 2, "model.transformer: at least", "GiB; this cpu has")
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_a_nan_length_penalty_before_translating(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "src.de").write_text("ba ce\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("CE BA\n", encoding="utf-8")
    report = tmp_path / "scores.json"
    result = nmt("evaluate", tiny_transformer_run, "--src", tmp_path / "src.de",
                 "--ref", tmp_path / "ref.en", "--report", report,
                 "--set", "decode.len_penalty=.nan")  # fmt: skip
    assert_refused(result, 2, "decode.len_penalty")
    assert not report.exists()


def test_evaluate_refuses_an_unknown_bleu_tokenizer_before_translating(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "src.de").write_text("ba ce\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("CE BA\n", encoding="utf-8")
    result = nmt("evaluate", tiny_transformer_run, "--src", tmp_path / "src.de",
                 "--ref", tmp_path / "ref.en", "--tokenize", "bogus",
                 "--hyp-out", tmp_path / "hyp")  # fmt: skip
    assert_refused(result, 2, "--tokenize 'bogus': unknown", "13a")
    assert "translated" not in result.stderr
    assert not (tmp_path / "hyp").exists()


BAD_PREPARE = [
    (["--set", "seed=-1"], "seed must be in [0, 2147483647], got -1"),
    (["--set", "spm_max_sentences=4294967296"], "spm_max_sentences must be in [0, 2147483647]"),
    (["--set", "spm_threads=2147483648"], "spm_threads must be in [0, 2147483647]"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_PREPARE, ids=lambda v: str(v))
def test_prepare_refuses_a_bad_setting(tmp_path: Path, args: list[str], needle: str) -> None:
    for side in ("de", "en"):
        (tmp_path / f"train.{side}").write_text("ba ce\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", tmp_path / "train",
                 "--valid", tmp_path / "train", "--out", tmp_path / "out", *args)  # fmt: skip
    assert_refused(result, 2, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("src", "tgt", "needle"), [("../de", "en", "src_lang '../de'"),
                                                    ("de", "en/x", "tgt_lang 'en/x'")])  # fmt: skip
def test_prepare_refuses_a_path_as_language_code(
    tmp_path: Path, src: str, tgt: str, needle: str
) -> None:
    result = nmt("prepare", "--src-lang", src, "--tgt-lang", tgt, "--train", tmp_path / "t",
                 "--valid", tmp_path / "t", "--out", tmp_path / "out")  # fmt: skip
    assert_refused(result, 2, needle, "expected a language code")
    assert list(tmp_path.iterdir()) == []


def billion_laughs(levels: int = 9) -> str:
    """A ~300-byte YAML whose value, written out, has 9**9 (387 million) items."""
    names = "abcdefghijklmnop"[:levels]
    parts = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, cur in zip(names, names[1:], strict=False):
        parts.append(f"&{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "model:\n  arch: [" + ", ".join(parts) + "]\n"


BAD_YAML = {
    "aliases": billion_laughs().encode(),
    "huge_int": b"train:\n  seed: " + b"9" * 5000 + b"\n",
    "not_utf8": b"train:\n  lr: \xff\xfe\n",
    "deep": b"train: " + b"[" * 5000 + b"]" * 5000 + b"\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_YAML))
def test_a_hostile_config_file_gets_a_short_error_at_once(
    tiny_prepared: Path, tmp_path: Path, kind: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(BAD_YAML[kind])
    started = time.perf_counter()
    result = nmt("train", config, "--data", tiny_prepared, "--out", tmp_path / "run")
    line = assert_refused(result, 2)
    assert time.perf_counter() - started < 20
    assert len(line) < 400, line
    assert not (tmp_path / "run").exists()
