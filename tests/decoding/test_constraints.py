"""Lexically constrained beam search (nmt/decoding/constraints.py and its hook in beam.py):
a wide beam equals exhaustive search under the same constraints, constraints always appear,
a search without constraints is today's search, number for number; and where terms ended up."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from decoding_support import TableModel, tiny_model
from test_beam import SOURCES, enumerate_outputs
from test_coverage import enumerate_scores

from nmt.config import EOS_ID, UNK_ID, DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.data.glossary import Term, TermMatch
from nmt.decoding.beam import beam_search, decode_corpus, iter_beam_search
from nmt.decoding.constraints import (
    FAR_WORDS,
    Constraints,
    contains,
    deal,
    match_progress,
    place_terms,
)
from nmt.errors import ConfigError


def run_beam(model, srcs, cfg, constraints, ends=None):
    src_ids, src_mask = make_src_batch(srcs)
    word_end = None if ends is None else torch.tensor(ends)
    return beam_search(model, src_ids, src_mask, cfg, False, constraints, word_end)


def word_ends(vocab: int, *ids: int) -> list[bool]:
    """A word-end flag per vocabulary id: EOS and `ids`."""
    return [t == EOS_ID or t in ids for t in range(vocab)]


# ---- pure pieces -----------------------------------------------------------------------------


def test_matcher_progress_falls_back_like_kmp() -> None:
    seq = [4, 4, 5]
    assert [match_progress(seq, 0, t) for t in (4, 5, 6)] == [1, 0, 0]
    assert match_progress(seq, 1, 4) == 2
    assert match_progress(seq, 2, 4) == 2  # "4 4 4" still ends with the prefix "4 4"
    assert match_progress(seq, 2, 5) == 3  # all written
    assert match_progress(seq, 3, 4) == 1  # "4 4 5 4" ends with "4"
    assert match_progress([4, 5, 4, 6], 3, 5) == 2  # "4 5 4 5" ends with "4 5"
    assert contains([7, 4, 4, 5], seq) and not contains([4, 5, 4], seq) and contains([1], [])
    ends = [t in (3, 6) for t in range(8)]  # 6 (and EOS) end a word
    assert contains([4, 4, 5, 6], seq, ends) and contains([4, 4, 5], seq, ends)
    assert not contains([4, 4, 5, 7], seq, ends)


def expected_progress(stream: list[int], seq: list[int], ends: set[int] | None) -> int:
    """Progress by its definition: len + 1 once `seq` stood in `stream` (followed by a word end,
    with `ends`), else the longest prefix of `seq` that ends the stream."""
    n = len(seq)
    for i in range(len(stream) - n + 1):
        if stream[i : i + n] == seq and (
            ends is None or (i + n < len(stream) and stream[i + n] in ends)
        ):
            return n + 1
    return max(k for k in range(n + 1) if k == 0 or stream[-k:] == seq[:k])


@pytest.mark.parametrize("ends", [None, {5, 7}], ids=["anywhere", "word-ends"])
def test_advance_follows_the_definition_on_random_streams(ends: set[int] | None) -> None:
    constraints = [[[4, 4, 5], [4, 5, 4, 6], [6, 6], [7]]]
    word_end = None if ends is None else torch.tensor([t in ends for t in range(8)])
    lex = Constraints(constraints, beam=1, device=torch.device("cpu"), word_end=word_end)
    rng = torch.Generator().manual_seed(0)
    streams = torch.randint(4, 8, (300, 12), generator=rng)
    rows = torch.zeros(300, dtype=torch.long)
    progress = torch.zeros(300, 4, dtype=torch.long)
    for t in range(12):
        progress = lex.advance(progress, streams[:, t], rows)
        for r in range(0, 300, 7):
            stream = streams[r, : t + 1].tolist()
            want = [expected_progress(stream, seq, ends) for seq in lex.lists[0]]
            assert progress[r].tolist() == want, (stream, want)


def test_deal_goes_round_robin_over_banks_on_hand_written_numbers() -> None:
    """Banks 2, 1, 0 hold the candidates a, b / c / d, e, f; within a bank the best score
    comes first, and an impossible candidate (-inf) comes after every possible one."""
    scores = torch.tensor([[-5.0, -1.0, -0.5, -0.1, -0.2, float("-inf")]])
    bank = torch.tensor([[2, 2, 1, 0, 0, 0]])
    order = deal(scores, bank, banks=3)
    # round 1: bank 2's best (b=1), bank 1's (c=2), bank 0's (d=3); round 2: a=0, e=4; then f.
    assert order.tolist() == [[1, 2, 3, 0, 4, 5]]


# ---- the search equals enumeration under constraints -----------------------------------------


def enumerate_constrained(model, src, tokens, cfg, constraints, scored=None, ends=None):
    """What a wide constrained beam must return: every output of up to max_len_b tokens that
    contains each constraint (followed by a word end, with `ends`), best score first; when there
    is none (the fallback), every output of exactly max_len_b tokens."""
    rows = scored if scored is not None else enumerate_outputs(model, src, tokens, cfg)
    met = [r for r in rows if all(contains(r[0], c, ends) for c in constraints)]
    return met or [r for r in rows if len(r[0]) == cfg.max_len_b]


def assert_equals_enumeration(nbest, expected) -> None:
    assert [h.tokens for h in nbest] == [e[0] for e in expected]
    assert [h.log_prob for h in nbest] == pytest.approx([e[1] for e in expected], abs=1e-4)
    assert [h.score for h in nbest] == pytest.approx([e[2] for e in expected], abs=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"length_norm": "none"},
        {"length_norm": "gnmt", "len_penalty": 0.6},
        {"length_norm": "avg", "min_len": 1},
        {"length_norm": "power", "len_penalty": 0.7},
    ],
    ids=["none", "gnmt", "avg-minlen", "power"],
)
@pytest.mark.parametrize(
    "constraints",
    [[[5]], [[4, 5]], [[5], [4, UNK_ID]], [[5, 5, 4]]],
    ids=["one-piece", "two-piece", "two-constraints", "three-piece"],
)
@pytest.mark.parametrize("ends", [None, word_ends(6, 4)], ids=["anywhere", "word-ends"])
def test_wide_constrained_beam_equals_enumeration_on_table_model(
    overrides: dict, constraints: list[list[int]], ends: list[bool] | None
) -> None:
    model = TableModel(vocab=6)
    tokens = [UNK_ID, 4, 5]
    paths = sum(len(tokens) ** n for n in range(4))  # 40 outputs of up to 3 tokens
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3, **overrides)
    srcs = [[4, 5], [5]]
    results = run_beam(model, srcs, cfg, [constraints, constraints], ends)
    for src, nbest in zip(srcs, results, strict=True):
        expected = enumerate_constrained(model, src, tokens, cfg, constraints, ends=ends)
        assert_equals_enumeration(nbest, expected)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
@pytest.mark.parametrize("ends", [None, word_ends(8, 4, 6)], ids=["anywhere", "word-ends"])
def test_wide_constrained_beam_equals_enumeration_on_random_models(
    arch: str, ends: list[bool] | None
) -> None:
    model = tiny_model(arch, vocab=8)
    tokens = [4, 5, 6, 7]
    paths = sum(len(tokens) ** n for n in range(4))  # 85
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3,
                       suppress_unk=True, len_penalty=0.8)  # fmt: skip
    srcs = [[4, 5, 6, 7], [6], [5, 5]]
    per_sentence = [[[6]], [[5, 7]], [[7], [4, 5]]]
    results = run_beam(model, srcs, cfg, per_sentence, ends)
    for src, constraints, nbest in zip(srcs, per_sentence, results, strict=True):
        expected = enumerate_constrained(model, src, tokens, cfg, constraints, ends=ends)
        assert_equals_enumeration(nbest, expected)


@pytest.mark.parametrize("arch", ["table", "transformer"])
def test_wide_constrained_beam_with_coverage_and_ensemble_equals_enumeration(arch: str) -> None:
    """The coverage penalty ranks the finished hypotheses; an ensemble's averaged log-probs drive
    the search: both act on constrained search as on the unconstrained one."""
    if arch == "table":
        models: object = TableModel(vocab=6)
    else:
        models = [tiny_model(arch, vocab=6, seed=0), tiny_model(arch, vocab=6, seed=1)]
    tokens = [4, 5]
    paths = sum(len(tokens) ** n for n in range(4))  # 15
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3,
                       suppress_unk=True, len_penalty=0.8, coverage_penalty=1.5)  # fmt: skip
    srcs, constraints = [[4, 5, 4], [5]], [[5, 4]]
    src_ids, src_mask = make_src_batch(srcs)
    results = beam_search(models, src_ids, src_mask, cfg, constraints=[constraints] * 2)
    for src, nbest in zip(srcs, results, strict=True):
        scored = enumerate_scores(models, src, tokens, cfg)
        expected = enumerate_constrained(models, src, tokens, cfg, constraints, scored)
        assert_equals_enumeration(nbest, expected)


# ---- constraints always appear; sentences stay independent -----------------------------------


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
@pytest.mark.parametrize("beam", [1, 2, 5])
@pytest.mark.parametrize("ends", [None, word_ends(8, 4, 6)], ids=["anywhere", "word-ends"])
def test_one_piece_and_multi_piece_constraints_always_appear(
    arch: str, beam: int, ends: list[bool] | None
) -> None:
    model = tiny_model(arch, vocab=8)
    cfg = DecodeConfig(beam_size=beam, nbest=beam, max_len_a=1.5, max_len_b=4, suppress_unk=True)
    cases = [[[7]], [[5, 6, 4]], [[4], [6, 6]], [[7, 5], [5, 7], [6]]]
    srcs = [src for src in SOURCES for _ in cases]
    per_sentence = [c for _ in SOURCES for c in cases]
    word_end = None if ends is None else torch.tensor(ends)
    plain = decode_corpus(model, srcs, cfg, "cpu")
    results = decode_corpus(model, srcs, cfg, "cpu", False, per_sentence, word_end)
    for constraints, nbest in zip(per_sentence, results, strict=True):
        assert 1 <= len(nbest) <= beam
        # Every hypothesis of the n-best list holds every constraint, which the model alone
        # mostly does not write.
        assert all(contains(h.tokens, c, ends) for h in nbest for c in constraints)
        assert all(EOS_ID not in h.tokens for h in nbest)
    unconstrained_hits = sum(
        all(contains(n[0].tokens, c) for c in cons)
        for cons, n in zip(per_sentence, plain, strict=True)
    )
    assert unconstrained_hits < len(srcs) // 2


@pytest.mark.parametrize("arch", ["table", "transformer"])
def test_constrained_batches_equal_one_sentence_at_a_time(arch: str) -> None:
    model = TableModel(vocab=6, eos_bias=0.5) if arch == "table" else tiny_model(arch)
    srcs = [[4, 5], [5], [4, 4, 5, 5], [5, 4]] if arch == "table" else SOURCES
    constraints = [[[5, 4]], [], [[4], [5, 5]], [[5]]]
    cfg = DecodeConfig(beam_size=3, nbest=2, max_len_a=1.0, max_len_b=4)
    together = decode_corpus(model, srcs, replace(cfg, batch_tokens=10_000), "cpu", True,
                             constraints)  # fmt: skip
    alone = decode_corpus(model, srcs, replace(cfg, batch_tokens=1), "cpu", True, constraints)
    for x, y in zip(together, alone, strict=True):
        assert [h.tokens for h in x] == [h.tokens for h in y]
        assert [h.score for h in x] == pytest.approx([h.score for h in y], abs=1e-4)
    # A sentence without constraints in a constrained batch gets its unconstrained translation.
    plain = decode_corpus(model, srcs, cfg, "cpu", True)
    assert [h.tokens for h in together[1]] == [h.tokens for h in plain[1]]


def test_early_results_equal_the_batch_results_with_constraints() -> None:
    model = tiny_model("transformer")
    cfg = DecodeConfig(beam_size=3, nbest=2, max_len_a=1.0, max_len_b=1)
    constraints = [[[5]], [[6]], [[4, 7]], []]
    src_ids, src_mask = make_src_batch(SOURCES)
    chunks = list(iter_beam_search(model, src_ids, src_mask, cfg, True, True, constraints))
    assert len(chunks) > 1
    found = dict(pair for chunk in chunks for pair in chunk)
    batch = beam_search(model, src_ids, src_mask, cfg, True, constraints)
    for i in range(len(SOURCES)):
        assert [h.tokens for h in found[i]] == [h.tokens for h in batch[i]]


def test_a_constraint_longer_than_the_limit_falls_back_to_the_best_outputs() -> None:
    """Two tokens may be written, the constraint has three: EOS is forced at the limit and the
    sentence gets the outputs the unconstrained search would give among those of that length."""
    model = TableModel(vocab=6)
    tokens = [UNK_ID, 4, 5]
    cfg = DecodeConfig(beam_size=13, nbest=3, max_len_a=0.0, max_len_b=2)
    (nbest,) = run_beam(model, [[4]], cfg, [[[4, 5, 4]]])
    expected = enumerate_constrained(model, [4], tokens, cfg, [[4, 5, 4]])[:3]
    assert_equals_enumeration(nbest, expected)
    assert all(len(e[0]) == 2 for e in expected)


# ---- no constraints is today's search ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
@pytest.mark.parametrize("beam", [1, 4])
def test_no_constraints_is_the_unconstrained_search_exactly(arch: str, beam: int) -> None:
    model = tiny_model(arch)
    cfg = DecodeConfig(beam_size=beam, nbest=min(beam, 3), max_len_a=1.0, max_len_b=3,
                       coverage_penalty=0.3)  # fmt: skip
    plain = decode_corpus(model, SOURCES, cfg, "cpu", True)
    for constraints in (None, [[] for _ in SOURCES], [[[]] for _ in SOURCES]):
        same = decode_corpus(model, SOURCES, cfg, "cpu", True, constraints)
        for x, y in zip(plain, same, strict=True):
            assert [(h.tokens, h.log_prob, h.score, h.token_scores) for h in x] == [
                (h.tokens, h.log_prob, h.score, h.token_scores) for h in y
            ]
            assert all(torch.equal(a.attention, b.attention) for a, b in zip(x, y, strict=True))


def test_sampling_refuses_constraints() -> None:
    cfg = DecodeConfig(sample=True, beam_size=1)
    with pytest.raises(ConfigError, match="need beam search"):
        decode_corpus(tiny_model("rnn"), [[4, 5]], cfg, "cpu", constraints=[[[5]]])


def test_constraint_scores_are_the_model_log_probs() -> None:
    """Forcing a token in changes which outputs are searched, never how they are scored."""
    model = TableModel(probs={(): (0.6, 0.3, 0.1), "default": (0.9, 0.05, 0.05)})
    cfg = DecodeConfig(beam_size=2, nbest=1, max_len_a=0.0, max_len_b=3, length_norm="none")
    (nbest,) = run_beam(model, [[4]], cfg, [[[5]]])
    # The best output holding token 5 (b): "b" alone, .1 * .9.
    assert nbest[0].tokens == [5]
    assert nbest[0].log_prob == pytest.approx(math.log(0.1 * 0.9))


# ---- where the terms went ---------------------------------------------------------------------


def test_place_terms_finds_the_words_and_their_links() -> None:
    """Target pieces "▁a ▁red ▁bi cycle ▁and ▁a ▁bi cycle": words 0..5; term "bicycle" has the
    ids [7, 8] (pieces 2-3 and 6-7). Source "ein rotes Fahrrad und ein Fahrrad" (words 0..5)."""
    term = Term("Fahrrad", "bicycle", "test")
    matches = [TermMatch(term, 2, 2), TermMatch(term, 5, 5)]
    pieces = ["▁a", "▁red", "▁bi", "cycle", "▁and", "▁a", "▁bi", "cycle"]
    tokens = [4, 5, 7, 8, 6, 4, 7, 8]
    links = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]  # word 5 (the second "bicycle") has none
    src = "ein rotes Fahrrad und ein Fahrrad".split()
    first, second = place_terms(matches, [[7, 8], [7, 8]], tokens, pieces, links, None, src)
    assert (first.tgt_words, first.linked_src_words, first.distance) == ((2, 2), [2], 0)
    assert (second.tgt_words, second.linked_src_words, second.distance) == ((5, 5), [], None)
    assert first.to_dict() == {
        "src": "Fahrrad",
        "tgt": "bicycle",
        "src_words": [2, 2],
        "placed": True,
        "tgt_words": [2, 2],
        "aligned_src_words": [2],
        "aligned_src": "Fahrrad",
        "distance": 0,
    }
    # The attention ties the term to source word 0, two words before the source term: far
    # only beyond FAR_WORDS.
    (near,) = place_terms(matches[:1], [[7, 8]], tokens, pieces, [(0, 2)])
    assert near.distance == 2 and near.is_far == (2 > FAR_WORDS)
    (far,) = place_terms([TermMatch(term, 5, 5)], [[7, 8]], tokens, pieces, [(0, 2)])
    assert far.distance == 5 and far.is_far
    (missing,) = place_terms(matches[:1], [[9]], tokens, pieces, links)
    assert not missing.is_placed and missing.to_dict()["tgt_words"] is None
