"""The Python API (`from nmt import Translator`), JSONL output and line-by-line pipes, on the tiny
Transformer the session trains once (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import DecodeConfig
from nmt.decoding.beam import length_penalty

RUN_DECODE = DecodeConfig()  # the tiny run keeps the default length normalisation
LINES = ["ba ce do", "", "fo ge ha ke", "lo", "ke lo ba ce do fe", "  "]


@pytest.fixture(scope="module")
def run_dir(tiny_transformer_run: Path) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_transformer_run
    torch.set_num_threads(threads)


def cli(*args: object, stdin: str | None = None) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def test_package_root_exports_translator_and_matches_the_command(
    run_dir: Path, tmp_path: Path
) -> None:
    from nmt import Translator

    ours = Translator.load(run_dir, device="cpu").translate(LINES)
    src = tmp_path / "in.de"
    src.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    result = cli("translate", run_dir, "-i", src, "-o", tmp_path / "out.en")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.en").read_text(encoding="utf-8").split("\n")[:-1] == ours
    assert ours[1] == "" and ours[5] == ""  # empty lines stay empty
    assert all(ours[i] for i in (0, 2, 3, 4))


def test_settings_come_from_the_run_then_overrides_then_keywords(run_dir: Path) -> None:
    from nmt import Translator

    t = Translator.load(run_dir, "cpu", ["decode.beam_size=4", "decode.nbest=2"], beam=2)
    assert (t.cfg.beam_size, t.cfg.nbest) == (2, 2)  # keyword beats --set, --set beats the run
    assert Translator.load(run_dir, "cpu").cfg.beam_size == 3  # the run's own decode section
    with pytest.raises(Exception, match="only decode"):
        Translator.load(run_dir, "cpu", ["train.lr=1"])


def test_full_results_hold_scores_nbest_and_alignment(run_dir: Path) -> None:
    from nmt import Translator

    t = Translator.load(run_dir, "cpu", beam_size=3)
    results = t.translate_full(LINES, nbest=3, attention=True)
    assert [r.translation for r in results] == t.translate(LINES)
    for line, r in zip(LINES, results, strict=True):
        if not line.strip():
            assert (r.translation, r.tokens, r.token_scores, r.alignment) == ("", [], [], [])
            continue
        assert r.nbest[0].translation == r.translation and r.nbest[0].score == r.score
        assert [c.score for c in r.nbest] == sorted((c.score for c in r.nbest), reverse=True)
        assert r.tokens[-1] == "</s>" and len(r.token_scores) == len(r.tokens)
        assert sum(r.token_scores) == pytest.approx(r.log_prob, abs=1e-4)
        lp = length_penalty(torch.tensor([len(r.tokens)]), t.cfg).item()
        assert r.score == pytest.approx(r.log_prob / lp, abs=1e-4)
        matrix = r.attention
        assert matrix is not None and matrix.shape == (len(r.tgt_words), len(r.src_words))
        assert r.src_words == line.split()
        # Hard links: each target word to its most attended source word (threshold 0).
        assert sorted(r.alignment) == sorted(
            (int(matrix[j].argmax()), j) for j in range(matrix.shape[0])
        )


def test_scoring_the_models_own_translations_gives_its_search_numbers(run_dir: Path) -> None:
    from nmt import Translator

    t = Translator.load(run_dir, "cpu", beam_size=3)
    searched = t.translate_full(LINES, attention=True)
    forced = t.score(LINES, [r.translation for r in searched], attention=True)
    for s, f in zip(searched, forced, strict=True):
        if not s.tokens:  # an empty line: nothing was searched, but the EOS is still scored
            assert f.tokens == ["</s>"] and len(f.token_scores) == 1
            continue
        assert f.translation == s.translation and f.tokens == s.tokens
        assert f.token_scores == pytest.approx(s.token_scores, rel=1e-5, abs=1e-5)
        assert f.score == pytest.approx(s.score, rel=1e-5, abs=1e-5)
        assert f.alignment == s.alignment
        assert f.attention is not None and s.attention is not None
        torch.testing.assert_close(f.attention, s.attention, atol=1e-5, rtol=1e-4)
    # Another translation of the same line scores lower than the one the search preferred.
    other = t.score([LINES[0]], ["ba ba ba"])[0]
    assert other.log_prob < searched[0].log_prob


def test_scoring_refuses_unpaired_lines(run_dir: Path) -> None:
    from nmt import Translator
    from nmt.errors import DataError

    with pytest.raises(DataError, match="2 sources but 1 translations"):
        Translator.load(run_dir, "cpu").score(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="Translator.score takes its translations as a list"):
        Translator.load(run_dir, "cpu").score(["a"], "a")
    said: list[str] = []
    t = Translator.load(run_dir, "cpu", log=said.append)
    t.score(["ba ce", "", ""], ["ba", "ce do", ""], where="x.txt")  # out of step, most likely
    assert said[-1].startswith("warning: x.txt:2: an empty source line has a translation (1 ")


def test_translate_force_reads_given_translations(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    searched = jsonl_rows(run_dir)
    own = tmp_path / "own.txt"
    own.write_text("".join(r["translation"] + "\n" for r in searched), encoding="utf-8")
    result = cli("translate", run_dir, "-i", src, "--force", own, "--output-format", "jsonl")
    assert result.exit_code == 0, result.output
    forced = [json.loads(line) for line in result.stdout.splitlines()]
    for s, f in zip(searched, forced, strict=True):
        assert f["translation"] == s["translation"]
        if s["tokens"]:  # the model's own output, read back: the search's numbers
            assert f["token_scores"] == pytest.approx(s["token_scores"], abs=2e-6)
            assert (f["tokens"], f["alignment"]) == (s["tokens"], s["alignment"])

    short = tmp_path / "short.txt"
    short.write_text("one line\n", encoding="utf-8")
    mismatch = cli("translate", run_dir, "-i", src, "--force", short)
    assert mismatch.exit_code == 1
    assert f"short.txt: 1 translations for the {len(LINES)} lines of {src}" in mismatch.output
    piped = cli("translate", run_dir, "--force", own, stdin="a\n")
    assert piped.exit_code == 2 and "give it with -i" in piped.output
    clobber = cli("translate", run_dir, "-i", src, "--force", own, "-o", own)
    assert clobber.exit_code == 2 and own.read_text(encoding="utf-8").count("\n") == len(LINES)
    for asked in (["--nbest", "3"], ["--set", "decode.sample=true"]):  # refused before loading
        refused = cli("translate", run_dir, "-i", src, "--force", own, *asked)
        assert refused.exit_code == 2 and "no --nbest > 1 and no sampling" in refused.output
        assert "loaded" not in refused.output


def test_batching_and_order_do_not_change_results(run_dir: Path) -> None:
    from nmt import Translator

    whole = Translator.load(run_dir, "cpu").translate_full(LINES)
    tiny_batches = Translator.load(run_dir, "cpu", batch_tokens=3).translate_full(LINES)
    one_by_one = [Translator.load(run_dir, "cpu").translate_full([x])[0] for x in LINES]
    for a, b, c in zip(whole, tiny_batches, one_by_one, strict=True):
        assert a.translation == b.translation == c.translation
        assert a.token_scores == pytest.approx(b.token_scores, abs=1e-5)


def test_ensemble_needs_one_vocabulary_and_loads_a_list(run_dir: Path) -> None:
    from nmt import Translator

    pair = Translator.load([run_dir, run_dir / "best.pt"], "cpu")
    assert pair.translate(LINES) == Translator.load(run_dir, "cpu").translate(LINES)
    assert pair.info()["arch"] == "transformer" and pair.info()["parameters"] > 0


# ---- --output-format jsonl ---------------------------------------------------------------------


def jsonl_rows(run_dir: Path, *args: object) -> list[dict]:
    result = cli("translate", run_dir, "--output-format", "jsonl", *args, stdin="\n".join(LINES))
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_jsonl_rows_have_the_documented_keys(run_dir: Path) -> None:
    rows = jsonl_rows(run_dir)
    assert len(rows) == len(LINES)
    for row in rows:
        assert set(row) == {"translation", "score", "tokens", "token_scores", "alignment"}
    plain = cli("translate", run_dir, stdin="\n".join(LINES)).stdout.splitlines()
    assert [row["translation"] for row in rows] == plain
    assert rows[0]["alignment"] and all("-" in link for link in rows[0]["alignment"].split())


def test_jsonl_nbest_and_attention(run_dir: Path) -> None:
    rows = jsonl_rows(run_dir, "--nbest", "3", "--attention")
    for line, row in zip(LINES, rows, strict=True):
        assert {"nbest", "attention"} <= set(row)
        if not line.strip():
            continue
        assert row["nbest"][0] == {"translation": row["translation"], "score": row["score"]}
        assert len(row["nbest"]) == 3
        attention = row["attention"]
        assert len(attention["matrix"]) == len(attention["tgt_words"])
        assert all(len(r) == len(attention["src_words"]) for r in attention["matrix"])
        # The score is the summed token log-probs over the run's length normaliser.
        normaliser = length_penalty(torch.tensor([len(row["tokens"])]), RUN_DECODE).item()
        assert sum(row["token_scores"]) == pytest.approx(row["score"] * normaliser, abs=1e-3)


def test_attention_flag_needs_jsonl(run_dir: Path) -> None:
    result = cli("translate", run_dir, "--attention", stdin="ba\n")
    assert result.exit_code == 2 and "--output-format jsonl" in result.stderr


# ---- a pipe that stays open ----------------------------------------------------------------------


def read_line(stream: object, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no answer within {timeout} s"
    return stream.readline().decode("utf-8")  # type: ignore[attr-defined]


def test_a_pipe_is_answered_line_by_line(run_dir: Path) -> None:
    """One line in, its translation out within a second while stdin stays open."""
    from nmt import Translator

    expected = Translator.load(run_dir, "cpu").translate(["ba ce do", "fo ge"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt.cli", "translate", str(run_dir), "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert "loaded" in read_line(proc.stderr, 60)  # the model is in memory
        for line, want in zip(["ba ce do", "fo ge"], expected, strict=True):
            started = time.monotonic()
            proc.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            assert read_line(proc.stdout, 1.0) == want + "\n"
            assert time.monotonic() - started < 1.0
        assert proc.poll() is None  # still waiting for more input
        proc.stdin.close()  # type: ignore[union-attr]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_str_is_refused_not_translated_letter_by_letter(run_dir: Path) -> None:
    from nmt import Translator

    t = Translator.load(run_dir, "cpu")
    with pytest.raises(TypeError, match="list of lines"):
        t.translate("ba ce do")  # type: ignore[arg-type]
