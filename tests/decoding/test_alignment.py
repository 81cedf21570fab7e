"""Attention -> alignments (nmt/decoding/alignment.py), on hand-made examples worked on paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.decoding.alignment import (
    AttentionRecord,
    AttentionWriter,
    alignment_error_rate,
    format_pharaoh,
    get_record,
    hard_alignment,
    make_record,
    merge_to_words,
    parse_pharaoh,
    read_attention,
    read_pharaoh,
    reduce_attention,
    word_groups,
    words_of,
    write_pharaoh,
)
from nmt.errors import ConfigError, DataError

SRC = ["▁Ein", "▁Hund", "e", "▁läuft", "."]  # words: Ein | Hunde | läuft.
TGT = ["▁A", "▁dog", "s", "▁run"]  # words: A | dogs | run


def test_word_groups_follow_the_word_start_marker() -> None:
    assert word_groups(SRC) == [[0], [1, 2], [3, 4]]
    assert words_of(SRC) == ["Ein", "Hunde", "läuft."]
    # A first piece without the marker still opens a word; a lone "▁" opens one for what follows.
    assert word_groups(["ab", "c", "▁", "(", "▁x"]) == [[0, 1], [2, 3], [4]]
    assert words_of(["ab", "c", "▁", "(", "▁x"]) == ["abc", "(", "x"]
    assert word_groups([]) == []


def test_a_bare_word_start_piece_is_no_word_of_its_own() -> None:
    # ["▁A", "▁", "▁B"] detokenizes to "A  B": two words, so word indices match str.split().
    assert word_groups(["▁A", "▁", "▁B"]) == [[0], [1, 2]]
    assert words_of(["▁A", "▁", "▁B"]) == ["A", "B"]
    assert word_groups(["▁A", "▁"]) == [[0, 1]]  # at the end it joins the word before
    assert word_groups(["▁"]) == [] and words_of(["▁"]) == []
    matrix = np.eye(4, 3, dtype=np.float32)  # 3 target pieces + EOS row, 2 source pieces + EOS
    merged = merge_to_words(matrix, ["▁A", "▁", "▁B"], ["▁x", "▁y"])
    np.testing.assert_allclose(merged, [[1.0, 0.0], [0.0, 0.5]])


def test_text_without_spaces_keeps_its_pieces_as_units() -> None:
    pieces = ["▁初", "に", "神", "天地"]  # Japanese: only the first piece carries the marker
    assert word_groups(pieces) == [[0], [1], [2], [3]]
    assert words_of(pieces) == ["初", "に", "神", "天地"]
    assert word_groups(["▁初", "に", "▁i", "Phone", "を"]) == [[0], [1], [2, 3], [4]]
    assert word_groups(["▁", "C", "E"]) == [[0, 1, 2]]  # a one-word Latin sentence stays a word
    matrix = np.full((3, 5), 0.2, dtype=np.float32)  # 2 target pieces + EOS, 4 source + EOS
    merged = merge_to_words(matrix, ["▁God", "▁created"], pieces)
    assert merged.shape == (2, 4)


def test_merge_to_words_by_hand() -> None:
    # Rows: 4 target pieces + EOS; columns: 5 source pieces + EOS. Each row sums to 1.
    m = np.array(
        [
            [0.7, 0.1, 0.0, 0.1, 0.0, 0.1],  # ▁A
            [0.0, 0.5, 0.3, 0.1, 0.0, 0.1],  # ▁dog
            [0.1, 0.2, 0.6, 0.0, 0.0, 0.1],  # s
            [0.0, 0.0, 0.1, 0.4, 0.4, 0.1],  # ▁run
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # EOS row: dropped
        ],
        dtype=np.float32,
    )
    words = merge_to_words(m, TGT, SRC)
    expected = np.array(
        [
            # Ein   Hunde (cols 1+2)  läuft. (cols 3+4)
            [0.7, 0.1 + 0.0, 0.1 + 0.0],  # A
            [(0.0 + 0.1) / 2, (0.8 + 0.8) / 2, (0.1 + 0.0) / 2],  # dogs: mean of rows 1, 2
            [0.0, 0.1, 0.8],  # run
        ]
    )
    np.testing.assert_allclose(words, expected, atol=1e-6)
    # Stacked layer/head axes are merged the same way.
    stacked = merge_to_words(np.stack([m, m])[None], TGT, SRC)
    assert stacked.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(stacked[0, 1], expected, atol=1e-6)


def test_reduce_transformer_attention() -> None:
    gen = torch.Generator().manual_seed(0)
    attn = torch.rand(4, 3, 2, 5, generator=gen)  # (T, L, H, S)
    np.testing.assert_allclose(reduce_attention(attn, "-1", "0"), attn[:, 2, 0].numpy())
    np.testing.assert_allclose(
        reduce_attention(attn, "1", "mean"), attn[:, 1].mean(1).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        reduce_attention(attn, "mean", "mean"), attn.mean((1, 2)).numpy(), rtol=1e-6
    )
    everything = reduce_attention(attn, "all", "all")
    assert everything.shape == (3, 2, 4, 5)
    np.testing.assert_allclose(everything[1, 0], attn[:, 1, 0].numpy())
    assert reduce_attention(attn, "0", "all").shape == (1, 2, 4, 5)
    rnn = torch.rand(4, 5, generator=gen)
    np.testing.assert_allclose(reduce_attention(rnn, "-1", "mean"), rnn.numpy())
    with pytest.raises(ConfigError, match="3 layers"):
        reduce_attention(attn, "3", "mean")


def test_hard_alignment_argmax_and_threshold() -> None:
    m = np.array([[0.7, 0.2, 0.1], [0.05, 0.5, 0.45], [0.0, 0.1, 0.9]])  # (target, source) words
    assert hard_alignment(m) == [(0, 0), (1, 1), (2, 2)]
    assert hard_alignment(m, threshold=0.4) == [(0, 0), (1, 1), (2, 1), (2, 2)]
    assert hard_alignment(np.zeros((0, 3))) == []
    assert format_pharaoh(hard_alignment(m, 0.4)) == "0-0 1-1 2-1 2-2"


def test_pharaoh_round_trip(tmp_path: Path) -> None:
    alignments = [[(0, 0), (2, 1), (1, 3)], [], [(10, 12)]]
    path = tmp_path / "a.align"
    write_pharaoh(path, alignments)
    assert path.read_text().splitlines() == ["0-0 1-3 2-1", "", "10-12"]
    assert [sure for sure, _ in read_pharaoh(path)] == [set(a) for a in alignments]
    sure, possible = parse_pharaoh("0-0 1?2 3p4")
    assert sure == {(0, 0)} and possible == {(0, 0), (1, 2), (3, 4)}
    (tmp_path / "bad.align").write_text("0-0\n1-1 2:3\n")
    with pytest.raises(DataError, match=r"bad.align:2: '2:3'"):
        read_pharaoh(tmp_path / "bad.align")


def test_alignment_error_rate_by_hand() -> None:
    # Sentence 1: S = {0-0, 1-1}, P = S + {2-1}; A = {0-0, 2-1, 2-2}:
    # |A|=3 |S|=2 |A&S|=1 |A&P|=2 -> precision 2/3, recall 1/2, AER = 1 - 3/5.
    gold = [parse_pharaoh("0-0 1-1 2?1")]
    hyp = [{(0, 0), (2, 1), (2, 2)}]
    scores = alignment_error_rate(hyp, gold)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(1 / 2)
    assert scores.aer == pytest.approx(1 - 3 / 5)
    # Sentence 2 adds S = {0-1}, A = {0-1}: counts are pooled over the corpus, not averaged.
    scores = alignment_error_rate([*hyp, {(0, 1)}], [*gold, parse_pharaoh("0-1")])
    assert (scores.hyp_links, scores.sure_links, scores.possible_links) == (4, 3, 4)
    assert scores.aer == pytest.approx(1 - (2 + 3) / (4 + 3))
    assert scores.precision == pytest.approx(3 / 4) and scores.recall == pytest.approx(2 / 3)
    perfect = alignment_error_rate([{(0, 0), (1, 1)}], gold)
    assert perfect.aer == 0.0 and perfect.recall == 1.0


@pytest.mark.parametrize("suffix", [".npz", ".jsonl"])
def test_attention_files_round_trip(tmp_path: Path, suffix: str) -> None:
    gen = torch.Generator().manual_seed(1)
    attn = torch.softmax(torch.rand(len(TGT) + 1, 2, 2, len(SRC) + 1, generator=gen), dim=-1)
    records = [
        make_record(0, SRC, TGT, attn, "-1", "mean"),
        make_record(1, [], [], None, "-1", "mean"),  # an empty input line
        make_record(2, SRC, TGT, attn, "all", "all"),
    ]
    assert records[0].matrix.shape == (5, 6) and records[0].word_matrix.shape == (3, 3)
    assert records[2].matrix.shape == (2, 2, 5, 6) and records[2].word_matrix.shape == (2, 2, 3, 3)
    path = tmp_path / f"attn{suffix}"
    meta = {"arch": "transformer", "attention_layer": "-1", "attention_head": "mean"}
    with AttentionWriter(path, meta) as writer:
        for record in records:
            writer.write(record)
    read_meta, loaded = read_attention(path)
    assert read_meta["sentences"] == 3 and read_meta["arch"] == "transformer"
    for want, got in zip(records, list(loaded), strict=True):
        assert isinstance(got, AttentionRecord)
        assert (got.index, got.src_pieces, got.tgt_pieces) == (
            want.index,
            want.src_pieces,
            want.tgt_pieces,
        )
        assert (got.src_words, got.tgt_words) == (want.src_words, want.tgt_words)
        np.testing.assert_allclose(got.matrix.reshape(want.matrix.shape), want.matrix, atol=1e-6)
        np.testing.assert_allclose(
            got.word_matrix.reshape(want.word_matrix.shape), want.word_matrix, atol=1e-6
        )
    assert get_record(path, 2)[1].tgt_words == ["A", "dogs", "run"]
    with pytest.raises(DataError, match="out of range; the file holds 3"):
        get_record(path, 3)


def test_attention_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "attn.npz"
    with pytest.raises(RuntimeError), AttentionWriter(path, {}) as writer:
        writer.write(make_record(0, SRC, TGT, torch.ones(5, 6) / 6, "-1", "mean"))
        raise RuntimeError("interrupted")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not an attention file"):
        read_attention(tmp_path / "junk.npz")
