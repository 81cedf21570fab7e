"""Micro-benchmarks of single training levers, each against the plain PyTorch way it replaced.

    python -m bench.micro [--repeats 15]

- loss: label-smoothed loss forward + backward at Multi30k batch size (146 x 14 x 8k logits), our
  hand-written gradient vs autograd through log_softmax, gather and the PAD column;
- dropout: one (146, 14, 256) training-mode dropout, ours vs `F.dropout`;
- matmul: a (2044 x 256) @ (256 x 8000) output-layer product in float32 vs bfloat16.

Prints the median milliseconds of each and the ratio; run on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nmt.config import PAD_ID
from nmt.models.dropout import Dropout
from nmt.training.loss import _smoothed_terms, label_smoothed_nll


def autograd_smoothed_loss(logits: torch.Tensor, tgt: torch.Tensor, eps: float) -> torch.Tensor:
    """The loss as it was before the hand-written gradient: the same forward terms, with autograd
    doing the backward."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    return _smoothed_terms(lprobs, tgt, eps, PAD_ID)[0].sum()


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(146, 14, 8000, requires_grad=True)
    tgt = torch.randint(4, 8000, (146, 14))

    def before_loss() -> None:
        autograd_smoothed_loss(logits, tgt, 0.1).backward()
        logits.grad = None

    def after_loss() -> None:
        label_smoothed_nll(logits, tgt, 0.1).loss.backward()
        logits.grad = None

    x = torch.randn(146, 14, 256)
    dropout = Dropout(0.1).train()
    a, b = torch.randn(2044, 256), torch.randn(256, 8000)
    a16, b16 = a.bfloat16(), b.bfloat16()
    pairs = {
        "loss fwd+bwd": (before_loss, after_loss),
        "dropout": (lambda: F.dropout(x, 0.1, True), lambda: dropout(x)),
        "output matmul fp32 -> bf16": (lambda: a @ b, lambda: a16 @ b16),
    }
    print(f"{'lever':<28} {'before ms':>10} {'after ms':>10} {'speed-up':>9}")
    for name, (before, after) in pairs.items():
        old, new = median_ms(before, args.repeats), median_ms(after, args.repeats)
        print(f"{name:<28} {old:>10.2f} {new:>10.2f} {old / new:>8.2f}x")


if __name__ == "__main__":
    main()
