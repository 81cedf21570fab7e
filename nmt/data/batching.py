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


def pack_bounds(src_cost: np.ndarray, tgt_cost: np.ndarray, budget: int) -> np.ndarray:
    """Greedy token-budget packing of sentences in the order given: the start offset of every
    batch and the end, `(batches + 1,)` int64.

    Sentences join the current batch while `count * (max src cost + max tgt cost) <= budget`; the
    first sentence of a batch always joins (one over the budget gets a batch of its own). The
    padded size only grows as a batch grows, so each batch ends at the first sentence that would
    overflow it: found with a running maximum over a window per batch, never a loop per sentence.
    Costs are per sentence and at least 1 each, so no batch holds more than `budget // 2` of them.
    """
    n = len(src_cost)
    most = max(budget // 2, 1) + 1  # a window this long always holds an overflow
    starts = [0]
    begin, window = 0, 64
    while begin < n:
        while True:
            end = min(n, begin + window)
            widest = np.maximum.accumulate(np.asarray(src_cost[begin:end], dtype=np.int64))
            widest += np.maximum.accumulate(np.asarray(tgt_cost[begin:end], dtype=np.int64))
            size = widest * np.arange(1, end - begin + 1)  # padded size with 1, 2, ... sentences
            over = np.flatnonzero(size[1:] > budget)
            if over.size:
                count = int(over[0]) + 1
                break
            if end == n or window >= most:
                count = end - begin
                break
            window = min(2 * window, most)
        begin += count
        starts.append(begin)
        window = min(max(64, 2 * count), most)
    return np.asarray(starts, dtype=np.int64)


def sort_by_length(
    src_lens: np.ndarray, tgt_lens: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """Sentence indices sorted by source length, then target length; ties broken by draws from
    `rng` (one per sentence), or kept in index order without one."""
    if rng is None:
        return np.lexsort((tgt_lens, src_lens))  # stable: ties keep index order
    ties = rng.random(len(src_lens))
    return np.lexsort((ties, tgt_lens, src_lens))  # last key sorts first


def divide_evenly(
    starts: np.ndarray, ends: np.ndarray, world_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batches given as `[starts[i], ends[i])` ranges, made a multiple of `world_size` in number:
    the `short` largest batches (earliest first among equals) are halved in place, where halves of
    a batch that fits the budget fit it too; only when too few batches have two or more sentences
    is the tail dropped instead."""
    short = -len(starts) % world_size
    if short == 0:
        return starts, ends
    sizes = ends - starts
    splittable = np.flatnonzero(sizes > 1)
    if len(splittable) < short:
        keep = len(starts) - len(starts) % world_size
        return starts[:keep], ends[:keep]
    chosen = splittable[np.lexsort((splittable, -sizes[splittable]))[:short]]
    halved = np.zeros(len(starts), dtype=np.int64)
    halved[chosen] = 1
    first = np.cumsum(1 + halved) - (1 + halved)  # where each batch's first part goes
    new_starts, new_ends = np.repeat(starts, 1 + halved), np.repeat(ends, 1 + halved)
    middle = starts[chosen] + sizes[chosen] // 2
    new_ends[first[chosen]] = middle
    new_starts[first[chosen] + 1] = middle
    return new_starts, new_ends


@dataclass(frozen=True)
class EpochBatches:
    """One epoch's batches as arrays: batch `j` holds sentences `order[starts[j]:ends[j]]`.

    For a corpus of millions of sentences this is three integer arrays (and `order` may be a
    memory-mapped file, see nmt.data.plan) instead of millions of Python ints in lists.
    """

    order: np.ndarray  # (N,) sentence indices, each batch a contiguous range
    starts: np.ndarray  # (batches,) int64
    ends: np.ndarray  # (batches,) int64

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> list[int]:
        return self.order[self.starts[j] : self.ends[j]].tolist()

    def share(self, rank: int, world_size: int) -> EpochBatches:
        """Every `world_size`-th batch starting at `rank`."""
        return EpochBatches(self.order, self.starts[rank::world_size], self.ends[rank::world_size])

    def to_lists(self) -> list[list[int]]:
        return [self[j] for j in range(len(self))]


def epoch_order(
    src_lens: np.ndarray,
    tgt_lens: np.ndarray,
    batches: int,
    shuffle: bool,
    seed: int,
    epoch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`(sentence order, batch order)` of `epoch`: the sentences sorted by length (ties at random
    with `shuffle`) and a permutation of the `batches` packed along them (the identity without
    `shuffle`), both drawn from one generator seeded by `(seed, epoch)`."""
    rng = np.random.default_rng([seed, epoch]) if shuffle else None
    order = sort_by_length(src_lens, tgt_lens, rng)
    permutation = rng.permutation(batches) if rng is not None else np.arange(batches)
    return order, permutation


def arrange(
    order: np.ndarray, bounds: np.ndarray, permutation: np.ndarray, world_size: int
) -> EpochBatches:
    """The global batches of an epoch: the packed ranges `bounds` of `order` taken in the order
    `permutation`, then divided evenly among `world_size` ranks."""
    starts, ends = divide_evenly(bounds[:-1][permutation], bounds[1:][permutation], world_size)
    return EpochBatches(order, starts, ends)


def padded_tokens(
    src_lens: np.ndarray, tgt_lens: np.ndarray, batches: EpochBatches
) -> tuple[int, int]:
    """`(real, padded)` tokens of `batches` (EOS/BOS count as real)."""
    src_cost = src_lens[batches.order] + 1
    tgt_cost = tgt_lens[batches.order] + 1
    return packed_size(src_cost, tgt_cost, batches.starts, batches.ends)


def packed_size(
    src_cost: np.ndarray, tgt_cost: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[int, int]:
    """`(real, padded)` tokens of the batches `[starts[j], ends[j])` of sentences whose padded
    costs (length + 1 for EOS or BOS) are given in batch order. The ranges must be disjoint."""
    if not len(starts):
        return 0, 0
    # Taken in order of their starts, the disjoint (start, end) pairs rise, and a max over each
    # [start, end) is every other entry of a reduceat over them.
    by_start = np.argsort(starts, kind="stable")
    starts, ends = starts[by_start], ends[by_start]
    edges = np.stack([starts, ends], axis=1).reshape(-1)
    real = 0
    widest = np.zeros(len(starts), dtype=np.int64)  # longest source + longest target per batch
    for cost in (src_cost, tgt_cost):
        cost = np.append(cost, 0)  # a sentinel: an end may equal the number of sentences
        widest += np.maximum.reduceat(cost, edges)[::2]
        totals = np.concatenate([[0], np.cumsum(cost)])
        real += int((totals[ends] - totals[starts]).sum())
    return real, int(((ends - starts) * widest).sum())


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

    The arithmetic lives in the array functions above; training uses them through nmt.data.plan,
    which keeps their results for a corpus in its prepared directory.
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
        self._bounds: np.ndarray | None = None

    @property
    def bounds(self) -> np.ndarray:
        """The packing along the sorted lengths (the same in every epoch), computed once."""
        if self._bounds is None:
            order = sort_by_length(self.src_lens, self.tgt_lens, None)
            self._bounds = self._pack_bounds(order)
        return self._bounds

    def _pack_bounds(self, order: np.ndarray) -> np.ndarray:
        return pack_bounds(self.src_lens[order] + 1, self.tgt_lens[order] + 1, self.batch_tokens)

    def epoch_batches(self, epoch: int) -> EpochBatches:
        """The batches of all ranks for `epoch`, as arrays. The sorted sequence of lengths, hence
        the packing, is the same in every epoch: only the order among equal lengths and the order
        of the batches change."""
        batches = len(self.bounds) - 1
        order, permutation = epoch_order(
            self.src_lens, self.tgt_lens, batches, self.shuffle, self.seed, epoch
        )
        return arrange(order, self.bounds, permutation, self.world_size)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of all ranks for `epoch`, in training order."""
        return self.epoch_batches(epoch).to_lists()

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for `epoch` (deterministic in `seed` and `epoch`)."""
        return self.epoch_batches(epoch).share(self.rank, self.world_size).to_lists()

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Greedy packing along `order` (any order: e.g. a random one, for comparison)."""
        bounds = self._pack_bounds(order)
        return EpochBatches(order, bounds[:-1], bounds[1:]).to_lists()

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of this rank's padded batch tokens that are padding (EOS/BOS count as real)."""
        mine = self.epoch_batches(epoch).share(self.rank, self.world_size)
        real, padded = padded_tokens(self.src_lens, self.tgt_lens, mine)
        return 1.0 - real / padded if padded else 0.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        # The packing is the same in every epoch and the shuffle only reorders its batches, so
        # the unshuffled batches show how many each rank gets.
        starts, _ = divide_evenly(self.bounds[:-1], self.bounds[1:], self.world_size)
        return len(starts) // self.world_size


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
