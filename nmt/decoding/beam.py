"""Greedy, beam and sampling search over whole batches, through the decoding protocol of
`nmt.models` (`encode`, `decode_step`, `state.select`).

All hypotheses of all sentences live in one tensor of B*K rows; the only Python loop is over time
steps. The beam follows fairseq's `SequenceGenerator` (Ott et al. 2019): each step takes the 2K
best extensions of a sentence's K hypotheses; an EOS extension ranked within the first K is
finished (kept in that sentence's pool of at most K finished hypotheses); the best K other
extensions go on. A sentence stops once its pool holds K finished hypotheses, when no live
hypothesis is left, or at its own maximum length a * S + b (EOS is forced there). So every
sentence finishes on its own, and a translation never depends on the other sentences in its
batch. Finished hypotheses are ranked by their length-normalised score (`length_penalty`), plus
GNMT's coverage penalty when `decode.coverage_penalty` > 0 (`coverage_penalty`). Tokens
and cross-attention rows are recovered by walking the back-pointers of every step: for the whole
batch at its end, or, in a search that hands sentences back as they end, for those sentences
then.
Lexical constraints (a glossary's target terms) hand the choice of each step's hypotheses to
dynamic beam allocation (nmt/decoding/constraints.py); without them that code never runs.

Conventions:
- Lengths count the EOS: a hypothesis with tokens [a, b] has length 2 + 1 = 3, and its attention
  has T = 3 rows. S, the source length, counts the EOS that `make_src_batch` appends.
- Scores are model log-probabilities (natural log) summed over the output including EOS. Banned
  tokens (PAD, BOS, UNK with `suppress_unk`, EOS before `min_len`, repeated n-grams) get -inf,
  with no renormalisation, so a reported `log_prob` equals the teacher-forced log-probability of
  the output.
- Ensembles: the log-probs of the members are averaged and renormalised with a log-softmax, i.e.
  the normalised geometric mean of their distributions (a product of experts), not the arithmetic
  mean of probabilities. Attention comes from the first member.
- Host-device syncs: one `int(...)` per step (are sentences finished?), which also lets finished
  sentences leave the batch; two at the start (shortest and longest allowed output) and the
  copy of the results at the end. A search that hands sentences back early also copies each
  step's back-pointers to the host (`_StepLists`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.decoding.constraints import Constraints
from nmt.errors import ConfigError

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One output of the search.

    - `tokens`: target ids without BOS and EOS.
    - `log_prob`: summed log-probability of `tokens` followed by EOS.
    - `score`: `log_prob` / `length_penalty(len(tokens) + 1)`, plus `coverage_penalty` when
      `decode.coverage_penalty` > 0; n-best lists are sorted by it.
    - `attention`: float32 on the CPU, rows = len(tokens) + 1 (the last is the EOS step), columns =
      the sentence's S real source positions (its EOS included): (T,S) for the RNN, (T,L,H,S) for
      the Transformer; None unless attention was requested (and for an empty source).
    - `token_scores`: the log-probability of each token of `tokens` and of the final EOS
      (len(tokens) + 1 values, summing to `log_prob`); empty for an empty source.
    """

    tokens: list[int]
    log_prob: float
    score: float
    attention: torch.Tensor | None = None
    token_scores: list[float] = field(default_factory=list)


# ---- small pure pieces -----------------------------------------------------------------------


