"""Where and how training computes: the device and process group, the precision (autocast, with
the fallbacks), threads and determinism, and the module the training step calls (the model's
teacher-forced forward, compiled and wrapped for data parallelism when asked).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from nmt.config import RunConfig
from nmt.device import has_native_bf16, resolve_device, reuse_freed_memory
from nmt.errors import ConfigError
from nmt.training.distributed import DistContext, init_distributed

NO_OP = contextlib.nullcontext()


def set_up_compute(cfg: RunConfig) -> tuple[DistContext, torch.device, str]:
    """The process group, this rank's device and the precision training computes in; threads,
    determinism and TF32 set as the config says."""
    device_type = resolve_device(cfg.train.device, "train.device").type
    dist = init_distributed(device_type)
    device = torch.device("cuda", dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    configure_torch(cfg, device)
    return dist, device, precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision: `auto` is bf16 where the device computes bf16 natively (Ampere or
    newer GPUs; CPUs with AMX or AVX512-BF16) and fp32 elsewhere, the faster of the two on every
    such machine measured (bench/NOTES.md, lever 21); `bf16` falls back to fp32 where the device
    has no native bf16 (`precision_note` says so)."""
    native_bf16 = has_native_bf16(device)
    if precision == "auto":
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and not native_bf16:
        return "fp32"
    return precision


def precision_note(requested: str, resolved: str, device: torch.device) -> str | None:
    """The log line for a bf16 request that fell back to fp32; None when nothing changed."""
    if requested != "bf16" or resolved == "bf16":
        return None
    what = "GPU" if device.type == "cuda" else "CPU"
    return f"warning: train.precision bf16: this {what} has no native bf16, so training in float32"


def configure_torch(cfg: RunConfig, device: torch.device) -> None:
    """Threads, determinism and TF32, all decided by the config; on the CPU, large tensors
    reuse freed memory."""
    tc = cfg.train
    if device.type == "cpu":
        reuse_freed_memory()
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    if tc.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        # TF32 matmuls: ~10 bits of mantissa are plenty for training and much faster on Ampere+.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def make_autocast(device: torch.device, precision: str) -> Any:
    """A reusable autocast context: bf16/fp16 mixed precision, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class TeacherForcing(nn.Module):
    """The forward pass a training step makes: the model's logits, and its attention too when
    guided alignment needs it. One module, so that torch.compile and DDP wrap the very call."""

    def __init__(self, model: nn.Module, with_attention: bool) -> None:
        super().__init__()
        self.model: Any = model  # a model of nmt.models (forward, forward_with_attention)
        self.with_attention = with_attention

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.with_attention:
            return self.model.forward_with_attention(src_ids, src_mask, tgt_in_ids)
        return self.model(src_ids, src_mask, tgt_in_ids), None


def wrap_for_training(
    model: nn.Module, cfg: RunConfig, dist: DistContext, device: torch.device, guided: bool
) -> nn.Module:
    """What the training step calls: `TeacherForcing` around `model`, compiled with
    `train.compile` and inside DistributedDataParallel under torchrun. Checkpoints and
    validation keep using `model` itself."""
    wrapped: nn.Module = TeacherForcing(model, guided)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    if dist.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids)
    return wrapped


def no_sync_unless(is_last: bool, dist: DistContext, model: nn.Module) -> Any:
    """DDP's context that skips the gradient all-reduce, for every micro-batch of an update but
    the last; a no-op otherwise."""
    if is_last or not dist.is_distributed:
        return NO_OP
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    return model.no_sync()
