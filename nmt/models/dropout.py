"""Dropout with a cheaper random mask on the CPU.

`torch.nn.Dropout` on the CPU draws one Bernoulli sample per element, which costs about 6 ns each:
at Multi30k sizes the dropouts of a Transformer step took ~85 ms, a tenth of a 2-core training
step (bench/NOTES.md). This module draws 64 random bits per four elements and keeps an element
when its 16 bits clear a threshold, about 3.5x cheaper. The drop probability is rounded to a
multiple of 1/65536 (0.1 becomes 0.1000061) and the scale is exact for that probability, so the
expected output still equals the input. On other devices it is `F.dropout`, whose fused kernels
are already fast. Like `nn.Dropout` it draws from torch's global generator, so `torch.manual_seed`
and checkpointed RNG state make runs repeatable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # a 16-bit random integer per element


class Dropout(nn.Module):
    """Zeroes each element with probability `p` while training and scales the rest by 1/(1-p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A float32 mask of `shape`: 0 with probability round(p * 65536) / 65536, else the scale
    that keeps the expectation at 1."""
    count = shape.numel()
    dropped_levels = round(p * _LEVELS)
    # random_(-2**63, None) fills all 64 bits; each int16 view of them is uniform on [-2^15, 2^15).
    bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    levels = bits.view(torch.int16)[:count].view(shape)
    keep = levels >= dropped_levels - _LEVELS // 2
    return keep.to(torch.float32).mul_(_LEVELS / (_LEVELS - dropped_levels))
