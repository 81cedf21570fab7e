"""Translations never change behind the user's back: everything needed to translate (cleaning
settings, SentencePiece model) is read from the run, not from the prepared folder it came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from nmt.cli import app

# Upper-case input: lowercasing it (a changed cleaning setting) would change the translation.
LINES = "BA ce DO\nFo GE ha\nke LO\n"


def translate(run: Path) -> tuple[str, str]:
    result = CliRunner().invoke(app, ["translate", str(run), "--beam", "1"], input=LINES)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_changing_or_deleting_the_prepared_folder_changes_nothing(
    tiny_transformer_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    run = tmp_path / "run"
    shutil.copytree(tiny_transformer_run, run)
    info = json.loads((run / "data.json").read_text(encoding="utf-8"))
    (run / "data.json").write_text(json.dumps({**info, "path": str(data)}), encoding="utf-8")
    before, _ = translate(run)
    lowered = CliRunner().invoke(app, ["translate", str(run), "--beam", "1"], input=LINES.lower())
    assert lowered.stdout != before  # so the cleaning settings do matter for this input

    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    manifest["config"]["lowercase"] = True  # as if prepared again with --set lowercase=true
    (data / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert translate(run)[0] == before

    shutil.rmtree(data)
    after, stderr = translate(run)
    assert after == before
    assert "note:" not in stderr  # nothing had to be guessed


def test_the_checkpoint_records_the_cleaning_settings(tiny_transformer_run: Path) -> None:
    payload = torch.load(tiny_transformer_run / "best.pt", weights_only=True)
    assert payload["cleaning"]["lowercase"] is False
    assert payload["cleaning"]["normalize"] is True
