"""Matmul FLOPs of a Transformer training step, from the model shape alone (for MFU figures).

Counts what the kernels execute: every projection, both attention products over the full padded
length (the causal mask does not halve the work of a dense kernel) and the output layer; norms,
softmax and element-wise work are left out, as is usual for MFU. One multiply-add is 2 FLOPs and a
training step costs 3x its forward pass (the backward pass computes two matmuls per forward one).
"""

from __future__ import annotations

from nmt.config import TransformerConfig


def transformer_forward_flops(
    cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int, vocab: int
) -> int:
    """Forward FLOPs of `batch` sentence pairs padded to `src_len` source and `tgt_len` target
    positions, with a `vocab`-sized output layer."""
    d, f = cfg.d_model, cfg.ffn_dim
    src, tgt = batch * src_len, batch * tgt_len  # token positions
    encoder_layer = src * (4 * d * d + 2 * d * f) + 2 * batch * src_len * src_len * d
    decoder_layer = (
        tgt * (4 * d * d + 2 * d * f)  # self-attention projections and feed-forward
        + 2 * batch * tgt_len * tgt_len * d  # self-attention scores and weighted sum
        + tgt * 2 * d * d  # cross-attention query and output projections
        + src * 2 * d * d  # cross-attention keys and values of the memory
        + 2 * batch * tgt_len * src_len * d  # cross-attention scores and weighted sum
    )
    multiply_adds = (
        cfg.enc_layers * encoder_layer + cfg.dec_layers * decoder_layer + tgt * d * vocab
    )
    return 2 * multiply_adds


def transformer_train_flops(
    cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int, vocab: int
) -> int:
    return 3 * transformer_forward_flops(cfg, batch, src_len, tgt_len, vocab)
