"""nmt/models/attention.py: each module against its equations written out with loops, and the
fused multi-head path against the exact one."""

from __future__ import annotations

import math

import pytest
import torch

from nmt.models.attention import (
    BahdanauAttention,
    HardAttention,
    LocalAttention,
    LuongAttention,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    scaled_dot_product,
    select_steps,
    sinusoidal_positions,
    step_cache,
    straight_through_gumbel,
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


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("tgt_start", [0, 3])
@torch.no_grad()
def test_local_m_equations(window: int, tgt_start: int) -> None:
    att = LocalAttention(DQ, DK, A, window, monotonic=True)
    assert att.centre_proj is None and att.centre_energy is None  # local-m has no W_p, v_p
    data = inputs()
    src_len = data[3]

    def centre(b, t):  # Luong et al. 2015, section 3.2: p_t = t, held at the last real position
        return min(tgt_start + t, int(src_len[b]) - 1)

    def score(q, h, b, t, s):  # the general score, no Gaussian
        return float(q[b, t] @ att.key_proj.weight @ h[b, s])

    query, memory, src_mask, _ = data
    keys = att.precompute(memory)
    _, weights = att(query, memory, keys, src_mask, src_len, tgt_start)
    for b in range(B):
        for t in range(T):
            keep = [bool(src_mask[b, s]) and abs(s - centre(b, t)) <= window for s in range(S)]
            expected = softmax_over([score(query, memory, b, t, s) for s in range(S)], keep)
            torch.testing.assert_close(weights[b, t], torch.tensor(expected), atol=1e-5, rtol=0)


def test_local_m_window_by_hand() -> None:
    """Sentence of 6 source positions, D = 1: target position t attends to exactly {t-1, t, t+1}
    within the source, and from t = 5 on to {4, 5}; a 1-token source always to {0}."""
    att = LocalAttention(DQ, DK, A, 1, monotonic=True)
    query, memory, src_mask, src_len = inputs()
    keys = att.precompute(memory)
    support = []
    for t in range(8):  # one query at a time, as in incremental decoding
        _, weights = att(query[:, :1], memory, keys, src_mask, src_len, tgt_start=t)
        support.append([(weights[b, 0] > 0).nonzero()[:, 0].tolist() for b in range(B)])
    assert [row[0] for row in support] == [
        [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5], [4, 5], [4, 5]
    ]  # fmt: skip
    assert [row[1] for row in support][2:5] == [[1, 2, 3], [2, 3], [2, 3]]  # 4 real positions
    assert all(row[2] == [0] for row in support)


# Hard attention is trained with the straight-through Gumbel estimator, which is biased: the mean
# of its gradient is not the gradient of the expected loss, so that identity is not tested.
# What is checked instead: the forward pass draws positions with exactly the attention's
# probabilities (enumerated against frequencies), the backward pass is exactly the gradient of
# the relaxed sample softmax((l + g) / tau) for the same noise (against its closed form), and
# inference picks the argmax, giving one-hot rows.


@torch.no_grad()
def test_hard_attention_inference_rows_are_one_hot() -> None:
    att = HardAttention(DQ, DK, A, tau=1.0).eval()
    query, memory, src_mask, src_len = inputs()
    context, weights = att(query, memory, att.precompute(memory), src_mask, src_len)
    soft = att.score(query, memory, att.precompute(memory), src_mask, src_len)[1]
    for b in range(B):
        for t in range(T):
            chosen = int(soft[b, t].argmax())  # Bahdanau's most probable real position
            expected = torch.zeros(S)
            expected[chosen] = 1.0
            assert torch.equal(weights[b, t], expected)
            assert torch.equal(context[b, t], memory[b, chosen])  # the state itself, no average


@torch.no_grad()
def test_hard_attention_samples_follow_the_attention() -> None:
    """Training draws position s with probability a_ts (Gumbel-max): frequencies over 40,000
    draws of one query against the probabilities of every position, enumerated."""
    att = HardAttention(DQ, DK, A, tau=1.0).train()
    query, memory, src_mask, src_len = inputs()
    draws = 40_000
    rows = torch.zeros(draws, dtype=torch.long)  # sentence 0 (6 real positions), query 0
    q, m, mask = query[rows, :1], memory[rows], src_mask[rows]
    keys = att.precompute(m)
    context, weights = att(q, m, keys, mask, src_len[rows])
    assert torch.equal(weights.sum(-1), torch.ones(draws, 1))
    assert ((weights == 0) | (weights == 1)).all()
    picked = weights[:, 0].argmax(-1)  # (draws,)
    assert torch.equal(context[:, 0], m[torch.arange(draws), picked])
    probs = att.score(q[:1], m[:1], keys[:1], mask[:1], src_len[:1])[1][0, 0]  # (S,)
    freq = torch.bincount(picked, minlength=S).double() / draws
    sd = (probs.double() * (1 - probs.double()) / draws).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sd + 1e-12).all(), (freq, probs)


