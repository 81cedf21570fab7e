"""Greedy, beam and sampling search (nmt/decoding/beam.py), checked against answers that the maths
fixes: exhaustive enumeration, teacher forcing, hand-written numbers, batch independence."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from unittest.mock import patch

import pytest
import torch
from decoding_support import TableModel, teacher_forced, tiny_model
from torch import nn

from nmt.config import EOS_ID, UNK_ID, DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.decoding.beam import (
    NEG_INF,
    Hypothesis,
    beam_search,
    decode_corpus,
    greedy_search,
    iter_beam_search,
    iter_decode_corpus,
    length_penalty,
    max_output_lengths,
    row_argmax,
    row_top_k,
    select_top_k,
)
from nmt.models.quantized import quantize_int8

SOURCES = [[4, 5, 6], [5], [7, 4, 4, 5, 6], [6, 6]]


def norm(length: int, cfg: DecodeConfig) -> float:
    """The length normaliser, written out again: length counts EOS."""
    if cfg.length_norm == "gnmt":
        return ((5 + length) / 6) ** cfg.len_penalty
    if cfg.length_norm == "power":
        return float(length) ** cfg.len_penalty
    if cfg.length_norm == "avg":
        return float(length)
    return 1.0


def has_repeated_ngram(seq: Sequence[int], n: int) -> bool:
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) != len(set(grams))


def enumerate_outputs(
    model, src, tokens, cfg: DecodeConfig
) -> list[tuple[list[int], float, float]]:
    """Every output the search may produce, with (tokens, log_prob, score), best score first."""
    outs = [
        list(seq)
        for n in range(cfg.min_len, cfg.max_len_b + 1)
        for seq in itertools.product(tokens, repeat=n)
        if not (cfg.no_repeat_ngram and has_repeated_ngram(seq, cfg.no_repeat_ngram))
    ]
    log_probs, _ = teacher_forced(model, src, outs)
    rows = [(o, lp, lp / norm(len(o) + 1, cfg)) for o, lp in zip(outs, log_probs, strict=True)]
    return sorted(rows, key=lambda r: -r[2])


def run_beam(model, srcs, cfg, need_attention=False) -> list[list[Hypothesis]]:
    src_ids, src_mask = make_src_batch(srcs)
    return beam_search(model, src_ids, src_mask, cfg, need_attention)


def assert_same(a: list[list[Hypothesis]], b: list[list[Hypothesis]], atol: float = 1e-4) -> None:
    """Same tokens; scores and attention equal up to float32 rounding (batch shapes change the
    order of additions inside matrix products)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert [h.tokens for h in x] == [h.tokens for h in y]
        for hx, hy in zip(x, y, strict=True):
            assert hx.log_prob == pytest.approx(hy.log_prob, rel=1e-5, abs=atol)
            assert hx.score == pytest.approx(hy.score, rel=1e-5, abs=atol)
            if hx.attention is not None or hy.attention is not None:
                torch.testing.assert_close(hx.attention, hy.attention, atol=1e-5, rtol=1e-4)


# ---- pure pieces -----------------------------------------------------------------------------


def test_select_top_k_on_hand_written_numbers() -> None:
    log_probs = torch.tensor(
        [
            [[-1.0, -0.5, -3.0], [-0.2, -2.0, -0.7]],  # sentence 0: beams 0 and 1, vocabulary 3
            [[-4.0, -0.1, -0.3], [-9.0, -8.0, -0.2]],
        ]
    )
    beam_scores = torch.tensor([[0.0, -0.25], [-1.0, 0.0]])
    values, beams, tokens = select_top_k(beam_scores, log_probs, 3)
    torch.testing.assert_close(values, torch.tensor([[-0.45, -0.5, -0.95], [-0.2, -1.1, -1.3]]))
    assert beams.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert tokens.tolist() == [[0, 1, 2], [2, 1, 2]]
    values, _, _ = select_top_k(beam_scores, log_probs, 100)  # capped at K*V
    assert values.shape == (2, 6)
    every = (beam_scores[:, :, None] + log_probs).flatten(1)
    assert values[0].tolist() == sorted(every[0].tolist(), reverse=True)


