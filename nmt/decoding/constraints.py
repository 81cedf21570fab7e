"""Lexically constrained beam search: the bookkeeping `iter_beam_search` hands each step to when
sentences of its batch have constraints, target token sequences that must appear in their output.

Dynamic beam allocation (Post and Vilar 2018, "Fast Lexically Constrained Decoding with Dynamic
Beam Allocation for Neural Machine Translation", section 3), on whole batches at once in the way
Hu et al. (2019, "Improved Lexically Constrained Decoding for Translation and Monolingual
Rewriting", section 3) vectorise it:

- A constraint is met once its tokens appear one after the other in the output, anywhere (two
  constraints may share tokens); a constraint given twice counts once. With `word_end` (a mask
  over the vocabulary) the token after them must also be one that ends a word (a piece that
  starts the next word, punctuation) or the output must end there, so that a term is never glued
  to the pieces of a longer word. Progress on a constraint is the state of a Knuth-Morris-Pratt
  matcher: the length of its longest prefix that ends the output; its length when all its tokens
  are written but the word end is still to come; its length + 1 once met. Met stays met. A
  sentence without constraints is one whose constraints are all met from the start.
- The candidates of a step are the 2K best extensions (those the unconstrained search looks at),
  for every hypothesis the tokens that advance one of its unmet constraints (with `word_end`,
  its best word-ending token too), and every hypothesis' own best token (Post and Vilar's three
  sources).
- A candidate's bank counts the constraint tokens it has met: length + 1 for each constraint met,
  plus its progress on the one unmet constraint it has got furthest with (one only, so that the
  partial matches of overlapping constraints are not counted twice). The K beam slots are dealt
  round-robin over the banks, highest bank first and best score first within a bank, so a bank
  with fewer candidates than its share leaves its slots to the others. Finishing follows the
  unconstrained rule: an EOS candidate within the first K of that order finishes; the first K
  others, dealt again without the EOS candidates, go on.
- Writing the next token of that furthest constraint (or a word end after it) always reaches a
  higher bank, and the highest bank always keeps a slot, so a hypothesis that meets every
  constraint is found whenever the length limit leaves room for them and no setting bans their
  tokens (suppress_unk, no_repeat_ngram).
- EOS is banned for a hypothesis with an unmet constraint (one waiting for its word end may end
  the output), except at its maximum length, where the search forces EOS as always. A
  sentence's n-best list holds only hypotheses that meet every constraint (so it may be shorter
  than asked for), unless none does: that is the fallback when the constraints cannot be met
  within the length limit, and the sentence then gets its best outputs of the maximum length.

Below the search: where the terms of a glossary ended up in a translation (`place_terms`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from nmt.config import BOS_ID, EOS_ID, PAD_ID
from nmt.data.glossary import TermMatch
from nmt.data.spm import word_groups

NEG_INF = float("-inf")
# A placed term whose attention points further than this many source words from its source term
# gets a warning: the search may have put it where another word belonged.
FAR_WORDS = 2

# The search's time grows much faster than the length of what it must place (one sentence whose
# term was a word repeated 100, 200 and 400 times took 1.2 s, 16 s and over 90 s), so a target
# term and one sentence's terms together are bounded; terms are words and short phrases.
MAX_TERM_PIECES = 32
MAX_SENTENCE_TERM_PIECES = 64


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


def match_progress(constraint: Sequence[int], progress: int, token: int) -> int:
    """The matcher's transition for progress <= len(constraint): the length of the longest prefix
    of `constraint` that ends its first `progress` tokens followed by `token`."""
    text = [*constraint[:progress], token]
    for k in range(min(len(text), len(constraint)), 0, -1):
        if text[len(text) - k :] == list(constraint[:k]):
            return k
    return 0


def occurrences(
    tokens: Sequence[int], constraint: Sequence[int], word_end: Sequence[bool] | None = None
) -> list[tuple[int, int]]:
    """(first, last) positions of each occurrence of `constraint` in `tokens` as a contiguous run;
    with `word_end` (a flag per vocabulary id), only where the token after it ends a word or the
    output ends there."""
    n = len(constraint)
    return [
        (i, i + n - 1)
        for i in range(len(tokens) - n + 1)
        if n and list(tokens[i : i + n]) == list(constraint)
        if word_end is None or i + n == len(tokens) or word_end[tokens[i + n]]
    ]


def contains(
    tokens: Sequence[int], constraint: Sequence[int], word_end: Sequence[bool] | None = None
) -> bool:
    """Whether `constraint` occurs in `tokens` (see `occurrences`); the empty one always does."""
    return not constraint or bool(occurrences(tokens, constraint, word_end))


class Constraints:
    """The constraints of one batch of B sentences and the progress of each hypothesis on them.

    Tensors: `tokens` (B,C,L) the constraint tokens, PAD after the end; `lengths` (B,C), 0 for the
    slots of a sentence with fewer than C constraints (met from the start); `table` (B,C,L+1,L):
    the matcher's progress after reading token j of the constraint at progress s; `progress`
    (B,K,C) of each beam slot, up to length + 1 (met). The search indexes them with the original
    index of its live sentences, so finished sentences need no bookkeeping.
    """

    def __init__(
        self,
        constraints: Sequence[Sequence[Sequence[int]]],
        beam: int,
        device: torch.device,
        word_end: torch.Tensor | None = None,
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
                        [match_progress(seq, s, tok) for tok in seq]
                    )
        self.tokens, self.lengths, self.table = (
            tokens.to(device),
            lengths.to(device),
            table.to(device),
        )
        self.word_end = None if word_end is None else word_end.to(device)
        empty = (lengths == 0).long().to(device)  # (B, C) padding slots start met
        self.progress = empty[:, None, :].repeat(1, beam, 1)  # (B, K, C)
        # Banks run from 0 to the most progress a sentence can make.
        self.banks = int((lengths + 1).sum(dim=1).max()) + 1 if batch else 1

    @property
    def is_empty(self) -> bool:
        """No sentence has a constraint."""
        return not any(self.lists)

    def ban_eos(
        self, log_probs: torch.Tensor, alive: torch.Tensor, force_eos: torch.Tensor | None
    ) -> torch.Tensor:
        """EOS to -inf, in place, in the rows (n*K,V) with an unmet constraint, unless the row is
        at its maximum length (`force_eos`), where ending is the fallback. All of a constraint's
        tokens written suffices: the end of the output ends a word."""
        written = self.progress[alive] >= self.lengths[alive][:, None, :]  # (n, K, C)
        allow = written.all(dim=2).view(-1)
        if force_eos is not None:
            allow = allow | force_eos
        log_probs[:, EOS_ID] = log_probs[:, EOS_ID].masked_fill(~allow, NEG_INF)
        return log_probs

    def advance(
        self, progress: torch.Tensor, tokens: torch.Tensor, sentences: torch.Tensor
    ) -> torch.Tensor:
        """Progress (R,C) of rows of `sentences` (R,) after they emit `tokens` (R,) -> (R,C)."""
        width = progress.size(1)
        lengths = self.lengths[sentences]  # (R, C)
        slots = torch.arange(width, device=progress.device)
        state = torch.minimum(progress, lengths)  # the matcher's state (met rows are kept below)
        row = self.table[sentences[:, None], slots[None, :], state]  # (R, C, L)
        match = self.tokens[sentences] == tokens[:, None, None]  # (R, C, L)
        # Equal tokens of a constraint share one transition, so the max picks it; no match is 0.
        after = torch.where(match, row, 0).amax(dim=2)  # (R, C)
        if self.word_end is None:
            after = torch.where(after == lengths, lengths + 1, after)  # written is met
        else:
            ends = (progress == lengths) & self.word_end[tokens][:, None]  # the word ends here
            after = torch.where(ends, lengths + 1, after)
        return torch.where(progress > lengths, progress, after)  # met stays met

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
        best = [cand.max(dim=2)]  # (n, K) each: every hypothesis' best token
        if self.word_end is not None:  # and its best token that ends a word
            best.append(cand.masked_fill(~self.word_end, NEG_INF).max(dim=2))
        slot_ids = torch.arange(beam, device=device)
        scores = torch.cat([top[0], wanted_scores.view(n, -1), *(b.values for b in best)], dim=1)
        beams = torch.cat(
            [
                top[1],
                slot_ids[None, :, None].expand(n, beam, width).reshape(n, -1),
                *(slot_ids[None, :].expand(n, beam) for _ in best),
            ],
            dim=1,
        )
        tokens = torch.cat([top[2], wanted.view(n, -1), *(b.indices for b in best)], dim=1)
        scores = _drop_repeats(scores, beams * vocab + tokens)
        m = scores.size(1)
        parents = progress.gather(1, beams[..., None].expand(n, m, width))  # (n, M, C)
        rows = alive.repeat_interleave(m)
        after = self.advance(parents.view(n * m, width), tokens.view(-1), rows).view(n, m, width)
        met = after > lengths[:, None, :]  # (n, M, C)
        whole = torch.where(met, lengths[:, None, :] + 1, 0).sum(dim=2)
        bank = whole + torch.where(met, 0, after).amax(dim=2)  # (n, M)
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
        ends = None if self.word_end is None else self.word_end.tolist()
        kept = []
        for hyps, b in zip(nbest_lists, sentences, strict=True):
            met = [h for h in hyps if all(contains(h.tokens, c, ends) for c in self.lists[b])]
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


# ---- where the terms ended up ----------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A matched term in one translation: where its target term stands (first and last target
    word, or None when it is not in the translation) and the source words the attention links
    it to (hard alignment; their positions and their text), with their distance in words from
    the source term (0 inside it; None without links)."""

    match: TermMatch
    tgt_words: tuple[int, int] | None
    linked_src_words: list[int]
    distance: int | None
    linked_src_text: str = ""

    @property
    def is_placed(self) -> bool:
        return self.tgt_words is not None

    @property
    def is_far(self) -> bool:
        return self.distance is not None and self.distance > FAR_WORDS

    def to_dict(self) -> dict[str, object]:
        """The JSON form: a "terms" entry of a translation."""
        return {
            "src": self.match.term.src,
            "tgt": self.match.term.tgt,
            "src_words": [self.match.first_word, self.match.last_word],
            "placed": self.is_placed,
            "tgt_words": None if self.tgt_words is None else list(self.tgt_words),
            "aligned_src_words": self.linked_src_words,
            "aligned_src": self.linked_src_text,
            "distance": self.distance,
        }