def length_penalty(lengths: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Divisor of the summed log-prob for hypotheses of `lengths` tokens (EOS included), float32.

    "power": len ** alpha; "gnmt": ((5 + len) / 6) ** alpha (Wu et al. 2016, eq. 14);
    "avg": len; "none": 1.
    """
    lengths = lengths.float()
    if cfg.length_norm == "power":
        return lengths**cfg.len_penalty
    if cfg.length_norm == "gnmt":
        return ((5.0 + lengths) / 6.0) ** cfg.len_penalty
    if cfg.length_norm == "avg":
        return lengths
    return torch.ones_like(lengths)


# Coverage below this counts as this: local and hard attention leave source words with exactly 0,
# whose log would make every score -inf and the ranking meaningless.
COVERAGE_FLOOR = 1e-6


def coverage_penalty(
    attention: torch.Tensor, src_lengths: torch.Tensor, cfg: DecodeConfig
) -> torch.Tensor:
    """GNMT's coverage penalty (Wu et al. 2016, section 7, eq. 14), added to the length-normalised
    score: cp = beta * sum_{i real source} log(min(sum_j p_ij, 1)), p_ij the attention of target
    step j (EOS step included) on source position i, floored at COVERAGE_FLOOR. Never positive.

    attention (N,M,T,S) for the RNN or (N,M,T,L,H,S) for the Transformer, M hypotheses of each of
    N sentences, rows past a hypothesis' end all 0; src_lengths (N,). Transformer layers and heads
    are chosen as for export (`decode.attention_layer` / `attention_head`, "all" averaging).
    Returns (N,M) float32.
    """
    coverage = attention.float().sum(dim=2)  # (N, M, S) or (N, M, L, H, S)
    if coverage.dim() == 5:
        coverage = _pick(coverage, 2, cfg.attention_layer, "layer")
        coverage = _pick(coverage, 2, cfg.attention_head, "head")  # (N, M, S)
    real = torch.arange(coverage.size(-1), device=coverage.device) < src_lengths[:, None, None]
    logs = coverage.clamp(min=COVERAGE_FLOOR, max=1.0).log()  # (N, M, S)
    return cfg.coverage_penalty * logs.masked_fill(~real, 0.0).sum(dim=-1)  # (N, M)


def _pick(values: torch.Tensor, dim: int, how: str, name: str) -> torch.Tensor:
    """Drop axis `dim` of `values` by index or by mean ("mean" and "all")."""
    if how in ("mean", "all"):
        return values.mean(dim=dim)
    index, size = int(how), values.size(dim)
    if not -size <= index < size:
        raise ConfigError(f"decode.attention_{name}={index}: the model has {size} {name}s")
    return values.select(dim, index)


def max_output_lengths(
    src_lengths: torch.Tensor, cfg: DecodeConfig, max_positions: int | None = None
) -> torch.Tensor:
    """Most tokens (EOS not counted) each sentence may produce: floor(a * S + b), S counting the
    source EOS, capped so that BOS plus the output fits into `max_positions` decoder positions."""
    limit = src_lengths.double() * cfg.max_len_a + cfg.max_len_b
    limit = limit.floor().clamp(min=0).long()
    if max_positions is not None:
        limit = limit.clamp(max=max_positions - 1)
    return limit


def select_top_k(
    beam_scores: torch.Tensor, log_probs: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k best extensions of each sentence's beam.

    beam_scores (B,K): cumulative log-prob of each beam; log_probs (B,K,V): the next token's. An
    extension's score is beam_scores[b, k] + log_probs[b, k, v]. Returns values (B,k) sorted from
    best to worst, the beam index (B,k) and the token (B,k) of each; k is capped at K*V.

    Within one beam the order of its extensions is that of its log-probs, so the k best of a
    sentence are among the k best tokens of each of its beams: the top-k runs per row (see
    `row_top_k`) and the sum is formed for those K*k candidates only, not for all K*V.
    """
    b, beams, vocab = log_probs.shape
    width = min(k, vocab)
    row_values, row_tokens = row_top_k(log_probs.reshape(b * beams, vocab), width)
    cand = (beam_scores[:, :, None] + row_values.view(b, beams, width)).view(b, beams * width)
    values, index = cand.topk(min(k, beams * width), dim=1, sorted=True)  # (B, k)
    tokens = row_tokens.view(b, beams * width).gather(1, index)
    return values, torch.div(index, width, rounding_mode="floor"), tokens


# Columns per block of `row_top_k`; 64 was the fastest of 32-256 for 650 rows of 8,000 on a
# 2-core Intel Xeon (bench/NOTES.md lever 28).
TOP_K_BLOCK = 64


def row_top_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of values (R,V) and their columns, best first, as
    `values.topk(k, dim=1)` (only the order among equal values may differ).

    On the CPU torch.topk partially sorts all V entries of a row. Cut into blocks of
    TOP_K_BLOCK columns, a row's k largest entries lie in the k blocks with the largest maxima,
    so one pass of `amax` over the blocks leaves k*TOP_K_BLOCK candidates (plus the columns past
    the last whole block) for topk: about half its time at V = 8,000 on a 2-core CPU. Small
    vocabularies go to topk directly, and so do tensors on a GPU, where the blockwise path was
    never measured and one kernel launch replaces several.
    """
    rows, vocab = values.shape
    blocks = vocab // TOP_K_BLOCK
    if blocks < 4 * k or values.device.type != "cpu":
        return values.topk(k, dim=1)
    tiles = values.unfold(1, TOP_K_BLOCK, TOP_K_BLOCK)  # (R, blocks, TOP_K_BLOCK), a view
    best_blocks = tiles.amax(dim=2).topk(k, dim=1, sorted=False).indices  # (R, k)
    picked = tiles[torch.arange(rows, device=values.device)[:, None], best_blocks]  # (R, k, BLOCK)
    offsets = torch.arange(TOP_K_BLOCK, device=values.device)
    columns = (best_blocks[:, :, None] * TOP_K_BLOCK + offsets).view(rows, -1)
    candidates = picked.view(rows, -1)
    tail = blocks * TOP_K_BLOCK
    if tail < vocab:  # the columns past the last whole block are candidates too
        candidates = torch.cat([candidates, values[:, tail:]], dim=1)
        rest = torch.arange(tail, vocab, device=values.device).expand(rows, -1)
        columns = torch.cat([columns, rest], dim=1)
    top, index = candidates.topk(k, dim=1)
    return top, columns.gather(1, index)


def ban_tokens(
    log_probs: torch.Tensor,
    step: int,
    force_eos: torch.Tensor | None,
    cfg: DecodeConfig,
    history: torch.Tensor | None,
) -> torch.Tensor:
    """Apply the search's constraints to one step's log-probs (R,V), in place, and return them.

    `force_eos` (R,) marks rows at their maximum length: everything but EOS gets -inf there (this
    overrides `min_len`); None when no row is there yet. `history` (R,t) holds the tokens produced
    so far (needed only for `no_repeat_ngram`).
    """
    log_probs[:, PAD_ID] = NEG_INF
    log_probs[:, BOS_ID] = NEG_INF
    if cfg.suppress_unk:
        log_probs[:, UNK_ID] = NEG_INF
    n = cfg.no_repeat_ngram
    if n > 0 and history is not None and history.size(1) >= n:  # an n-gram to repeat exists
        if n == 1:
            banned = history  # (R, t): no token may appear twice
        else:
            windows = history.unfold(1, n, 1)  # (R, t-n+1, n)
            prefix = history[:, history.size(1) - (n - 1) :]  # (R, n-1): the newest n-1 tokens
            match = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (R, t-n+1)
            # Unmatched windows point at PAD, which is banned anyway.
            banned = torch.where(
                match, windows[:, :, -1], torch.full_like(match, PAD_ID, dtype=torch.long)
            )
        if banned.numel():
            log_probs.scatter_(1, banned, NEG_INF)
    eos = log_probs[:, EOS_ID].clone()
    if step < cfg.min_len:
        log_probs[:, EOS_ID] = NEG_INF
    if force_eos is not None:
        log_probs.masked_fill_(force_eos[:, None], NEG_INF)
        log_probs[:, EOS_ID] = torch.where(force_eos, eos, log_probs[:, EOS_ID])
    return log_probs


class Ensemble:
    """One or more models behind the protocol, seen as one: log-probs are averaged and renormalised
    (log_softmax of the mean log-prob); states are kept per member; attention is the first one's."""

    def __init__(self, models: nn.Module | Sequence[nn.Module]) -> None:
        self.models: list[Any] = [models] if isinstance(models, nn.Module) else list(models)
        if not self.models:
            raise ValueError("an ensemble needs at least one model")
        # Every model has `max_positions` (a Transformer's position table; an RNN's configured
        # bound, see model.rnn.max_positions); older foreign modules may not.
        limits = [int(m.max_positions) for m in self.models if getattr(m, "max_positions", None)]
        self.max_positions: int | None = min(limits) if limits else None

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> list:
        return [m.encode(src_ids, src_mask) for m in self.models]

    def select(self, states: list, rows: torch.Tensor, sources: torch.Tensor | None = None) -> list:
        return [s.select(rows, sources) for s in states]

    def step(
        self, prev_ids: torch.Tensor, states: list, need_attention: bool
    ) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        outs = [
            m.decode_step(prev_ids, s, need_attention=need_attention and i == 0)
            for i, (m, s) in enumerate(zip(self.models, states, strict=True))
        ]
        log_probs = outs[0][0]
        if len(outs) > 1:
            mean = torch.stack([o[0] for o in outs]).mean(dim=0)  # (R, V)
            log_probs = torch.log_softmax(mean, dim=-1)
        return log_probs, [o[1] for o in outs], outs[0][2]


# ---- beam search -----------------------------------------------------------------------------


def beam_search(
    models: nn.Module | Sequence[nn.Module],
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    word_end: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Beam search of width `cfg.beam_size` for a batch src_ids (B,S) / src_mask (B,S).

    Returns, for each sentence in batch order, its `cfg.nbest` best finished hypotheses by score
    (fewer only if fewer than that many outputs are possible). `constraints`: for each sentence,
    token sequences its output must contain, followed by a token that `word_end` (V,) marks
    when it is given (nmt/decoding/constraints.py); None or all empty is the unconstrained
    search, and then only a constraint's n-best list can be shorter than asked for.
    """
    results: list[list[Hypothesis]] = [[] for _ in range(src_ids.size(0))]
    for finished in iter_beam_search(
        models, src_ids, src_mask, cfg, need_attention, False, constraints, word_end
    ):
        for index, nbest in finished:
            results[index] = nbest
    return results


@torch.inference_mode()
def iter_beam_search(
    models: nn.Module | Sequence[nn.Module],
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
    early: bool = False,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    word_end: torch.Tensor | None = None,
) -> Iterator[list[tuple[int, list[Hypothesis]]]]:
    """`beam_search` as a generator of (batch index, n-best list) pairs. With `early`, the
    sentences whose search has ended are yielded after the step that ended it, while the others
    go on, so that a server can answer short sentences first; without it, all come at the end
    (walking the back-pointers once per batch is cheaper). The hypotheses are the same either way.
    """
    ens = Ensemble(models)
    device = src_ids.device
    batch, beam = src_ids.size(0), cfg.beam_size
    lexical = _constraints(constraints, beam, device, word_end)
    src_lengths = src_mask.sum(dim=1)  # (B,)
    max_lens = max_output_lengths(src_lengths, cfg, ens.max_positions)  # (B,)
    num_steps = int(max_lens.max()) + 1  # the last step can only emit EOS
    shortest = int(max_lens.min())  # before this step no sentence is at its maximum length

    collect_attention = need_attention or cfg.coverage_penalty > 0  # the penalty reads it
    states, scores, prev = _start_beams(ens, src_ids, src_mask, beam)  # scores (n, K)
    alive = torch.arange(batch, device=device)  # (n,) original index of each live sentence
    history = _empty_history(cfg, batch * beam, device)  # tokens so far, for no_repeat_ngram

    pool = _FinishedPool(batch, beam, device)
    # Back-pointers of every step: live sentences, tokens (n,K), parent beams (n,K), attention,
    # and the cumulative log-prob of each continuing hypothesis (n,K), for the per-token scores.
    steps: list[Step] = []
    listed = _StepLists() if early and lexical is None and cfg.coverage_penalty == 0 else None
    emitted = torch.zeros(batch, dtype=torch.bool, device=device)  # sentences already yielded

    for t in range(num_steps):
        n = alive.numel()
        log_probs, states, attn = ens.step(prev, states, collect_attention)  # (n*K, V)
        force_eos = None  # the full-vocabulary mask is skipped until some sentence needs it
        if t >= shortest:
            force_eos = (max_lens.index_select(0, alive) <= t).repeat_interleave(beam)  # (n*K,)
        log_probs = ban_tokens(log_probs, t, force_eos, cfg, history)
        if lexical is not None:
            log_probs = lexical.ban_eos(log_probs, alive, force_eos)
        top, going = _extensions(scores, log_probs.view(n, beam, -1), beam, lexical, alive)
        top_scores, top_beams, top_tokens = top
        is_eos = top_tokens == EOS_ID
        pool.finish(alive, t, top_scores, top_beams, is_eos)

        # The best K extensions that do not end in EOS go on.
        scores, beams, tokens = going or _go_on(top_scores, top_beams, top_tokens, is_eos, beam)
        attn = None if attn is None else attn.view(n, beam, *attn.shape[1:])
        steps.append((alive, tokens, beams, attn, scores))
        if listed is not None:
            listed.record(steps[-1])

        done = pool.is_full(alive) | ~torch.isfinite(scores[:, 0])  # (n,)
        num_done = int(done.sum())  # the one host sync of the step
        if num_done == n:
            break
        if early and num_done:
            ended = alive[done]
            yield pool.collect(ended, steps, src_lengths, cfg, need_attention, lexical, listed)
            emitted[ended] = True
        rows = beams + torch.arange(n, device=device)[:, None] * beam  # (n, K) parent rows
        sources = None  # hypotheses only move within their sentence: the source side stays
        if num_done:
            keep = ~done
            rows, scores, tokens, alive = rows[keep], scores[keep], tokens[keep], alive[keep]
            sources = keep.nonzero().view(-1)  # (n',) the sentences that go on
        rows = rows.reshape(-1)
        states = ens.select(states, rows, sources)
        prev = tokens.reshape(-1)
        if history is not None:
            history = torch.cat([history.index_select(0, rows), prev[:, None]], dim=1)

    rest = (~emitted).nonzero().view(-1)
    if rest.numel():
        yield pool.collect(rest, steps, src_lengths, cfg, need_attention, lexical)


def _constraints(
    constraints: Sequence[Sequence[Sequence[int]]] | None,
    beam: int,
    device: torch.device,
    word_end: torch.Tensor | None,
) -> Constraints | None:
    """Dynamic beam allocation when some sentence has a constraint, else None."""
    if constraints is None:
        return None
    lexical = Constraints(constraints, beam, device, word_end)
    return None if lexical.is_empty else lexical


def _empty_history(cfg: DecodeConfig, rows: int, device: torch.device) -> torch.Tensor | None:
    """No tokens yet for each of `rows` hypotheses, kept only for decode.no_repeat_ngram."""
    if not cfg.no_repeat_ngram:
        return None
    return torch.zeros(rows, 0, dtype=torch.long, device=device)


def _extensions(
    scores: torch.Tensor,
    log_probs: torch.Tensor,
    beam: int,
    lexical: Constraints | None,
    alive: torch.Tensor,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """One step's candidates from the cumulative scores (n,K) and next log-probs (n,K,V): the
    2K best extensions (scores, beams, tokens) and None; with constraints, dynamic beam
    allocation picks both the K candidates that may finish and the K that go on."""
    top = select_top_k(scores, log_probs, 2 * beam)  # (n, 2K) each
    if lexical is None:
        return top, None
    return lexical.select(scores[:, :, None] + log_probs, alive, top)


def _go_on(
    top_scores: torch.Tensor,
    top_beams: torch.Tensor,
    top_tokens: torch.Tensor,
    is_eos: torch.Tensor,
    beam: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best `beam` extensions (n, K) that do not end in EOS, from the (n, 2K) best: their
    cumulative log-probs, the beams they extend and their tokens."""
    scores, pick = top_scores.masked_fill(is_eos, NEG_INF).topk(beam, dim=1)  # (n, K)
    return scores, top_beams.gather(1, pick), top_tokens.gather(1, pick)


def _start_beams(
    ens: Ensemble, src_ids: torch.Tensor, src_mask: torch.Tensor, beam: int
) -> tuple[list, torch.Tensor, torch.Tensor]:
    """K rows of decoder state per sentence, their cumulative log-probs (B, K) and their first
    input, BOS. Only beam 0 is live at first; the others would duplicate it."""
    batch, device = src_ids.size(0), src_ids.device
    states = ens.encode(src_ids, src_mask)
    # K hypothesis rows per sentence; the source side stays one per sentence (nmt/models).
    states = ens.select(states, torch.arange(batch, device=device).repeat_interleave(beam))
    scores = torch.full((batch, beam), NEG_INF, device=device)
    scores[:, 0] = 0.0
    prev = torch.full((batch * beam,), BOS_ID, dtype=torch.long, device=device)
    return states, scores, prev


class _FinishedPool:
    """Finished hypotheses per original sentence: K slots, then 2K scratch slots that rejected
    candidates are written to (unique targets keep the scatter deterministic). For each: the
    summed log-prob, the step of its EOS and the beam it extended there."""

    def __init__(self, batch: int, beam: int, device: torch.device) -> None:
        self.size = beam
        self.logp = torch.full((batch, 3 * beam), NEG_INF, device=device)
        self.step = torch.zeros(batch, 3 * beam, dtype=torch.long, device=device)
        self.beam = torch.zeros(batch, 3 * beam, dtype=torch.long, device=device)
        self.count = torch.zeros(batch, dtype=torch.long, device=device)

    def finish(
        self,
        alive: torch.Tensor,
        t: int,
        top_scores: torch.Tensor,
        top_beams: torch.Tensor,
        is_eos: torch.Tensor,
    ) -> None:
        """Finish the EOS extensions (n, 2K) of step `t` ranked within the first K, best first,
        while the pool of their sentence has room."""
        beam = self.size
        n, width = top_scores.shape
        finishing = is_eos & torch.isfinite(top_scores)
        finishing[:, beam:] = False
        count = self.count.index_select(0, alive)  # (n,)
        slot = count[:, None] + finishing.long().cumsum(dim=1) - 1  # (n, 2K)
        accept = finishing & (slot < beam)
        scratch = beam + torch.arange(width, device=top_scores.device).expand(n, width)
        slot = torch.where(accept, slot, scratch)
        for pool, values in ((self.logp, top_scores), (self.step, torch.full_like(slot, t)),
                             (self.beam, top_beams)):  # fmt: skip
            pool[alive] = pool.index_select(0, alive).scatter(1, slot, values)
        self.count[alive] = count + accept.long().sum(dim=1)

    def is_full(self, alive: torch.Tensor) -> torch.Tensor:
        """(n,) whether each live sentence has K finished hypotheses."""
        return self.count.index_select(0, alive) >= self.size

    def collect(
        self,
        sentences: torch.Tensor,
        steps: list[Step],
        src_lengths: torch.Tensor,
        cfg: DecodeConfig,
        need_attention: bool,
        lexical: Constraints | None = None,
        listed: _StepLists | None = None,
    ) -> list[tuple[int, list[Hypothesis]]]:
        """(batch index, n-best list) of each of `sentences`, whose searches have ended; with
        `lexical` (constraints), the n-best of the hypotheses that meet them. `listed`, the
        steps as lists of a search without constraints or coverage penalty, walks a few
        sentences more cheaply than `steps` (`_StepLists`)."""
        if listed is not None:
            return listed.collect(self, sentences, src_lengths, cfg, need_attention)
        k = self.size
        pool_cfg = cfg if lexical is None else replace(cfg, nbest=k)  # filtered below
        hyps = _collect(self.logp[:, :k], self.step[:, :k], self.beam[:, :k], steps,
                        src_lengths, pool_cfg, need_attention, sentences)  # fmt: skip
        if lexical is not None:
            hyps = lexical.keep_met(hyps, sentences.tolist(), cfg.nbest)
        return list(zip(sentences.tolist(), hyps, strict=True))


# One beam step's record: live sentences (n,), tokens (n,K), parent beams (n,K), attention rows
# (n,K,...) or None, cumulative log-probs after the step (n,K).
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]


def _collect(
    fin_logp: torch.Tensor,
    fin_step: torch.Tensor,
    fin_beam: torch.Tensor,
    steps: list[Step],
    src_lengths: torch.Tensor,
    cfg: DecodeConfig,
    need_attention: bool,
    sentences: torch.Tensor,
) -> list[list[Hypothesis]]:
    """Walk the back-pointers of the finished hypotheses of `sentences` (indices into the B,K
    pool) at once, then rank them. The steps hold attention when it was requested or the coverage
    penalty needs it; the hypotheses carry it only in the first case."""
    total = fin_logp.size(0)
    fin_logp, fin_step, fin_beam, src_lengths = (
        x.index_select(0, sentences) for x in (fin_logp, fin_step, fin_beam, src_lengths)
    )
    batch, beam = fin_logp.shape
    device = fin_logp.device
    num_steps = len(steps)
    valid = torch.isfinite(fin_logp)  # (B, K)
    out_tokens = torch.full((batch, beam, num_steps), PAD_ID, dtype=torch.long, device=device)
    out_cum = torch.zeros(batch, beam, num_steps, device=device)  # log-prob after each token
    out_attn = None
    first_attn = steps[0][3]
    if first_attn is not None:
        shape = (batch, beam, num_steps, *first_attn.shape[2:])
        out_attn = torch.zeros(shape, dtype=first_attn.dtype, device=device)
    cur = fin_beam.clone()  # beam index in the input of step u (the output of step u - 1)
    for u in reversed(range(num_steps)):
        alive, tokens, beams, attn, cum = steps[u]
        pos = torch.full((total,), -1, dtype=torch.long, device=device)
        pos[alive] = torch.arange(alive.numel(), device=device)
        # (B, K) row of the sentence at step u
        p = pos.index_select(0, sentences).clamp(min=0)[:, None].expand(batch, beam)
        at_end = valid & (fin_step == u)
        before = valid & (fin_step > u)
        live = at_end | before
        # A hypothesis finishing at u emits EOS from its input beam `cur`; one finishing later
        # emitted tokens[cur] at u, extending input beam beams[cur].
        parent = torch.where(before, beams[p, cur], cur)
        token = torch.where(before, tokens[p, cur], torch.full_like(cur, EOS_ID))
        out_tokens[:, :, u] = torch.where(live, token, torch.full_like(cur, PAD_ID))
        out_cum[:, :, u] = torch.where(before, cum[p, cur], torch.where(at_end, fin_logp, 0.0))
        if out_attn is not None and attn is not None:
            row = attn[p, parent]  # (B, K, *A)
            mask = live.view(batch, beam, *([1] * (row.dim() - 2)))
            out_attn[:, :, u] = torch.where(mask, row, torch.zeros_like(row))
        cur = parent
    lengths = fin_step + 1  # (B, K) with EOS
    norm = torch.where(valid, fin_logp / length_penalty(lengths, cfg), fin_logp)
    if cfg.coverage_penalty > 0 and out_attn is not None:
        # The finished hypothesis' whole attention: rows past its EOS step are 0.
        norm = norm + torch.where(valid, coverage_penalty(out_attn, src_lengths, cfg), 0.0)
        out_attn = out_attn if need_attention else None
    order = norm.argsort(dim=1, descending=True, stable=True)  # (B, K)
    step_logp = out_cum - F.pad(out_cum[:, :, :-1], (1, 0))  # (B, K, steps)
    return _to_hypotheses(
        out_tokens.gather(1, order[:, :, None].expand_as(out_tokens)),
        step_logp.gather(1, order[:, :, None].expand_as(step_logp)),
        lengths.gather(1, order),
        fin_logp.gather(1, order),
        norm.gather(1, order),
        None if out_attn is None else _gather_rows(out_attn, order),
        valid.gather(1, order),
        src_lengths,
        cfg.nbest,
    )


class _StepLists:
    """The back-pointers of every step of a search as Python lists, for the sentences that a
    streaming search hands back while the others go on. `_collect` walks the steps with a dozen
    small tensor operations each, whatever the number of sentences: right for a batch at its end,
    dear for the one or two sentences a step of a server's search ends. Here a sentence costs a
    few list lookups per step and hypothesis; the results are `_collect`'s (same tensors read,
    same arithmetic). Not for constraints (their n-best is filtered) or the coverage penalty (it
    ranks by whole attention matrices)."""

    def __init__(self) -> None:
        self.rows: list[dict[int, int]] = []  # per step: sentence -> its row in that step
        self.tokens: list[list[list[int]]] = []  # per step: (n, K) tokens
        self.beams: list[list[list[int]]] = []  # per step: (n, K) parent beams
        self.cum: list[list[list[float]]] = []  # per step: (n, K) cumulative log-probs
        self.attn: list[torch.Tensor | None] = []  # per step: (n, K, *A) or None

    def record(self, step: Step) -> None:
        alive, tokens, beams, attn, cum = step
        self.rows.append({s: r for r, s in enumerate(alive.tolist())})
        self.tokens.append(tokens.tolist())
        self.beams.append(beams.tolist())
        self.cum.append(cum.tolist())
        self.attn.append(attn)

    def collect(
        self,
        pool: _FinishedPool,
        sentences: torch.Tensor,
        src_lengths: torch.Tensor,
        cfg: DecodeConfig,
        need_attention: bool,
    ) -> list[tuple[int, list[Hypothesis]]]:
        """`_FinishedPool.collect` for `sentences` (n,) without constraints or coverage penalty:
        the finished hypotheses ranked as `_collect` ranks them, the best `cfg.nbest` walked."""
        k = pool.size
        fin_logp, fin_step, fin_beam = (
            x[:, :k].index_select(0, sentences) for x in (pool.logp, pool.step, pool.beam)
        )
        valid = torch.isfinite(fin_logp)
        norm = torch.where(valid, fin_logp / length_penalty(fin_step + 1, cfg), fin_logp)
        order = norm.argsort(dim=1, descending=True, stable=True).tolist()
        logp, steps, beams = fin_logp.tolist(), fin_step.tolist(), fin_beam.tolist()
        scores, valid_l, lengths = norm.tolist(), valid.tolist(), src_lengths.tolist()
        out = []
        for i, sentence in enumerate(sentences.tolist()):
            picks = [j for j in order[i] if valid_l[i][j]][: cfg.nbest]
            hyps = []
            for j in picks:
                tokens, token_scores, attention = self._walk(
                    sentence, steps[i][j], beams[i][j], logp[i][j], need_attention
                )
                if attention is not None:  # a copy on the CPU, as `_to_hypotheses` makes
                    attention = attention[..., : lengths[sentence]]
                    attention = attention.to("cpu", torch.float32, copy=True)
                hyps.append(Hypothesis(tokens, logp[i][j], scores[i][j], attention, token_scores))
            out.append((sentence, hyps))
        return out

    def _walk(
        self, sentence: int, end: int, beam: int, log_prob: float, need_attention: bool
    ) -> tuple[list[int], list[float], torch.Tensor | None]:
        """The hypothesis of `sentence` that ended (EOS) at step `end` from `beam`: its tokens
        (EOS left out), the log-prob of each token and the EOS, its attention rows (T, *A)."""
        tokens, cum, rows = [EOS_ID], [log_prob], []
        cur = beam  # the beam that the token of step u extends
        for u in range(end, -1, -1):
            row = self.rows[u][sentence]
            if u < end:
                tokens.append(self.tokens[u][row][cur])
                cum.append(self.cum[u][row][cur])
                cur = self.beams[u][row][cur]
            attn = self.attn[u]
            if need_attention and attn is not None:
                rows.append(attn[row, cur])
        cumulative = torch.tensor(cum[::-1], dtype=torch.float32)
        token_scores = cumulative - F.pad(cumulative[:-1], (1, 0))
        attention = torch.stack(rows[::-1]) if rows else None
        return tokens[:0:-1], token_scores.tolist(), attention


def _gather_rows(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """values (B,K,...) reordered along K by order (B,K)."""
    batch = torch.arange(values.size(0), device=values.device)[:, None]
    return values[batch, order]


def _to_hypotheses(
    tokens: torch.Tensor,
    step_logp: torch.Tensor,
    lengths: torch.Tensor,
    log_probs: torch.Tensor,
    scores: torch.Tensor,
    attn: torch.Tensor | None,
    valid: torch.Tensor,
    src_lengths: torch.Tensor,
    nbest: int,
) -> list[list[Hypothesis]]:
    """Tensors (B,N,...) ranked along N -> Python lists of the first `nbest` valid hypotheses."""
    tokens_l = tokens.tolist()
    step_l = step_logp.tolist()
    lengths_l = lengths.tolist()
    logp_l = log_probs.tolist()
    score_l = scores.tolist()
    valid_l = valid.tolist()
    src_l = src_lengths.tolist()
    attn_cpu = None if attn is None else attn.float().cpu()
    out: list[list[Hypothesis]] = []
    for b in range(len(tokens_l)):  # formatting only: the search itself is done
        hyps: list[Hypothesis] = []
        for k in range(len(tokens_l[b])):
            if not valid_l[b][k] or len(hyps) == nbest:
                continue
            length = lengths_l[b][k]
            matrix = None
            if attn_cpu is not None:
                matrix = attn_cpu[b, k, :length, ..., : src_l[b]].clone()
            hyps.append(
                Hypothesis(
                    tokens_l[b][k][: length - 1],
                    logp_l[b][k],
                    score_l[b][k],
                    matrix,
                    step_l[b][k][:length],
                )
            )
        out.append(hyps)
    return out


# ---- greedy search and sampling -------------------------------------------------------------

# Picks the next token of every row: log-probs (R,V) after the search's bans -> tokens (R,).
TokenChooser = Callable[[torch.Tensor], torch.Tensor]


def argmax_tokens(log_probs: torch.Tensor) -> torch.Tensor:
    """The most probable token of each row (the first maximum on ties)."""
    return row_argmax(log_probs)


def row_argmax(values: torch.Tensor) -> torch.Tensor:
    """`values.argmax(dim=1)` for values (R,V), the first maximum on ties, by blocks on the CPU.

    There torch's argmax ran at 1.5 ms for 130 rows of 8,000, `amax` at 0.1 ms: the maximum of
    each block of TOP_K_BLOCK columns, then argmax over the block maxima (the first block that
    holds the row's maximum) and within that block (its first column with it). Columns past the
    last whole block win only with a strictly larger value, as they come last.
    """
    rows, vocab = values.shape
    blocks = vocab // TOP_K_BLOCK
    if blocks < 2 or values.device.type != "cpu":
        return values.argmax(dim=1)
    tiles = values.unfold(1, TOP_K_BLOCK, TOP_K_BLOCK)  # (R, blocks, TOP_K_BLOCK), a view
    block_max = tiles.amax(dim=2)  # (R, blocks)
    best_block = block_max.argmax(dim=1)  # (R,)
    index = torch.arange(rows, device=values.device)
    column = best_block * TOP_K_BLOCK + tiles[index, best_block].argmax(dim=1)
    whole = blocks * TOP_K_BLOCK
    if whole < vocab:
        tail = values[:, whole:]
        in_tail = tail.amax(dim=1) > block_max[index, best_block]
        column = torch.where(in_tail, whole + tail.argmax(dim=1), column)
    return column


def sampler(cfg: DecodeConfig, generator: torch.Generator | None) -> TokenChooser:
    """A chooser that draws each token with `sample_tokens` (temperature, top-k, top-p of `cfg`)
    from `generator`, so that a seeded generator gives reproducible samples."""
    return lambda log_probs: sample_tokens(log_probs, cfg, generator)


@torch.inference_mode()
def greedy_search(
    models: nn.Module | Sequence[nn.Module],
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
    choose: TokenChooser = argmax_tokens,
    copies: int = 1,
) -> list[list[Hypothesis]]:
    """Left to right, one token per step chosen by `choose`, until EOS: with `argmax_tokens` the
    most probable token (this equals `beam_search` with beam_size 1); with a `sampler`, `copies`
    independent samples per sentence, ranked by score. Scores use the untempered log-probs."""
    ens = Ensemble(models)
    batch = src_ids.size(0)
    rows_total = batch * copies
    src_lengths = src_mask.sum(dim=1)
    max_lens = max_output_lengths(src_lengths, cfg, ens.max_positions).repeat_interleave(copies)
    num_steps = int(max_lens.max()) + 1
    shortest = int(max_lens.min())

    states = ens.encode(src_ids, src_mask)
    if copies > 1:  # samples end at different steps: each row gets its own copy of the source
        rows = torch.arange(batch, device=src_ids.device).repeat_interleave(copies)
        states = ens.select(states, rows, rows)
    out = _Rows(rows_total, num_steps, src_ids.device)
    alive = torch.arange(rows_total, device=src_ids.device)  # (R',) original row of each live row
    prev = torch.full((rows_total,), BOS_ID, dtype=torch.long, device=src_ids.device)
    history: torch.Tensor | None = None
    if cfg.no_repeat_ngram:
        history = torch.zeros(rows_total, 0, dtype=torch.long, device=src_ids.device)
    collect_attention = need_attention or cfg.coverage_penalty > 0  # the penalty reads it

    for t in range(num_steps):
        log_probs, states, attn = ens.step(prev, states, collect_attention)  # (R', V)
        force_eos = max_lens.index_select(0, alive) <= t if t >= shortest else None
        log_probs = ban_tokens(log_probs, t, force_eos, cfg, history)
        tokens = choose(log_probs)  # (R',)
        out.record(alive, t, tokens, log_probs.gather(1, tokens[:, None])[:, 0], attn)
        finished = tokens == EOS_ID
        num_finished = int(finished.sum())  # the one host sync of the step
        if num_finished == alive.numel():
            break
        if num_finished:
            keep = (~finished).nonzero()[:, 0]
            alive, tokens = alive[keep], tokens[keep]
            states = ens.select(states, keep, keep)
            if history is not None:
                history = history.index_select(0, keep)
        prev = tokens
        if history is not None:
            history = torch.cat([history, tokens[:, None]], dim=1)
    return out.ranked(batch, copies, src_lengths, cfg, need_attention)


class _Rows:
    """What greedy search and sampling record for each of their rows, step by step."""

    def __init__(self, rows: int, num_steps: int, device: torch.device) -> None:
        self.tokens = torch.full((rows, num_steps), PAD_ID, dtype=torch.long, device=device)
        self.log_prob = torch.zeros(rows, device=device)
        self.step_logp = torch.zeros(rows, num_steps, device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.attn: torch.Tensor | None = None

    def record(
        self,
        alive: torch.Tensor,
        t: int,
        tokens: torch.Tensor,
        token_logp: torch.Tensor,
        attn: torch.Tensor | None,
    ) -> None:
        """Step `t` of the live rows `alive`: their tokens, log-probs and attention rows."""
        self.log_prob[alive] += token_logp
        self.step_logp[alive, t] = token_logp
        self.tokens[alive, t] = tokens
        self.lengths[alive] = t + 1
        if attn is not None:
            if self.attn is None:
                self.attn = attn.new_zeros(
                    self.tokens.size(0), self.tokens.size(1), *attn.shape[1:]
                )
            self.attn[alive, t] = attn

    def ranked(
        self,
        batch: int,
        copies: int,
        src_lengths: torch.Tensor,
        cfg: DecodeConfig,
        need_attention: bool,
    ) -> list[list[Hypothesis]]:
        """Each sentence's `copies` rows as hypotheses, best score first."""
        out_attn = self.attn
        scores = self.log_prob / length_penalty(self.lengths, cfg)
        shape = (batch, copies)
        if cfg.coverage_penalty > 0 and out_attn is not None:
            attn_by_sentence = out_attn.view(batch, copies, *out_attn.shape[1:])
            scores = scores + coverage_penalty(attn_by_sentence, src_lengths, cfg).view(-1)
            out_attn = out_attn if need_attention else None
        order = scores.view(shape).argsort(dim=1, descending=True, stable=True)  # samples by score
        attn_ranked = None
        if out_attn is not None:
            attn_ranked = _gather_rows(out_attn.view(batch, copies, *out_attn.shape[1:]), order)
        num_steps = self.tokens.size(1)
        return _to_hypotheses(
            _gather_rows(self.tokens.view(batch, copies, num_steps), order),
            _gather_rows(self.step_logp.view(batch, copies, num_steps), order),
            self.lengths.view(shape).gather(1, order),
            self.log_prob.view(shape).gather(1, order),
            scores.view(shape).gather(1, order),
            attn_ranked,
            torch.ones(shape, dtype=torch.bool, device=self.tokens.device),
            src_lengths,
            copies,
        )


@torch.inference_mode()
def sample_search(
    models: nn.Module | Sequence[nn.Module],
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """`cfg.nbest` independent samples per sentence, each token drawn from the model's distribution
    at `cfg.temperature`, restricted to the `cfg.top_k` most likely tokens and/or the smallest set
    whose probability reaches `cfg.top_p` (Holtzman et al. 2020). Scores use the untempered
    log-probs. Reproducible for the same `generator` seed, input and batching."""
    return greedy_search(models, src_ids, src_mask, cfg, need_attention,
                         sampler(cfg, generator), cfg.nbest)  # fmt: skip


def sample_tokens(
    log_probs: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row (R,V) -> (R,) with temperature, top-k and top-p filtering."""
    logits = log_probs / cfg.temperature
    if 0 < cfg.top_k < logits.size(1):
        kth = logits.topk(cfg.top_k, dim=1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        probs = torch.softmax(sorted_logits, dim=1)
        # Drop a token when the tokens before it already reach top_p; the best always stays.
        drop_sorted = probs.cumsum(dim=1) - probs >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---- whole corpora ---------------------------------------------------------------------------


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches of similar length, longest first, each holding at
    most `batch_tokens` padded source tokens (EOS included); a longer sentence goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] + 1 if current else lengths[i] + 1  # the first is the longest
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def source_limit(models: nn.Module | Sequence[nn.Module]) -> int | None:
    """Most source subwords the models take (their max_positions less the EOS), or None."""
    positions = Ensemble(models).max_positions
    return None if positions is None else positions - 1


def decode_corpus(
    model_or_models: nn.Module | Sequence[nn.Module],
    src_seqs: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    device: torch.device | str,
    need_attention: bool = False,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    word_end: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Translate source id sequences (without EOS): n-best lists in input order.

    Sentences are sorted by length and batched under `cfg.batch_tokens` padded source tokens; the
    batching never changes a translation. Search: sampling when `cfg.sample`, greedy when
    `cfg.beam_size` is 1, beam search otherwise. An empty source is not run through the model: it
    gets one hypothesis with no tokens, log_prob and score 0 and no attention. The models are put
    in eval mode (and left there). Sampling draws from one generator seeded with `cfg.seed`, so a
    sample depends on the batching as well as on the seed. A source longer than `source_limit`
    is cut to it (callers that report cut lines check the limit first).

    `constraints` (one list of target token sequences per source) and `word_end`: see
    beam_search; a batch in which some sentence has one is searched with dynamic beam
    allocation, at beam size 1 too; sampling takes none.
    """
    results: list[list[Hypothesis]] = [[] for _ in src_seqs]
    for index, nbest in iter_decode_corpus(
        model_or_models, src_seqs, cfg, device, need_attention, False, constraints, word_end
    ):
        results[index] = nbest
    return results


def iter_decode_corpus(
    model_or_models: nn.Module | Sequence[nn.Module],
    src_seqs: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    device: torch.device | str,
    need_attention: bool = False,
    early: bool = False,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    word_end: torch.Tensor | None = None,
) -> Iterator[tuple[int, list[Hypothesis]]]:
    """`decode_corpus` as a generator of (input index, n-best list) pairs, in the order the
    searches end: with `early`, a beam search yields each sentence as soon as its own search has
    ended (`iter_beam_search`); greedy search and sampling yield a batch at a time."""
    if constraints is not None and len(constraints) != len(src_seqs):
        raise ValueError(f"{len(constraints)} constraint lists for {len(src_seqs)} sources")
    if cfg.sample and constraints is not None and any(seq for c in constraints for seq in c):
        raise ConfigError("constraints (a glossary) need beam search: turn decode.sample off")
    models = [model_or_models] if isinstance(model_or_models, nn.Module) else list(model_or_models)
    for model in models:
        model.eval()
    device = torch.device(device)
    limit = source_limit(models)
    if limit is not None:  # callers warn about cut lines; this keeps the models' bound whatever
        src_seqs = [seq[:limit] for seq in src_seqs]
    todo = [i for i, seq in enumerate(src_seqs) if len(seq) > 0]
    for i in range(len(src_seqs)):
        if len(src_seqs[i]) == 0:
            yield i, [Hypothesis([], 0.0, 0.0, None)]
    generator = None
    if cfg.sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed)
    for batch in length_batches([len(src_seqs[i]) for i in todo], cfg.batch_tokens):
        ids = [todo[j] for j in batch]
        src_ids, src_mask = make_src_batch([list(src_seqs[i]) for i in ids])
        src_ids, src_mask = src_ids.to(device), src_mask.to(device)
        batch_constraints = None
        if constraints is not None and any(seq for i in ids for seq in constraints[i]):
            batch_constraints = [constraints[i] for i in ids]
        if cfg.sample:
            hyps = sample_search(models, src_ids, src_mask, cfg, need_attention, generator)
        elif cfg.beam_size == 1 and batch_constraints is None:
            hyps = greedy_search(models, src_ids, src_mask, cfg, need_attention)
        else:
            for finished in iter_beam_search(
                models, src_ids, src_mask, cfg, need_attention, early, batch_constraints, word_end
            ):
                for j, nbest in finished:
                    yield ids[j], nbest
            continue
        for i, nbest in zip(ids, hyps, strict=True):
            yield i, nbest


def count_tokens(hyps: Sequence[Sequence[Hypothesis]]) -> int:
    """Target tokens of the best hypotheses (EOS not counted), for speed reports."""
    return sum(len(n[0].tokens) for n in hyps if n)


__all__ = [
    "Ensemble",
    "Hypothesis",
    "argmax_tokens",
    "ban_tokens",
    "beam_search",
    "count_tokens",
    "decode_corpus",
    "greedy_search",
    "iter_beam_search",
    "iter_decode_corpus",
    "length_batches",
    "length_penalty",
    "max_output_lengths",
    "row_argmax",
    "row_top_k",
    "sample_search",
    "sampler",
    "sample_tokens",
    "select_top_k",
    "source_limit",
]