@pytest.mark.parametrize("vocab", [8000, 5000 + 37])
def test_row_top_k_equals_topk(vocab: int) -> None:
    """The blockwise top-k (whole blocks of 64 columns, and a ragged tail) returns what
    torch.topk does, -inf entries included."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(40, vocab, generator=generator)
    values[3, :] = NEG_INF  # a dead hypothesis
    values[4, 100:] = NEG_INF  # fewer finite entries than blocks
    values[5, -7:] = 50.0 + torch.arange(7.0)  # the best ones in the tail
    for k in (1, 10):
        top, columns = row_top_k(values, k)
        want, want_columns = values.topk(k, dim=1)
        assert torch.equal(top, want)
        finite = torch.isfinite(want)
        assert torch.equal(columns[finite], want_columns[finite])
        assert torch.equal(values.gather(1, columns), top)


@pytest.mark.parametrize("vocab", [8000, 5000 + 37, 100])
def test_row_argmax_equals_argmax_with_ties(vocab: int) -> None:
    """The blockwise argmax returns torch's: the first maximum, in a block, across blocks and in
    the ragged tail, and column 0 for a row of -inf."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(12, vocab, generator=generator)
    values[0, :] = NEG_INF
    values[1, [5, 70, vocab - 1]] = 9.0  # ties in two blocks and (for 5,037) the tail
    values[2, [vocab - 1, vocab - 2]] = 9.0  # ties at the end only
    values[3, :] = 1.0  # every column ties
    values[4, 64:128] = 9.0  # a whole block of ties
    values = torch.cat([values, values.round()])  # many ties everywhere
    assert torch.equal(row_argmax(values), values.argmax(dim=1))


def test_row_top_k_in_a_search_changes_no_output() -> None:
    """Beam search with the blockwise top-k gives the hypotheses and scores of the plain one."""
    model = tiny_model("transformer", vocab=3000)  # 46 blocks: the blockwise path for 2K = 10
    generator = torch.Generator().manual_seed(1)
    sources = [torch.randint(4, 3000, (n,), generator=generator).tolist() for n in (3, 9, 1, 6)]
    src_ids, src_mask = make_src_batch(sources)
    cfg = DecodeConfig(beam_size=5, nbest=5, max_len_b=12)
    blockwise = beam_search(model, src_ids, src_mask, cfg)
    with patch("nmt.decoding.beam.TOP_K_BLOCK", 10**6):  # every row goes to topk directly
        plain = beam_search(model, src_ids, src_mask, cfg)
    for got, want in zip(blockwise, plain, strict=True):
        assert [(h.tokens, h.log_prob) for h in got] == [(h.tokens, h.log_prob) for h in want]


def test_length_penalty_and_max_length() -> None:
    lengths = torch.tensor([1, 4, 10])
    gnmt = DecodeConfig(length_norm="gnmt", len_penalty=0.6)
    expected = [((5 + n) / 6) ** 0.6 for n in (1, 4, 10)]
    torch.testing.assert_close(length_penalty(lengths, gnmt), torch.tensor(expected))
    assert length_penalty(lengths, DecodeConfig(length_norm="avg")).tolist() == [1, 4, 10]
    power = DecodeConfig(length_norm="power", len_penalty=0.5)
    torch.testing.assert_close(length_penalty(lengths, power), torch.tensor([1.0, 2.0, 10**0.5]))
    assert length_penalty(lengths, DecodeConfig(length_norm="none")).tolist() == [1, 1, 1]
    cfg = DecodeConfig(max_len_a=1.5, max_len_b=2)
    assert max_output_lengths(torch.tensor([1, 3, 40]), cfg).tolist() == [3, 6, 62]
    assert max_output_lengths(torch.tensor([1, 3, 40]), cfg, max_positions=10).tolist() == [3, 6, 9]


