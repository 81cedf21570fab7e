"""nmt.metrics equals the sacrebleu command line on the same files (run as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.errors import DataError
from nmt.metrics import corpus_scores, read_lines

SACREBLEU = Path(sys.executable).with_name("sacrebleu")

# Written for this test: case, punctuation, numbers, non-ASCII, an empty line, trailing spaces.
HYPS = [
    "A man in a blue shirt is standing on a ladder.",
    "Two dogs play in the snow  ",
    "",
    "The girl, wearing a red coat, runs to the bus stop!",
    "Zwei Männer schauen auf 3 Bildschirme.",
    "people are walking down the street at night",
]
REFS = [
    "A man in a blue shirt stands on a ladder.",
    "Two dogs are playing in the snow.",
    "",
    "A girl in a red coat is running to the bus stop.",
    "Zwei Männer sehen sich drei Bildschirme an.",
    "People walk down a street at night.",
]
REFS2 = [
    "A man wearing blue is on a ladder.",
    "Two dogs playing in snow.",
    "Nothing.",
    "The girl in the red coat runs towards the bus stop.",
    "Zwei Männer blicken auf 3 Monitore.",
    "People are walking along the street at night.",
]


def sacrebleu_cli(refs: list[Path], hyp: Path, *flags: str) -> dict[str, dict]:
    if not SACREBLEU.exists():
        pytest.skip("sacrebleu command line not installed beside this Python")
    cmd = [str(SACREBLEU), *map(str, refs), "-i", str(hyp), "-m", "bleu", "chrf", "ter",
           "-w", "4", "-f", "json", *flags]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {entry["name"]: entry for entry in json.loads(out)}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("num_refs", [1, 2])
def test_scores_equal_the_sacrebleu_command_line(tmp_path: Path, num_refs: int) -> None:
    hyp = write(tmp_path / "hyp.txt", HYPS)
    refs = [write(tmp_path / "ref1.txt", REFS), write(tmp_path / "ref2.txt", REFS2)][:num_refs]
    ours = corpus_scores(read_lines(hyp), [read_lines(r) for r in refs])
    cli = sacrebleu_cli(refs, hyp)
    assert round(ours["bleu"], 4) == cli["BLEU"]["score"]
    assert round(ours["chrf"], 4) == cli["chrF2"]["score"]
    assert round(ours["ter"], 4) == cli["TER"]["score"]
    assert ours["bleu_signature"] == cli["BLEU"]["signature"]
    assert ours["chrf_signature"] == cli["chrF2"]["signature"]
    assert ours["ter_signature"] == cli["TER"]["signature"]
    lowercased = sacrebleu_cli(refs, hyp, "-lc")["BLEU"]
    assert round(ours["bleu_lc"], 4) == lowercased["score"]
    assert ours["bleu_lc_signature"] == lowercased["signature"]
    assert ours["bleu_lc"] > ours["bleu"]  # "people"/"People", "The"/"A" ... now match
    assert ours["sentences"] == len(HYPS)


def test_perfect_and_mismatched_input(tmp_path: Path) -> None:
    scores = corpus_scores(REFS, [REFS])
    assert scores["bleu"] == pytest.approx(100.0) and scores["ter"] == 0.0
    with pytest.raises(ValueError, match="reference stream 1 has 5 lines"):
        corpus_scores(HYPS, [REFS[:5]])
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_lines(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("Gr\xfc\xdfe\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt:1: not UTF-8 text \(byte 3 of the line"):
        read_lines(tmp_path / "latin1.txt")
