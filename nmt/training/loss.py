"""Label-smoothed cross-entropy over real target tokens (Szegedy et al. 2016; Vaswani et al. 2017,
sec. 5.4), and the guided-alignment loss added to it when `train.guided_alignment` > 0.

The smoothed target distribution puts `1 - eps` on the reference token and spreads `eps` evenly over
the other `V - 2` tokens that can ever be right, leaving out PAD, which the model must never
produce. Positions whose reference is PAD contribute nothing. The loss is returned as a *sum*: the
training loop divides by the number of target tokens of the whole update (all micro-batches, all
ranks), which is what makes gradient accumulation and data parallelism give the same update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from nmt.config import GUIDED_ALIGNMENT_HEAD, PAD_ID, TrainConfig
from nmt.data.batching import Batch


class LossSums(NamedTuple):
    loss: torch.Tensor  # () float32, label-smoothed, summed over real tokens (carries the graph)
    nll: (
        torch.Tensor
    )  # () float32, plain negative log-likelihood summed over real tokens (detached)


class BatchLoss(NamedTuple):
    """The training objective of one batch and its parts, each summed over the batch."""

    loss: torch.Tensor  # () float32, what is minimised (carries the graph)
    nll: torch.Tensor  # () float32, plain negative log-likelihood (detached)
    align: torch.Tensor | None  # () float32, guided-alignment loss before lambda; None without


def label_smoothed_nll(
    logits: torch.Tensor, tgt_out_ids: torch.Tensor, eps: float, pad_id: int = PAD_ID
) -> LossSums:
    """Label-smoothed loss sums for `logits` (B, T, V) against references `tgt_out_ids` (B, T).

    The number of real tokens is the batch's `num_tgt_tokens`; it is not recounted here, to avoid
    a device sync per micro-batch. Computed in float32 whatever the autocast dtype of `logits`,
    since a bf16 log-softmax over a large vocabulary loses the small probabilities that smoothing
    depends on.
    """
    loss, nll = _SmoothedNLL.apply(logits, tgt_out_ids, eps, pad_id)
    return LossSums(loss, nll)


def _smoothed_terms(
    lprobs: torch.Tensor, tgt_out_ids: torch.Tensor, eps: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (smoothed loss, nll), both zero where the reference is PAD."""
    vocab = lprobs.size(-1)
    keep = tgt_out_ids.ne(pad_id)  # (B, T)
    nll = -lprobs.gather(-1, tgt_out_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    nll = nll.masked_fill(~keep, 0.0)
    if eps <= 0:
        return nll, nll
    # -sum of log-probs over every token except PAD and the reference itself
    others = -lprobs.sum(-1) + lprobs[..., pad_id] - nll  # (B, T)
    others = others.masked_fill(~keep, 0.0)
    return (1.0 - eps) * nll + eps / (vocab - 2) * others, nll


class _SmoothedNLL(torch.autograd.Function):
    """The loss with its gradient written out: d loss / d logits = softmax - q per real position,
    q being the smoothed target distribution (Σq = 1). Autograd through log_softmax, gather and
    the PAD column would build two zero-filled (B, T, V) gradients and add three of them: about
    a tenth of a CPU training step at 8k vocabularies (bench/NOTES.md)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: torch.Tensor, tgt_out_ids: torch.Tensor, eps: float, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 at least; float64 logits (gradcheck) stay float64
        lprobs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        loss, nll = _smoothed_terms(lprobs, tgt_out_ids, eps, pad_id)
        ctx.save_for_backward(lprobs, tgt_out_ids)
        ctx.eps, ctx.pad_id, ctx.logits_dtype = eps, pad_id, logits.dtype
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return loss.sum(), nll_sum

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_loss: torch.Tensor, _grad_nll: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None, None]:
        lprobs, tgt_out_ids = ctx.saved_tensors
        eps, pad_id = ctx.eps, ctx.pad_id
        spread = eps / (lprobs.size(-1) - 2) if eps > 0 else 0.0
        grad = lprobs.exp().sub_(spread)  # softmax - q, everywhere but PAD and the reference
        grad[..., pad_id] += spread  # q(PAD) = 0
        ref = tgt_out_ids.unsqueeze(-1)
        grad.scatter_add_(-1, ref, torch.full_like(ref, spread - (1.0 - eps), dtype=grad.dtype))
        keep = tgt_out_ids.ne(pad_id).unsqueeze(-1).to(grad.dtype)
        grad.mul_(keep * grad_loss)
        return grad.to(ctx.logits_dtype), None, None, None


# ---- guided alignment --------------------------------------------------------------------------

# Attention below this counts as this in the log: hard and local attention give exact zeros.
ATTENTION_FLOOR = 1e-9


def guided_alignment_loss(attention: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the stored links to the attention, summed over linked target pieces:

        G_ts = link_ts / sum_s' link_ts'          (each linked target row made a distribution)
        L    = - sum_{t linked} sum_s G_ts log A_ts

    as Garg et al. 2019 (section 4, multi-task learning) put it on one Transformer
    cross-attention head, and Liu et al. 2016 (section 3, the cross-entropy loss) on an RNN's
    attention. attention (B,T,S) rows sum to 1 over
    real source pieces; alignment (B,T,S) bool. For each row L_t is smallest at A_t = G_t, where it
    equals the entropy of G_t: 0 for a target piece linked to one source piece, log n for n links.
    Returned as a float32 sum (the loop normalises it with the translation loss, per target token).
    """
    links = alignment.float()
    gold = links / links.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, T, S), 0 on unlinked rows
    log_attention = attention.float().clamp(min=ATTENTION_FLOOR).log()
    return -(gold * log_attention).sum()


def training_loss(
    logits: torch.Tensor,
    batch: Batch,
    tc: TrainConfig,
    attention: torch.Tensor | None = None,
) -> BatchLoss:
    """The objective of one batch: label-smoothed cross-entropy of `logits` (B,T,V), plus
    `tc.guided_alignment` times the guided-alignment loss of `attention` against the batch's
    links when that weight is > 0. `attention` is what `forward_with_attention` returns: (B,T,S)
    for the RNN (its only attention), (B,L,H,T,S) for the Transformer, whose supervised head is
    head 0 of the penultimate decoder layer (Garg et al. 2019, section 4)."""
    loss, nll = label_smoothed_nll(logits, batch.tgt_out_ids, tc.label_smoothing)
    if tc.guided_alignment <= 0:
        return BatchLoss(loss, nll, None)
    assert attention is not None, "guided alignment needs the model's attention"
    if attention.dim() == 5:  # Transformer (B, L, H, T, S)
        layer, head = GUIDED_ALIGNMENT_HEAD
        attention = attention[:, layer, head]  # (B, T, S)
    assert batch.alignment is not None, "guided alignment needs batches built with their links"
    guided = guided_alignment_loss(attention, batch.alignment)
    return BatchLoss(loss + tc.guided_alignment * guided, nll, guided.detach())
