"""Learning-rate schedules at points where the formulas give exact values, and the optimizer's
parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nmt.config import TrainConfig
from nmt.training.schedule import LRSchedule, build_optimizer


def test_inverse_sqrt_warms_up_linearly_then_decays() -> None:
    s = LRSchedule(TrainConfig(schedule="inverse-sqrt", lr=1e-3, warmup_steps=100), d_model=256)
    assert s.lr_at(1) == pytest.approx(1e-5)
    assert s.lr_at(50) == pytest.approx(5e-4)
    assert s.lr_at(100) == pytest.approx(1e-3)
    assert s.lr_at(400) == pytest.approx(5e-4)  # sqrt(100 / 400) = 1/2
    assert s.lr_at(10_000) == pytest.approx(1e-4)


def test_noam_is_the_paper_formula() -> None:
    s = LRSchedule(TrainConfig(schedule="noam", lr=2.0, warmup_steps=4000), d_model=512)
    for step in (1, 1000, 4000, 20000):
        expected = 2.0 * 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert s.lr_at(step) == pytest.approx(expected)
    assert max(range(1, 10000, 7), key=s.lr_at) == pytest.approx(4000, abs=7)


def test_constant_with_warmup() -> None:
    s = LRSchedule(TrainConfig(schedule="constant", lr=3e-4, warmup_steps=10), d_model=8)
    assert s.lr_at(5) == pytest.approx(1.5e-4)
    assert s.lr_at(10) == s.lr_at(10_000) == pytest.approx(3e-4)
    assert LRSchedule(TrainConfig(schedule="constant", warmup_steps=0), 8).lr_at(1) == 5e-4


def test_plateau_halves_after_patience_bad_validations_down_to_min_lr() -> None:
    cfg = TrainConfig(
        schedule="plateau",
        lr=1e-3,
        warmup_steps=0,
        plateau_factor=0.5,
        plateau_patience=2,
        min_lr=2e-4,
    )
    s = LRSchedule(cfg, d_model=8)
    assert s.observe(10.0, higher_is_better=True) is False  # first score: improvement
    assert s.observe(9.0, True) is False  # one bad validation
    assert s.observe(9.5, True) is True  # second in a row: cut
    assert s.lr_at(100) == pytest.approx(5e-4)
    assert s.observe(11.0, True) is False  # improvement resets the count
    for _ in range(4):
        s.observe(1.0, True)
    assert s.lr_at(100) == pytest.approx(2e-4)  # 1.25e-4 is below min_lr
    # The state is plain values and restores the same curve.
    restored = LRSchedule(cfg, d_model=8)
    restored.load_state_dict(s.state_dict())
    assert restored.lr_at(100) == s.lr_at(100) and restored.best == 11.0
    # Lower is better for losses.
    loss_s = LRSchedule(cfg, d_model=8)
    loss_s.observe(3.0, False)
    loss_s.observe(2.0, False)
    assert loss_s.bad_validations == 0


def test_other_schedules_ignore_validation_for_the_lr() -> None:
    s = LRSchedule(TrainConfig(schedule="inverse-sqrt", warmup_steps=10), d_model=8)
    before = s.lr_at(50)
    for _ in range(10):
        s.observe(1.0, True)
    assert s.lr_at(50) == before and not math.isnan(before)


def test_adamw_decays_matrices_only_and_is_fused_on_cpu() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    opt = build_optimizer(
        model, TrainConfig(optimizer="adamw", weight_decay=0.01), torch.device("cpu")
    )
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([3, 4])]
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 3  # linear bias, norm weight and bias
    assert opt.defaults["fused"]
    adam = build_optimizer(model, TrainConfig(optimizer="adam"), torch.device("cpu"))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.9, 0.98)
