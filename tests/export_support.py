"""The export tests' rule (tests/test_export.py, tests/test_pretrained.py): a run and its
CTranslate2 export decode the same sentences; count the identical 1-best outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from nmt.cli import app


def export_and_compare(run: Path, out: Path, lines: list[str]) -> tuple[int, dict[str, Any]]:
    """Export `run` with `nmt export`, decode `lines` with both engines, CTranslate2 with the
    settings of `nmt-decoding.json` (its maximum length worked out per sentence), and count the
    identical 1-best outputs. Returns (count, the settings)."""
    import ctranslate2

    from nmt.inference import Translator

    ours = Translator.load(run, "cpu")
    exported = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    settings = json.loads((out / "nmt-decoding.json").read_text(encoding="utf-8"))
    src_ids = ours.encode(lines, 0, "test")
    our_pieces = [ours.tgt_tok.pieces(n[0].tokens) for n in ours.decode(src_ids)]
    theirs = ctranslate2.Translator(str(out), device="cpu", inter_threads=1, intra_threads=1)
    rule = settings["max_decoding_length"]
    same = 0
    for ids, mine in zip(src_ids, our_pieces, strict=True):
        limit = int(rule["a"] * (len(ids) + 1) + rule["b"])
        result = theirs.translate_batch(
            [ours.src_tok.pieces(ids)], max_decoding_length=limit, **settings["translate_batch"]
        )
        same += result[0].hypotheses[0] == mine
    return same, settings
