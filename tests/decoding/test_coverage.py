"""GNMT's coverage penalty in beam and greedy search (nmt/decoding/beam.py, Wu et al. 2016,
section 7): hand-computed numbers, exhaustive enumeration, and beta = 0 leaving the search as it
was."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from decoding_support import TableModel, teacher_forced, tiny_model

from nmt.config import DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.decoding.beam import (
    COVERAGE_FLOOR,
    beam_search,
    coverage_penalty,
    decode_corpus,
    greedy_search,
)
from nmt.errors import ConfigError


def test_coverage_penalty_by_hand_rnn() -> None:
    """Two hypotheses of one sentence with 2 real source positions and one padded column."""
    attn = torch.tensor(
        [
            [[0.5, 0.5, 0.0], [0.25, 0.5, 0.0], [0.0, 0.4, 0.0]],  # coverage .75, 1.4 -> 1
            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],  # coverage 2 -> 1, 0 -> floor
        ]
    )[None]  # (N=1, M=2, T=3, S=3)
    cfg = DecodeConfig(coverage_penalty=0.4)
    got = coverage_penalty(attn, torch.tensor([2]), cfg)
    expected = [[0.4 * (math.log(0.75) + 0.0), 0.4 * (0.0 + math.log(COVERAGE_FLOOR))]]
    torch.testing.assert_close(got, torch.tensor(expected))
    # The padded column is left out even when it holds attention (it never does in a search).
    attn[0, 0, 0, 2] = 0.5
    torch.testing.assert_close(coverage_penalty(attn, torch.tensor([2]), cfg), got)


def test_coverage_penalty_by_hand_transformer() -> None:
    """(N=1, M=1, T=2, L=2, H=2, S=2): the layer and head chosen as for export."""
    attn = torch.zeros(1, 1, 2, 2, 2, 2)
    attn[0, 0, :, 1, 0] = torch.tensor([[0.2, 0.8], [0.1, 0.9]])  # last layer, head 0
    attn[0, 0, :, 1, 1] = torch.tensor([[0.6, 0.4], [0.3, 0.7]])  # last layer, head 1
    attn[0, 0, :, 0] = 0.5  # first layer, both heads
    beta = 0.2
    last_mean = DecodeConfig(coverage_penalty=beta)  # attention_layer -1, attention_head mean
    # head mean of the last layer: coverage (0.3 + 0.9) / 2 = 0.6 and (1.7 + 1.1) / 2 = 1.4 -> 1
    torch.testing.assert_close(
        coverage_penalty(attn, torch.tensor([2]), last_mean), torch.tensor([[beta * math.log(0.6)]])
    )
    head0 = replace(last_mean, attention_head="0")  # coverage 0.3 and 1.7 -> 1
    torch.testing.assert_close(
        coverage_penalty(attn, torch.tensor([2]), head0), torch.tensor([[beta * math.log(0.3)]])
    )
    first = replace(last_mean, attention_layer="0")  # coverage 1 and 1: no penalty
    assert coverage_penalty(attn, torch.tensor([2]), first).item() == 0.0
    with pytest.raises(ConfigError, match="attention_layer=2"):
        coverage_penalty(attn, torch.tensor([2]), replace(last_mean, attention_layer="2"))


def test_coverage_penalty_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="coverage_penalty"):
        DecodeConfig(coverage_penalty=-0.1).validate()


def enumerate_scores(model, src, tokens, cfg) -> list[tuple[list[int], float, float]]:
    """Every output of up to max_len_b tokens with (tokens, log_prob, score), best score first,
    the score written out: log_prob / len ** alpha + beta * sum_s log(min(sum_t a_ts, 1))."""
    outs = [list(s) for n in range(cfg.max_len_b + 1) for s in itertools.product(tokens, repeat=n)]
    log_probs, matrices = teacher_forced(model, src, outs)
    rows = []
    for out, lp, a in zip(outs, log_probs, matrices, strict=True):
        if a.dim() == 4:  # Transformer (T, L, H, S): last layer, mean of the heads
            a = a[:, -1].mean(dim=1)
        coverage = a.sum(dim=0)[: len(src) + 1].tolist()  # real positions, EOS included
        cp = sum(math.log(max(min(c, 1.0), COVERAGE_FLOOR)) for c in coverage)
        rows.append((out, lp, lp / (len(out) + 1) ** cfg.len_penalty + cfg.coverage_penalty * cp))
    return sorted(rows, key=lambda r: -r[2])


@pytest.mark.parametrize("arch", ["table", "rnn", "transformer"])
def test_wide_beam_with_coverage_equals_enumeration(arch: str) -> None:
    model = TableModel(vocab=6) if arch == "table" else tiny_model(arch, vocab=6)
    tokens = [4, 5]
    paths = sum(len(tokens) ** n for n in range(4))  # 15 outputs of up to 3 tokens
    cfg = DecodeConfig(beam_size=paths, nbest=paths, max_len_a=0.0, max_len_b=3,
                       suppress_unk=True, len_penalty=0.8, coverage_penalty=1.5)  # fmt: skip
    srcs = [[4, 5, 4], [5]]
    src_ids, src_mask = make_src_batch(srcs)
    results = beam_search(model, src_ids, src_mask, cfg)
    for src, nbest in zip(srcs, results, strict=True):
        expected = enumerate_scores(model, src, tokens, cfg)
        assert [h.tokens for h in nbest] == [e[0] for e in expected]
        expect_lp, expect_score = [e[1] for e in expected], [e[2] for e in expected]
        assert [h.log_prob for h in nbest] == pytest.approx(expect_lp, rel=1e-5, abs=1e-4)
        assert [h.score for h in nbest] == pytest.approx(expect_score, rel=1e-5, abs=1e-4)
        assert all(h.attention is None for h in nbest)  # computed for the penalty, not returned
    # The penalty changes the ranking here, so the test would see it missing.
    plain = beam_search(model, src_ids, src_mask, replace(cfg, coverage_penalty=0.0))
    assert [[h.tokens for h in n] for n in plain] != [[h.tokens for h in n] for n in results]


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_coverage_keeps_log_probs_and_attention_when_asked(arch: str) -> None:
    model = tiny_model(arch)
    srcs = [[4, 5, 6, 7], [6], [7, 7, 5]]
    cfg = DecodeConfig(beam_size=4, nbest=4, suppress_unk=True, coverage_penalty=0.5)
    src_ids, src_mask = make_src_batch(srcs)
    with_attn = beam_search(model, src_ids, src_mask, cfg, need_attention=True)
    without = beam_search(model, src_ids, src_mask, cfg)
    for a, b, src in zip(with_attn, without, srcs, strict=True):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == [h.score for h in b]
        log_probs, matrices = teacher_forced(model, src, [h.tokens for h in a])
        assert [h.log_prob for h in a] == pytest.approx(log_probs, abs=1e-4)
        for h, m in zip(a, matrices, strict=True):
            torch.testing.assert_close(h.attention, m[..., : len(src) + 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["table", "rnn", "transformer"])
def test_beam_one_equals_greedy_with_coverage(arch: str) -> None:
    model = TableModel(vocab=6, eos_bias=1.0) if arch == "table" else tiny_model(arch)
    srcs = [[4, 5, 6], [5], [7, 4, 4, 5, 6], [6, 6]] if arch != "table" else [[4, 5], [5]]
    cfg = DecodeConfig(beam_size=1, max_len_a=0.0, max_len_b=2, coverage_penalty=0.7)
    src_ids, src_mask = make_src_batch(srcs)
    beam = beam_search(model, src_ids, src_mask, cfg)
    greedy = greedy_search(model, src_ids, src_mask, cfg)
    for x, y in zip(beam, greedy, strict=True):
        assert [h.tokens for h in x] == [h.tokens for h in y]
        assert x[0].score == pytest.approx(y[0].score, rel=1e-5, abs=1e-5)
        assert y[0].attention is None
    plain = greedy_search(model, src_ids, src_mask, replace(cfg, coverage_penalty=0.0))
    gaps = [p[0].score - g[0].score for p, g in zip(plain, greedy, strict=True)]
    assert min(gaps) >= 0 and max(gaps) > 0  # the penalty is never positive


def test_zero_beta_never_asks_for_attention() -> None:
    """beta = 0 keeps the search on its old path: the model is never asked for attention rows
    unless the caller wants them (a wider path would cost time on every step)."""

    class Spy(TableModel):
        asked = False

        def decode_step(self, prev_ids, state, need_attention=False):
            Spy.asked |= need_attention
            return super().decode_step(prev_ids, state, need_attention)

    for beam in (1, 3):
        decode_corpus(Spy(vocab=6), [[4, 5], [5]], DecodeConfig(beam_size=beam), "cpu")
    assert not Spy.asked
    decode_corpus(Spy(vocab=6), [[4, 5]], DecodeConfig(beam_size=3, coverage_penalty=0.1), "cpu")
    assert Spy.asked


def test_translate_command_takes_the_penalty(tiny_transformer_run) -> None:
    from typer.testing import CliRunner

    from nmt.cli import app

    def translate(*args: str):
        return CliRunner().invoke(
            app, ["translate", str(tiny_transformer_run), "--nbest", "3", *args], input="ba ce do\n"
        )

    plain, covered = translate(), translate("--set", "decode.coverage_penalty=0.5")
    assert plain.exit_code == 0 and covered.exit_code == 0, covered.output
    scores = [float(line.split(" ||| ")[2]) for line in covered.stdout.splitlines()]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    plain_scores = [float(line.split(" ||| ")[2]) for line in plain.stdout.splitlines()]
    assert max(scores) <= max(plain_scores)  # the penalty is never positive
    bad = translate("--set", "decode.coverage_penalty=-1")
    assert (
        bad.exit_code == 2
        and "error: decode.coverage_penalty must be in [0, 10], got -1" in bad.stderr
    )
