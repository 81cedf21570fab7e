"""Feeding the training loop: the training split as compact id columns, token-budget batches in
a seeded order, and the position in the epoch that a checkpoint records.

Each rank takes its own share of every epoch's batches (`TokenBatchSampler` with rank and world
size); an update takes `update_freq` of them. The position is committed only after the update, so
a checkpoint never points into the middle of one and a resumed run continues with the next batch
an unbroken run would have taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.config import RunConfig
from nmt.data.batching import Batch, TokenBatchSampler, collate
from nmt.data.store import ALIGN_COLUMN, PreparedData, split_lengths
from nmt.errors import DataError
from nmt.training.distributed import DistContext
from nmt.training.state import TrainState


class IdColumn:
    """A split's token-id column as one flat int32 array plus offsets.

    Far more compact than a Python list of lists (which would take gigabytes for WMT-sized
    corpora) and as fast to index: item `i` is a numpy view of sentence `i`'s ids.
    """

    def __init__(self, split: Any, column: str) -> None:
        # The Arrow table of the split as it is seen (respecting any selection), as one chunk.
        array = split.with_format("arrow")[:].column(column).combine_chunks()
        self.offsets = array.offsets.to_numpy()
        self.values = array.values.to_numpy(zero_copy_only=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class Feed:
    """This rank's training batches, update by update."""

    def __init__(
        self, split: Any, batch_tokens: int, seed: int, dist: DistContext, guided: bool
    ) -> None:
        self.src = IdColumn(split, "src_ids")
        self.tgt = IdColumn(split, "tgt_ids")
        self.links = IdColumn(split, ALIGN_COLUMN) if guided else None
        self.sampler = TokenBatchSampler(
            self.src.lengths(),
            self.tgt.lengths(),
            batch_tokens,
            shuffle=True,
            seed=seed,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        self.epoch_batches: dict[int, list[list[int]]] = {}  # one epoch's order at a time

    def __len__(self) -> int:
        return len(self.src)

    def next_update(self, state: TrainState, count: int) -> tuple[list[Batch], tuple[int, int]]:
        """The `count` micro-batches of the next update (on the CPU) and the position
        `(batches_done, epoch)` after them; `state` itself is not changed."""
        update, position = take_batches(self.sampler, self.epoch_batches, state, count)
        return [make_batch(self.src, self.tgt, indices, self.links) for indices in update], position


def take_batches(
    sampler: TokenBatchSampler,
    cache: dict[int, list[list[int]]],
    state: TrainState,
    count: int,
) -> tuple[list[list[int]], tuple[int, int]]:
    """The next `count` batches of this rank (crossing into the next epoch when one runs out) and
    the position `(batches_done, epoch)` after them. `state` itself is not changed."""
    epoch, done = state.epoch, state.batches_done
    out: list[list[int]] = []
    while len(out) < count:
        if epoch not in cache:
            cache.clear()  # one epoch's order at a time
            cache[epoch] = sampler.batches(epoch)
            if not cache[epoch]:
                raise DataError("the training split yields no batches; is it empty?")
        batches = cache[epoch]
        if done >= len(batches):
            epoch, done = epoch + 1, 0
            continue
        out.append(batches[done])
        done += 1
    return out, (done, epoch)


def make_batch(src: Any, tgt: Any, indices: list[int], links: Any = None) -> Batch:
    """The padded batch of sentences `indices` (on the CPU)."""
    pair_links = None if links is None else [links[i] for i in indices]
    return collate([src[i] for i in indices], [tgt[i] for i in indices], indices, pair_links)


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with the previous micro-batch's kernels.
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


def keep_trainable(split: Any, max_positions: int) -> tuple[Any, int]:
    """The training pairs whose source + EOS and BOS + target fit into `max_positions`, and how
    many were left out. `nmt prepare` filters by words, not knowing the model; this is the
    subword bound. The lengths come from the Arrow offsets, without reading the ids."""
    src_lens, tgt_lens = split_lengths(split)
    fits = (src_lens < max_positions) & (tgt_lens < max_positions)
    too_long = int(len(fits) - fits.sum())
    if too_long == len(fits):
        raise DataError(
            f"every training pair is longer than the model's {max_positions - 1} subwords "
            f"(model.{{rnn,transformer}}.max_positions = {max_positions}); raise max_positions"
        )
    return (split.select(np.flatnonzero(fits)) if too_long else split), too_long


def check_alignments(split: Any, guided_alignment: float, data_dir: str | Path) -> bool:
    """Whether training needs the `align` column; DataError when it does and `split` lacks it."""
    if guided_alignment <= 0:
        return False
    if ALIGN_COLUMN not in split.column_names:
        raise DataError(
            f"{data_dir}: train.guided_alignment={guided_alignment} needs word alignments; "
            "prepare the data with --set alignments=eflomal"
        )
    return True


def load_feed(
    data: PreparedData, data_dir: str | Path, cfg: RunConfig, dist: DistContext
) -> tuple[Feed, bool, int]:
    """This rank's `Feed` of the training split, whether it carries word alignments (guided
    alignment) and how many pairs were left out as longer than the model takes."""
    split, too_long = keep_trainable(data.split("train"), cfg.model.max_positions)
    guided = check_alignments(split, cfg.train.guided_alignment, data_dir)
    return Feed(split, cfg.train.batch_tokens, cfg.train.seed, dist, guided), guided, too_long
