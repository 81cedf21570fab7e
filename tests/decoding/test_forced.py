"""Forced decoding: feeding the search's own outputs back must reproduce the search's per-token
scores, scores and attention exactly (the same model computes the same numbers), whatever the
batching, for one model and for an ensemble."""

from __future__ import annotations

import pytest
import torch
from decoding_support import tiny_model

from nmt.config import DecodeConfig
from nmt.decoding.beam import decode_corpus
from nmt.decoding.forced import force_corpus

SOURCES = [[4, 5, 6], [5], [7, 4, 4, 5, 6], [6, 6]]
KINDS = [
    ("rnn", {}),
    ("rnn", {"attention": "hard"}),
    ("rnn", {"attention": "local-m"}),
    ("rnn", {"cell": "lstm", "attention": "luong-general", "input_feeding": False}),
    ("transformer", {}),
]
IDS = ["gru-bahdanau", "hard", "local-m", "lstm-luong-no-feeding", "transformer"]


@pytest.mark.parametrize(("arch", "rnn"), KINDS, ids=IDS)
def test_forcing_the_search_output_reproduces_it(arch: str, rnn: dict) -> None:
    model = tiny_model(arch, **rnn)
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3, length_norm="power",
                       len_penalty=0.8, batch_tokens=8)  # fmt: skip
    nbests = decode_corpus(model, SOURCES, cfg, "cpu", need_attention=True)
    pairs = [(src, hyp) for src, nbest in zip(SOURCES, nbests, strict=True) for hyp in nbest]
    forced = force_corpus([model], [s for s, _ in pairs], [h.tokens for _, h in pairs], cfg,
                          "cpu", need_attention=True)  # fmt: skip
    for (_, hyp), got in zip(pairs, forced, strict=True):
        assert got.tokens == hyp.tokens
        assert got.token_scores == pytest.approx(hyp.token_scores, rel=1e-5, abs=1e-5)
        assert got.log_prob == pytest.approx(hyp.log_prob, rel=1e-5, abs=1e-5)
        assert got.score == pytest.approx(hyp.score, rel=1e-5, abs=1e-5)
        assert got.attention is not None and hyp.attention is not None
        assert got.attention.shape == hyp.attention.shape
        torch.testing.assert_close(got.attention, hyp.attention, atol=1e-5, rtol=1e-4)


def test_batching_changes_nothing() -> None:
    model = tiny_model("transformer")
    targets = [[5, 6], [4], [6, 6, 7, 4], []]
    one_batch = force_corpus([model], SOURCES, targets, DecodeConfig(batch_tokens=1000), "cpu",
                             need_attention=True)  # fmt: skip
    alone = force_corpus([model], SOURCES, targets, DecodeConfig(batch_tokens=1), "cpu",
                         need_attention=True)  # fmt: skip
    for a, b in zip(one_batch, alone, strict=True):
        assert a.token_scores == pytest.approx(b.token_scores, rel=1e-5, abs=1e-5)
        assert a.attention is not None and b.attention is not None
        torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=1e-4)
    assert len(one_batch[3].token_scores) == 1  # an empty target still has its EOS scored


def test_an_ensemble_scores_what_its_search_found() -> None:
    models = [tiny_model("rnn", seed=0), tiny_model("rnn", seed=1)]
    cfg = DecodeConfig(beam_size=2, nbest=2, max_len_a=1.0, max_len_b=3)
    nbests = decode_corpus(models, SOURCES, cfg, "cpu")
    for src, nbest in zip(SOURCES, nbests, strict=True):
        forced = force_corpus(models, [src] * len(nbest), [h.tokens for h in nbest], cfg, "cpu")
        for hyp, got in zip(nbest, forced, strict=True):
            assert got.token_scores == pytest.approx(hyp.token_scores, rel=1e-5, abs=1e-5)
            assert got.attention is None


def test_sources_and_targets_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        force_corpus([tiny_model("rnn")], [[4], [5]], [[4]], DecodeConfig(), "cpu")
