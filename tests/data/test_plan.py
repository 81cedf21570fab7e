"""nmt.data.plan: the batch plan cached in the prepared directory. Its batches equal
`TokenBatchSampler`'s on the pairs that fit the model (the reference), on every rank and epoch; a
second run maps what the first wrote; a damaged file is rebuilt; a folder that cannot be written
still trains, computing in memory; the cache never stops `prepare --overwrite`."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nmt.data.batching import TokenBatchSampler
from nmt.data.mapped import Mappings
from nmt.data.plan import BatchPlan, PlanSettings, cache_folder
from nmt.data.store import PreparedData, load_prepared
from nmt.errors import DataError
from nmt.io import output_problem


@pytest.fixture
def data(tiny_prepared: Path, tmp_path: Path) -> PreparedData:
    """A copy of the tiny prepared corpus without a cache."""
    shutil.copytree(tiny_prepared, tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    return load_prepared(tmp_path / "data")


def open_plan(data: PreparedData, settings: PlanSettings, **kwargs: object) -> BatchPlan:
    maps = Mappings()
    split = data.mapped_split("train", maps)
    return BatchPlan(
        data, "train", split.column("src_ids"), split.column("tgt_ids"), settings, maps, **kwargs
    )  # type: ignore[arg-type]


def reference(data: PreparedData, settings: PlanSettings, rank: int, world: int, epoch: int):
    src, tgt = data.lengths("train")
    kept = np.flatnonzero((src < settings.max_positions) & (tgt < settings.max_positions))
    sampler = TokenBatchSampler(
        src[kept], tgt[kept], settings.batch_tokens, seed=settings.seed, rank=rank, world_size=world
    )
    return [[int(kept[i]) for i in batch] for batch in sampler.batches(epoch)]


@pytest.mark.parametrize("max_positions", [1024, 8])  # 8: some pairs are too long for the model
def test_batches_equal_the_samplers_on_every_rank_and_epoch(
    data: PreparedData, max_positions: int
) -> None:
    settings = PlanSettings(batch_tokens=300, seed=3, max_positions=max_positions)
    for world in (1, 3):
        for rank in range(world):
            plan = open_plan(data, settings, rank=rank, world_size=world)
            for epoch in (0, 1):
                assert plan.batches(epoch).to_lists() == reference(
                    data, settings, rank, world, epoch
                )
    src, tgt = data.lengths("train")
    assert plan.too_long == int(((src >= max_positions) | (tgt >= max_positions)).sum())
    assert plan.kept + plan.too_long == plan.pairs == 400


def test_a_second_run_maps_what_the_first_wrote(data: PreparedData) -> None:
    settings = PlanSettings(batch_tokens=300, seed=1, max_positions=1024)
    first = open_plan(data, settings)
    batches = first.batches(0).to_lists()
    assert first.build_seconds > 0
    folder = cache_folder(data) / f"plan-{settings.key}"
    assert {p.name for p in folder.iterdir()} == {"plan.json", "bounds.npy", "epoch-0.npy"}
    assert (cache_folder(data) / "lengths-train.npy").is_file()
    second = open_plan(data, settings)
    assert second.batches(0).to_lists() == batches and second.build_seconds == 0
    # Other settings make another plan beside it.
    open_plan(data, PlanSettings(batch_tokens=500, seed=1, max_positions=1024))
    assert len(list(cache_folder(data).glob("plan-*"))) == 2
    # The cache is part of the prepared folder: --overwrite may still replace it.
    assert output_problem(data.path, "prepare") is None


def test_a_damaged_cache_file_is_rebuilt(data: PreparedData) -> None:
    settings = PlanSettings(batch_tokens=300, seed=1, max_positions=1024)
    batches = open_plan(data, settings).batches(1).to_lists()
    epoch_file = cache_folder(data) / f"plan-{settings.key}" / "epoch-1.npy"
    epoch_file.write_bytes(epoch_file.read_bytes()[:200])
    rebuilt = open_plan(data, settings)
    assert rebuilt.batches(1).to_lists() == batches and rebuilt.build_seconds > 0


def test_an_unwritable_folder_trains_from_memory(
    data: PreparedData, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # where every atomic write starts
    notes: list[str] = []
    settings = PlanSettings(batch_tokens=300, seed=1, max_positions=1024)
    plan = open_plan(data, settings, note=notes.append)
    assert plan.batches(0).to_lists() == reference(data, settings, 0, 1, 0)
    assert len(notes) == 1 and "Read-only file system" in notes[0] and not plan.writable
    assert not list((data.path / "cache").rglob("*.npy"))


def test_a_process_that_does_not_build_waits_and_maps(data: PreparedData) -> None:
    settings = PlanSettings(batch_tokens=300, seed=1, max_positions=1024)
    calls: list[str] = []
    # Without a cache and without the builder, it computes for itself and writes nothing.
    alone = open_plan(data, settings, builds=False, sync=lambda: calls.append("sync"))
    assert alone.batches(0).to_lists() == reference(data, settings, 0, 1, 0)
    assert not (data.path / "cache").exists()
    assert calls == ["sync", "sync"]  # one per array: bounds, then epoch 0
    open_plan(data, settings).batches(0)
    follower = open_plan(data, settings, builds=False)
    assert follower.batches(0).to_lists() == alone.batches(0).to_lists()
    assert follower.build_seconds == 0


def test_every_pair_too_long_is_refused(data: PreparedData) -> None:
    with pytest.raises(DataError, match="every training pair is longer than the model's 1 subw"):
        open_plan(data, PlanSettings(batch_tokens=300, seed=1, max_positions=2))