def test_straight_through_gumbel_by_hand() -> None:
    """Forward: exactly the one-hot argmax of l + g. Backward: the relaxed sample's gradient,
    d/dl_i sum_j y_j c_j = (1/tau) y_i (c_i - sum_j y_j c_j) with y = softmax((l + g) / tau)."""
    logits = torch.tensor([[0.5, -1.0, 2.0, float("-inf")], [1.0, 1.0, 0.0, -0.5]])
    noise = torch.tensor([[1.2, 0.3, -0.4, 0.9], [-0.2, 0.6, 0.1, 0.0]])
    tau = 0.5
    leaf = logits.clone().requires_grad_(True)
    y = straight_through_gumbel(leaf, tau, noise)
    # l + g = [1.7, -0.7, 1.6, -inf] and [0.8, 1.6, 0.1, -0.5]
    assert y.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    c = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 4.0, -1.0, 2.0]])
    (y * c).sum().backward()
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    expected = soft * (c - (soft * c).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(leaf.grad, expected)
    assert leaf.grad[0, 3] == 0  # an impossible position gets no gradient


def test_hard_attention_trains_its_scorer() -> None:
    att = HardAttention(DQ, DK, A, tau=1.0).train()
    query, memory, src_mask, src_len = inputs()
    context, weights = att(query, memory, att.precompute(memory), src_mask, src_len)
    assert (weights.masked_select(~src_mask[:, None, :].expand_as(weights)) == 0).all()
    context.square().sum().backward()
    for name, param in att.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_hard_attention_needs_a_positive_temperature() -> None:
    with pytest.raises(ValueError):
        HardAttention(DQ, DK, A, tau=0.0)


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
    k = v = x.new_zeros(0, 3, 4, 4)  # time-major caches, empty
    for t in range(6):
        out, k, v, w = att.forward_step(x[:, t : t + 1], k, v, t, need_weights=t % 2 == 0)
        torch.testing.assert_close(out[:, 0], causal[:, t], atol=1e-5, rtol=0)
        assert k.size(0) >= t + 1 and k.shape[1:] == (3, 4, 4)
        assert (w is None) == (t % 2 == 1)


def test_step_caches_grow_and_select_rows_of_the_filled_steps() -> None:
    cache = torch.zeros(0, 3, 2, 4)
    rows = [torch.randn(3, 2, 4) for _ in range(20)]
    for t, new in enumerate(rows):
        before = cache
        cache = step_cache(cache, t, new)
        assert (cache is before) == (0 < t < before.size(0))  # written in place while it fits
        assert torch.equal(cache[: t + 1], torch.stack(rows[: t + 1]))
    assert cache.size(0) == 32  # 16, then doubled once
    picked = select_steps(cache, 20, torch.tensor([2, 0, 0]))
    assert picked.shape == (32, 3, 2, 4)
    assert torch.equal(picked[:20], torch.stack(rows)[:, [2, 0, 0]])
    assert step_cache(cache, 20, rows[0].bfloat16()).dtype == torch.bfloat16  # autocast's dtype


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


@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_of_hypotheses_sharing_a_source(need_weights: bool) -> None:
    """G rows per sentence against one copy of its source equal the rows of a batch that holds a
    copy per row: bit for bit in float32 (one product per slot), to float64 rounding where the G
    rows go as one product (other dtypes)."""
    torch.manual_seed(0)
    sentences, group, length = 3, 4, 2
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None])[:, None, None, :]
    for dtype in (torch.float32, torch.float64):
        att = MultiHeadCrossAttention(16, 4).eval().to(dtype)
        x = torch.randn(sentences * group, length, 16, dtype=dtype)
        k, v = att.project_memory(torch.randn(sentences, 7, 16, dtype=dtype))
        shared = att(x, k, v, mask, need_weights)
        copies = [t.repeat_interleave(group, dim=0) for t in (k, v, mask)]
        per_row = att(x, *copies, need_weights)
        for got, want in zip(shared, per_row, strict=True):
            if want is None:
                assert got is None
            elif dtype == torch.float32:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
