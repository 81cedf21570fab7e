"""Lexically constrained beam search: the bookkeeping `iter_beam_search` hands each step to when
sentences of its batch have constraints, target token sequences that must appear in their output.

Dynamic beam allocation (Post and Vilar 2018, "Fast Lexically Constrained Decoding with Dynamic
Beam Allocation for Neural Machine Translation", section 3), on whole batches at once in the way
Hu et al. (2019, "Improved Lexically Constrained Decoding for Translation and Monolingual
Rewriting", section 3) vectorise it:

- A constraint is met once its tokens appear one after the other in the output, anywhere (two
  constraints may share tokens); a constraint given twice counts once. Progress on a constraint
  is the state of a Knuth-Morris-Pratt matcher: the length of its longest prefix that ends the
  output, its full length once met; met stays met. A sentence without constraints is one whose
  constraints are all met from the start.
- The candidates of a step are the 2K best extensions (those the unconstrained search looks at),
  for every hypothesis the tokens that advance one of its unmet constraints, and every
  hypothesis' own best token (Post and Vilar's three sources).
- A candidate's bank is the number of constraint tokens it has met: the sum of its progress. The
  K beam slots are dealt round-robin over the banks, highest bank first and best score first
  within a bank, so a bank with fewer candidates than its share leaves its slots to the others.
  Finishing follows the unconstrained rule: an EOS candidate within the first K of that order
  finishes; the first K others, dealt again without the EOS candidates, go on.
- EOS is banned for a hypothesis with an unmet constraint, except at its maximum length, where
  the search forces EOS as always. A sentence's n-best list holds only hypotheses that meet every
  constraint (so it may be shorter than asked for), unless none does: that is the fallback when
  a constraint cannot be met within the length limit (or its tokens are banned), and the
  sentence then gets its best outputs of the maximum length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import torch

from nmt.config import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


class _HasTokens(Protocol):
    tokens: list[int]


H = TypeVar("H", bound=_HasTokens)


def distinct_constraints(constraints: Sequence[Sequence[int]]) -> list[list[int]]:
    """The non-empty constraints, each once, in their first order."""
    seen: list[list[int]] = []
    for seq in constraints:
        if seq and list(seq) not in seen:
            seen.append(list(seq))
    return seen


def next_progress(constraint: Sequence[int], progress: int, token: int) -> int:
    """The matcher's transition: the length of the longest prefix of `constraint` that ends the
    text matched so far (its first `progress` tokens) followed by `token`; a met constraint
    (progress == its length) stays met."""
    if progress == len(constraint):
        return progress
    text = [*constraint[:progress], token]
    for k in range(len(text), 0, -1):
        if text[len(text) - k :] == list(constraint[:k]):
            return k
    return 0


def contains(tokens: Sequence[int], constraint: Sequence[int]) -> bool:
    """Whether `constraint` occurs in `tokens` as a contiguous run."""
    n = len(constraint)
    return any(list(tokens[i : i + n]) == list(constraint) for i in range(len(tokens) - n + 1))


class Constraints:
    """The constraints of one batch of B sentences and the progress of each hypothesis on them.

    Tensors: `tokens` (B,C,L) the constraint tokens, PAD after the end; `lengths` (B,C), 0 for the
    slots of a sentence with fewer than C constraints; `table` (B,C,L+1,L): the progress after
    reading token j of the constraint at progress s; `progress` (B,K,C) of each beam slot. The
    search indexes them with the original index of its live sentences, so finished sentences
    need no bookkeeping.
    """

    def __init__(
        self, constraints: Sequence[Sequence[Sequence[int]]], beam: int, device: torch.device
    ) -> None:
        self.lists = [distinct_constraints(c) for c in constraints]
        for seqs in self.lists:
            for seq in seqs:
                if {PAD_ID, BOS_ID, EOS_ID} & set(seq):
                    raise ValueError(f"constraint {seq} holds a special token (PAD, BOS or EOS)")
        batch = len(self.lists)
        width = max((len(c) for c in self.lists), default=0) or 1  # C
        longest = max((len(s) for c in self.lists for s in c), default=0) or 1  # L
        tokens = torch.full((batch, width, longest), PAD_ID, dtype=torch.long)
        lengths = torch.zeros(batch, width, dtype=torch.long)
        table = torch.zeros(batch, width, longest + 1, longest, dtype=torch.long)
        for b, seqs in enumerate(self.lists):
            for c, seq in enumerate(seqs):
                tokens[b, c, : len(seq)] = torch.tensor(seq)
                lengths[b, c] = len(seq)
                for s in range(len(seq) + 1):
                    table[b, c, s, : len(seq)] = torch.tensor(
                        [next_progress(seq, s, tok) for tok in seq]
                    )
        self.tokens, self.lengths, self.table = (
            tokens.to(device),
            lengths.to(device),
            table.to(device),
        )
        self.progress = torch.zeros(batch, beam, width, dtype=torch.long, device=device)
        # Banks run from 0 to the most constraint tokens a sentence has.
        self.banks = int(lengths.sum(dim=1).max()) + 1 if batch else 1

    @property
    def is_empty(self) -> bool:
        """No sentence has a constraint."""
        return not any(self.lists)

    def _met_all(self, alive: torch.Tensor) -> torch.Tensor:
        """(n*K,): whether each live hypothesis has met every constraint of its sentence."""
        met = self.progress[alive] >= self.lengths[alive][:, None, :]  # (n, K, C)
        return met.all(dim=2).view(-1)

    def ban_eos(
        self, log_probs: torch.Tensor, alive: torch.Tensor, force_eos: torch.Tensor | None
    ) -> torch.Tensor:
        """EOS to -inf, in place, in the rows (n*K,V) with an unmet constraint, unless the row is
        at its maximum length (`force_eos`), where ending is the fallback."""
        allow = self._met_all(alive)
        if force_eos is not None:
            allow = allow | force_eos
        log_probs[:, EOS_ID] = log_probs[:, EOS_ID].masked_fill(~allow, NEG_INF)
        return log_probs

    def advance(
        self, progress: torch.Tensor, tokens: torch.Tensor, sentences: torch.Tensor
    ) -> torch.Tensor:
        """Progress (R,C) of rows of `sentences` (R,) after they emit `tokens` (R,) -> (R,C)."""
        width = progress.size(1)
        slots = torch.arange(width, device=progress.device)
        row = self.table[sentences[:, None], slots[None, :], progress]  # (R, C, L)
        match = self.tokens[sentences] == tokens[:, None, None]  # (R, C, L)
        # Equal tokens of a constraint share one transition, so the max picks it; no match is 0.
        after = torch.where(match, row, 0).amax(dim=2)  # (R, C)
        return torch.where(progress >= self.lengths[sentences], progress, after)  # met stays met

    def select(
        self,
        cand: torch.Tensor,
        alive: torch.Tensor,
        top: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """One step of dynamic beam allocation.

        cand (n,K,V): cumulative scores of every extension of the live sentences `alive` (n,);
        top: the 2K best of them as (scores, beams, tokens), each (n,2K). Returns the K candidates
        from which EOS extensions finish and the K hypotheses that go on, each as (scores, beams,
        tokens) of shape (n,K), and records the progress of the latter.
        """
        n, beam, vocab = cand.shape
        device = cand.device
        progress = self.progress[alive]  # (n, K, C)
        width = progress.size(2)
        lengths = self.lengths[alive]  # (n, C)
        # Every hypothesis' next token of each unmet constraint.
        at = progress.clamp(max=self.tokens.size(2) - 1)
        wanted = self.tokens[alive][:, None].expand(n, beam, width, -1).gather(3, at[..., None])
        wanted = wanted[..., 0]  # (n, K, C)
        wanted_scores = cand.gather(2, wanted).masked_fill(progress >= lengths[:, None], NEG_INF)
        best_scores, best_tokens = cand.max(dim=2)  # (n, K)
        slot_ids = torch.arange(beam, device=device)
        scores = torch.cat([top[0], wanted_scores.view(n, -1), best_scores], dim=1)  # (n, M)
        beams = torch.cat(
            [
                top[1],
                slot_ids[None, :, None].expand(n, beam, width).reshape(n, -1),
                slot_ids[None, :].expand(n, beam),
            ],
            dim=1,
        )
        tokens = torch.cat([top[2], wanted.view(n, -1), best_tokens], dim=1)
        scores = _drop_repeats(scores, beams * vocab + tokens)
        m = scores.size(1)
        parents = progress.gather(1, beams[..., None].expand(n, m, width))  # (n, M, C)
        rows = alive.repeat_interleave(m)
        after = self.advance(parents.view(n * m, width), tokens.view(-1), rows).view(n, m, width)
        bank = after.sum(dim=2)  # (n, M) constraint tokens met
        order = deal(scores, bank, self.banks)[:, :beam]
        finishing = tuple(x.gather(1, order) for x in (scores, beams, tokens))
        go_order = deal(scores.masked_fill(tokens == EOS_ID, NEG_INF), bank, self.banks)[:, :beam]
        going = tuple(x.gather(1, go_order) for x in (scores, beams, tokens))
        going = (going[0].masked_fill(going[2] == EOS_ID, NEG_INF), *going[1:])
        self.progress[alive] = after.gather(1, go_order[..., None].expand(n, beam, width))
        return finishing, going

    def keep_met(
        self, nbest_lists: list[list[H]], sentences: Sequence[int], nbest: int
    ) -> list[list[H]]:
        """Each sentence's finished hypotheses (in the search's order, by score) that meet all
        its constraints, cut to `nbest`; all of them when none does (the fallback)."""
        kept = []
        for hyps, b in zip(nbest_lists, sentences, strict=True):
            met = [h for h in hyps if all(contains(h.tokens, seq) for seq in self.lists[b])]
            kept.append((met or hyps)[:nbest])
        return kept


def _drop_repeats(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores (n,M) with every repeat of a key (n,M) after its first occurrence set to -inf."""
    sorted_keys, order = keys.sort(dim=1, stable=True)
    repeat = torch.zeros_like(sorted_keys, dtype=torch.bool)
    repeat[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]
    is_repeat = torch.zeros_like(repeat).scatter(1, order, repeat)
    return scores.masked_fill(is_repeat, NEG_INF)