# Probabilities of (EOS, a=4, b=5) after each prefix, for the hand-worked searches below.
HAND_TABLE = {
    (): (0.35, 0.4, 0.25),
    (4,): (0.5, 0.2, 0.3),
    (5,): (0.2, 0.7, 0.1),
    "default": (0.4, 0.3, 0.3),
}


def test_beam_search_worked_by_hand() -> None:
    """K = 2. Step 0 ranks a .4, EOS .35, b .25: EOS is within the first K, so [] finishes (.35)
    and a, b go on. Step 1 ranks aEOS .2, ba .175, ab .12, aa .08, ...: [a] finishes (.2), which
    fills the pool of K = 2, so the search stops after two steps."""
    model = TableModel(probs=HAND_TABLE)
    cfg = DecodeConfig(beam_size=2, nbest=2, max_len_a=0.0, max_len_b=5, length_norm="none")
    (nbest,) = run_beam(model, [[4]], cfg)
    assert model.calls == 2
    assert [h.tokens for h in nbest] == [[], [4]]
    assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.35), math.log(0.2)])
    # Averaging over the length (EOS counted) ranks [a] (log .2 / 2) above [] (log .35 / 1).
    (nbest,) = run_beam(model, [[4]], replace(cfg, length_norm="avg"))
    assert [h.tokens for h in nbest] == [[4], []]
    assert [h.score for h in nbest] == pytest.approx([math.log(0.2) / 2, math.log(0.35)])


def test_beam_one_finishes_only_the_top_candidate() -> None:
    """Greedy takes a (.4) over EOS (.35), then EOS (.5): [a]. Beam 1 must not finish the EOS
    ranked second at step 0."""
    model = TableModel(probs=HAND_TABLE)
    cfg = DecodeConfig(beam_size=1, nbest=1, max_len_a=0.0, max_len_b=5)
    src_ids, src_mask = make_src_batch([[4]])
    beam = beam_search(model, src_ids, src_mask, cfg)
    assert beam[0][0].tokens == [4]
    assert beam[0][0].log_prob == pytest.approx(math.log(0.2))
    assert_same(beam, greedy_search(model, src_ids, src_mask, cfg))


# ---- beam search equals enumeration ----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"length_norm": "gnmt", "len_penalty": 1.0},
        {"length_norm": "gnmt", "len_penalty": 0.6, "min_len": 1},
        {"length_norm": "avg"},
        {"length_norm": "power", "len_penalty": 0.7},
        {"length_norm": "none", "no_repeat_ngram": 2},
    ],
    ids=["gnmt", "gnmt-minlen", "avg", "power", "none-norepeat"],
)
def test_wide_beam_equals_enumeration_on_table_model(overrides: dict) -> None:
    model = TableModel(vocab=6)
    tokens = [UNK_ID, 4, 5]  # UNK is an ordinary token unless suppressed
    paths = sum(len(tokens) ** n for n in range(4))  # 40 outputs of up to 3 tokens
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3, **overrides)
    srcs = [[4, 5], [5]]
    for src, nbest in zip(srcs, run_beam(model, srcs, cfg), strict=True):
        expected = enumerate_outputs(model, src, tokens, cfg)
        assert [h.tokens for h in nbest] == [e[0] for e in expected]
        assert [h.log_prob for h in nbest] == pytest.approx([e[1] for e in expected], abs=1e-5)
        assert [h.score for h in nbest] == pytest.approx([e[2] for e in expected], abs=1e-5)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_wide_beam_equals_enumeration_on_random_models(arch: str) -> None:
    model = tiny_model(arch, vocab=8)
    tokens = [4, 5, 6, 7]
    paths = sum(len(tokens) ** n for n in range(4))  # 85
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3,
                       suppress_unk=True, len_penalty=0.8)  # fmt: skip
    srcs = [[4, 5, 6, 7], [6]]
    for src, nbest in zip(srcs, run_beam(model, srcs, cfg), strict=True):
        expected = enumerate_outputs(model, src, tokens, cfg)
        assert nbest[0].tokens == expected[0][0]
        found = {tuple(h.tokens): h for h in nbest}
        assert len(found) == paths
        for seq, log_prob, score in expected:
            assert found[tuple(seq)].log_prob == pytest.approx(log_prob, rel=1e-5, abs=1e-4)
            assert found[tuple(seq)].score == pytest.approx(score, rel=1e-5, abs=1e-4)
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


