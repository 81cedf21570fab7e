"""`nmt plot` (a sentence's attention as a heatmap) and `nmt plot-metrics` (learning curves)."""

from __future__ import annotations

from pathlib import Path

from nmt.checkpoint import guard_outputs
from nmt.curves import plot_curves, read_all
from nmt.decoding.alignment import get_record
from nmt.decoding.plot import plot_attention
from nmt.errors import ConfigError
from nmt.io import Input, Output
from nmt.outputs import check_output_path, log_stderr, model_inputs


def plot(
    attention_file: Path,
    index: int,
    out: Path,
    layer: int | None = None,
    subwords: bool = False,
    sentence: int = 0,
) -> Path:
    """`nmt plot`: the heatmap of sentence `sentence` of input line `index` (both 0-based) of an
    attention file."""
    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file")
    inputs = [Input(Path(attention_file), "the attention file")]
    guard_outputs([Output("--out", Path(out))], inputs, ConfigError)
    _, record = get_record(attention_file, index, sentence)
    title = f"sentence {index}" + (f".{sentence}" if sentence else "")
    return plot_attention(record, out, layer=layer, words=not subwords, title=title)


def plot_metrics(runs: list[Path], out: Path, metric: str = "bleu") -> Path:
    """`nmt plot-metrics`: learning curves of one or more runs in one PNG (nmt/curves.py)."""
    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file")
    if not runs:
        raise ConfigError("give at least one run folder (or metrics.jsonl)")
    check_output_path(Path(out), "--out")
    guard_outputs([Output("--out", Path(out))], model_inputs(list(runs)), ConfigError)
    curves = read_all([Path(run) for run in runs], metric)
    if curves[0].clock != "wall_seconds":
        log_stderr("note: a run logged no wall clock (trained by an older nmt): time is drawn as "
                   "minutes inside updates, validation and saving left out")  # fmt: skip
    return plot_curves(curves, out, metric)
