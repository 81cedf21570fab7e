"""The decoding protocol both model families implement, and `build_model`.

Conventions, stated once for the whole package:
- `*_ids` are int64 token-id tensors; `*_mask` are bool tensors where True means "real token:
  attend / keep" and False means padding. Special ids are fixed in `nmt.config` (PAD_ID, UNK_ID,
  BOS_ID, EOS_ID).
- Shapes use B batch, S source length, T target length, D model width, L layers, H heads,
  V vocabulary.

Every model is an `nn.Module` with:
- `forward(src_ids (B,S), src_mask (B,S), tgt_in_ids (B,T)) -> logits (B,T,V)`: teacher forcing;
  `tgt_in_ids` starts with BOS; target padding needs no mask because the loss ignores PAD positions
  and causal attention never lets a real position see a later (padded) one.
- `forward_with_attention(src_ids, src_mask, tgt_in_ids) -> (logits (B,T,V), attention)`: the
  same logits and the cross-attention weights, (B,T,S) for the RNN and (B,L,H,T,S) float32 for
  the Transformer (guided-alignment training, forced decoding).
- `encode(src_ids, src_mask) -> DecoderState`: runs the encoder once and returns the state for the
  first decoding step (it holds the encoder memory, its mask, precomputed attention keys, caches).
- `decode_step(prev_ids (R,), state, need_attention=False) -> (log_probs (R,V), state, attn)`: one
  incremental step for the state's R hypothesis rows; log_probs are float32. `attn` is None unless
  `need_attention`; then the cross-attention weights of this step: (R,S) for the RNN, (R,L,H,S)
  for the Transformer. Rows sum to 1 over real source positions and are exactly 0 on padding.
- `state.select(rows (R',), sources (B',) | None = None) -> DecoderState`: the state for the
  hypothesis rows `rows` (reorder, drop or duplicate), used by the searches. The source side
  (encoder memory, its mask, attention keys/values) is kept once per source sentence and shared
  by that sentence's hypotheses: the R rows of a state are B groups of R/B consecutive rows, group
  b reading source b (after `encode`, R = B). `sources` names the source sentences of the new
  state, one per group of R'/B' rows; None keeps them as they are, for a caller that only moves
  rows within their group (beam search between steps), so the source side is never copied.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.errors import ConfigError
from nmt.models.rnn import RNNModel
from nmt.models.transformer import TransformerModel


class DecoderState(Protocol):
    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> DecoderState: ...


def build_model(
    cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, shared_vocab: bool
) -> nn.Module:
    """Build the model that `cfg.arch` names. `shared_vocab` (a joint SentencePiece model) allows
    tying the source embeddings to the target ones as well."""
    if cfg.arch == "rnn":
        return RNNModel(cfg, src_vocab_size, tgt_vocab_size, shared_vocab)
    if cfg.arch == "transformer":
        return TransformerModel(cfg, src_vocab_size, tgt_vocab_size, shared_vocab)
    raise ValueError(f"unknown architecture {cfg.arch!r}")  # config validation rules this out


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameters (by default the trainable ones), counting tied (shared) tensors once."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if (param.requires_grad or not trainable_only) and id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def estimate_parameters(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> int:
    """A lower bound on the parameter count of `build_model(cfg, ...)` (the weight matrices,
    no biases or norms, embeddings untied), computed without building anything."""
    if cfg.arch == "transformer":
        t = cfg.transformer
        d, f = t.d_model, t.ffn_dim
        layers = t.enc_layers * (4 * d * d + 2 * d * f) + t.dec_layers * (8 * d * d + 2 * d * f)
        return layers + (src_vocab_size + tgt_vocab_size) * d
    r = cfg.rnn
    h, e = r.hidden_size, r.emb_dim
    gates = 4 if r.cell == "lstm" else 3
    encoder = gates * ((e + h // 2) * h) * r.enc_layers  # two directions of h // 2 each
    decoder = gates * ((e + h) * h + h * h * (r.dec_layers - 1))
    return encoder + decoder + (src_vocab_size + tgt_vocab_size) * e


def check_model_fits(
    cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, device: torch.device
) -> None:
    """ConfigError when the model's training state (weights, gradients and two Adam moments,
    16 bytes a parameter in float32) cannot fit into the memory of `device` at all: a typo such
    as ffn_dim=100000000 is caught before an allocation takes the machine down."""
    params = estimate_parameters(cfg, src_vocab_size, tgt_vocab_size)
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 16 * params > memory:
        raise ConfigError(
            f"model.{cfg.arch}: at least {params:,} parameters, whose training state needs "
            f"{16 * params / 2**30:,.0f} GiB; this {device.type} has {memory / 2**30:,.0f} GiB. "
            "Check the model sizes"
        )
