"""Transformer encoder-decoder (Vaswani et al. 2017, "Attention Is All You Need", section 3).

Pre-norm residual blocks by default (x + F(LayerNorm(x)) with a final LayerNorm on each stack, as in
Wang et al. 2019 and fairseq's `normalize_before`), or the paper's post-norm (LayerNorm(x + F(x))).
Embeddings are scaled by sqrt(D) (section 3.4; `scale_embeddings`) and, with `tie_embeddings`,
tied: target embeddings with the output layer, and the source embeddings too when the vocabulary is
shared. The output layer has no bias of its own; `output_bias` adds a fixed one (a buffer, as
Marian's final_logits_bias is).

Attention runs through `F.scaled_dot_product_attention` unless weights are requested; then the
exact path in `nmt.models.attention` returns them. Incremental decoding keeps per-layer key/value
caches for self-attention and the cross-attention keys/values computed once in `encode`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import PAD_ID, ModelConfig, TransformerConfig
from nmt.models.attention import (
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    select_steps,
    sinusoidal_positions,
)
from nmt.models.dropout import Dropout
from nmt.models.embeddings import make_embeddings


@dataclass
class TransformerState:
    """Decoder state between steps. Per-layer tensors are tuples indexed by decoder layer. B
    source sentences, R = B*G hypothesis rows, G consecutive rows per sentence (the protocol's
    `select`, nmt/models/__init__.py).

    - `src_mask` (B,S) bool, True = real source token.
    - `cross_k`, `cross_v`: (B,H,S,dh) per layer, the encoder output projected once in `encode`
      (they are the only form of the encoder memory the decoder needs), once per sentence.
    - `self_k`, `self_v`: (C,R,H,dh) per layer, time-major (`step_cache` in
      nmt/models/attention.py): positions 0..t-1 hold the keys/values of the t target positions
      decoded so far, one set per hypothesis (C >= t; C = 0 after `encode`).
    - `step`: t, the position of the next input token; the same for every row, since all rows are
      decoded in lockstep.

    `decode_step` writes position t into the caches in place, so a state is advanced once (the
    searches never branch from one state twice); `select` makes new caches.
    """

    src_mask: torch.Tensor
    cross_k: tuple[torch.Tensor, ...]
    cross_v: tuple[torch.Tensor, ...]
    self_k: tuple[torch.Tensor, ...]
    self_v: tuple[torch.Tensor, ...]
    step: int

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> TransformerState:
        """Hypothesis rows `rows` (R',) of the self-attention caches; the sentences `sources`
        (B',) of the source side, or None to keep it (see the protocol)."""

        def steps(caches: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(select_steps(cache, self.step, rows) for cache in caches)

        def pick(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            assert sources is not None
            return tuple(t.index_select(0, sources) for t in tensors)

        hyp = replace(self, self_k=steps(self.self_k), self_v=steps(self.self_v))
        if sources is None:
            return hyp
        return replace(
            hyp,
            src_mask=self.src_mask.index_select(0, sources),
            cross_k=pick(self.cross_k),
            cross_v=pick(self.cross_v),
        )


# silu(x) = x sigmoid(x), Marian's "swish"
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
}


class FeedForward(nn.Module):
    """Position-wise feed-forward network, W_2 act(W_1 x + b_1) + b_2 (section 3.3)."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward sublayers, each with dropout, residual and LayerNorm."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.pre_norm = cfg.pre_norm
        self.self_attn = MultiHeadSelfAttention(d, cfg.heads, cfg.attn_dropout)
        self.ffn = FeedForward(d, cfg.ffn_dim, cfg.activation)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B,S,D), key_mask (B,1,1,S) -> (B,S,D)."""
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), key_mask)[0])
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, key_mask)[0]))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention and feed-forward sublayers."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.pre_norm = cfg.pre_norm
        self.self_attn = MultiHeadSelfAttention(d, cfg.heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadCrossAttention(d, cfg.heads, cfg.attn_dropout)
        self.ffn = FeedForward(d, cfg.ffn_dim, cfg.activation)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(cfg.dropout)

    def _cross_and_ffn(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, need: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            out, weights = self.cross_attn(self.norm2(x), k, v, mask, need)
            x = x + self.dropout(out)
            return x + self.dropout(self.ffn(self.norm3(x))), weights
        out, weights = self.cross_attn(x, k, v, mask, need)
        x = self.norm2(x + self.dropout(out))
        return self.norm3(x + self.dropout(self.ffn(x))), weights

    def forward(
        self,
        x: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        key_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Whole target x (B,T,D) -> (B,T,D), cross-attention weights (B,H,T,S) or None."""
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), causal=True)[0])
        else:
            x = self.norm1(x + self.dropout(self.self_attn(x, causal=True)[0]))
        return self._cross_and_ffn(x, cross_k, cross_v, key_mask, need_weights)

    def forward_step(
        self,
        x: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        step: int,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        key_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One position x (R,1,D), target position `step`, with the self-attention caches
        (C,R,H,dh) -> (R,1,D), the caches with position `step` written, cross-attention weights
        (R,H,1,S) or None; the source side (B rows) is shared by R/B consecutive rows."""
        if self.pre_norm:
            out, k, v, _ = self.self_attn.forward_step(self.norm1(x), cache_k, cache_v, step)
            x = x + self.dropout(out)
        else:
            out, k, v, _ = self.self_attn.forward_step(x, cache_k, cache_v, step)
            x = self.norm1(x + self.dropout(out))
        x, weights = self._cross_and_ffn(x, cross_k, cross_v, key_mask, need_weights)
        return x, k, v, weights


class TransformerModel(nn.Module):
    """The Transformer behind the decoding protocol of `nmt.models` (see there for shapes)."""

    position_table: torch.Tensor  # (max_positions, D) buffer, sinusoidal positions only
    logits_bias: torch.Tensor | None  # (V,) buffer with `output_bias`, else None

    def __init__(
        self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, shared_vocab: bool
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.shared_vocab = shared_vocab
        t = cfg.transformer
        d = t.d_model
        self.d_model = d
        self.heads = t.heads
        self.embed_scale = math.sqrt(d) if t.scale_embeddings else 1.0

        src_embed, tgt_embed = make_embeddings(
            src_vocab_size, tgt_vocab_size, d, cfg.tie_embeddings and shared_vocab
        )
        # Target first: the registration order fixes the optimizer's parameter order, which
        # checkpoints of earlier versions rely on.
        self.tgt_embed = tgt_embed
        self.src_embed = src_embed
        self.max_positions = t.max_positions
        if t.positions == "learned":
            self.learned_positions: nn.Embedding | None = nn.Embedding(t.max_positions, d)
        else:
            self.learned_positions = None
            # Not saved in checkpoints: the table is a function of the config.
            self.register_buffer(
                "position_table", sinusoidal_positions(t.max_positions, d), persistent=False
            )
        self.dropout = Dropout(t.dropout)

        self.encoder_layers = nn.ModuleList(EncoderLayer(t) for _ in range(t.enc_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(t) for _ in range(t.dec_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(d) if t.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if t.pre_norm else nn.Identity()
        self.output = nn.Linear(d, tgt_vocab_size, bias=False)
        # Saved in checkpoints but not trained (`nmt train --init` keeps it as imported).
        self.register_buffer("logits_bias", torch.zeros(tgt_vocab_size) if t.output_bias else None)
        self._init_weights()
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        # Xavier for projections (as in the reference implementations); embeddings N(0, D^-1/2) so
        # that after the sqrt(D) scaling their entries have unit variance, like the positions.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, mean=0.0, std=self.d_model**-0.5)
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()
        if self.learned_positions is not None:
            nn.init.normal_(self.learned_positions.weight, mean=0.0, std=self.d_model**-0.5)
        nn.init.normal_(self.output.weight, mean=0.0, std=self.d_model**-0.5)

    @property
    def _decoder(self) -> list[DecoderLayer]:
        return cast("list[DecoderLayer]", self.decoder_layers)  # ModuleList only promises Module

    # --- pieces --------------------------------------------------------------------------------

    def _positions(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Position encodings for positions start .. start+length-1: (length, D)."""
        if start + length > self.max_positions:
            raise ValueError(
                f"sequence of {start + length} positions exceeds model.transformer.max_positions="
                f"{self.max_positions}; truncate the input or raise max_positions"
            )
        if self.learned_positions is not None:
            idx = torch.arange(start, start + length, device=device)
            return self.learned_positions(idx)
        return self.position_table[start : start + length]

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = embedding(ids) * self.embed_scale + self._positions(start, ids.size(1), ids.device)
        return self.dropout(x)  # (B, T, D)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., D) -> logits (..., V)."""
        logits = self.output(self.decoder_norm(x))
        return logits if self.logits_bias is None else logits + self.logits_bias

    def encode_memory(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Encoder output (B,S,D). Padded positions hold values that nothing attends to."""
        key_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.src_embed, src_ids)
        for layer in self.encoder_layers:
            x = layer(x, key_mask)
        return self.encoder_norm(x)

    # --- the protocol --------------------------------------------------------------------------

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: logits (B,T,V) in the compute dtype (bf16 under autocast)."""
        return self._teacher_forced(src_ids, src_mask, tgt_in_ids, need_weights=False)[0]

    def forward_with_attention(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits (B,T,V) and the cross-attention weights (B,L,H,T,S) float32,
        from the exact attention path (the fused kernel returns no weights)."""
        logits, weights = self._teacher_forced(src_ids, src_mask, tgt_in_ids, need_weights=True)
        return logits, torch.stack(weights, dim=1)  # (B, L, H, T, S)

    def _teacher_forced(
        self,
        src_ids: torch.Tensor,
        src_mask: torch.Tensor,
        tgt_in_ids: torch.Tensor,
        need_weights: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B,T,V) and, with `need_weights`, each decoder layer's weights (B,H,T,S)."""
        memory = self.encode_memory(src_ids, src_mask)
        key_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.tgt_embed, tgt_in_ids)
        all_weights = []
        for layer in self._decoder:
            k, v = layer.cross_attn.project_memory(memory)
            x, weights = layer(x, k, v, key_mask, need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self._logits(x), all_weights  # (B, T, V)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> TransformerState:
        memory = self.encode_memory(src_ids, src_mask)
        cross = [layer.cross_attn.project_memory(memory) for layer in self._decoder]
        b = src_ids.size(0)
        dh = self.d_model // self.heads
        empty = memory.new_zeros(0, b, self.heads, dh)  # (0, B, H, dh): nothing decoded yet
        n = len(self.decoder_layers)
        return TransformerState(
            src_mask=src_mask,
            cross_k=tuple(k for k, _ in cross),
            cross_v=tuple(v for _, v in cross),
            self_k=(empty,) * n,
            self_v=(empty,) * n,
            step=0,
        )

    def decode_step(
        self, prev_ids: torch.Tensor, state: TransformerState, need_attention: bool = False
    ) -> tuple[torch.Tensor, TransformerState, torch.Tensor | None]:
        """prev_ids (R,) -> log-probs (R,V) float32, the next state, and with `need_attention` the
        cross-attention weights (R,L,H,S) float32 (else None)."""
        key_mask = state.src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.tgt_embed, prev_ids[:, None], start=state.step)  # (R, 1, D)
        new_k, new_v, all_weights = [], [], []
        for i, layer in enumerate(self._decoder):
            x, k, v, weights = layer.forward_step(
                x,
                state.self_k[i],
                state.self_v[i],
                state.step,
                state.cross_k[i],
                state.cross_v[i],
                key_mask,
                need_attention,
            )
            new_k.append(k)
            new_v.append(v)
            if weights is not None:
                all_weights.append(weights[:, :, 0])  # (R, H, S)
        logits = self._logits(x[:, 0])  # (R, V)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        new_state = replace(state, self_k=tuple(new_k), self_v=tuple(new_v), step=state.step + 1)
        attn = torch.stack(all_weights, dim=1) if need_attention else None  # (R, L, H, S)
        return log_probs, new_state, attn