# ---- beam 1 equals greedy; batching changes nothing ------------------------------------------


@pytest.mark.parametrize("arch", ["table", "rnn", "transformer"])
def test_beam_one_equals_greedy(arch: str) -> None:
    model = TableModel(vocab=6, eos_bias=1.0) if arch == "table" else tiny_model(arch)
    srcs = [[4, 5], [5], [4, 4, 5]] if arch == "table" else SOURCES
    cfg = DecodeConfig(beam_size=1, nbest=1, max_len_a=1.0, max_len_b=3)
    src_ids, src_mask = make_src_batch(srcs)
    greedy = greedy_search(model, src_ids, src_mask, cfg, need_attention=True)
    beam = beam_search(model, src_ids, src_mask, cfg, need_attention=True)
    assert_same(greedy, beam)


@pytest.mark.parametrize("arch", ["table", "rnn", "transformer"])
@pytest.mark.parametrize("beam", [1, 4])
def test_batched_equals_one_at_a_time(arch: str, beam: int) -> None:
    model = TableModel(vocab=6, eos_bias=0.5) if arch == "table" else tiny_model(arch)
    srcs = [[4, 5], [5], [4, 4, 5, 5], [5, 4]] if arch == "table" else SOURCES
    cfg = DecodeConfig(beam_size=beam, nbest=min(beam, 2), max_len_a=1.0, max_len_b=4)
    together = decode_corpus(model, srcs, replace(cfg, batch_tokens=10_000), "cpu", True)
    alone = decode_corpus(model, srcs, replace(cfg, batch_tokens=1), "cpu", True)
    assert_same(together, alone)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
@pytest.mark.parametrize("coverage", [0.0, 0.4])
def test_early_results_equal_the_batch_results(arch: str, coverage: float) -> None:
    model = tiny_model(arch)
    # A one-word source may write at most 2 tokens, a five-word one 7: the search of sentence 1
    # ends while the others go on.
    cfg = DecodeConfig(beam_size=3, nbest=2, max_len_a=1.0, max_len_b=1, coverage_penalty=coverage)
    src_ids, src_mask = make_src_batch(SOURCES)
    chunks = list(iter_beam_search(model, src_ids, src_mask, cfg, True, early=True))
    assert len(chunks) > 1 and 1 not in [index for index, _ in chunks[-1]]
    found = sorted(pair for chunk in chunks for pair in chunk)
    assert [index for index, _ in found] == list(range(len(SOURCES)))  # each sentence once
    assert_same([nbest for _, nbest in found], beam_search(model, src_ids, src_mask, cfg, True))
    streamed = dict(iter_decode_corpus(model, [[], *SOURCES], cfg, "cpu", True, early=True))
    assert_same([streamed[i] for i in range(len(SOURCES) + 1)],
                decode_corpus(model, [[], *SOURCES], cfg, "cpu", True))  # fmt: skip


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sentences_handed_back_early_equal_the_batch_walk_exactly(
    arch: str, dtype: torch.dtype
) -> None:
    """Sentences handed back while the others go on are walked in Python, the batch at its end
    by tensors: both read the same steps, so every field is equal to the last bit."""
    model = tiny_model(arch).to(dtype)
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=2.0, max_len_b=2, len_penalty=0.6)
    src_ids, src_mask = make_src_batch(SOURCES)
    chunks = list(iter_beam_search(model, src_ids, src_mask, cfg, True, early=True))
    walked = [pair for chunk in chunks[:-1] for pair in chunk]
    assert walked  # some sentence ended before the others
    batch = beam_search(model, src_ids, src_mask, cfg, True)
    for index, nbest in walked:
        assert len(nbest) == len(batch[index]) > 1
        for ours, theirs in zip(nbest, batch[index], strict=True):
            assert (ours.tokens, ours.log_prob, ours.score, ours.token_scores) == (
                theirs.tokens,
                theirs.log_prob,
                theirs.score,
                theirs.token_scores,
            )
            assert ours.attention is not None and theirs.attention is not None
            assert ours.attention.dtype == torch.float32
            assert torch.equal(ours.attention, theirs.attention)


