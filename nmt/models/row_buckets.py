"""Matmul shapes that repeat, so that oneDNN's bf16 kernels are built once (CPU training).

On the CPU, bf16 matmuls run through oneDNN, which builds (JIT-compiles) a kernel for every new
shape and keeps it in a cache. Building is slow next to running: on an Intel Xeon with AMX, a
(2,000 x 256) x (256 x 1,024) bf16 product took 8 ms the first time and 0.6 ms once built, while
float32 (MKL, nothing to build) takes 7.5 ms. Token-budget batches give a new row count
(sentences x length) to nearly every update, so bf16 training kept building kernels: slower than
float32 on that CPU, and the cache grew to gigabytes (bench/NOTES.md, levers 8 and 19).

`bucket_linear_rows` pads the rows of every linear layer's input with zeros up to a bucket (16
buckets per octave: at most 1/16 extra rows) and slices them off the output, so a run meets a
few hundred shapes and each kernel is built once. Padded rows add zero to the weight and bias
gradients and the real rows' outputs are those of the unpadded product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


def padded_rows(rows: int) -> int:
    """`rows` rounded up to its bucket: a multiple of 2^(bit_length - 5), i.e. 16 buckets per
    octave (at most 1/16 extra) from 256 rows up, multiples of 16 below."""
    step = 1 << max(4, rows.bit_length() - 5)
    return -(-rows // step) * step


def bucket_linear_rows(model: nn.Module) -> list[RemovableHandle]:
    """Pad the input rows of each `nn.Linear` in `model` to `padded_rows` (forward hooks, so the
    model's code and checkpoints stay as they are). Returns the hooks' handles."""
    leading: dict[int, torch.Size] = {}  # module id -> its input's leading shape, pre to post hook

    def pad(module: nn.Module, args: tuple[Any, ...]) -> tuple[torch.Tensor]:
        (x,) = args
        shape = x.shape[:-1]
        rows = shape.numel()
        leading[id(module)] = shape
        flat = x.reshape(rows, x.size(-1))
        extra = padded_rows(rows) - rows
        return (F.pad(flat, (0, 0, 0, extra)) if extra else flat,)  # (rows + extra, in)

    def unpad(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        shape = leading.pop(id(module))
        return out[: shape.numel()].view(*shape, out.size(-1))  # (..., out)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(pad))
            handles.append(module.register_forward_hook(unpad))
    return handles
