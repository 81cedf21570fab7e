"""`nmt translate`, `evaluate`, `align-eval` and `plot` through the command line (Typer's runner),
on a tiny model trained for a few updates on the session's tiny prepared corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nmt.cli import app

SENTENCES = ["ba ce do", "", "fo ge", "   ", "ha ke lo ba ce do fe", "ce"]


@pytest.fixture(scope="module")
def run_dir(tiny_transformer_run: Path) -> Iterator[Path]:
    """The tiny trained Transformer (tests/conftest.py), translated on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and steadier on a busy machine
    yield tiny_transformer_run
    torch.set_num_threads(threads)


THREADS = torch.get_num_threads()  # restored after a command that sets its own


def invoke(*args: str, stdin: str | None = None) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def one_line_error(result: object, code: int, *needles: str) -> None:
    """The command failed with `code` and said so in one line naming what was wrong (after any
    progress lines), with no traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert (
        "Traceback" not in result.stderr
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    for needle in needles:
        assert needle in errors[0]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---- translate -------------------------------------------------------------------------------


def test_translate_keeps_order_and_empty_lines(run_dir: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.de", SENTENCES)
    result = invoke("translate", run_dir, "-i", src, "-o", tmp_path / "out.en")
    assert result.exit_code == 0, result.output
    out = (tmp_path / "out.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(out) == len(SENTENCES)
    assert [not o for o in out] == [not s.strip() for s in SENTENCES]
    # stdin -> stdout, one sentence per batch, and each line alone: the same translations.
    piped = invoke("translate", run_dir, "--batch-tokens", "1", stdin="\n".join(SENTENCES) + "\n")
    assert piped.exit_code == 0
    assert piped.stdout.split("\n")[:-1] == out
    for sentence, expected in zip(SENTENCES, out, strict=True):
        if sentence.strip():
            alone = invoke("translate", run_dir, stdin=sentence + "\n")
            assert alone.stdout == expected + "\n"


def test_bf16_translation_agrees_with_float32(run_dir: Path) -> None:
    """decode.precision=bf16 on a model trained to be confident: the same translations."""
    stdin = "\n".join(SENTENCES) + "\n"
    full = invoke("translate", run_dir, stdin=stdin)
    half = invoke("translate", run_dir, "--set", "decode.precision=bf16", stdin=stdin)
    assert full.exit_code == 0 and half.exit_code == 0, half.output
    assert "(bf16)" in half.stderr
    assert half.stdout == full.stdout


def test_int8_translation_agrees_with_float32(run_dir: Path) -> None:
    """decode.precision=int8 (dynamic quantization) on the confident tiny model: the same
    translations, and JSONL rows still carry the attention and alignments."""
    stdin = "\n".join(SENTENCES) + "\n"
    full = invoke("translate", run_dir, stdin=stdin)
    quantized = invoke("translate", run_dir, "--set", "decode.precision=int8", stdin=stdin)
    assert full.exit_code == 0 and quantized.exit_code == 0, quantized.output
    assert "(int8)" in quantized.stderr
    assert quantized.stdout == full.stdout
    rows = invoke("translate", run_dir, "--set", "decode.precision=int8", "--output-format",
                  "jsonl", "--attention", stdin=stdin)  # fmt: skip
    assert rows.exit_code == 0, rows.output
    row = json.loads(rows.stdout.splitlines()[0])
    assert row["alignment"] and len(row["attention"]["matrix"]) == len(
        row["attention"]["tgt_words"]
    )


def test_translate_nbest_format(run_dir: Path) -> None:
    result = invoke("translate", run_dir, "--nbest", "3", stdin="ba ce\n\nfo go\n")
    assert result.exit_code == 0, result.output
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 0, 1, 2, 2, 2]
    scores = [float(r[2]) for r in rows if r[0] == "0"]
    assert scores == sorted(scores, reverse=True)
    assert rows[3] == ["1", "", "0.0000"]


def test_translate_exports_attention(run_dir: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.de", SENTENCES)
    result = invoke(
        "translate", run_dir, "-i", src, "-o", tmp_path / "out.en",
        "--attention-out", tmp_path / "attn.npz", "--alignments-out", tmp_path / "out.align",
        "--plot-dir", tmp_path / "plots",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = np.load(tmp_path / "attn.npz")
    meta = json.loads(str(data["meta"]))
    assert meta == {"sentences": 6, "arch": "transformer", "attention_layer": "-1",
                    "attention_head": "mean"}  # fmt: skip
    outputs = (tmp_path / "out.en").read_text(encoding="utf-8").splitlines()
    links = (tmp_path / "out.align").read_text(encoding="utf-8").splitlines()
    assert len(links) == len(SENTENCES)
    for i, sentence in enumerate(SENTENCES):
        matrix, words = data[f"attention_{i}"], data[f"words_{i}"]
        src_words, tgt_words = data[f"src_words_{i}"].tolist(), data[f"tgt_words_{i}"].tolist()
        if not sentence.strip():
            assert matrix.size == 0 and links[i] == "" and src_words == []
            continue
        assert matrix.shape == (len(data[f"tgt_{i}"]) + 1, len(data[f"src_{i}"]) + 1)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)  # rows are distributions
        assert src_words == sentence.split()
        assert " ".join(tgt_words) == outputs[i]
        assert words.shape == (len(tgt_words), len(src_words))
        pairs = [tuple(map(int, link.split("-"))) for link in links[i].split()]
        assert len(pairs) == len(tgt_words)  # argmax: one link per target word
        assert all(0 <= s < len(src_words) and 0 <= t < len(tgt_words) for s, t in pairs)
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == [f"attention_{i}.png" for i in (0, 2, 4, 5)]
    drawn = invoke("plot", tmp_path / "attn.npz", "--index", "4", "--out", tmp_path / "4.png")
    assert drawn.exit_code == 0 and (tmp_path / "4.png").read_bytes()[:4] == b"\x89PNG"
    one_line_error(
        invoke("plot", tmp_path / "attn.npz", "--index", "9", "--out", tmp_path / "9.png"),
        1,
        "out of range",
    )


def test_translate_all_heads_and_a_grid_plot(run_dir: Path, tmp_path: Path) -> None:
    result = invoke(
        "translate", run_dir, "--attention-out", tmp_path / "attn.jsonl",
        "--set", "decode.attention_layer=all", "--set", "decode.attention_head=all",
        stdin="ba ce do\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "attn.jsonl").read_text(encoding="utf-8"))
    matrix = np.asarray(row["attention"])
    assert matrix.shape[:2] == (2, 2)  # (layers, heads, T, S)
    drawn = invoke("plot", tmp_path / "attn.jsonl", "--out", tmp_path / "g.png", "--layer", "0")
    assert drawn.exit_code == 0, drawn.output


def test_a_split_line_exports_one_attention_record_per_sentence(
    run_dir: Path, tmp_path: Path
) -> None:
    lines = ["ba ce do. Fo ga! Ke lo ba", "", "ha ke"]
    src = write_lines(tmp_path / "para.de", lines)
    result = invoke(
        "translate", run_dir, "-i", src, "-o", tmp_path / "out.en", "--threads", "1",
        "--attention-out", tmp_path / "attn.jsonl", "--alignments-out", tmp_path / "out.align",
        "--plot-dir", tmp_path / "plots",
    )  # fmt: skip
    torch.set_num_threads(THREADS)
    assert result.exit_code == 0, result.output
    assert "translated 3 lines (5 sentences)" in result.stderr
    outputs = (tmp_path / "out.en").read_text(encoding="utf-8").splitlines()
    assert len(outputs) == 3 and outputs[1] == ""
    records = [json.loads(r) for r in (tmp_path / "attn.jsonl").read_text().splitlines()]
    assert [(r["index"], r["sentence"]) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0),
                                                                (2, 0)]  # fmt: skip
    assert [len(r["src_words"]) for r in records] == [3, 2, 3, 0, 2]  # "." and "F" are unknown
    # Pharaoh: one line per input line, the sentences' words counted in turn.
    links = (tmp_path / "out.align").read_text(encoding="utf-8").splitlines()
    assert len(links) == 3
    pairs = [tuple(map(int, p.split("-"))) for p in links[0].split()]
    tgt_total = sum(len(r["tgt_words"]) for r in records[:3])
    assert len(pairs) == tgt_total and max(s for s, _ in pairs) >= 5  # reaches the third
    assert " ".join(w for r in records[:3] for w in r["tgt_words"]) == outputs[0]
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["attention_0_0.png", "attention_0_1.png", "attention_0_2.png",
                     "attention_2.png"]  # fmt: skip
    drawn = invoke("plot", tmp_path / "attn.jsonl", "--index", "0", "--sentence", "2", "--out",
                   tmp_path / "s.png")  # fmt: skip
    assert drawn.exit_code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    one_line_error(invoke("plot", tmp_path / "attn.jsonl", "--index", "0", "--sentence", "3",
                          "--out", tmp_path / "x.png"), 1, "line 0 has no sentence 3")  # fmt: skip
    whole = invoke("translate", run_dir, "-i", src, "--no-split", "--output-format", "jsonl")
    assert [len(json.loads(r)["sentences"]) for r in whole.stdout.splitlines()] == [1, 1, 1]


def test_too_long_lines_are_cut_truncated_or_refused(run_dir: Path, tmp_path: Path) -> None:
    long = " ".join(["ba ce do fo"] * 20)  # far over max_positions = 32 subwords
    src = write_lines(tmp_path / "long.de", ["ce", long])
    result = invoke("translate", run_dir, "-i", src, "--output-format", "jsonl")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2
    assert "long.de:2:" in result.stderr and "translated in" in result.stderr
    assert "1 sentence(s) longer than the model's maximum of 31 subwords" in result.stderr
    pieces = json.loads(result.stdout.splitlines()[1])["sentences"]
    assert len(pieces) >= 3  # every word read: the pieces cover the line
    covered = " ".join(long[p["src_start"] : p["src_end"]] for p in pieces)
    assert covered == long
    cut = invoke("translate", run_dir, "-i", src, "--set", "decode.too_long=truncate")
    assert cut.exit_code == 0 and "its end is cut off" in cut.stderr
    refused = invoke("translate", run_dir, "-i", src, "--set", "decode.too_long=error")
    one_line_error(refused, 1, "long.de:2:", "decode.too_long=split")


# ---- evaluate --------------------------------------------------------------------------------


def test_evaluate_equals_sacrebleu_and_writes_a_report(
    run_dir: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    root = tiny_prepared.parent
    src, ref = root / "valid.de", root / "valid.en"
    report = tmp_path / "scores.json"
    result = invoke(
        "evaluate", run_dir, "--src", src, "--ref", ref, "--test", f"twice={src},{ref},{ref}",
        "--report", report, "--hyp-out", tmp_path / "hyps",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "BLEU" in result.stdout and "nrefs:1|case:mixed" in result.stdout
    scores = json.loads(report.read_text(encoding="utf-8"))
    assert set(scores["tests"]) == {"valid", "twice"}
    valid = scores["tests"]["valid"]
    assert valid["sentences"] == 40 and valid["sentences_per_second"] > 0
    assert scores["decode"]["beam_size"] == 3 and scores["arch"] == "transformer"
    assert scores["tests"]["twice"]["bleu_signature"].startswith("nrefs:2|")
    hyp = tmp_path / "hyps" / "valid.hyp"
    cli = subprocess.run(
        [str(Path(sys.executable).with_name("sacrebleu")), str(ref), "-i", str(hyp), "-m", "bleu",
         "chrf", "ter", "-w", "4", "-f", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    by_name = {e["name"]: e["score"] for e in json.loads(cli.stdout)}
    assert round(valid["bleu"], 4) == by_name["BLEU"]
    assert round(valid["chrf"], 4) == by_name["chrF2"]
    assert round(valid["ter"], 4) == by_name["TER"]
    # Scoring the kept file without a model gives the same numbers.
    again = invoke("evaluate", "--hyp", hyp, "--ref", ref, "--report", tmp_path / "hyp.json")
    assert again.exit_code == 0, again.output
    rescored = json.loads((tmp_path / "hyp.json").read_text(encoding="utf-8"))["tests"]["valid"]
    assert rescored["bleu"] == valid["bleu"] and rescored["ter"] == valid["ter"]


# ---- bad input -------------------------------------------------------------------------------


def test_missing_or_corrupt_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    one_line_error(invoke("translate", tmp_path / "nope", stdin="ba\n"), 1, "nope")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    one_line_error(invoke("translate", bad, stdin="ba\n"), 1, "bad.pt")
    one_line_error(invoke("evaluate", bad, "--src", bad, "--ref", bad), 1, "bad.pt")


def test_checkpoint_without_its_vocabulary(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for spm in copy.glob("spm*.model"):
        spm.unlink()
    one_line_error(invoke("translate", copy, stdin="ba\n"), 1, "spm", "missing")


def test_reference_and_hypothesis_lengths_must_match(tmp_path: Path) -> None:
    hyp = write_lines(tmp_path / "hyp.en", ["A", "B", "C"])
    ref = write_lines(tmp_path / "ref.en", ["A", "B"])
    one_line_error(invoke("evaluate", "--hyp", hyp, "--ref", ref), 1, "ref.en", "hyp.en")


def test_usage_errors(run_dir: Path, tmp_path: Path) -> None:
    one_line_error(invoke("translate", run_dir, "-i", tmp_path / "missing.de"), 1, "missing.de")
    one_line_error(invoke("translate", run_dir, "--set", "train.lr=1"), 2, "decode.*")
    one_line_error(invoke("translate", run_dir, "--beam", "2", "--nbest", "3"), 2, "nbest")
    one_line_error(invoke("evaluate", "--src", tmp_path / "x.de", "--ref", tmp_path / "x"), 2)
    missing = invoke("evaluate", run_dir, "--src", tmp_path / "x.de", "--ref", tmp_path / "x.en")
    one_line_error(missing, 1, "x.en: file not found")
    one_line_error(invoke("evaluate", run_dir, "--test", "oops"), 2, "NAME=SRC,REF")


def test_align_eval(tmp_path: Path) -> None:
    gold = write_lines(tmp_path / "gold.align", ["0-0 1-1 2?1", "0-1"])
    hyp = write_lines(tmp_path / "hyp.align", ["0-0 2-1 2-2", "0-1"])
    result = invoke("align-eval", "--gold", gold, "--hyp", hyp, "--report", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    assert "AER 0.2857" in result.stdout  # 1 - (2 + 3) / (4 + 3)
    assert json.loads((tmp_path / "a.json").read_text())["precision"] == pytest.approx(0.75)
    short = write_lines(tmp_path / "short.align", ["0-0"])
    one_line_error(invoke("align-eval", "--gold", gold, "--hyp", short), 1, "short.align")