# ---- scores and attention equal teacher forcing ----------------------------------------------


@pytest.mark.parametrize(
    ("arch", "rnn"),
    [
        ("rnn", {}),
        ("rnn", {"cell": "lstm", "attention": "luong-general"}),
        ("rnn", {"attention": "hard"}),
        ("rnn", {"attention": "local-m", "input_feeding": False, "local_window": 1}),
        ("transformer", {}),
        ("table", {}),
    ],
    ids=["rnn-gru-bahdanau", "rnn-lstm-luong", "rnn-hard", "rnn-local-m", "transformer", "table"],
)
def test_scores_and_attention_equal_teacher_forcing(arch: str, rnn: dict) -> None:
    model = TableModel(vocab=6, eos_bias=0.5) if arch == "table" else tiny_model(arch, **rnn)
    cfg = DecodeConfig(beam_size=4, nbest=4, max_len_a=1.0, max_len_b=3, length_norm="gnmt",
                       len_penalty=0.6)  # fmt: skip
    srcs = SOURCES[:3]
    for src, nbest in zip(srcs, run_beam(model, srcs, cfg, need_attention=True), strict=True):
        assert len(nbest) == 4
        log_probs, attention = teacher_forced(model, src, [h.tokens for h in nbest])
        for hyp, log_prob, matrix in zip(nbest, log_probs, attention, strict=True):
            assert hyp.log_prob == pytest.approx(log_prob, abs=1e-4)
            assert hyp.score == pytest.approx(log_prob / norm(len(hyp.tokens) + 1, cfg), abs=1e-4)
            # Attention gathered along the back-pointers is the attention of this very output.
            assert hyp.attention is not None
            assert hyp.attention.shape == matrix.shape
            assert hyp.attention.shape[0] == len(hyp.tokens) + 1
            assert hyp.attention.shape[-1] == len(src) + 1
            torch.testing.assert_close(hyp.attention, matrix, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("arch", ["rnn", "transformer", "table"])
def test_token_scores_equal_teacher_forcing(arch: str, beam: int) -> None:
    model = TableModel(vocab=6, eos_bias=0.5) if arch == "table" else tiny_model(arch)
    cfg = DecodeConfig(beam_size=beam, nbest=beam, max_len_a=1.0, max_len_b=3)
    for src, nbest in zip(SOURCES, decode_corpus(model, SOURCES, cfg, "cpu"), strict=True):
        per_token, _ = teacher_forced(model, src, [h.tokens for h in nbest], per_token=True)
        for hyp, expected in zip(nbest, per_token, strict=True):
            assert len(hyp.token_scores) == len(hyp.tokens) + 1  # the EOS has its score too
            assert hyp.token_scores == pytest.approx(expected, abs=1e-4)
            assert sum(hyp.token_scores) == pytest.approx(hyp.log_prob, abs=1e-4)


def test_nbest_lists_are_sorted_and_distinct() -> None:
    model = tiny_model("transformer")
    cfg = DecodeConfig(beam_size=5, nbest=5, max_len_a=1.0, max_len_b=3)
    for nbest in decode_corpus(model, SOURCES, cfg, "cpu"):
        assert len(nbest) == 5
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in nbest}) == 5
        assert all(h.attention is None for h in nbest)


