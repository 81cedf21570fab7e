"""Token-budget batches of similar-length sentences, and the tensors a model step consumes.

Sequence conventions (the models rely on them):
- source: the sentence's ids followed by EOS, padded with PAD on the right;
- target in: BOS followed by the ids; target out: the ids followed by EOS (teacher forcing shifts by
  one), both padded with PAD;
- masks are True on real tokens (EOS/BOS included) and False on padding.
Stored ids (`nmt.data.store`) hold neither BOS nor EOS; they are added here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nmt.config import BOS_ID, EOS_ID, PAD_ID


class TokenBatchSampler:
    """Batches of sentence indices bounded by a padded-token budget, bucketed by length.

    For each batch `len(batch) * ((max src len + 1) + (max tgt len + 1)) <= batch_tokens`: the
    budget counts padded tokens including the EOS / BOS that `collate` adds. A single sentence over
    the budget still gets a batch of its own (it is never dropped).

    Sentences are sorted by source length, then target length, so a batch holds near-equal lengths
    on both sides and little padding. With `shuffle`, ties are broken at random and the batch order
    is shuffled, both from a generator seeded by `(seed, epoch)`: the list depends on nothing else.

    Distributed training: every rank builds the same global list and takes every `world_size`-th
    batch starting at `rank`, so shares are disjoint and cover the list. To give all ranks the same
    number of batches, the largest batches of the global list are split in two until its length
    divides by `world_size`; every sentence is then still seen exactly once per epoch. Only when too
    few batches have two or more sentences to split is the tail of the list dropped.
    """

    def __init__(
        self,
        src_lens: Sequence[int] | np.ndarray,
        tgt_lens: Sequence[int] | np.ndarray,
        batch_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.src_lens = np.asarray(src_lens, dtype=np.int64)
        self.tgt_lens = np.asarray(tgt_lens, dtype=np.int64)
        if self.src_lens.shape != self.tgt_lens.shape or self.src_lens.ndim != 1:
            raise ValueError("src_lens and tgt_lens must be 1-D and of equal length")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.batch_tokens = batch_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0  # for `__iter__`; `set_epoch` moves it
        self._len: int | None = None

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of all ranks for `epoch`, in training order."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            ties = rng.random(len(self.src_lens))
            order = np.lexsort((ties, self.tgt_lens, self.src_lens))  # last key sorts first
        else:
            order = np.lexsort((self.tgt_lens, self.src_lens))  # stable: ties keep index order
        batches = self._pack(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1:
            batches = self._divide_evenly(batches)
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch` (deterministic in `seed` and `epoch`)."""
        return self.global_batches(epoch)[self.rank :: self.world_size]

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        # Greedy packing along the sorted order: add sentences while the padded size fits.
        src_cost = (self.src_lens[order] + 1).tolist()
        tgt_cost = (self.tgt_lens[order] + 1).tolist()
        budget = self.batch_tokens
        batches: list[list[int]] = []
        current: list[int] = []
        max_src = max_tgt = 0
        for index, s, t in zip(order.tolist(), src_cost, tgt_cost, strict=True):
            new_src, new_tgt = max(max_src, s), max(max_tgt, t)
            if current and (len(current) + 1) * (new_src + new_tgt) > budget:
                batches.append(current)
                current, max_src, max_tgt = [index], s, t
            else:
                current.append(index)
                max_src, max_tgt = new_src, new_tgt
        if current:
            batches.append(current)
        return batches

    def _divide_evenly(self, batches: list[list[int]]) -> list[list[int]]:
        short = -len(batches) % self.world_size
        if short == 0:
            return batches
        splittable = [i for i, b in enumerate(batches) if len(b) > 1]
        if len(splittable) < short:
            return batches[: len(batches) - len(batches) % self.world_size]
        # The `short` largest batches (earliest first among equals) are halved in place; halves of
        # a batch that fits the budget fit it too.
        chosen = set(sorted(splittable, key=lambda i: (-len(batches[i]), i))[:short])
        out: list[list[int]] = []
        for i, batch in enumerate(batches):
            if i in chosen:
                half = len(batch) // 2
                out += [batch[:half], batch[half:]]
            else:
                out.append(batch)
        return out

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of this rank's padded batch tokens that are padding (EOS/BOS count as real)."""
        real = padded = 0
        for batch in self.batches(epoch):
            s = self.src_lens[batch] + 1
            t = self.tgt_lens[batch] + 1
            real += int(s.sum() + t.sum())
            padded += len(batch) * int(s.max() + t.max())
        return 1.0 - real / padded if padded else 0.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        # The sorted length sequence, hence the packing, is the same in every epoch: only ties
        # between equal-length sentences and the batch order change. So one epoch gives the count.
        if self._len is None:
            self._len = len(self.batches(0))
        return self._len


