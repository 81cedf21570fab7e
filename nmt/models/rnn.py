"""RNN encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015).

Encoder: embeddings, a bidirectional GRU/LSTM over packed sequences (padding never enters the
recurrence); each direction has hidden_size / 2 units, so the memory is (B,S,hidden_size).
Bridge: the top encoder layer's final forward and backward states, concatenated, go through
tanh(W x + b) to the initial hidden state of every decoder layer (and, for an LSTM, a second bridge
to the initial cells).
Decoder, one step, with e_{t-1} the embedding of the previous token and H the memory:
- Bahdanau (attention before the recurrence, paper section 3.1): c_t = attn(s_{t-1}, H) with the
  previous top-layer state as query, then s_t = RNN([e_{t-1}; c_t], s_{t-1}). Hard attention
  (Xu et al. 2015) takes the same place, with c_t the state at one chosen source position.
- Luong dot / general / local-p / local-m (attention after it, paper section 3):
  s_t = RNN([e_{t-1}; r_{t-1}], s_{t-1}) with r_{t-1} the previous readout ("input feeding",
  section 3.3), then c_t = attn(s_t, H).
- Readout and output (all variants): r_t = dropout(tanh(W_r [s_t; c_t; e_{t-1}] + b_r)), of size
  hidden_size, and logits = W_o P r_t, where P projects hidden_size -> emb_dim when W_o is tied to
  the target embeddings and the sizes differ (P is the identity otherwise). No output bias.
`input_feeding` says whether the attention result enters the recurrence: c_t for Bahdanau (the
paper's model) and r_{t-1} for the Luong variants. Without it the decoder RNN runs over the whole
target in one call during teacher forcing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import PAD_ID, ModelConfig
from nmt.models.attention import (
    BahdanauAttention,
    HardAttention,
    LocalAttention,
    LuongAttention,
    attend_per_slot,
)
from nmt.models.dropout import Dropout
from nmt.models.embeddings import make_embeddings


@dataclass
class RNNState:
    """Decoder state between steps (N = hidden_size, L = decoder layers). B source sentences,
    R = B*G hypothesis rows, G consecutive rows per sentence (the protocol's `select`,
    nmt/models/__init__.py).

    - `memory` (B,S,N): encoder outputs, 0 on padding; `src_mask` (B,S) bool; `src_len` (B,) int64.
    - `keys`: the attention's source-only precomputation, once per sentence: U h + b (B,S,attn_dim)
      for Bahdanau, W_a h (B,S,N) for general / local, `memory` itself for dot.
    - `hidden` (L,R,N), `cell` (L,R,N) for an LSTM else None: the decoder RNN's state.
    - `feed` (R,N): the previous readout r_{t-1} for Luong input feeding, else None.
    - `position`: target positions decoded so far (the same for every row), for local-m.
    """

    memory: torch.Tensor
    src_mask: torch.Tensor
    src_len: torch.Tensor
    keys: torch.Tensor
    hidden: torch.Tensor
    cell: torch.Tensor | None
    feed: torch.Tensor | None
    position: int = 0

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> RNNState:
        """Hypothesis rows `rows` (R',) of the recurrent state; the sentences `sources` (B',) of
        the source side, or None to keep it (see the protocol)."""
        hyp = replace(
            self,
            hidden=self.hidden.index_select(1, rows),
            cell=None if self.cell is None else self.cell.index_select(1, rows),
            feed=None if self.feed is None else self.feed.index_select(0, rows),
        )
        if sources is None:
            return hyp
        memory = self.memory.index_select(0, sources)
        return replace(
            hyp,
            memory=memory,
            src_mask=self.src_mask.index_select(0, sources),
            src_len=self.src_len.index_select(0, sources),
            keys=memory if self.keys is self.memory else self.keys.index_select(0, sources),
        )


class RNNModel(nn.Module):
    """The RNN family behind the decoding protocol of `nmt.models` (see there for shapes)."""

    def __init__(
        self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, shared_vocab: bool
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.shared_vocab = shared_vocab
        r = cfg.rnn
        n, e = r.hidden_size, r.emb_dim
        self.hidden_size = n
        # Not a limit of the recurrence: the bound on sentence length that training and decoding
        # apply to both model families (model.rnn.max_positions).
        self.max_positions = r.max_positions
        self.dec_layers = r.dec_layers
        self.is_lstm = r.cell == "lstm"
        self.input_feeding = r.input_feeding
        # query = previous state, not current
        self.attends_first = r.attention in ("bahdanau", "hard")
        rnn_cls = nn.LSTM if self.is_lstm else nn.GRU

        src_embed, tgt_embed = make_embeddings(
            src_vocab_size, tgt_vocab_size, e, cfg.tie_embeddings and shared_vocab
        )
        # Target first: the registration order fixes the optimizer's parameter order, which
        # checkpoints of earlier versions rely on.
        self.tgt_embed = tgt_embed
        self.src_embed = src_embed
        for emb in {id(m): m for m in (self.src_embed, self.tgt_embed)}.values():
            nn.init.normal_(emb.weight, mean=0.0, std=e**-0.5)
            with torch.no_grad():
                emb.weight[PAD_ID].zero_()
        self.dropout = Dropout(r.dropout)

        self.encoder = rnn_cls(
            e,
            n // 2,
            num_layers=r.enc_layers,
            batch_first=True,
            bidirectional=True,
            dropout=r.dropout if r.enc_layers > 1 else 0.0,
        )
        self.bridge = nn.Linear(n, r.dec_layers * n)
        self.bridge_cell = nn.Linear(n, r.dec_layers * n) if self.is_lstm else None

        self.attention: BahdanauAttention | HardAttention | LuongAttention | LocalAttention
        if r.attention == "bahdanau":
            self.attention = BahdanauAttention(n, n, r.attn_dim)
        elif r.attention == "hard":
            self.attention = HardAttention(n, n, r.attn_dim, r.gumbel_tau)
        elif r.attention in ("local", "local-m"):
            monotonic = r.attention == "local-m"
            self.attention = LocalAttention(n, n, r.attn_dim, r.local_window, monotonic)
        else:
            self.attention = LuongAttention(n, n, r.attention.removeprefix("luong-"))

        self.decoder = rnn_cls(
            e + n if r.input_feeding else e,
            n,
            num_layers=r.dec_layers,
            batch_first=True,
            dropout=r.dropout if r.dec_layers > 1 else 0.0,
        )
        self.readout = nn.Linear(2 * n + e, n)
        if cfg.tie_embeddings:
            self.readout_proj: nn.Module = nn.Linear(n, e, bias=False) if n != e else nn.Identity()
            self.output = nn.Linear(e, tgt_vocab_size, bias=False)
            self.output.weight = self.tgt_embed.weight
        else:
            self.readout_proj = nn.Identity()
            self.output = nn.Linear(n, tgt_vocab_size, bias=False)

    # --- pieces --------------------------------------------------------------------------------

    def _bridge(self, layer: nn.Linear, final: torch.Tensor) -> torch.Tensor:
        """final (2*enc_layers, B, N/2) -> initial decoder state (L, B, N)."""
        top = torch.cat([final[-2], final[-1]], dim=-1)  # (B, N): top layer, forward ; backward
        init = torch.tanh(layer(top))  # (B, L*N)
        return init.view(-1, self.dec_layers, self.hidden_size).transpose(0, 1).contiguous()

    def _recur(
        self, x: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the decoder RNN over x (B,T,in) from `state`: (top states (B,T,N), hidden, cell)."""
        if self.is_lstm:
            out, (hidden, cell) = self.decoder(x, (state.hidden, state.cell))
            return out, hidden, cell
        out, hidden = self.decoder(x, state.hidden)
        return out, hidden, None

    def _attend(self, query: torch.Tensor, state: RNNState) -> tuple[torch.Tensor, torch.Tensor]:
        """query (R,T,N) -> context (R,T,N), weights (R,T,S) against the B sentences' memory."""

        def attend(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return self.attention(
                rows, state.memory, state.keys, state.src_mask, state.src_len, state.position
            )

        context, weights = attend_per_slot(attend, query, state.memory.size(0))
        assert weights is not None  # the RNN's attention always returns its weights
        return context, weights

    def _step(
        self, emb: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, RNNState, torch.Tensor]:
        """One target position: emb (R,1,E) -> (readout (R,1,N), next state, weights (R,1,S))."""
        if self.attends_first:
            query = state.hidden[-1][:, None]  # (R, 1, N): s_{t-1} of the top layer
            context, weights = self._attend(query, state)  # (R, 1, N), (R, 1, S)
            x = torch.cat([emb, context], dim=-1) if self.input_feeding else emb
            out, hidden, cell = self._recur(x, state)  # (R, 1, N)
        else:
            x = torch.cat([emb, state.feed[:, None]], dim=-1) if state.feed is not None else emb
            out, hidden, cell = self._recur(x, state)  # (R, 1, N)
            context, weights = self._attend(out, state)
        readout = self.dropout(torch.tanh(self.readout(torch.cat([out, context, emb], dim=-1))))
        feed = readout[:, 0] if state.feed is not None else None
        new_state = RNNState(
            state.memory,
            state.src_mask,
            state.src_len,
            state.keys,
            hidden,
            cell,
            feed,
            state.position + 1,
        )
        return readout, new_state, weights

    def _decode_parallel(
        self, emb: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing without input feeding: the recurrence does not depend on attention, so
        the RNN runs over all T positions at once. emb (B,T,E) -> readouts (B,T,N), weights."""
        out, _, _ = self._recur(emb, state)  # (B, T, N)
        if self.attends_first:
            query = torch.cat([state.hidden[-1][:, None], out[:, :-1]], dim=1)  # s_0 .. s_{T-1}
        else:
            query = out
        context, weights = self._attend(query, state)  # (B, T, N), (B, T, S)
        readout = self.dropout(torch.tanh(self.readout(torch.cat([out, context, emb], dim=-1))))
        return readout, weights

    def _logits(self, readout: torch.Tensor) -> torch.Tensor:
        return self.output(self.readout_proj(readout))

    # --- the protocol --------------------------------------------------------------------------

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> RNNState:
        """Every row needs at least one real token (packing rejects empty sequences)."""
        src_len = src_mask.sum(dim=1)  # (B,)
        emb = self.dropout(self.src_embed(src_ids))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(
            packed_out, batch_first=True, total_length=src_ids.size(1)
        )  # (B, S, N), 0 on padding
        if self.is_lstm:
            hidden = self._bridge(self.bridge, final[0])
            cell = self._bridge(cast(nn.Linear, self.bridge_cell), final[1])
        else:
            hidden, cell = self._bridge(self.bridge, final), None
        feed = None
        if self.input_feeding and not self.attends_first:
            feed = memory.new_zeros(src_ids.size(0), self.hidden_size)  # r_0 = 0
        keys = self.attention.precompute(memory)
        return RNNState(memory, src_mask, src_len, keys, hidden, cell, feed)

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: logits (B,T,V)."""
        return self.forward_with_attention(src_ids, src_mask, tgt_in_ids)[0]

    def forward_with_attention(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: logits (B,T,V) and the attention weights (B,T,S), which the RNN
        computes either way (its context needs them)."""
        state = self.encode(src_ids, src_mask)
        emb = self.dropout(self.tgt_embed(tgt_in_ids))  # (B, T, E)
        if self.input_feeding:
            readouts, all_weights = [], []
            for t in range(emb.size(1)):
                readout, state, weights = self._step(emb[:, t : t + 1], state)
                readouts.append(readout)
                all_weights.append(weights)
            readout = torch.cat(readouts, dim=1)  # (B, T, N)
            weights = torch.cat(all_weights, dim=1)  # (B, T, S)
        else:
            readout, weights = self._decode_parallel(emb, state)
        return self._logits(readout), weights  # (B, T, V), (B, T, S)

    def decode_step(
        self, prev_ids: torch.Tensor, state: RNNState, need_attention: bool = False
    ) -> tuple[torch.Tensor, RNNState, torch.Tensor | None]:
        """prev_ids (R,) -> log-probs (R,V) float32, the next state, and with `need_attention` the
        attention weights (R,S) float32 (else None; the RNN needs them anyway for the context)."""
        emb = self.dropout(self.tgt_embed(prev_ids[:, None]))  # (R, 1, E)
        readout, new_state, weights = self._step(emb, state)
        log_probs = F.log_softmax(self._logits(readout[:, 0]).float(), dim=-1)  # (R, V)
        return log_probs, new_state, weights[:, 0] if need_attention else None
