"""Feeding the training loop: the training split read in place from its memory-mapped files
(nmt/data/mapped.py), token-budget batches in a seeded order from the batch plan cached in the
prepared folder (nmt/data/plan.py), and the position in the epoch that a checkpoint records.

Each rank takes its own share of every epoch's batches; an update takes `update_freq` of them.
The position is committed only after the update, so a checkpoint never points into the middle of
one and a resumed run continues with the next batch an unbroken run would have taken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmt.config import RunConfig
from nmt.data.batching import Batch, EpochBatches, collate
from nmt.data.mapped import IdColumn, Mappings
from nmt.data.plan import BatchPlan, PlanSettings
from nmt.data.store import ALIGN_COLUMN, PreparedData
from nmt.errors import DataError
from nmt.training.distributed import DistContext, barrier
from nmt.training.state import TrainState


class Feed:
    """This rank's training batches, update by update, read from the mapped split."""

    def __init__(
        self, src: IdColumn, tgt: IdColumn, links: IdColumn | None, plan: BatchPlan, maps: Mappings
    ) -> None:
        self.src, self.tgt, self.links = src, tgt, links
        self.plan = plan
        self.maps = maps
        self.epoch_batches: dict[int, EpochBatches] = {}  # one epoch's order at a time

    def __len__(self) -> int:
        """The training pairs that fit into the model (the plan leaves the others out)."""
        return self.plan.kept

    def start(self, epoch: int) -> None:
        """Have `epoch`'s batches ready (the plan built if need be) before the first update."""
        self.epoch_batches = {epoch: self.plan.batches(epoch)}

    def next_update(self, state: TrainState, count: int) -> tuple[list[Batch], tuple[int, int]]:
        """The `count` micro-batches of the next update (on the CPU) and the position
        `(batches_done, epoch)` after them; `state` itself is not changed."""
        update, position = take_batches(self.plan, self.epoch_batches, state, count)
        batches = [make_batch(self.src, self.tgt, indices, self.links) for indices in update]
        self.maps.release()  # the ids are copied into the batches: let their pages go
        return batches, position


def take_batches(
    plan: BatchPlan,
    cache: dict[int, EpochBatches],
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
            cache[epoch] = plan.batches(epoch)
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
    data: PreparedData, cfg: RunConfig, dist: DistContext, note: Callable[[str], None]
) -> tuple[Feed, bool]:
    """This rank's `Feed` of the training split and whether it carries word alignments (guided
    alignment). The batch plan comes from the prepared folder's cache; one process per machine
    builds what is missing while the others wait (a collective)."""
    tc = cfg.train
    maps = Mappings()
    split = data.mapped_split("train", maps)
    src, tgt = split.column("src_ids"), split.column("tgt_ids")
    guided = check_alignments(split, tc.guided_alignment, data.path)
    plan = BatchPlan(
        data,
        "train",
        src,
        tgt,
        PlanSettings(tc.batch_tokens, tc.seed, cfg.model.max_positions),
        maps,
        rank=dist.rank,
        world_size=dist.world_size,
        builds=dist.local_rank == 0,
        sync=lambda: barrier(dist),
        note=note,
    )
    links = split.column(ALIGN_COLUMN) if guided else None
    return Feed(src, tgt, links, plan, maps), guided