def test_ensemble_averages_log_probs() -> None:
    first, second = tiny_model("transformer", seed=0), tiny_model("transformer", seed=1)
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3)
    alone = decode_corpus(first, SOURCES, cfg, "cpu", True)
    assert_same(decode_corpus([first, first], SOURCES, cfg, "cpu", True), alone)
    pair = decode_corpus([first, second], SOURCES, cfg, "cpu", True)
    for src, nbest in zip(SOURCES, pair, strict=True):
        log_probs, attention = teacher_forced([first, second], src, [h.tokens for h in nbest])
        assert [h.log_prob for h in nbest] == pytest.approx(log_probs, abs=1e-4)
        torch.testing.assert_close(nbest[0].attention, attention[0], atol=1e-5, rtol=1e-4)


# ---- stopping and constraints ----------------------------------------------------------------


def test_search_stops_when_every_sentence_is_finished() -> None:
    model = TableModel(vocab=6, eos_bias=4.0)  # EOS is by far the likeliest token everywhere
    cfg = DecodeConfig(beam_size=2, nbest=2, max_len_a=0.0, max_len_b=40)
    nbest = run_beam(model, [[4, 5], [5]], cfg)
    assert model.calls < 6
    assert all(len(n) == 2 for n in nbest)


def test_output_length_bounds_and_bans() -> None:
    model = tiny_model("rnn")
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.5, max_len_b=1, suppress_unk=True,
                       no_repeat_ngram=2, min_len=2)  # fmt: skip
    for src, nbest in zip(SOURCES, decode_corpus(model, SOURCES, cfg, "cpu"), strict=True):
        for hyp in nbest:
            assert 2 <= len(hyp.tokens) <= int(1.5 * (len(src) + 1) + 1)
            assert UNK_ID not in hyp.tokens and EOS_ID not in hyp.tokens
            assert min(hyp.tokens) > EOS_ID  # no PAD, BOS, UNK or EOS inside an output
            assert not has_repeated_ngram(hyp.tokens, 2)
    greedy = decode_corpus(model, SOURCES, replace(cfg, beam_size=1, nbest=1), "cpu")
    for hyp in (n[0] for n in greedy):
        assert not has_repeated_ngram(hyp.tokens, 2) and len(hyp.tokens) >= 2


def test_empty_sources_keep_their_place() -> None:
    model = tiny_model("transformer")
    cfg = DecodeConfig(beam_size=2, nbest=1)
    out = decode_corpus(model, [[], [4, 5], [], [6]], cfg, "cpu", need_attention=True)
    assert [len(n) for n in out] == [1, 1, 1, 1]
    assert out[0][0] == Hypothesis([], 0.0, 0.0, None) == out[2][0]
    assert out[1][0].attention is not None
    assert decode_corpus(model, [], cfg, "cpu") == []


# ---- sampling --------------------------------------------------------------------------------


def test_sampling_is_seeded_and_scored_like_teacher_forcing() -> None:
    model = tiny_model("transformer")
    cfg = DecodeConfig(sample=True, beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3, seed=7)
    first = decode_corpus(model, SOURCES, cfg, "cpu")
    assert_same(first, decode_corpus(model, SOURCES, cfg, "cpu"))
    other = decode_corpus(model, SOURCES, replace(cfg, seed=8), "cpu")
    assert [[h.tokens for h in n] for n in first] != [[h.tokens for h in n] for n in other]
    for src, nbest in zip(SOURCES, first, strict=True):
        assert len(nbest) == 3
        log_probs, _ = teacher_forced(model, src, [h.tokens for h in nbest])
        assert [h.log_prob for h in nbest] == pytest.approx(log_probs, abs=1e-4)


