"""Token embeddings shared by both model families."""

from __future__ import annotations

from torch import nn

from nmt.config import PAD_ID


def make_embeddings(
    src_vocab_size: int, tgt_vocab_size: int, dim: int, share: bool
) -> tuple[nn.Embedding, nn.Embedding]:
    """Source and target embeddings (PAD row kept at zero); with `share` one table serves both,
    which a joint vocabulary allows."""
    tgt = nn.Embedding(tgt_vocab_size, dim, padding_idx=PAD_ID)
    if not share:
        return nn.Embedding(src_vocab_size, dim, padding_idx=PAD_ID), tgt
    if src_vocab_size != tgt_vocab_size:
        raise ValueError(
            f"a shared vocabulary needs equal sizes, got {src_vocab_size} and {tgt_vocab_size}"
        )
    return tgt, tgt
