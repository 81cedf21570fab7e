"""The optimizer and the learning-rate schedules.

Schedules are pure functions of the update number (plus, for `plateau`, the validation history),
so the training loop sets `group["lr"]` itself before every update (as nanoGPT does) and a resumed
run needs only the step and the small `state_dict()` below to continue on the same curve.

- `inverse-sqrt` (Vaswani et al. 2017, sec. 5.3, in fairseq's parameterisation): linear warmup from
  0 to `lr` over `warmup_steps`, then `lr * sqrt(warmup_steps / step)`.
- `noam`: the paper's formula as written, `lr * d_model**-0.5 * min(step**-0.5, step *
  warmup**-1.5)`; here `lr` is a scale factor (OpenNMT's `learning_rate: 2.0`), not the peak.
- `plateau`: `lr` after a linear warmup, multiplied by `plateau_factor` whenever `plateau_patience`
  validations in a row fail to improve the validation metric, never below `min_lr` (RNN recipes).
- `constant`: `lr` after a linear warmup.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from nmt.config import TrainConfig


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters, with torch's fused kernels.

    Weight decay (AdamW only) applies to matrices, never to biases, norms' gains or other vectors,
    the usual choice since decaying a LayerNorm gain towards 0 only hurts.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": 1e-8}
    cls: type[torch.optim.Optimizer]
    if cfg.optimizer == "adamw":
        cls = torch.optim.AdamW
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        cls = torch.optim.Adam
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    # The fused kernels do the whole update in a few passes instead of several per tensor: a few
    # launches on CUDA; on the CPU one pass over each tensor (2-4x faster than the per-tensor loop
    # on the Multi30k Transformer, bench/NOTES.md).
    if device.type in ("cuda", "cpu") and "fused" in inspect.signature(cls).parameters:
        kwargs["fused"] = True
    return cls(groups, **kwargs)


class LRSchedule:
    """The learning rate as a function of the update number `step` (1 for the first update)."""

    def __init__(self, cfg: TrainConfig, d_model: int) -> None:
        self.kind = cfg.schedule
        self.base_lr = cfg.lr
        self.warmup = max(0, cfg.warmup_steps)
        self.d_model = d_model
        self.factor = cfg.plateau_factor
        self.patience = cfg.plateau_patience
        self.min_lr = cfg.min_lr
        # plateau state: the multiplier reached so far and the validation history it depends on
        self.scale = 1.0
        self.best: float | None = None
        self.bad_validations = 0

    def lr_at(self, step: int) -> float:
        """Learning rate for update number `step` (>= 1)."""
        step = max(1, step)
        if self.kind == "noam":
            warmup = max(1, self.warmup)
            return self.base_lr * self.d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        warm = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        if self.kind == "inverse-sqrt":
            decay = math.sqrt(self.warmup / step) if step > self.warmup > 0 else 1.0
            return self.base_lr * warm * decay
        if self.kind == "plateau":
            return max(self.min_lr, self.base_lr * self.scale) * warm
        return self.base_lr * warm  # constant

    def observe(self, score: float, higher_is_better: bool) -> bool:
        """Record a validation score; for `plateau`, cut the LR after `patience` bad ones in a row.

        Returns True when this call lowered the learning rate.
        """
        improved = self.best is None or (
            score > self.best if higher_is_better else score < self.best
        )
        if improved:
            self.best = score
            self.bad_validations = 0
            return False
        self.bad_validations += 1
        if self.kind == "plateau" and self.bad_validations >= self.patience:
            self.bad_validations = 0
            if self.base_lr * self.scale > self.min_lr:
                self.scale *= self.factor
                return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_validations = int(state["bad_validations"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
