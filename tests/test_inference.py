"""The Python API (`from nmt import Translator`), JSONL output, line-by-line pipes and glossaries,
on the tiny Transformer the session trains once (tests/conftest.py)."""

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
from nmt.data.glossary import Glossary
from nmt.decoding.beam import length_penalty
from nmt.errors import ConfigError, DataError
from nmt.inference import TranslateOptions, Translator

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

    t = Translator.load(run_dir, "cpu", ["decode.beam_size=4", "decode.nbest=2"], beam_size=2)
    assert (t.cfg.beam_size, t.cfg.nbest) == (2, 2)  # keyword beats --set, --set beats the run
    assert Translator.load(run_dir, "cpu").cfg.beam_size == 3  # the run's own decode section
    with pytest.raises(Exception, match="only decode"):
        Translator.load(run_dir, "cpu", ["train.lr=1"])


def test_int8_is_refused_on_a_gpu_before_quantizing(run_dir: Path) -> None:
    from nmt.checkpoint import load_run

    runs = [load_run(run_dir, torch.device("cpu"))]
    with pytest.raises(ConfigError, match="int8 is for CPUs"):
        Translator(runs, DecodeConfig(precision="int8"), torch.device("cuda"))


def test_full_results_hold_scores_nbest_and_alignment(run_dir: Path) -> None:
    from nmt import Translator

    t = Translator.load(run_dir, "cpu", beam_size=3)
    results = t.translate_full(LINES, TranslateOptions(nbest=3, attention=True))
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
    searched = t.translate_full(LINES, TranslateOptions(attention=True))
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
    fields = {"translation", "score", "tokens", "token_scores", "alignment"}
    offsets = {"src_start", "src_end", "tgt_start", "tgt_end"}
    for line, row in zip(LINES, rows, strict=True):
        assert set(row) == fields | {"sentences"}
        for sentence in row["sentences"]:
            assert set(sentence) == fields | offsets
            # A blank line is one empty sentence.
            assert bool(line[sentence["src_start"] : sentence["src_end"]].strip()) == bool(
                line.strip()
            )
            text = row["translation"][sentence["tgt_start"] : sentence["tgt_end"]]
            assert text == sentence["translation"]
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


# ---- glossaries (nmt/data/glossary.py, constrained search) ------------------------------------

# The tiny model reverses the words and writes them in capitals ("ba ce do" -> "DO CE BA"); the
# glossary has "ce" written "KE" and "ge" written "HA FO", which the model does not write itself.
TERMS = "# our terms\nce\tKE\n\nge\tHA FO\n"


@pytest.fixture()
def glossary_file(tmp_path: Path) -> Path:
    path = tmp_path / "terms.tsv"
    path.write_text(TERMS, encoding="utf-8")
    return path


def test_target_terms_appear_and_lines_without_terms_are_unchanged(
    run_dir: Path, glossary_file: Path
) -> None:
    plain = Translator.load(run_dir, "cpu")
    messages: list[str] = []
    steered = Translator.load(run_dir, "cpu", log=messages.append, glossary=glossary_file)
    before = plain.translate_full(LINES, TranslateOptions(attention=True))
    after = steered.translate_full(LINES)
    assert "KE" not in before[0].translation.split() and "HA FO" not in before[2].translation
    assert "KE" in after[0].translation.split() and "KE" in after[4].translation.split()
    assert "HA FO" in after[2].translation
    for n in (1, 3, 5):  # no term in these lines: today's translation, and an empty list of terms
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


def test_terms_of_a_split_line_are_placed_per_sentence_and_counted_over_the_line(
    run_dir: Path, glossary_file: Path
) -> None:
    translator = Translator.load(run_dir, "cpu", glossary=glossary_file)
    (line,) = translator.translate_full(["ba do. Fo ce ga"])
    first, second = line.sentences
    assert first.terms == [] and [p.match.term.src for p in second.terms or []] == ["ce"]
    assert "KE" in second.translation.split()
    (term,) = line.to_dict()["terms"]
    # Counted over the line: the first sentence's words come before.
    shift_src, shift_tgt = len(first.src_words), len(first.tgt_words)
    assert term["src_words"] == [shift_src + 1, shift_src + 1]
    start, end = term["tgt_words"]
    assert line.translation.split()[start : end + 1] == ["KE"] and start >= shift_tgt


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


def test_glossaries_too_long_to_place_in_bounded_time_are_refused(run_dir: Path) -> None:
    long_term = Glossary.from_pairs([("ce", " ".join(["KE"] * 40))], "long.tsv:1")
    said = r"long.tsv:1: target term 'KE KE .*\.\.\.' is \d+ subwords long; a glossary term may"
    with pytest.raises(DataError, match=said + " have at most 32"):
        Translator.load(run_dir, "cpu", glossary=long_term)
    pairs = [(word, " ".join(["KE"] * 20)) for word in ("ba", "ce", "do", "fo")]
    many = Glossary.from_pairs(pairs, "many.tsv")  # each term fits, four together do not
    translator = Translator.load(run_dir, "cpu")
    translator.translate_full(["ba"], glossary=many)  # one sentence's single term is taken
    with pytest.raises(
        DataError,
        match=r"<input>:2: the glossary terms found in this sentence "
        r"take \d+ subwords together; one sentence's terms may take at most 64",
    ):
        translator.translate_full(["ba", "ba ce do fo"], glossary=many)


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
    assert [len(r["terms"]) for r in rows] == [1, 0, 1, 0, 1, 0]
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


def test_jsonl_input_gives_each_line_its_own_terms(
    run_dir: Path, glossary_file: Path, tmp_path: Path
) -> None:
    requests = [
        {"text": "ba ce do", "glossary": {"ba": "KE KE"}},
        {"text": ""},
        {"text": "fo ge", "glossary": {"ge": "DO"}},  # replaces the file's "ge" for this line
        {"text": "lo"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("translate", run_dir, "-i", src, "-o", out, "--input-format", "jsonl",
                 "--glossary", glossary_file, "--output-format", "jsonl")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [[(t["src"], t["tgt"]) for t in r["terms"]] for r in rows] == [
        [("ba", "KE KE"), ("ce", "KE")],
        [],
        [("ge", "DO")],
        [],
    ]
    assert all(t["placed"] for r in rows for t in r["terms"])
    assert rows[1]["translation"] == ""
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "lo"}\n', encoding="utf-8")
    alone = cli("translate", run_dir, "-i", plain, "--input-format", "jsonl")
    assert alone.exit_code == 0 and alone.stdout.strip()  # no glossary at all: plain search
    for bad, message in [
        ("{'text': 'lo'}", "not JSON"),
        ('{"txt": "lo"}', 'expected an object with a string "text"'),
        ('{"text": "lo", "terms": {}}', "unknown field 'terms'"),
        ('{"text": "lo", "glossary": ["lo", "LO"]}', '"glossary" must map source terms'),
        ('{"text": "l\\ud800o"}', "a string holds a lone surrogate"),
        ('{"text": "lo", "glossary": {"lo": "\\udfffLO"}}', "a string holds a lone surrogate"),
    ]:
        src.write_text('{"text": "ba"}\n' + bad + "\n", encoding="utf-8")
        failed = cli("translate", run_dir, "-i", src, "-o", out, "--input-format", "jsonl")
        assert failed.exit_code == 1, failed.output
        assert failed.stderr.startswith(f"error: {src}:2: {message}")
