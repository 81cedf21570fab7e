"""`nmt plot-metrics`: learning curves read from metrics.jsonl (hand-written files where the
numbers must come out exactly, and a real run), and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmt.cli import app
from nmt.curves import minutes_at, read_curves
from nmt.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_rows(path: Path, rows: list[dict], torn_tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn_tail, encoding="utf-8")
    return path


def train_row(step: int, seconds: float, loss: float, **extra: float) -> dict:
    return {"kind": "train", "step": step, "loss": loss, "train_seconds": seconds, **extra}


def valid_row(step: int, loss: float, bleu: float) -> dict:
    return {"kind": "valid", "step": step, "loss": loss, "bleu": bleu}


def test_validation_times_are_interpolated_between_training_rows() -> None:
    assert minutes_at([0, 25, 50, 75, 150], [50, 100], [1.0, 2.0]) == pytest.approx(
        [0.0, 0.5, 1.0, 1.5, 3.0]  # past the last row: the last known rate (2 min / 100 updates)
    )


def test_a_resumed_run_keeps_the_last_row_of_each_step_and_a_torn_line_is_dropped(
    tmp_path: Path,
) -> None:
    rows = [
        train_row(50, 60.0, 5.0),
        train_row(100, 120.0, 4.0),
        valid_row(100, 4.2, 10.0),
        train_row(150, 180.0, 3.9),  # logged after the last checkpoint: the resumed run redoes it
        train_row(150, 170.0, 3.5),
        valid_row(200, 3.4, 20.0),
        train_row(200, 240.0, 3.0),
    ]
    run = tmp_path / "run"
    run.mkdir()
    write_rows(run / "metrics.jsonl", rows, torn_tail='{"kind": "tra')
    c = read_curves(run, "bleu")
    assert (c.name, c.clock) == ("run", "train_seconds")
    assert c.train_steps == [50, 100, 150, 200]
    assert c.train_minutes == pytest.approx([1.0, 2.0, 170 / 60, 4.0])
    assert c.train_loss == [5.0, 4.0, 3.5, 3.0]
    assert (c.valid_steps, c.valid_score, c.valid_loss) == ([100, 200], [10.0, 20.0], [4.2, 3.4])
    assert c.valid_minutes == pytest.approx([2.0, 4.0])


def test_wall_clock_is_used_when_every_row_has_it(tmp_path: Path) -> None:
    rows = [train_row(50, 60.0, 5.0, wall_seconds=90.0), train_row(100, 120.0, 4.0,
                                                                   wall_seconds=180.0)]  # fmt: skip
    c = read_curves(write_rows(tmp_path / "m.jsonl", rows), "bleu")
    assert (c.clock, c.train_minutes) == ("wall_seconds", pytest.approx([1.5, 3.0]))


def test_files_without_what_is_needed_are_named(tmp_path: Path) -> None:
    empty = write_rows(tmp_path / "empty.jsonl", [valid_row(100, 4.0, 1.0)])
    with pytest.raises(DataError, match="empty.jsonl: no training rows yet"):
        read_curves(empty, "bleu")
    other = write_rows(tmp_path / "other.jsonl", [train_row(50, 60.0, 5.0), valid_row(50, 4, 1)])
    with pytest.raises(DataError, match="other.jsonl: validation rows have no 'ter'"):
        read_curves(other, "ter")
    broken = write_rows(tmp_path / "broken.jsonl", [train_row(50, 60.0, 5.0)], "{not json\n")
    with pytest.raises(DataError, match="broken.jsonl: not a metrics file"):
        read_curves(broken, "bleu")


def test_the_command_draws_a_real_run_and_refuses_bad_arguments(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "curve.png"
    result = runner.invoke(
        app, ["plot-metrics", str(tiny_transformer_run), "--metric", "loss", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG_MAGIC
    curves = read_curves(tiny_transformer_run, "loss")  # a run of today logs its wall clock
    assert curves.clock == "wall_seconds" and curves.train_minutes == sorted(curves.train_minutes)
    assert curves.valid_minutes[-1] >= curves.train_minutes[-1]  # the last validation came after
    bad = runner.invoke(app, ["plot-metrics", str(tiny_transformer_run), "--out", "x.txt"])
    assert bad.exit_code == 2 and "write a .png file" in bad.output  # a usage error
    old = write_rows(tmp_path / "old.jsonl", [train_row(50, 60.0, 5.0), valid_row(50, 4.0, 1.0)])
    mixed = runner.invoke(app, ["plot-metrics", str(tiny_transformer_run), str(old), "--out",
                                str(out), "--metric", "loss"])  # fmt: skip
    assert mixed.exit_code == 0 and "note: a run logged no wall clock" in mixed.output
    missing = runner.invoke(app, ["plot-metrics", str(tmp_path / "none"), "--out", str(out)])
    assert missing.exit_code == 1 and "none: file not found" in missing.output
    assert "Traceback" not in bad.output + missing.output
