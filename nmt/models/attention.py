"""Attention modules: the RNN family's additive and multiplicative attention, and the Transformer's
multi-head attention with a fused and an exact (weight-returning) path.

- `BahdanauAttention`: additive (MLP) attention, Bahdanau et al. 2015, section 3.1, appendix A.1.2.
- `HardAttention`: stochastic hard attention, Xu et al. 2015, section 4.1, trained with the
  straight-through Gumbel-softmax estimator (Jang et al. 2017).
- `LuongAttention`: global dot / general attention, Luong et al. 2015, section 3.1.
- `LocalAttention`: Luong et al. 2015, section 3.2, local-p (predicted window centre, Gaussian)
  and local-m (window centred at the target position).
- `MultiHeadSelfAttention` / `MultiHeadCrossAttention`: Vaswani et al. 2017, section 3.2.

Masks follow `nmt.models`: bool, True = real source position. Every softmax runs in float32 (also
under bf16 autocast) and masked positions get -inf before it, so their weights are exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# --- RNN attention ----------------------------------------------------------------------------
# The RNN attention modules share one interface; the RNN decoder only decides when to ask
# (Bahdanau and hard attention before the recurrence, Luong after it):
#   precompute(memory (B,S,Dk)) -> keys: whatever depends on the source only, once per sentence;
#   forward(query (B,T,Dq), memory (B,S,Dk), keys, src_mask (B,S), src_len (B,), tgt_start)
#       -> context (B,T,Dk), weights (B,T,S) float32.
# T is 1 during incremental decoding and the whole target for the vectorised teacher-forced path;
# `tgt_start` is the 0-based target position of the first query (only local-m uses it: every row
# of a batch is at the same position, since search and teacher forcing advance all rows at once).


def _masked_softmax(scores: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of `scores` (B,T,S) in float32, exactly 0 where `src_mask` (B,S)
    (or a (B,T,S) mask) is False. Every row must keep at least one position."""
    if src_mask.dim() == 2:
        src_mask = src_mask[:, None, :]  # (B, 1, S)
    scores = scores.float().masked_fill(~src_mask, float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, T, S)


def _context(weights: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """c = sum_s a_s h_s: (B,T,S) x (B,S,Dk) -> (B,T,Dk), in the memory's dtype."""
    return torch.bmm(weights.to(memory.dtype), memory)


class SoftAttention(nn.Module):
    """Global soft attention: a_ts = softmax over real s of `scores(query_t, keys)_s` (0 on
    padding), c_t = sum_s a_ts h_s. Bahdanau's and Luong's global attention differ only in their
    score (and in which decoder state the caller passes as the query)."""

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (B,T,Dq), keys from `precompute` -> unnormalised scores (B,T,S)."""
        raise NotImplementedError

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        src_mask: torch.Tensor,
        src_len: torch.Tensor,
        tgt_start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = _masked_softmax(self.scores(query, keys), src_mask)  # (B, T, S)
        return _context(weights, memory), weights


class BahdanauAttention(SoftAttention):
    """Additive attention (Bahdanau, Cho and Bengio 2015, "Neural Machine Translation by Jointly
    Learning to Align and Translate", section 3.1, appendix A.1.2):

        e_ts = v^T tanh(W s_{t-1} + U h_s + b)      (W: A x Dq, U: A x Dk, b and v: A)
        a_ts = exp(e_ts) / sum_{s' real} exp(e_ts')  (0 on padding)
        c_t  = sum_s a_ts h_s

    `s_{t-1}` is the decoder state *before* step t (the caller passes it as the query). `U h_s + b`
    does not depend on t, so `precompute` computes it once per sentence and decoding reuses it.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=True)  # U, b
        self.energy = nn.Linear(attn_dim, 1, bias=False)  # v

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, A)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.query_proj(query)[:, :, None, :] + keys[:, None])  # (B, T, S, A)
        return self.energy(hidden).squeeze(-1)  # (B, T, S)