def place_terms(
    matches: Sequence[TermMatch],
    term_ids: Sequence[Sequence[int]],
    tokens: Sequence[int],
    tgt_pieces: Sequence[str],
    links: Iterable[tuple[int, int]],
    word_end: Sequence[bool] | None = None,
    src_words: Sequence[str] = (),
) -> list[Placement]:
    """Where each match's target term (`term_ids`, its token ids) stands in a translation's
    `tokens` (whose pieces are `tgt_pieces`), and which source words the hard alignment `links`
    (source word, target word) tie it to, spelt out when `src_words` (the source's words, as
    the links count them) are given. With `word_end` (a flag per token id) only an
    occurrence followed by a word end (or the end of the translation) counts, as in the search.
    A term matched n times is looked for at its n-th occurrence, or its last one when the
    translation holds it fewer times."""
    groups = word_groups(tgt_pieces)
    word_of = {piece: w for w, group in enumerate(groups) for piece in group}
    linked: dict[int, set[int]] = {}
    for s, t in links:
        linked.setdefault(t, set()).add(s)
    seen: dict[tuple[int, ...], int] = {}
    out = []
    for match, ids in zip(matches, term_ids, strict=True):
        spans = occurrences(tokens, ids, word_end)
        nth = seen.get(tuple(ids), 0)
        seen[tuple(ids)] = nth + 1
        if not spans:
            out.append(Placement(match, None, [], None))
            continue
        first, last = spans[min(nth, len(spans) - 1)]
        words = (word_of[first], word_of[last])
        aligned = sorted({s for t in range(words[0], words[1] + 1) for s in linked.get(t, ())})
        distance = None
        if aligned:
            distance = min(max(match.first_word - s, s - match.last_word, 0) for s in aligned)
        text = " ".join(src_words[s] for s in aligned if s < len(src_words))
        out.append(Placement(match, words, aligned, distance, text))
    return out


__all__ = [
    "FAR_WORDS",
    "Constraints",
    "Placement",
    "contains",
    "deal",
    "distinct_constraints",
    "match_progress",
    "occurrences",
    "place_terms",
]
