"""nmt.data.spm: fixed special ids, seeded training, round trips, clear vocabulary-size errors."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as sp
from data_support import make_pairs, tiny_config

from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.data.spm import (
    MappedTokenizer,
    Tokenizer,
    make_tokenizers,
    sample_rows,
    split_language_code,
    train_tokenizer,
    write_mapped_vocabulary,
)
from nmt.errors import DataError

TEXTS = [s for pair in make_pairs(300, seed=1) for s in pair]


def test_special_ids_and_round_trip(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, tiny_config(), tmp_path / "m.model", "toy")
    assert tok.vocab_size == 60
    assert tok.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    for text in TEXTS[:50]:
        ids = tok.encode(text)
        assert ids and min(ids) > EOS_ID  # no specials inside encoded text
        assert tok.decode(ids) == text
        # decode skips PAD / BOS / EOS wherever they stand
        assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text
    assert tok.encode_batch(TEXTS[:20]) == [tok.encode(t) for t in TEXTS[:20]]
    assert "".join(tok.pieces(tok.encode("der hund"))).replace("▁", " ").strip() == "der hund"


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_tokenizer(TEXTS, tiny_config(), tmp_path / "a.model", "toy")
    b = train_tokenizer(TEXTS, tiny_config(), tmp_path / "b.model", "toy")
    assert a.sha256 == b.sha256
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert Tokenizer.load(tmp_path / "a.model").sha256 == a.sha256


def test_bpe_and_user_symbols(tmp_path: Path) -> None:
    cfg = tiny_config(model_type="bpe", user_defined_symbols=("<sep>",))
    tok = train_tokenizer(TEXTS, cfg, tmp_path / "bpe.model", "toy")
    assert tok.pieces([4]) == ["<sep>"]  # user symbols follow the four special ids
    assert tok.encode("hund<sep>katze").count(4) == 1


def test_pickles_by_model_bytes(tmp_path: Path) -> None:
    tok = train_tokenizer(TEXTS, tiny_config(), tmp_path / "m.model", "toy")
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.sha256 == tok.sha256 and copy.encode("der mann") == tok.encode("der mann")


def test_vocab_too_large_says_the_maximum(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        train_tokenizer(TEXTS, tiny_config(vocab_size=5000), tmp_path / "m.model", "corpus.de")
    message = str(exc.value)
    assert message.startswith("corpus.de: vocab size 5000 is larger than this corpus allows")
    most = int(message.split("accepts at most ")[1].split(";")[0])
    assert 60 <= most < 5000
    assert not (tmp_path / "m.model").exists()  # a failed training writes nothing
    # The maximum it names is accepted; and without the hard limit the size is an upper bound.
    assert train_tokenizer(TEXTS, tiny_config(vocab_size=most), tmp_path / "m.model", "x")
    loose = train_tokenizer(
        TEXTS, tiny_config(vocab_size=5000, hard_vocab_limit=False), tmp_path / "l.model", "x"
    )
    assert loose.vocab_size <= most + 1


def test_model_with_other_special_ids_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    sp.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=buffer, vocab_size=60, minloglevel=2
    )  # library defaults: unk 0, bos 1, eos 2, no pad
    (tmp_path / "foreign.model").write_bytes(buffer.getvalue())
    with pytest.raises(
        DataError, match=r"foreign.model: special ids pad/unk/bos/eos are \(-1, 0, 1, 2\)"
    ):
        Tokenizer.load(tmp_path / "foreign.model")
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "absent.model")


def test_joint_separate_and_reused_models(tmp_path: Path) -> None:
    src, tgt = TEXTS[0::2], TEXTS[1::2]
    joint = make_tokenizers(tiny_config(), src, tgt, tmp_path / "j", "toy")
    assert joint["src"][0] == joint["tgt"][0] == "spm.model"
    assert (tmp_path / "j" / "spm.vocab").read_text().splitlines()[3].startswith("</s>\t")

    separate = make_tokenizers(
        tiny_config(joint_vocab=False, vocab_size=40), src, tgt, tmp_path / "s", "toy"
    )
    assert (separate["src"][0], separate["tgt"][0]) == ("spm.de.model", "spm.en.model")
    assert separate["src"][1].sha256 != separate["tgt"][1].sha256

    reused = make_tokenizers(
        tiny_config(spm_model=str(tmp_path / "j" / "spm.model")), [], [], tmp_path / "r", "toy"
    )
    assert reused["src"][1].sha256 == joint["src"][1].sha256
    assert reused["src"][2] == str((tmp_path / "j" / "spm.model").resolve())


def test_word_end_flags_mark_pieces_that_cannot_continue_a_word() -> None:
    from nmt.data.spm import word_end_flags

    pieces = ["▁bike", "s", ".", "-", "'s", "▁", "ing", "に", "初", "3", ""]
    assert word_end_flags(pieces) == [
        True, False, True, True, True, True, False, True, True, False, True,
    ]  # fmt: skip


# ---- mapped vocabularies (imported Marian models) ---------------------------------------------


def foreign_model(texts: list[str]) -> bytes:
    """A SentencePiece model with the library's own ids, as Marian's source.spm / target.spm."""
    buffer = io.BytesIO()
    sp.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buffer,
                                  vocab_size=40, minloglevel=2, num_threads=1)  # fmt: skip
    return buffer.getvalue()


def test_language_codes_are_split_as_marian_does() -> None:
    assert split_language_code(">>fr<< Hallo") == ([">>fr<<"], " Hallo")
    assert split_language_code(">>pt_BR<<Hallo") == ([">>pt_BR<<"], "Hallo")
    assert split_language_code("Hallo >>fr<<") == ([], "Hallo >>fr<<")
    assert split_language_code(">> no end") == ([], ">> no end")


def test_a_mapped_vocabulary_cuts_each_side_with_its_model(tmp_path: Path) -> None:
    src_model, tgt_model = foreign_model(TEXTS[0::2]), foreign_model(TEXTS[1::2])
    pieces = ["<pad>", "<unk>", "<s>", "</s>", ">>fr<<"]
    for model in (src_model, tgt_model):
        proc = sp.SentencePieceProcessor(model_proto=model)
        more = [proc.id_to_piece(i) for i in range(3, proc.get_piece_size())]
        pieces += [p for p in more if p not in pieces]
    written = write_mapped_vocabulary(tmp_path / "spm.model", pieces, src_model, tgt_model, "t")
    src = Tokenizer.load(tmp_path / "spm.model", "src")
    tgt = Tokenizer.load(tmp_path / "spm.model", "tgt")
    assert isinstance(src, MappedTokenizer) and src.sha256 == tgt.sha256 == written.sha256
    assert src.vocab_size == tgt.vocab_size == len(pieces) and src.spm_bytes == src_model
    text = TEXTS[2]
    for tok, model in ((src, src_model), (tgt, tgt_model)):
        cut = sp.SentencePieceProcessor(model_proto=model).encode(text, out_type=str)
        assert tok.pieces(tok.encode(text)) == [p if p in pieces else "<unk>" for p in cut]
    ids = src.encode(">>fr<< " + text + " жж")
    assert src.pieces(ids[:1]) == [">>fr<<"] and ids[-1] == UNK_ID  # unknown: no such piece
    # Decoding drops PAD, BOS, EOS and UNK (MarianTokenizer's skip_special_tokens).
    assert tgt.decode([BOS_ID, *tgt.encode(text), UNK_ID, EOS_ID, PAD_ID]) == text
    copy = pickle.loads(pickle.dumps(tgt))
    assert copy.side == "tgt" and copy.encode(text) == tgt.encode(text)
    # nmt prepare reusing it, as one joint file or as a file per side: each side cuts its way.
    bundle = str(tmp_path / "spm.model")
    separate = {"joint_vocab": False, "spm_model": bundle, "spm_tgt_model": bundle}
    for settings in ({"spm_model": bundle}, separate):
        made = make_tokenizers(tiny_config(**settings), [], [], tmp_path / "p", "toy")
        assert [made[side][1].side for side in ("src", "tgt")] == ["src", "tgt"]


def test_a_damaged_mapped_vocabulary_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "bad.model").write_text('{"kind": "something else"}')
    with pytest.raises(DataError, match="bad.model: not a mapped vocabulary file"):
        Tokenizer.load(tmp_path / "bad.model")
    model = foreign_model(TEXTS)
    with pytest.raises(DataError, match="the first pieces must be <pad> <unk> <s> </s>"):
        write_mapped_vocabulary(tmp_path / "odd.model", ["<unk>", "<pad>", "<s>", "</s>"],
                                model, model, "t")  # fmt: skip
    assert not (tmp_path / "odd.model").exists()  # checked before anything is written


def test_a_large_corpus_is_sampled_down_to_spm_max_sentences() -> None:
    # Joint: two sentences per pair. 300 pairs fit a limit of 600 sentences; 301 do not.
    assert sample_rows(300, tiny_config(spm_max_sentences=600)) is None
    assert sample_rows(10**6, tiny_config(spm_max_sentences=0)) is None  # 0: no limit
    rows = sample_rows(301, tiny_config(spm_max_sentences=600))
    assert rows is not None and len(rows) == 300 and len(set(rows.tolist())) == 300
    assert rows.tolist() == sorted(rows.tolist()) and rows.max() <= 300
    assert np.array_equal(rows, sample_rows(301, tiny_config(spm_max_sentences=600)))  # seeded
    separate = sample_rows(5000, tiny_config(spm_max_sentences=600, joint_vocab=False))
    assert separate is not None and len(separate) == 600  # one sentence per pair and side


def test_prepare_records_the_sentencepiece_sample(tmp_path: Path) -> None:
    from data_support import write_corpus

    from nmt.pipeline.prepare import prepare

    specs = write_corpus(tmp_path)
    cfg = tiny_config(spm_max_sentences=200)  # 300 training pairs: 100 of them sampled
    data = prepare(cfg, specs["train"], specs["valid"], {}, tmp_path / "out", False)
    assert data.manifest["sentencepiece_sample"] == {
        "input_sentence_size": 200, "pairs": 100, "of_pairs": 300, "seed": 7,
    }  # fmt: skip
