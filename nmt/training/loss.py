"""Label-smoothed cross-entropy over real target tokens (Szegedy et al. 2016; Vaswani et al. 2017,
sec. 5.4).

The smoothed target distribution puts `1 - eps` on the reference token and spreads `eps` evenly over
the other `V - 2` tokens that can ever be right, leaving out PAD, which the model must never
produce. Positions whose reference is PAD contribute nothing. The loss is returned as a *sum*: the
training loop divides by the number of target tokens of the whole update (all micro-batches, all
ranks), which is what makes gradient accumulation and data parallelism give the same update.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from nmt.config import PAD_ID


class LossSums(NamedTuple):
    loss: torch.Tensor  # () float32, label-smoothed, summed over real tokens (carries the graph)
    nll: (
        torch.Tensor
    )  # () float32, plain negative log-likelihood summed over real tokens (detached)


def label_smoothed_nll(
    logits: torch.Tensor, tgt_out_ids: torch.Tensor, eps: float, pad_id: int = PAD_ID
) -> LossSums:
    """Label-smoothed loss sums for `logits` (B, T, V) against references `tgt_out_ids` (B, T).

    The number of real tokens is the batch's `num_tgt_tokens`; it is not recounted here, to avoid
    a device sync per micro-batch. Computed in float32 whatever the autocast dtype of `logits`,
    since a bf16 log-softmax over a large vocabulary loses the small probabilities that smoothing
    depends on.
    """
    vocab = logits.size(-1)
    lprobs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    keep = tgt_out_ids.ne(pad_id)  # (B, T)
    nll = -lprobs.gather(-1, tgt_out_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    nll = nll.masked_fill(~keep, 0.0)
    if eps > 0:
        # -sum of log-probs over every token except PAD and the reference itself
        others = -lprobs.sum(-1) + lprobs[..., pad_id] - nll  # (B, T)
        others = others.masked_fill(~keep, 0.0)
        loss = (1.0 - eps) * nll + eps / (vocab - 2) * others
    else:
        loss = nll
    return LossSums(loss.sum(), nll.sum().detach())