def straight_through_gumbel(logits: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
    """One-hot samples (..., S) whose gradient is that of the relaxed sample (Jang, Gu and Poole
    2017, "Categorical Reparameterization with Gumbel-Softmax", sections 2 and 3.1):

        s = argmax_i (l_i + g_i)                       (Gumbel-max: s ~ softmax(l) exactly)
        y_soft = softmax((l + g) / tau)
        y = onehot(s) + (y_soft - stop_gradient(y_soft))

    `noise` g holds i.i.d. Gumbel(0, 1) draws of the shape of `logits` (float32, -inf where a
    choice is impossible). The bracket is exactly 0 in value, so y is exactly one-hot, while its
    gradient is y_soft's: a biased estimate of the gradient of the expected loss, with low variance.
    """
    perturbed = logits + noise
    hard = F.one_hot(perturbed.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    soft = torch.softmax(perturbed / tau, dim=-1)
    return hard + (soft - soft.detach())


class HardAttention(nn.Module):
    """Stochastic hard attention (Xu et al. 2015, "Show, Attend and Tell", section 4.1): the
    context is the encoder state at one position s_t ~ Multinoulli(a_t) instead of the average
    sum_s a_ts h_s. a_t is Bahdanau's additive attention on the previous decoder state (the
    paper's f_att is an MLP on h_{t-1}):

        a_ts = softmax over real s of v^T tanh(W s_{t-1} + U h_s + b)
        training:  s_t ~ a_t,  c_t = h_{s_t}, trained by straight-through Gumbel-softmax
        inference: s_t = argmax_s a_ts (the first on ties),  c_t = h_{s_t}

    The weights returned are the one-hot rows, so exported attention and alignments show the
    chosen position. Xu et al. train with REINFORCE (eq. 12, with a moving-average baseline and an
    entropy term). We use the straight-through Gumbel estimator (`straight_through_gumbel`)
    instead because it lives inside this module: the loss, gradient accumulation, mixed precision
    and data-parallel paths of training stay those of soft attention, where REINFORCE needs each
    sentence's log-likelihood fed back as a reward through a second loss term and a baseline kept
    by the training loop. Its gradient is biased (that of the relaxed sample at temperature `tau`)
    but has far lower variance than single-sample REINFORCE.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {tau}")
        self.score = BahdanauAttention(query_dim, key_dim, attn_dim)
        self.tau = tau

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        return self.score.precompute(memory)  # (B, S, A)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        src_mask: torch.Tensor,
        src_len: torch.Tensor,
        tgt_start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.score.scores(query, keys).float()  # (B, T, S)
        logits = logits.masked_fill(~src_mask[:, None, :], float("-inf"))
        if self.training:
            noise = -torch.empty_like(logits).exponential_().log()  # Gumbel(0, 1)
            weights = straight_through_gumbel(logits, self.tau, noise)  # (B, T, S)
        else:
            weights = F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()  # (B, T, S)
        return _context(weights, memory), weights


class LuongAttention(SoftAttention):
    """Global multiplicative attention (Luong, Pham and Manning 2015, "Effective Approaches to
    Attention-based Neural Machine Translation", section 3.1), queried with the *current* decoder
    state h_t:

        dot:      score(h_t, h_s) = h_t^T h_s                 (needs Dq == Dk)
        general:  score(h_t, h_s) = h_t^T W_a h_s             (W_a: Dq x Dk, no bias)
        a_ts = softmax over real s of score(h_t, h_s)         (0 on padding)
        c_t  = sum_s a_ts h_s

    For "general", `precompute` stores W_a h_s once per sentence, so a step costs one batched
    dot product.
    """

    def __init__(self, query_dim: int, key_dim: int, method: str) -> None:
        super().__init__()
        if method not in ("dot", "general"):
            raise ValueError(f"unknown Luong score {method!r}")
        if method == "dot" and query_dim != key_dim:
            raise ValueError(
                f"dot attention needs query_dim == key_dim, got {query_dim}, {key_dim}"
            )
        self.method = method
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False) if method == "general" else None

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        return memory if self.key_proj is None else self.key_proj(memory)  # (B, S, Dq)

    def scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)


class LocalAttention(nn.Module):
    """Luong's local attention (Luong, Pham and Manning 2015, section 3.2) with the "general"
    score, queried with the current decoder state h_t. With S_b the real length of sentence b,
    source positions s = 0 .. S_b - 1 and target positions t = 0, 1, ...:

      local-p (predictive):
        p_t  = S_b * sigmoid(v_p^T tanh(W_p h_t))              (predicted centre, in [0, S_b])
        W_t  = { s real : |s - p_t| <= D }                      (the window; never empty for D >= 1)
        a_ts = exp(score(h_t, h_s) - (s - p_t)^2 / (2 sigma^2))
               / sum_{s' in W_t} exp(score(h_t, h_s') - (s' - p_t)^2 / (2 sigma^2))   for s in W_t
        a_ts = 0 outside W_t (and on padding);  sigma = D / 2;  score = h_t^T W_a h_s
        c_t  = sum_s a_ts h_s
      local-m (monotonic):
        p_t  = min(t, S_b - 1)                                  (no parameters, no Gaussian)
        a_ts = exp(score(h_t, h_s)) / sum_{s' in W_t} exp(score(h_t, h_s'))   for s in W_t

    The paper sets p_t = t for local-m; once t passes the source's end that window would be empty
    (no row to normalise), so the centre stops at the last real position, the source EOS: late
    target words look at the end of the source. For local-p the paper multiplies the window's
    softmax by the Gaussian, which leaves rows that sum to less than 1; we renormalise that product
    over the window, which is the same as the softmax above (the softmax's own denominator
    cancels). The Gaussian term keeps p_t differentiable, as in the paper; the window's edges are
    not. W_p is A x Dq (A = attn_dim), v_p has A entries.
    """

    def __init__(
        self, query_dim: int, key_dim: int, attn_dim: int, window: int, monotonic: bool = False
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"local attention needs a window D >= 1, got {window}")
        self.window = window
        self.sigma = window / 2
        self.monotonic = monotonic
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False)  # W_a of the general score
        self.centre_proj: nn.Linear | None = None
        self.centre_energy: nn.Linear | None = None
        if not monotonic:
            self.centre_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W_p
            self.centre_energy = nn.Linear(attn_dim, 1, bias=False)  # v_p

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, Dq)

    def centre(self, query: torch.Tensor, src_len: torch.Tensor, tgt_start: int) -> torch.Tensor:
        """p_t of every query, (B, T, 1) float32."""
        if self.centre_proj is None or self.centre_energy is None:  # local-m
            t = torch.arange(query.size(1), device=query.device) + tgt_start  # (T,)
            last = (src_len - 1)[:, None, None]  # (B, 1, 1)
            return torch.minimum(t[None, :, None], last).float()  # (B, T, 1)
        gate = torch.sigmoid(self.centre_energy(torch.tanh(self.centre_proj(query))).float())
        return src_len.float()[:, None, None] * gate  # (B, T, 1)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        src_mask: torch.Tensor,
        src_len: torch.Tensor,
        tgt_start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centre = self.centre(query, src_len, tgt_start)  # (B, T, 1)
        positions = torch.arange(memory.size(1), device=memory.device, dtype=torch.float32)
        offset = positions - centre  # (B, T, S)
        in_window = (offset.abs() <= self.window) & src_mask[:, None, :]  # (B, T, S)
        scores = torch.bmm(query, keys.transpose(1, 2)).float()  # (B, T, S)
        if not self.monotonic:
            scores = scores - offset.square() / (2 * self.sigma**2)
        weights = _masked_softmax(scores, in_window)  # (B, T, S)
        return _context(weights, memory), weights


def attend_per_slot(
    attend: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    query: torch.Tensor,
    sources: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of R = B*G query rows over B source sentences stored once each, G consecutive
    rows per sentence (its hypotheses in beam search; G = 1 otherwise).

    `attend(q)` attends B query rows, row b to source b, and returns (output, weights or None),
    each with B rows. It is called once per slot g (the rows b*G + g), so every row's arithmetic
    is exactly that of a batch holding a copy of its source per row: one matrix product over the
    G rows of a sentence would be cheaper but rounds differently, and float32 translations are
    kept bit for bit. Returns the outputs and weights of all R rows in row order.
    """
    group = query.size(0) // sources
    if group == 1:
        return attend(query)
    slots = [attend(rows) for rows in query.unflatten(0, (sources, group)).unbind(1)]
    out = torch.stack([o for o, _ in slots], dim=1).flatten(0, 1)  # (R, ...)
    if slots[0][1] is None:
        return out, None
    return out, torch.stack([w for _, w in slots], dim=1).flatten(0, 1)  # type: ignore[misc]


def attend_grouped(
    attend: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    query: torch.Tensor,
    sources: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`attend_per_slot` for multi-head queries (R,H,T,dh) in one call: the G rows of a sentence
    become G*T query positions of one row, which see the same keys, and no query sees another.
    One product per sentence instead of G (2.5x faster for 64 sentences of 5 hypotheses in a
    float32 single-operation test, bench/NOTES.md lever 29), but it rounds differently from a
    batch with a copy of the source per row, so float32 keeps `attend_per_slot`.
    Returns (out (R,H,T,dh), weights (R,H,T,S) or None)."""
    rows, heads, length, dh = query.shape
    group = rows // sources
    if group == 1:
        return attend(query)

    def grouped(x: torch.Tensor) -> torch.Tensor:  # (R, H, T, d) -> (B, H, G*T, d)
        return x.unflatten(0, (sources, group)).transpose(1, 2).flatten(2, 3)

    def ungrouped(x: torch.Tensor) -> torch.Tensor:  # (B, H, G*T, d) -> (R, H, T, d)
        return x.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)

    out, weights = attend(grouped(query))
    return ungrouped(out), None if weights is None else ungrouped(weights)


# --- Multi-head attention ---------------------------------------------------------------------


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d_h) + masks) v for q (B,H,T,dh), k and v (B,H,S,dh); `mask` is bool,
    True = attend, broadcastable to (B,H,T,S); `causal` hides keys after the query's position
    (T == S, aligned at the start). Returns (out (B,H,T,dh), weights (B,H,T,S) float32 or None).

    Without `need_weights` this is `F.scaled_dot_product_attention`, which picks fused (flash /
    memory-efficient) kernels on GPU and stores nothing. With it, the same maths is spelt out so the
    softmax weights can be returned; they are the weights before attention dropout. Both paths
    agree to float tolerance (tests/models/test_attention.py).
    """
    if causal and mask is not None:
        t, s = q.size(-2), k.size(-2)
        mask = mask & torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        causal = False
    if not need_weights:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal
        )
        return out, None
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * (q.size(-1) ** -0.5)  # (B, H, T, S)
    if causal:
        t, s = scores.shape[-2:]
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S) float32
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(dropped.to(v.dtype), v)  # (B, H, T, dh)
    return out, weights


def _split_heads(x: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, T, parts*D) -> `parts` tensors of (B, H, T, D/H); views, no copy."""
    b, t, _ = x.shape
    x = x.view(b, t, parts, heads, -1).permute(2, 0, 3, 1, 4)  # (parts, B, H, T, dh)
    return tuple(x.unbind(0))


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2.2):

        head_i = softmax(Q_i K_i^T / sqrt(d_h) + mask) V_i
        Q_i = X W^Q_i,  K_i = X W^K_i,  V_i = X W^V_i
        out = concat(head_1 .. head_H) W^O

    with d_h = D / H. The per-head projections of Q, K and V are one fused (D -> 3D) linear layer.
    `forward` attends over a whole sequence (optionally causal); `forward_step` takes one new
    position and the cached keys/values of the earlier ones, so decoding step t costs O(t).
    """

    def __init__(self, d_model: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _dropout_p(self) -> float:
        return self.attn_dropout if self.training else 0.0

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B,T,D); mask bool broadcastable to (B,H,T,T) (True = attend) -> (B,T,D), weights."""
        q, k, v = _split_heads(self.qkv_proj(x), 3, self.heads)  # (B, H, T, dh) each
        out, weights = scaled_dot_product(
            q, k, v, mask, causal=causal, dropout_p=self._dropout_p(), need_weights=need_weights
        )
        return self.out_proj(_merge_heads(out)), weights

    def forward_step(
        self,
        x: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        step: int,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One new position x (B,1,D), target position `step`, attending to itself and the
        positions before it, whose keys/values are in the caches (C,B,H,dh), time-major (see
        `step_cache`). Writes the new keys/values into the caches at `step`, in place (a cache
        that is full is replaced by a larger one). Returns (out (B,1,D), cache_k, cache_v,
        weights (B,H,1,step+1) or None)."""
        q, k_new, v_new = _split_heads(self.qkv_proj(x), 3, self.heads)  # (B, H, 1, dh) each
        cache_k = step_cache(cache_k, step, k_new[:, :, 0])
        cache_v = step_cache(cache_v, step, v_new[:, :, 0])
        k = cache_k[: step + 1].permute(1, 2, 0, 3)  # (B, H, step+1, dh), a view
        v = cache_v[: step + 1].permute(1, 2, 0, 3)
        # Every cached position precedes the new one, so no mask is needed.
        out, weights = scaled_dot_product(
            q, k, v, None, dropout_p=self._dropout_p(), need_weights=need_weights
        )
        return self.out_proj(_merge_heads(out)), cache_k, cache_v, weights


def step_cache(cache: torch.Tensor, step: int, new: torch.Tensor) -> torch.Tensor:
    """`cache` (C,B,H,dh) with `new` (B,H,dh) written at position `step`, in place when it fits.

    Time-major, so that positions 0..step are one contiguous block: reordering hypotheses
    (`select_steps`) is one gather of that block and a step one small write, where growing a
    (B,H,t,dh) tensor by concatenation copied the whole cache at every step. A full cache (or the
    empty one `encode` makes, or one of another dtype) is replaced by one twice as long."""
    if step >= cache.size(0) or cache.dtype != new.dtype:
        grown = new.new_empty(max(2 * cache.size(0), step + 1, 16), *new.shape)
        grown[:step] = cache[:step]
        cache = grown
    cache[step] = new
    return cache


def select_steps(cache: torch.Tensor, steps: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` (B',) of the first `steps` positions of `cache` (C,B,H,dh): a new cache of the
    same capacity, one gather."""
    picked = cache.new_empty(cache.size(0), rows.numel(), *cache.shape[2:])
    if cache.requires_grad:  # autograd cannot follow out=; the searches run without it
        picked[:steps] = cache[:steps].index_select(1, rows)
    else:
        torch.index_select(cache[:steps], 1, rows, out=picked[:steps])
    return picked


class MultiHeadCrossAttention(nn.Module):
    """Multi-head encoder-decoder attention (Vaswani et al. 2017, section 3.2.3): queries from the
    decoder, keys and values from the encoder output M:

        head_i = softmax(Q_i K_i^T / sqrt(d_h) + mask) V_i
        Q_i = X W^Q_i,  K_i = M W^K_i,  V_i = M W^V_i
        out = concat(head_1 .. head_H) W^O

    K and V depend on the source only: `project_memory` computes them once per sentence and every
    decoding step reuses them. The K and V projections are one fused (D -> 2D) linear layer.
    """

    def __init__(self, d_model: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B,S,D) -> k, v (B,H,S,dh), made contiguous because every step reads them."""
        k, v = _split_heads(self.kv_proj(memory), 2, self.heads)
        return k.contiguous(), v.contiguous()

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (R,T,D) with R = B*G (G rows per source sentence, see `attend_per_slot`), k/v
        (B,H,S,dh) from `project_memory`, mask (B,1,1,S) bool -> (R,T,D), weights (R,H,T,S) or
        None."""
        (q,) = _split_heads(self.q_proj(x), 1, self.heads)  # (R, H, T, dh)
        dropout_p = self.attn_dropout if self.training else 0.0

        def attend(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return scaled_dot_product(
                rows, k, v, mask, dropout_p=dropout_p, need_weights=need_weights
            )

        if q.dtype == torch.float32:
            out, weights = attend_per_slot(attend, q, k.size(0))  # (R, H, T, dh)
        else:
            out, weights = attend_grouped(attend, q, k.size(0))
        return self.out_proj(_merge_heads(out)), weights


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed position encodings (Vaswani et al. 2017, section 3.5), (length, dim) float32:
    PE[p, i] = sin(p / 10000^(i/h)) for i < h and PE[p, h + i] = cos(p / 10000^(i/h)), h = dim/2.
    Sines and cosines are stored in two halves rather than interleaved (as tensor2tensor, fairseq
    and CTranslate2 do); that is the same encoding up to a fixed permutation of the dimensions."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * (-math.log(10000.0) / half))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]  # (length, half)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, :half] = torch.sin(angles)
    table[:, half : 2 * half] = torch.cos(angles)  # an odd dim leaves the last column 0
    return table.float()