def deal(scores: torch.Tensor, bank: torch.Tensor, banks: int) -> torch.Tensor:
    """The order (n,M) in which candidates get beam slots: round-robin over the banks, the highest
    bank first, each bank's candidates by score; candidates scored -inf last.

    scores, bank (n,M), bank values in [0, banks). The i-th best candidate of a bank comes after
    every bank's (i-1)-th."""
    n, m = scores.shape
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    by_bank = bank.gather(1, by_score).argsort(dim=1, descending=True, stable=True)
    ranked = by_score.gather(1, by_bank)  # (n, M) by bank, highest first, then by score
    ranked_bank = bank.gather(1, ranked)
    position = torch.arange(m, device=scores.device).expand(n, m)
    starts = torch.ones_like(ranked_bank, dtype=torch.bool)
    starts[:, 1:] = ranked_bank[:, 1:] != ranked_bank[:, :-1]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    place = position - first  # (n, M) place of each candidate within its bank
    key = place * banks + (banks - 1 - ranked_bank)
    valid = torch.isfinite(scores.gather(1, ranked))
    key = key.masked_fill(~valid, m * banks + banks)
    return ranked.gather(1, key.argsort(dim=1, stable=True))


__all__ = ["Constraints", "contains", "deal", "distinct_constraints", "next_progress"]
