"""nmt/data/align.py and `nmt prepare --set alignments=eflomal`: symmetrisation and the mapping
of word links to SentencePiece pieces on hand-made examples, then eflomal itself on a tiny
corpus whose true alignment is known (the target is the source reversed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from corpus_support import write_reverse_corpus

from nmt.data.align import grow_diag_final_and, parse_links, piece_links, word_strings
from nmt.data.batching import collate
from nmt.errors import DataError


def test_piece_links_by_hand() -> None:
    """ "Ein Hunde." / "A dog s": source word 1 is pieces 1-3 ("▁Hund", "e", "."), target word 1
    is pieces 1-2; the word links 0-0 and 1-1 become 1 + 3 x 2 piece links."""
    src = ["▁Ein", "▁Hund", "e", "."]
    tgt = ["▁A", "▁dog", "s"]
    assert word_strings(src) == ["Ein", "Hunde."]
    assert word_strings(tgt) == ["A", "dogs"]
    assert piece_links({(0, 0), (1, 1)}, src, tgt) == [
        (0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)
    ]  # fmt: skip
    # Crossing links, and a word of the target that nothing links to.
    assert piece_links({(1, 0)}, src, ["▁Der", "▁x"]) == [(1, 0), (2, 0), (3, 0)]
    # A lone "▁" piece opens a word for what follows and is no word by itself; the aligner
    # never sees an empty word.
    assert word_strings(["▁", "(", "▁a"]) == ["(", "a"]
    assert word_strings(["▁", "▁a"]) == ["a"]
    assert word_strings(["▁"]) == []


def test_grow_diag_final_and_by_hand() -> None:
    # Intersection {0-0, 2-2}. Growing from 0-0 adds 0-1 (next to it, in the union, target word
    # 1 unaligned) and 1-1 (diagonal, source word 1 unaligned); from 2-2 it adds 3-3 (diagonal).
    forward = {(0, 0), (1, 1), (2, 2), (3, 3)}
    reverse = {(0, 0), (2, 2), (0, 1)}
    assert grow_diag_final_and(forward, reverse) == {(0, 0), (0, 1), (1, 1), (2, 2), (3, 3)}
    # Growing refuses a neighbour whose two words are both aligned already.
    assert grow_diag_final_and({(0, 0), (1, 1)}, {(0, 0), (1, 1), (0, 1)}) == {(0, 0), (1, 1)}
    # A link no direction proposed never appears.
    assert grow_diag_final_and({(0, 0)}, {(0, 0)}) == {(0, 0)}
    # Final-and: a one-direction link that is nobody's neighbour joins only when both of its
    # words are still unaligned.
    assert grow_diag_final_and({(0, 2)}, {(1, 0)}) == {(0, 2), (1, 0)}
    assert grow_diag_final_and({(0, 0), (0, 2)}, {(0, 0)}) == {(0, 0)}


def test_parse_links_names_bad_input() -> None:
    assert parse_links("0-1 2-2", "x") == {(0, 1), (2, 2)}
    assert parse_links("", "x") == set()
    with pytest.raises(DataError, match="pair 3"):
        parse_links("0-1 2", "pair 3")


def test_collate_puts_links_into_the_alignment_matrix() -> None:
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], [0, 1], [[0, 1, 2, 0], [0, 2]])
    assert batch.alignment is not None and batch.alignment.shape == (2, 4, 4)  # T = 3 + 1
    assert batch.alignment[0].nonzero().tolist() == [[0, 2], [1, 0]]  # (target, source)
    assert batch.alignment[1].nonzero().tolist() == [[2, 0]]
    assert collate([[5]], [[6]], [0]).alignment is None


def test_prepare_stores_eflomal_links_on_pieces(tmp_path: Path) -> None:
    """Real eflomal on 300 pairs whose target is the reversed, upper-cased source: the stored
    piece links, read back as word links, are the reversal for nearly every word."""
    pytest.importorskip("eflomal")
    from typer.testing import CliRunner

    from nmt.cli import app
    from nmt.data.spm import Tokenizer, word_groups
    from nmt.data.store import ALIGN_COLUMN, load_prepared

    write_reverse_corpus(tmp_path, "train", 300, seed=1, max_words=7)
    write_reverse_corpus(tmp_path, "valid", 20, seed=2, max_words=7)
    out = tmp_path / "prepared"
    args = ["prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", str(tmp_path / "train"),
            "--valid", str(tmp_path / "valid"), "--out", str(out), "--vocab-size", "60",
            "--set", "hard_vocab_limit=false", "--set", "alignments=eflomal"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = load_prepared(out)
    train = data.split("train")
    assert ALIGN_COLUMN in train.column_names
    assert ALIGN_COLUMN not in data.split("valid").column_names
    tok = Tokenizer.load(out / "spm.model")
    right = total = 0
    for row in train:
        src_pieces, tgt_pieces = tok.pieces(row["src_ids"]), tok.pieces(row["tgt_ids"])
        links = torch.tensor(row[ALIGN_COLUMN]).view(-1, 2).tolist()
        assert all(s < len(src_pieces) and t < len(tgt_pieces) for s, t in links)
        src_word = {p: w for w, g in enumerate(word_groups(src_pieces)) for p in g}
        tgt_word = {p: w for w, g in enumerate(word_groups(tgt_pieces)) for p in g}
        words = len(word_groups(src_pieces))
        found = {(src_word[s], tgt_word[t]) for s, t in links}
        right += sum((i, words - 1 - i) in found for i in range(words))
        total += words
    assert right / total > 0.9, (right, total)
