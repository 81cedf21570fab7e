"""Label-smoothed cross-entropy: checked against torch's CE and a smoothed distribution written
out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nmt.config import PAD_ID
from nmt.training.loss import label_smoothed_nll


def _inputs(vocab: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    logits = torch.randn(2, 4, vocab)
    tgt = torch.tensor([[4, 5, 3, PAD_ID], [6, 3, PAD_ID, PAD_ID]])
    return logits, tgt


def test_no_smoothing_equals_cross_entropy_over_real_tokens() -> None:
    logits, tgt = _inputs()
    loss, nll = label_smoothed_nll(logits, tgt, eps=0.0)
    expected = F.cross_entropy(
        logits.view(-1, 7), tgt.view(-1), ignore_index=PAD_ID, reduction="sum"
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_smoothing_equals_explicit_target_distribution(eps: float) -> None:
    logits, tgt = _inputs()
    vocab = logits.size(-1)
    lprobs = F.log_softmax(logits, -1)
    expected = torch.tensor(0.0)
    for b in range(tgt.size(0)):
        for t in range(tgt.size(1)):
            y = int(tgt[b, t])
            if y == PAD_ID:
                continue
            q = torch.full((vocab,), eps / (vocab - 2))  # spread over tokens other than y and PAD
            q[PAD_ID] = 0.0
            q[y] = 1.0 - eps
            assert abs(float(q.sum()) - 1.0) < 1e-6
            expected = expected - (q * lprobs[b, t]).sum()
    loss, nll = label_smoothed_nll(logits, tgt, eps=eps)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, label_smoothed_nll(logits, tgt, eps=0.0).nll)


def test_padding_positions_change_nothing_and_get_no_gradient() -> None:
    logits, tgt = _inputs()
    logits.requires_grad_(True)
    loss, _ = label_smoothed_nll(logits, tgt, eps=0.1)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[tgt.eq(PAD_ID)] == 0)
    # Trimming the all-PAD last column gives the same sum.
    trimmed, _ = label_smoothed_nll(logits.detach()[:, :3], tgt[:, :3], eps=0.1)
    torch.testing.assert_close(trimmed, loss.detach())


def test_low_precision_logits_are_scored_in_float32() -> None:
    logits, tgt = _inputs()
    loss, nll = label_smoothed_nll(logits.bfloat16(), tgt, eps=0.1)
    assert loss.dtype == torch.float32 and nll.dtype == torch.float32
    reference, _ = label_smoothed_nll(logits.bfloat16().float(), tgt, eps=0.1)
    torch.testing.assert_close(loss, reference)


def _autograd_reference(logits: torch.Tensor, tgt: torch.Tensor, eps: float) -> torch.Tensor:
    """The smoothed loss through autograd only: log_softmax, then q · log p summed."""
    vocab = logits.size(-1)
    lprobs = F.log_softmax(logits.float(), -1)
    q = torch.full_like(lprobs, eps / (vocab - 2))
    q[..., PAD_ID] = 0.0
    q.scatter_(-1, tgt.unsqueeze(-1), 1.0 - eps)
    keep = tgt.ne(PAD_ID).unsqueeze(-1)
    return -(q * lprobs * keep).sum()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_hand_written_gradient_equals_autograd(eps: float) -> None:
    logits, tgt = _inputs(vocab=11)
    mine = logits.clone().requires_grad_(True)
    reference = logits.clone().requires_grad_(True)
    loss, _ = label_smoothed_nll(mine, tgt, eps=eps)
    (2.5 * loss).backward()
    (2.5 * _autograd_reference(reference, tgt, eps)).backward()
    assert mine.grad is not None and reference.grad is not None
    torch.testing.assert_close(loss.detach(), _autograd_reference(logits, tgt, eps))
    torch.testing.assert_close(mine.grad, reference.grad)


def test_gradient_passes_torch_gradcheck() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    tgt = torch.tensor([[4, 5, PAD_ID], [2, 3, 1]])
    assert torch.autograd.gradcheck(lambda x: label_smoothed_nll(x, tgt, eps=0.2).loss, (logits,))


def test_bf16_logits_get_a_bf16_gradient() -> None:
    logits, tgt = _inputs()
    logits = logits.bfloat16().requires_grad_(True)
    label_smoothed_nll(logits, tgt, eps=0.1).loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
