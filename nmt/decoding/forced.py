"""Forced decoding: the model's probabilities and attention for a translation it is given.

Instead of searching, the decoder is fed the given target (teacher forcing, as in training, but
in eval mode: no dropout, hard attention takes its argmax). This scores a reference or any other
candidate (fairseq's `--score-reference`, Marian's scorer) and shows where the model looks while
it reads that translation, which is how attention is compared with word alignments of reference
translations (Garg et al. 2019, section 6). The results are `Hypothesis` objects, so whatever
handles search output (per-token scores, attention export, hard alignments) handles these too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nmt.config import BOS_ID, EOS_ID, PAD_ID, DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.decoding.beam import Hypothesis, length_batches, length_penalty


@torch.inference_mode()
def force_corpus(
    models: Sequence[nn.Module],
    src_seqs: Sequence[Sequence[int]],
    tgt_seqs: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    device: torch.device | str,
    need_attention: bool = False,
) -> list[Hypothesis]:
    """One `Hypothesis` per (source, target) pair of id sequences (without BOS/EOS), in input
    order: `tokens` is the target, `token_scores` the log-probability of each of its tokens and of
    the final EOS, `score` their sum over `length_penalty` (decode.length_norm; the coverage
    penalty is not added). An ensemble averages log-probabilities as the search does, and its
    attention is the first model's. An empty source is scored too (the model then sees only the
    source EOS). Sources and targets must fit the models' positions (the caller checks)."""
    if len(src_seqs) != len(tgt_seqs):
        raise ValueError(f"{len(src_seqs)} sources but {len(tgt_seqs)} targets")
    for model in models:
        model.eval()
    device = torch.device(device)
    results: list[Hypothesis] = [Hypothesis([], 0.0, 0.0) for _ in tgt_seqs]
    lengths = [max(len(src), len(tgt)) for src, tgt in zip(src_seqs, tgt_seqs, strict=True)]
    for ids in length_batches(lengths, cfg.batch_tokens):
        hyps = _force_batch(models, [src_seqs[i] for i in ids], [tgt_seqs[i] for i in ids],
                            cfg, device, need_attention)  # fmt: skip
        for i, hyp in zip(ids, hyps, strict=True):
            results[i] = hyp
    return results


def _force_batch(
    models: Sequence[nn.Module],
    srcs: Sequence[Sequence[int]],
    tgts: Sequence[Sequence[int]],
    cfg: DecodeConfig,
    device: torch.device,
    need_attention: bool,
) -> list[Hypothesis]:
    src_ids, src_mask = make_src_batch([list(s) for s in srcs])
    src_ids, src_mask = src_ids.to(device), src_mask.to(device)
    width = max(len(t) for t in tgts) + 1
    tgt_in = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(tgts), width), PAD_ID, dtype=torch.long)
    for row, tgt in enumerate(tgts):
        tgt_in[row, : len(tgt) + 1] = torch.tensor([BOS_ID, *tgt])
        tgt_out[row, : len(tgt) + 1] = torch.tensor([*tgt, EOS_ID])
    tgt_in, tgt_out = tgt_in.to(device), tgt_out.to(device)

    total: torch.Tensor | None = None  # (B, T, V): the members' log-probabilities, summed
    attention = None
    member: Any  # a model of nmt.models: forward and forward_with_attention
    for n, member in enumerate(models):
        if need_attention and n == 0:
            logits, attention = member.forward_with_attention(src_ids, src_mask, tgt_in)
        else:
            logits = member(src_ids, src_mask, tgt_in)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        total = log_probs if total is None else total.add_(log_probs)
    assert total is not None
    mean = total / len(models)
    if len(models) > 1:  # the search's ensemble rule: renormalise the mean log-probability
        mean = torch.log_softmax(mean, dim=-1)
    token_lp = mean.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1).cpu()  # (B, T)

    hyps = []
    for row, tgt in enumerate(tgts):
        steps = len(tgt) + 1
        scores = token_lp[row, :steps]
        log_prob = float(scores.sum())
        divisor = float(length_penalty(torch.tensor([steps]), cfg)[0])
        hyps.append(Hypothesis(list(tgt), log_prob, log_prob / divisor,
                               _rows(attention, row, steps, len(srcs[row]) + 1),
                               scores.tolist()))  # fmt: skip
    return hyps


def _rows(
    attention: torch.Tensor | None, row: int, steps: int, src_len: int
) -> torch.Tensor | None:
    """One pair's attention in the search's layout: (T,S) for the RNN (B,T,S), (T,L,H,S) for the
    Transformer (B,L,H,T,S); real target steps and real source positions only."""
    if attention is None:
        return None
    a = attention[row].float().cpu()
    if a.dim() == 2:
        return a[:steps, :src_len].contiguous()
    return a[:, :, :steps, :src_len].permute(2, 0, 1, 3).contiguous()


__all__ = ["force_corpus"]
