"""Bucketed linear-layer rows (nmt/models/row_buckets.py): few shapes, the same maths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nmt.config import ModelConfig, RNNConfig, TransformerConfig
from nmt.models import build_model
from nmt.models.row_buckets import bucket_linear_rows, padded_rows


def test_buckets_add_under_a_sixteenth_and_are_few() -> None:
    buckets = {padded_rows(rows) for rows in range(1, 4097)}
    for rows in range(1, 4097):
        padded = padded_rows(rows)
        assert rows <= padded < rows + max(16, rows / 16)
        assert padded_rows(padded) == padded  # a bucket is its own bucket
    # multiples of 16 up to 256, then 16 per octave (256-512, 512-1024, 1024-2048, 2048-4096)
    assert len(buckets) == 16 + 4 * 16


def small(arch: str) -> nn.Module:
    cfg = ModelConfig(
        arch=arch,  # type: ignore[arg-type]
        rnn=RNNConfig(emb_dim=8, hidden_size=16, attn_dim=8, dropout=0.0),
        transformer=TransformerConfig(
            d_model=16,
            heads=2,
            enc_layers=1,
            dec_layers=1,
            ffn_dim=32,
            dropout=0.0,
            attn_dropout=0.0,
        ),  # fmt: skip
    )
    return build_model(cfg, 30, 30, shared_vocab=True)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_bucketed_rows_give_the_same_outputs_and_gradients(arch: str) -> None:
    torch.manual_seed(0)
    plain, bucketed = small(arch), small(arch)
    bucketed.load_state_dict(plain.state_dict())
    handles = bucket_linear_rows(bucketed)
    rows_seen = []
    for module in bucketed.modules():  # registered after ours: sees what the product gets
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(lambda m, args: rows_seen.append(args[0].shape))
    src = torch.randint(4, 30, (3, 7))
    tgt = torch.randint(4, 30, (3, 5))
    mask = torch.ones(3, 7, dtype=torch.bool)
    outputs = []
    for model in (plain, bucketed):
        logits = model(src, mask, tgt)
        logits.float().pow(2).mean().backward()
        outputs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-6, rtol=1e-5)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, atol=1e-6, rtol=1e-5)
    assert rows_seen and all(len(s) == 2 and s[0] == padded_rows(s[0]) for s in rows_seen)
    assert any(s[0] not in (21, 15, 3) for s in rows_seen)  # padded, not the raw B*S, B*T, B
    for handle in handles:
        handle.remove()
    assert bucketed(src, mask, tgt).shape == (3, 5, 30)
