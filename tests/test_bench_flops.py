"""The analytic FLOP count behind MFU equals what torch's FlopCounterMode counts for a real step."""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import transformer_forward_flops, transformer_train_flops
from nmt.config import ModelConfig, TransformerConfig
from nmt.models import build_model


def test_forward_and_backward_flops_match_the_counter():
    shape = TransformerConfig(
        d_model=32, heads=4, enc_layers=2, dec_layers=3, ffn_dim=48, dropout=0.0, attn_dropout=0.0
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="transformer", transformer=shape), 50, 50, True)
    batch, src_len, tgt_len = 3, 7, 5
    src = torch.randint(4, 50, (batch, src_len))
    mask = torch.ones(batch, src_len, dtype=torch.bool)
    tgt = torch.randint(4, 50, (batch, tgt_len))
    # The math backend runs attention as plain matmuls, which the counter sees on every device.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        model(src, mask, tgt)
    assert forward.get_total_flops() == transformer_forward_flops(shape, 3, 7, 5, 50)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as step:
        model(src, mask, tgt).float().sum().backward()
    assert step.get_total_flops() == transformer_train_flops(shape, 3, 7, 5, 50)
