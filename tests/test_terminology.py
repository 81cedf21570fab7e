"""Glossaries end to end (`Translator(glossary=...)`, `nmt translate/evaluate --glossary`) on the
tiny Transformer the session trains once (tests/conftest.py): its task is to reverse the words
and write them in capitals, so "ba ce do" becomes "DO CE BA"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nmt.cli import app
from nmt.data.glossary import Glossary
from nmt.errors import ConfigError, DataError
from nmt.inference import Translator

LINES = ["ba ce do", "", "fo ge ha ke", "lo", "ke lo ba ce do fe"]
# "ce" is written "KE" and "ge" is written "HA FO": neither is what the model writes on its own.
TERMS = "# our terms\nce\tKE\n\nge\tHA FO\n"


@pytest.fixture(scope="module")
def run_dir(tiny_transformer_run: Path) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_transformer_run
    torch.set_num_threads(threads)


@pytest.fixture()
def glossary_file(tmp_path: Path) -> Path:
    path = tmp_path / "terms.tsv"
    path.write_text(TERMS, encoding="utf-8")
    return path


def cli(*args: object, stdin: str | None = None):  # noqa: ANN201 (typer's Result)
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def test_target_terms_appear_and_lines_without_terms_are_unchanged(
    run_dir: Path, glossary_file: Path
) -> None:
    plain = Translator.load(run_dir, "cpu")
    messages: list[str] = []
    steered = Translator.load(run_dir, "cpu", log=messages.append, glossary=glossary_file)
    before = plain.translate_full(LINES, attention=True)
    after = steered.translate_full(LINES)
    assert "KE" not in before[0].translation.split() and "HA FO" not in before[2].translation
    assert "KE" in after[0].translation.split() and "KE" in after[4].translation.split()
    assert "HA FO" in after[2].translation
    for n in (1, 3):  # no term in these lines: today's translation, and an empty list of terms
        assert after[n].translation == before[n].translation and after[n].terms == []
    assert before[0].terms is None and "terms" not in before[0].to_dict()
    row = after[0].to_dict()
    (term,) = row["terms"]
    assert (term["src"], term["tgt"], term["src_words"], term["placed"]) == (
        "ce",
        "KE",
        [1, 1],
        True,
    )
    start, end = term["tgt_words"]
    assert after[0].translation.split()[start : end + 1] == ["KE"]
    # The aligned source words are the hard alignment's links of the placed target word.
    links = {tuple(map(int, link.split("-"))) for link in row["alignment"].split()}
    assert set(term["aligned_src_words"]) == {s for s, t in links if t == start}
    assert any("glossary of 2 terms" in m for m in messages)


def test_a_glossary_per_call_and_per_line(run_dir: Path) -> None:
    translator = Translator.load(run_dir, "cpu")
    mine = Glossary.from_pairs([("ba", "KE")], "mine")
    results = translator.translate_full(["ba ce", "ba ce"], glossary=[mine, None])
    assert "KE" in results[0].translation.split() and results[1].terms is None
    assert "KE" not in results[1].translation.split()
    alike = translator.translate_full(["ba ce"], glossary=mine)
    assert alike[0].translation == results[0].translation
    with pytest.raises(ConfigError, match="1 glossaries for 2 lines"):
        translator.translate_full(["ba", "ce"], glossary=[mine])


def test_nbest_lists_hold_the_terms_too(run_dir: Path, glossary_file: Path) -> None:
    translator = Translator.load(run_dir, "cpu", glossary=glossary_file, beam_size=4, nbest=3)
    (result,) = translator.translate_full(["ba ce do fo"])
    assert result.nbest and all("KE" in c.translation.split() for c in result.nbest)


def test_glossaries_the_search_cannot_follow_are_refused(run_dir: Path, tmp_path: Path) -> None:
    alien = Glossary.from_pairs([("ce", "Ωμέγα")], "alien.tsv:1")
    with pytest.raises(DataError, match=r"alien.tsv:1: target term 'Ωμέγα' holds characters"):
        Translator.load(run_dir, "cpu", glossary=alien)
    with pytest.raises(ConfigError, match="a glossary needs beam search"):
        Translator.load(run_dir, "cpu", ["decode.sample=true"], glossary=alien)


def test_translate_command_writes_terms_and_fails_cleanly(
    run_dir: Path, glossary_file: Path, tmp_path: Path
) -> None:
    src = tmp_path / "in.de"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ("translate", run_dir, "-i", src, "-o", out, "--glossary", glossary_file)
    result = cli(*args, "--output-format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [len(r["terms"]) for r in rows] == [1, 0, 1, 0, 1]
    assert all(t["placed"] for r in rows for t in r["terms"])
    text = cli(*args[:5], tmp_path / "out.txt", "--glossary", glossary_file, "--beam", "1")
    assert text.exit_code == 0, text.output
    assert "KE" in (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")[0].split()
    bad = tmp_path / "bad.tsv"
    bad.write_text("ce\tKE\nge HA\n", encoding="utf-8")
    failed = cli(*args[:-1], bad)
    assert failed.exit_code == 1 and not out.with_name("never").exists()
    assert failed.stderr.strip() == (
        f"error: {bad}:2: expected 2 tab-separated columns (source term, target term), found 1"
    )
    forced = cli(*args, "--force", src)
    assert forced.exit_code == 2 and "drop --glossary" in forced.stderr


def test_evaluate_counts_the_terms(run_dir: Path, glossary_file: Path, tmp_path: Path) -> None:
    src, ref = tmp_path / "t.de", tmp_path / "t.en"
    lines = [line for line in LINES if line]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ref.write_text("\n".join(" ".join(reversed(s.split())).upper() for s in lines) + "\n")
    report = tmp_path / "scores.json"
    result = cli("evaluate", run_dir, "--src", src, "--ref", ref, "--glossary", glossary_file,
                 "--report", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    terms = json.loads(report.read_text())["tests"]["t"]["terms"]
    assert terms["found"] == 3 and terms["placed"] == 3 and terms["placed_percent"] == 100.0
    assert "glossary terms placed 3 of 3 (100.0%)" in result.stdout
