"""The CPU dropout: its drop rate, its scale, its gradient, its determinism and eval mode."""

from __future__ import annotations

import pytest
import torch

from nmt.models.dropout import Dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drop_rate_and_scale_match_p(p: float) -> None:
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400, 1000]), p)
    dropped = float(mask.eq(0).float().mean())
    # 400k Bernoulli(p) draws: the standard error of the rate is below 0.0008.
    assert abs(dropped - p) < 0.004
    kept_values = mask[mask.ne(0)].unique()
    assert kept_values.numel() == 1
    effective_p = round(p * 65536) / 65536
    assert float(kept_values) == pytest.approx(1.0 / (1.0 - effective_p), rel=1e-7)
    # The expectation of the mask is 1 for the effective probability: scaled rate times scale.
    assert float(mask.mean()) == pytest.approx(1.0, abs=0.006)


def test_every_bit_group_is_used_so_neighbours_are_independent() -> None:
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([200_000, 4]), 0.5).eq(0).float()
    # Each of the four int16 lanes of a 64-bit draw drops half its elements, and lanes agree
    # about half the time (independent), not always (shared bits).
    torch.testing.assert_close(mask.mean(0), torch.full((4,), 0.5), atol=0.005, rtol=0)
    agreement = float(mask[:, 0].eq(mask[:, 3]).float().mean())
    assert abs(agreement - 0.5) < 0.005


def test_odd_sizes_and_the_gradient_is_the_mask() -> None:
    torch.manual_seed(2)
    layer = Dropout(0.25).train()
    x = torch.randn(3, 5, 7, requires_grad=True)  # 105 elements: not a multiple of 4
    y = layer(x)
    y.sum().backward()
    assert x.grad is not None
    mask = x.grad
    torch.testing.assert_close(y, x.detach() * mask)
    assert set(mask.unique().tolist()) <= {0.0, mask.max().item()}


def test_same_seed_same_mask_and_eval_is_identity() -> None:
    layer = Dropout(0.1)
    x = torch.randn(6, 9)
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    torch.testing.assert_close(layer(x), first)
    assert not torch.equal(layer(x), first)  # the generator moved on
    assert layer.eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_bf16_input_gets_a_float32_exact_scale() -> None:
    torch.manual_seed(3)
    y = Dropout(0.1).train()(torch.ones(1000, dtype=torch.bfloat16))
    kept = y[y.ne(0)]
    assert y.dtype == torch.float32
    assert float(kept[0]) == pytest.approx(65536 / (65536 - 6554), rel=1e-7)


def test_bad_probability_is_refused() -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
