"""Support for the decoding tests: a table-driven model that implements the decoding protocol
with log-probs fixed by (source, prefix), tiny random models of both families, and a teacher-forced
scorer that recomputes a hypothesis' log-prob and attention with `model.forward`."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tiny import random_model
from torch import nn

from nmt.config import BOS_ID, EOS_ID, PAD_ID
from nmt.data.batching import make_src_batch


@dataclass
class TableState:
    src_ids: torch.Tensor  # (B, S), one row per source sentence
    src_mask: torch.Tensor  # (B, S)
    prefix: torch.Tensor  # (R, t): tokens after BOS fed so far, R = B*G hypothesis rows
    step: int = 0

    @property
    def group(self) -> int:
        return self.prefix.size(0) // self.src_ids.size(0)

    def source_of(self, row: int) -> int:
        return row // self.group

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> TableState:
        # The protocol's promises are checked here, so a search that breaks them fails: every new
        # row comes from a row of the sentence its group reads.
        old = rows // self.group  # the sentence each row came from
        kept = torch.arange(self.src_ids.size(0)) if sources is None else sources
        new_group = rows.numel() // kept.numel()
        assert rows.numel() == new_group * kept.numel()
        assert torch.equal(old, kept.repeat_interleave(new_group))
        src_ids, src_mask = self.src_ids.index_select(0, kept), self.src_mask.index_select(0, kept)
        return TableState(src_ids, src_mask, self.prefix.index_select(0, rows), self.step)


class TableModel(nn.Module):
    """Log-probs and attention are fixed functions of (source sentence, target prefix): a seeded
    pseudo-random table, so every number the search sees can be recomputed by enumeration.

    With `probs`, the distribution after a prefix is written by hand instead: `probs[prefix]` (or
    `probs["default"]`) gives the probabilities of (EOS, 4, 5); every other token has probability 0.
    """

    def __init__(
        self,
        vocab: int = 6,
        seed: int = 0,
        eos_bias: float = 0.0,
        scale: float = 1.5,
        probs: dict | None = None,
    ) -> None:
        super().__init__()
        self.vocab, self.seed, self.eos_bias, self.scale = vocab, seed, eos_bias, scale
        self.probs = probs
        self.calls = 0  # decode_step calls, to see early stopping

    def _generator(self, src: Sequence[int], prefix: Sequence[int], what: str) -> torch.Generator:
        key = f"{self.seed}|{what}|{list(src)}|{list(prefix)}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def table(self, src: Sequence[int], prefix: Sequence[int]) -> torch.Tensor:
        if self.probs is not None:
            p = self.probs.get(tuple(prefix), self.probs["default"])
            out = torch.full((self.vocab,), float("-inf"))
            out[[EOS_ID, 4, 5]] = torch.tensor(p, dtype=torch.float64).log().float()
            return out
        logits = torch.randn(self.vocab, generator=self._generator(src, prefix, "p")) * self.scale
        logits[EOS_ID] += self.eos_bias
        return torch.log_softmax(logits, dim=0)  # (V,)

    def attention_row(self, src: Sequence[int], prefix: Sequence[int], width: int) -> torch.Tensor:
        weights = torch.rand(len(src), generator=self._generator(src, prefix, "a")) + 0.1
        row = torch.zeros(width)
        row[: len(src)] = weights / weights.sum()
        return row  # (S,) zero on padding

    @staticmethod
    def _src(src_ids: torch.Tensor, src_mask: torch.Tensor, b: int) -> list[int]:
        return src_ids[b][src_mask[b]].tolist()

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> TableState:
        empty = torch.zeros(src_ids.size(0), 0, dtype=torch.long, device=src_ids.device)
        return TableState(src_ids, src_mask, empty)

    def decode_step(
        self, prev_ids: torch.Tensor, state: TableState, need_attention: bool = False
    ) -> tuple[torch.Tensor, TableState, torch.Tensor | None]:
        self.calls += 1
        prefix = state.prefix  # the first step is fed BOS, which is not part of the prefix
        if state.step > 0:
            prefix = torch.cat([state.prefix, prev_ids[:, None]], dim=1)
        rows, attn = [], []
        for r in range(prev_ids.size(0)):  # a test model may loop; the search may not
            src = self._src(state.src_ids, state.src_mask, state.source_of(r))
            rows.append(self.table(src, prefix[r].tolist()))
            attn.append(self.attention_row(src, prefix[r].tolist(), state.src_ids.size(1)))
        new_state = TableState(state.src_ids, state.src_mask, prefix, state.step + 1)
        return torch.stack(rows), new_state, torch.stack(attn) if need_attention else None

    def forward(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_with_attention(src_ids, src_mask, tgt_in_ids)[0]

    def forward_with_attention(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = tgt_in_ids.shape
        logits = torch.zeros(batch, length, self.vocab)
        attn = torch.zeros(batch, length, src_ids.size(1))
        for b in range(batch):
            src = self._src(src_ids, src_mask, b)
            for t in range(length):
                prefix = tgt_in_ids[b, 1 : t + 1].tolist()
                logits[b, t] = self.table(src, prefix)
                attn[b, t] = self.attention_row(src, prefix, src_ids.size(1))
        return logits, attn


def tiny_model(arch: str, vocab: int = 8, seed: int = 0, **rnn: object) -> nn.Module:
    """tests/tiny.py's small model of the family, with sharper distributions than at
    initialisation (weights x 3) so that hypotheses are well separated; `rnn` changes the RNN's
    settings (`attention="hard"`)."""
    return random_model(arch, vocab, seed, sharpen=3.0, **(rnn if arch == "rnn" else {}))


def teacher_forced(
    models: nn.Module | Sequence[nn.Module],
    src: Sequence[int],
    outputs: Sequence[Sequence[int]],
    per_token: bool = False,
) -> tuple[list, list[torch.Tensor]]:
    """Summed log-prob of each output (+ EOS) given `src` (with `per_token`: the list of each
    token's log-prob, EOS included), and the first model's attention reshaped like
    `Hypothesis.attention`: (T,S) or (T,L,H,S), T = len(output) + 1."""
    members = [models] if isinstance(models, nn.Module) else list(models)
    n = len(outputs)
    src_ids, src_mask = make_src_batch([list(src)] * n)
    width = max(len(o) for o in outputs) + 1
    tgt_in = torch.full((n, width), PAD_ID)
    tgt_out = torch.full((n, width), PAD_ID)
    for i, out in enumerate(outputs):
        tgt_in[i, : len(out) + 1] = torch.tensor([BOS_ID, *out])
        tgt_out[i, : len(out) + 1] = torch.tensor([*out, EOS_ID])
    with torch.no_grad():
        log_probs, attn = [], None
        for j, model in enumerate(members):
            logits, weights = model.forward_with_attention(src_ids, src_mask, tgt_in)
            log_probs.append(torch.log_softmax(logits.float(), dim=-1))
            if j == 0:
                attn = weights
        lp = log_probs[0]
        if len(log_probs) > 1:
            lp = torch.log_softmax(torch.stack(log_probs).mean(0), dim=-1)
    picked = lp.gather(2, tgt_out[:, :, None])[:, :, 0].masked_fill(tgt_out == PAD_ID, 0.0)
    matrices = []
    for i, out in enumerate(outputs):
        a = attn[i]
        if a.dim() == 4:  # Transformer (L, H, T, S) -> (T, L, H, S)
            a = a.permute(2, 0, 1, 3)
        matrices.append(a[: len(out) + 1])
    if per_token:
        return [picked[i, : len(o) + 1].tolist() for i, o in enumerate(outputs)], matrices
    return picked.sum(1).tolist(), matrices