@pytest.mark.parametrize("overrides", [{"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4}])
def test_sampling_that_keeps_only_the_best_token_is_greedy(overrides: dict) -> None:
    model = tiny_model("rnn")
    base = DecodeConfig(beam_size=1, nbest=1, max_len_a=1.0, max_len_b=3)
    greedy = decode_corpus(model, SOURCES, base, "cpu")
    sampled = decode_corpus(model, SOURCES, replace(base, sample=True, **overrides), "cpu")
    assert_same(sampled, greedy)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_bf16_models_decode_and_score_like_float32(arch: str) -> None:
    """decode.precision=bf16 runs the model in bfloat16: the search still gets float32 log-probs
    and attention, and each hypothesis's log-prob is the float32 model's log-prob of the same
    tokens up to bfloat16 rounding: 8 bits of mantissa, a few per cent of these sharp logits."""
    reference = tiny_model(arch)
    half = tiny_model(arch).to(torch.bfloat16)
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3)
    for src, nbest in zip(SOURCES, run_beam(half, SOURCES, cfg, need_attention=True), strict=True):
        log_probs, _ = teacher_forced(reference, src, [h.tokens for h in nbest])
        for hyp, log_prob in zip(nbest, log_probs, strict=True):
            assert hyp.attention is not None and hyp.attention.dtype == torch.float32
            assert hyp.log_prob == pytest.approx(log_prob, rel=0.05, abs=0.05)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_int8_models_decode_and_score_like_float32(arch: str) -> None:
    """decode.precision=int8 quantizes every linear layer (and the RNN's GRU) dynamically and
    leaves the float32 model as it was; the search gets float32 log-probs and attention rows
    that sum to 1, and each hypothesis's log-prob is the float32 model's log-prob of the same
    tokens up to int8 rounding (inputs quantized per call to 8 bits: several per cent of these
    tiny models' very sharp logits)."""
    from torch.ao.nn.quantized import dynamic as quantized_dynamic

    reference = tiny_model(arch)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    int8 = quantize_int8(reference)
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    assert not any(type(m) is nn.Linear for m in int8.modules())
    assert any(isinstance(m, quantized_dynamic.Linear) for m in int8.modules())
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3)
    for src, nbest in zip(SOURCES, run_beam(int8, SOURCES, cfg, need_attention=True), strict=True):
        log_probs, _ = teacher_forced(reference, src, [h.tokens for h in nbest])
        for hyp, log_prob in zip(nbest, log_probs, strict=True):
            assert hyp.attention is not None and hyp.attention.dtype == torch.float32
            row_sums = hyp.attention.sum(-1)
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums))
            assert hyp.log_prob == pytest.approx(log_prob, rel=0.1, abs=0.1)


def test_hard_attention_rows_are_one_hot_in_every_search() -> None:
    """Hard attention decodes with its argmax position: beam n-best lists, greedy search and an
    ensemble (whose attention is the first member's) export one-hot rows over the real source."""
    hard = tiny_model("rnn", attention="hard")
    other = tiny_model("rnn", seed=1, attention="hard")
    cfg = DecodeConfig(beam_size=3, nbest=3, max_len_a=1.0, max_len_b=3)
    runs = [
        decode_corpus(hard, SOURCES, cfg, "cpu", need_attention=True),
        decode_corpus(hard, SOURCES, replace(cfg, beam_size=1, nbest=1), "cpu", True),
        decode_corpus([hard, other], SOURCES, cfg, "cpu", need_attention=True),
    ]
    for results in runs:
        for src, nbest in zip(SOURCES, results, strict=True):
            for hyp in nbest:
                assert hyp.attention is not None
                assert hyp.attention.shape == (len(hyp.tokens) + 1, len(src) + 1)
                assert ((hyp.attention == 0) | (hyp.attention == 1)).all()
                assert (hyp.attention.sum(-1) == 1).all()