@dataclass
class Batch:
    """One training batch. Shapes: B sentences, S = longest source + 1, T = longest target + 1."""

    src_ids: torch.Tensor  # (B, S) int64: ids, EOS, PAD...
    src_mask: torch.Tensor  # (B, S) bool: True on real tokens
    tgt_in_ids: torch.Tensor  # (B, T) int64: BOS, ids, PAD...
    tgt_out_ids: torch.Tensor  # (B, T) int64: ids, EOS, PAD...
    tgt_mask: torch.Tensor  # (B, T) bool: True where tgt_out_ids is real
    indices: list[int]  # the sentences' row numbers in their split
    # (B, T, S) bool: True where target piece t (row t, as in tgt_out_ids) is linked to source
    # piece s by the stored word alignment; None unless guided alignment asked for it.
    alignment: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.indices)

    @property
    def num_src_tokens(self) -> int:
        """Real source tokens, EOS included."""
        return int(self.src_mask.sum())

    @property
    def num_tgt_tokens(self) -> int:
        """Real target tokens to predict, EOS included (the loss's denominator)."""
        return int(self.tgt_mask.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return dataclasses.replace(
            self,
            src_ids=move(self.src_ids),
            src_mask=move(self.src_mask),
            tgt_in_ids=move(self.tgt_in_ids),
            tgt_out_ids=move(self.tgt_out_ids),
            tgt_mask=move(self.tgt_mask),
            alignment=None if self.alignment is None else move(self.alignment),
        )

    def pin_memory(self) -> Batch:
        return dataclasses.replace(
            self,
            src_ids=self.src_ids.pin_memory(),
            src_mask=self.src_mask.pin_memory(),
            tgt_in_ids=self.tgt_in_ids.pin_memory(),
            tgt_out_ids=self.tgt_out_ids.pin_memory(),
            tgt_mask=self.tgt_mask.pin_memory(),
            alignment=None if self.alignment is None else self.alignment.pin_memory(),
        )


def _pad(
    seqs: Sequence[Sequence[int]], prefix: int | None, suffix: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `(ids, mask)`, each (B, longest + extras), with `prefix` / `suffix` added to
    every row. The mask comes from the lengths, not from comparing ids with PAD."""
    extra = (prefix is not None) + (suffix is not None)
    width = max((len(s) for s in seqs), default=0) + extra
    ids = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    start = 1 if prefix is not None else 0
    for row, seq in enumerate(seqs):
        n = len(seq)
        if prefix is not None:
            ids[row, 0] = prefix
        ids[row, start : start + n] = seq
        if suffix is not None:
            ids[row, start + n] = suffix
        mask[row, : n + extra] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def make_src_batch(src_seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`(src_ids (B, S) int64, src_mask (B, S) bool)` with EOS appended: the source side of
    `collate`, for decoding."""
    return _pad(src_seqs, None, EOS_ID)


def collate(
    src_seqs: Sequence[Sequence[int]],
    tgt_seqs: Sequence[Sequence[int]],
    indices: Sequence[int],
    links: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """Build a `Batch` from id lists without BOS/EOS (as stored by `nmt prepare`), with the
    alignment matrix when `links` gives each pair's stored piece links [s0, t0, s1, t1, ...]."""
    if not len(src_seqs) == len(tgt_seqs) == len(indices):
        raise ValueError("collate needs as many targets and indices as sources")
    src_ids, src_mask = make_src_batch(src_seqs)
    tgt_in, _ = _pad(tgt_seqs, BOS_ID, None)
    tgt_out, tgt_mask = _pad(tgt_seqs, None, EOS_ID)
    alignment = None
    if links is not None:
        alignment = torch.zeros(len(indices), tgt_out.size(1), src_ids.size(1), dtype=torch.bool)
        for row, flat in enumerate(links):
            pairs = torch.as_tensor(np.asarray(flat, dtype=np.int64)).view(-1, 2)  # (links, 2)
            alignment[row, pairs[:, 1], pairs[:, 0]] = True
    return Batch(
        src_ids=src_ids,
        src_mask=src_mask,
        tgt_in_ids=tgt_in,
        tgt_out_ids=tgt_out,
        tgt_mask=tgt_mask,
        indices=list(indices),
        alignment=alignment,
    )
