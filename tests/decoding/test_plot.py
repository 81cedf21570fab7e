"""Attention heatmaps (nmt/decoding/plot.py): files are real PNGs, sized for the sentence."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.decoding.alignment import make_record
from nmt.decoding.plot import panels_of, plot_attention
from nmt.errors import ConfigError


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def sentence(n: int) -> list[str]:
    return [f"▁w{i}" for i in range(n)]


def test_plot_single_matrix_and_long_sentence(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    short = make_record(0, sentence(4), sentence(3), torch.rand(4, 5, generator=gen), "-1", "mean")
    small = png_size(plot_attention(short, tmp_path / "short.png"))
    long = make_record(
        1, sentence(50), sentence(45), torch.rand(46, 51, generator=gen), "-1", "mean"
    )
    big = png_size(plot_attention(long, tmp_path / "long.png"))
    assert big[0] > 2 * small[0] and big[1] > 2 * small[1]  # cells keep a readable size
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file


def test_plot_grid_of_heads(tmp_path: Path) -> None:
    attn = torch.softmax(torch.rand(4, 2, 4, 6), dim=-1)  # (T, L, H, S)
    record = make_record(0, sentence(5), sentence(3), attn, "all", "all")
    matrices, titles, src, tgt = panels_of(record, layer=0, words=True)
    assert len(matrices) == 4 and titles[3] == "layer 0, head 3"
    assert (len(src), len(tgt)) == (5, 3) and matrices[0].shape == (3, 5)
    np.testing.assert_allclose(matrices[1], record.word_matrix[0, 1])
    _, titles, src, _ = panels_of(record, layer=None, words=False)
    assert titles[0] == "layer 1, head 0" and src[-1] == "</s>"
    png_size(plot_attention(record, tmp_path / "grid.png", layer=1))
    with pytest.raises(ConfigError, match="2 layer"):
        plot_attention(record, tmp_path / "x.png", layer=5)
    empty = make_record(1, [], [], None, "-1", "mean")
    with pytest.raises(ConfigError, match="empty"):
        plot_attention(empty, tmp_path / "y.png")


def test_an_empty_translation_is_drawn_with_subwords_only(tmp_path: Path) -> None:
    """A line translated as nothing but </s> has no target words; its one subword row (the
    attention of </s> over the source pieces and the source </s>) can still be drawn."""
    attn = torch.softmax(torch.rand(1, 4), dim=-1)  # (T=1: the </s> step, S = 3 pieces + </s>)
    record = make_record(2, sentence(3), [], attn, "-1", "mean")
    with pytest.raises(ConfigError, match="sentence 2 was translated as an empty line.*--subwords"):
        plot_attention(record, tmp_path / "words.png")
    png_size(plot_attention(record, tmp_path / "pieces.png", words=False))
