"""nmt/models/attention.py: each module against its equations written out with loops, and the
fused multi-head path against the exact one."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.models.attention import (
    BahdanauAttention,
    LocalAttention,
    LuongAttention,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    scaled_dot_product,
    sinusoidal_positions,
)

B, T, S, DQ, DK, A = 3, 4, 6, 5, 7, 8
LENS = [6, 4, 1]


def inputs() -> tuple[torch.Tensor, ...]:
    query = torch.randn(B, T, DQ)
    memory = torch.randn(B, S, DK)
    src_mask = torch.arange(S)[None, :] < torch.tensor(LENS)[:, None]
    memory = memory * src_mask[..., None]  # the RNN encoder leaves zeros on padding
    return query, memory, src_mask, src_mask.sum(1)


def softmax_over(scores: list[float], keep: list[bool]) -> list[float]:
    m = max(x for x, k in zip(scores, keep, strict=True) if k)
    exps = [math.exp(x - m) if k else 0.0 for x, k in zip(scores, keep, strict=True)]
    total = sum(exps)
    return [e / total for e in exps]


@torch.no_grad()
def check(module: torch.nn.Module, score_fn, keep_fn=None, data=None) -> torch.Tensor:
    """Compare `module` on `data` (default: `inputs()`) with a loop over (b, t, s) of
    `score_fn(query, memory, b, t, s)`; `keep_fn(b, t, s)` says which real positions take part."""
    query, memory, src_mask, src_len = inputs() if data is None else data
    keys = module.precompute(memory)
    context, weights = module(query, memory, keys, src_mask, src_len)
    assert context.shape == (B, T, DK) and weights.shape == (B, T, S)
    for b in range(B):
        for t in range(T):
            keep = [
                bool(src_mask[b, s]) and (keep_fn is None or keep_fn(b, t, s)) for s in range(S)
            ]
            expected = softmax_over([score_fn(query, memory, b, t, s) for s in range(S)], keep)
            torch.testing.assert_close(weights[b, t], torch.tensor(expected), atol=1e-5, rtol=0)
            exp_context = sum(expected[s] * memory[b, s] for s in range(S))
            torch.testing.assert_close(context[b, t], exp_context, atol=1e-5, rtol=0)
            assert (weights[b, t][~src_mask[b]] == 0).all()
    return weights


def test_bahdanau_equations() -> None:
    att = BahdanauAttention(DQ, DK, A)
    w, u, v = att.query_proj.weight, att.key_proj, att.energy.weight[0]

    def score(q, h, b, t, s):
        return float(v @ torch.tanh(w @ q[b, t] + u.weight @ h[b, s] + u.bias))

    check(att, score)


@pytest.mark.parametrize("method", ["dot", "general"])
def test_luong_equations(method: str) -> None:
    dk = DQ if method == "dot" else DK
    att = LuongAttention(DQ, dk, method)
    query, memory, src_mask, src_len = inputs()
    if method == "dot":
        memory = memory[..., :DQ]

    def score(q, h, b, t, s):
        if method == "dot":
            return float(q[b, t] @ h[b, s])
        return float(q[b, t] @ att.key_proj.weight @ h[b, s])

    if method == "dot":
        # `check` draws DK-wide memories; dot needs DK == DQ, so run the loop here.
        keys = att.precompute(memory)
        _, weights = att(query, memory, keys, src_mask, src_len)
        for b in range(B):
            for t in range(T):
                scores = [score(query, memory, b, t, s) for s in range(S)]
                expected = softmax_over(scores, src_mask[b].tolist())
                torch.testing.assert_close(weights[b, t], torch.tensor(expected), atol=1e-5, rtol=0)
    else:
        check(att, score)


def test_dot_attention_needs_equal_sizes() -> None:
    with pytest.raises(ValueError):
        LuongAttention(4, 6, "dot")


@pytest.mark.parametrize("window", [1, 2])
def test_local_p_equations(window: int) -> None:
    att = LocalAttention(DQ, DK, A, window)
    data = inputs()
    query, _, _, src_len = data
    sigma = window / 2

    def centre(b, t):
        hidden = torch.tanh(att.centre_proj.weight @ query[b, t])
        return float(src_len[b]) * float(torch.sigmoid(att.centre_energy.weight[0] @ hidden))

    def score(q, h, b, t, s):
        general = float(q[b, t] @ att.key_proj.weight @ h[b, s])
        return general - (s - centre(b, t)) ** 2 / (2 * sigma**2)

    weights = check(att, score, lambda b, t, s: abs(s - centre(b, t)) <= window, data)
    # Outside the window: exactly 0; a row never has more than 2D + 1 non-zero weights.
    assert ((weights > 0).sum(-1) <= 2 * window + 1).all()


def test_local_p_centre_gets_gradient() -> None:
    att = LocalAttention(DQ, DK, A, 2)
    query, memory, src_mask, src_len = inputs()
    context, _ = att(query, memory, att.precompute(memory), src_mask, src_len)
    context.sum().backward()
    assert att.centre_proj.weight.grad.abs().sum() > 0
    assert att.centre_energy.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_scaled_dot_product_fused_equals_exact(causal: bool) -> None:
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 3, 1])[:, None])[:, None, None, :]
    fused, none = scaled_dot_product(q, k, v, mask, causal=causal)
    exact, weights = scaled_dot_product(q, k, v, mask, causal=causal, need_weights=True)
    assert none is None
    torch.testing.assert_close(fused, exact, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5), atol=1e-6, rtol=0)
    assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    if causal:
        assert (weights.masked_select(torch.ones(5, 5, dtype=torch.bool).triu(1)) == 0).all()
    # The weights are softmax(q k^T / sqrt(dh)) with -inf where hidden.
    scores = q @ k.transpose(-1, -2) / 2.0
    hidden = ~mask | (torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else False)
    ref = scores.masked_fill(hidden, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, ref, atol=1e-6, rtol=0)


def test_self_attention_paths_and_steps_agree() -> None:
    att = MultiHeadSelfAttention(16, 4).eval()
    x = torch.randn(3, 6, 16)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None])[:, None, None, :]
    fused, _ = att(x, mask)
    exact, weights = att(x, mask, need_weights=True)
    torch.testing.assert_close(fused, exact, atol=1e-5, rtol=0)
    assert weights.shape == (3, 4, 6, 6)
    # Causal, step by step with a growing cache, equals the whole sequence at once.
    causal, _ = att(x, causal=True)
    k = v = x.new_zeros(3, 4, 0, 4)
    for t in range(6):
        out, k, v, w = att.forward_step(x[:, t : t + 1], k, v, need_weights=t % 2 == 0)
        torch.testing.assert_close(out[:, 0], causal[:, t], atol=1e-5, rtol=0)
        assert k.shape == (3, 4, t + 1, 4)
        assert (w is None) == (t % 2 == 1)


def test_cross_attention_paths_agree() -> None:
    att = MultiHeadCrossAttention(16, 4).eval()
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None])[:, None, None, :]
    k, v = att.project_memory(memory)
    assert k.shape == (3, 4, 7, 4)
    fused, none = att(x, k, v, mask)
    exact, weights = att(x, k, v, mask, need_weights=True)
    assert none is None
    torch.testing.assert_close(fused, exact, atol=1e-5, rtol=0)
    assert (weights[1, :, :, 3:] == 0).all() and (weights[2, :, :, 1:] == 0).all()


def test_sinusoidal_positions() -> None:
    table = sinusoidal_positions(50, 8)
    p = torch.arange(50, dtype=torch.float64)
    for i in range(4):
        freq = 10000 ** (-i / 4)
        torch.testing.assert_close(table[:, i], torch.sin(p * freq).float())
        torch.testing.assert_close(table[:, 4 + i], torch.cos(p * freq).float())
