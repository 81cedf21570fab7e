"""Attention heatmaps with matplotlib (Agg backend, no display needed): source words along the x
axis, target words down the y axis, one picture per sentence, or a grid with one panel per head of
one Transformer layer. Cell and font sizes adapt so that sentences up to ~50 words stay readable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmt.decoding.alignment import AttentionRecord
from nmt.errors import ConfigError
from nmt.io import atomic_open

# Fonts with CJK glyphs, tried as fallbacks after DejaVu Sans when installed (the bible demo
# translates from Japanese). Matplotlib falls back per glyph from 3.6 on.
_CJK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "IPAexGothic",
    "IPAGothic",
    "TakaoGothic",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
    "Source Han Sans JP",
)


def _font_family() -> list[str]:
    from matplotlib import font_manager

    _register_packaged_cjk_font(font_manager)
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[name for name in _CJK_FONTS if name in installed]]


def _register_packaged_cjk_font(font_manager: Any) -> None:
    """Add IPAexGothic from the `matplotlib-fontja` package (the `demo` extra) when it is installed:
    a fresh machine rarely has a CJK font. Found by path, not imported: importing it would switch
    every later plot of the process to that font."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or spec.origin is None:
        return
    font = Path(spec.origin).parent / "fonts" / "ipaexg.ttf"
    known = {f.fname for f in font_manager.fontManager.ttflist}
    if font.is_file() and str(font) not in known:
        font_manager.fontManager.addfont(str(font))


def panels_of(
    record: AttentionRecord, layer: int | None, words: bool
) -> tuple[list[np.ndarray], list[str], list[str], list[str]]:
    """The matrices to draw for a record: (matrices (T,S) each, panel titles, x labels, y labels).

    A (T,S) record gives one panel. A (L',H',T,S) record gives one panel per head of layer
    `layer` (default: the last layer stored).
    """
    matrix = record.word_matrix if words else record.matrix
    if words:
        src, tgt = record.src_words, record.tgt_words
    else:
        src, tgt = [*record.src_pieces, "</s>"], [*record.tgt_pieces, "</s>"]
    if matrix.ndim == 2:
        if layer not in (None, 0, -1):
            raise ConfigError("--layer: this attention file holds one matrix per sentence")
        return [matrix], [""], src, tgt
    layers = matrix.shape[0]
    chosen = layers - 1 if layer is None else layer
    if not -layers <= chosen < layers:
        raise ConfigError(f"--layer {layer}: the file holds {layers} layer(s) (0..{layers - 1})")
    chosen %= layers
    heads = matrix[chosen]  # (H', T, S)
    if heads.shape[0] == 1:
        return [heads[0]], [f"layer {chosen}"], src, tgt
    titles = [f"layer {chosen}, head {h}" for h in range(heads.shape[0])]
    return list(heads), titles, src, tgt


def plot_attention(
    record: AttentionRecord,
    out: str | Path,
    layer: int | None = None,
    words: bool = True,
    title: str | None = None,
) -> Path:
    """Draw `record` to a PNG at `out` (written atomically) and return the path.

    `words` draws the word-level matrix, else the subword one (with EOS row and column).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrices, titles, src, tgt = panels_of(record, layer, words)
    if src and not tgt and words:  # translated as an empty line: only its </s> attended
        raise ConfigError(
            f"sentence {record.index} was translated as an empty line: no words to draw; "
            "--subwords draws the attention of its </s>"
        )
    if not src or not tgt or matrices[0].size == 0:
        raise ConfigError(f"sentence {record.index} is empty: nothing to plot")
    rows_n, cols_n = len(tgt), len(src)
    count = len(matrices)
    grid_cols = min(count, 4)
    grid_rows = math.ceil(count / grid_cols)
    # About 0.32 inch per cell: 50 words still get legible 7-8 pt labels.
    cell = 0.32 if max(rows_n, cols_n) <= 30 else 0.24
    fontsize = 10 if max(rows_n, cols_n) <= 20 else 8 if max(rows_n, cols_n) <= 40 else 7
    label_room = 0.09 * max([len(w) for w in src + tgt] + [4])  # inches for the longest word
    panel_w = max(2.5, cols_n * cell + label_room + 0.8)
    panel_h = max(2.0, rows_n * cell + label_room + 0.6)
    with matplotlib.rc_context({"font.family": _font_family(), "font.size": fontsize}):
        fig, axes = plt.subplots(
            grid_rows, grid_cols, figsize=(panel_w * grid_cols + 1.0, panel_h * grid_rows + 0.6),
            squeeze=False, constrained_layout=True,
        )  # fmt: skip
        image: Any = None
        for n, ax in enumerate(axes.flat):
            if n >= count:
                ax.axis("off")
                continue
            image = ax.imshow(
                matrices[n], cmap="Greys", vmin=0.0, vmax=1.0, aspect="equal",
                interpolation="nearest",
            )  # fmt: skip
            ax.set_xticks(range(cols_n))
            ax.set_yticks(range(rows_n))
            ax.set_xticklabels(src, rotation=90)
            ax.set_yticklabels(tgt)
            ax.xaxis.tick_top()
            ax.tick_params(length=0)
            if titles[n]:
                ax.set_title(titles[n], fontsize=fontsize + 1, pad=4)
            if n % grid_cols == 0:
                ax.set_ylabel("target")
            ax.set_xlabel("source")
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention")
        if title:
            fig.suptitle(title)
        out = Path(out)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            with atomic_open(out, "wb") as handle:
                fig.savefig(handle, format="png", dpi=110)
        plt.close(fig)
    return out


def plot_records(
    records: Sequence[AttentionRecord], out_dir: str | Path, layer: int | None = None
) -> list[Path]:
    """One PNG per non-empty record: `out_dir/attention_<index>.png`."""
    out_dir = Path(out_dir)
    paths = []
    for record in records:
        if record.word_matrix.size:
            paths.append(plot_attention(record, out_dir / f"attention_{record.index}.png", layer))
    return paths
