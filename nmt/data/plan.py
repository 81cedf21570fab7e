"""The batch plan of a training split, computed once and kept in its prepared directory.

Sorting millions of sentences by length and packing them into token-budget batches
(nmt.data.batching) takes seconds to minutes, and every run and every rank would repeat it. So the
arrays are written once, as `.npy` files inside the prepared directory, and later runs and the
other ranks map them from there instead of computing them:

    DATA/cache/<data hash>/
        lengths-<split>.npy    (2, N) int32: ids per source and target sentence
        plan-<key>/plan.json   the settings behind the key; pairs kept and left out
        plan-<key>/bounds.npy  where each batch starts along the sorted lengths
        plan-<key>/epoch-<e>.npy   epoch e: the kept sentences' rows in training order, then the
                                   order of the batches

The data hash changes whenever `nmt prepare` makes different data (and a rebuilt directory starts
without a cache anyway); the key hashes the settings that decide the plan (batch_tokens, seed,
max_positions). Each file is written under a temporary name and renamed into place, and two ranks
or runs that build one write the same bytes, so whichever rename lands last changes nothing. Where
the directory cannot be written (read-only data), the plan is computed in memory, with a note. The
cache may be deleted at any time; the next run builds it again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt.data.batching import EpochBatches, arrange, epoch_order, pack_bounds, sort_by_length
from nmt.data.mapped import IdColumn, Mappings
from nmt.data.store import PreparedData
from nmt.errors import DataError
from nmt.io import add_output_entry, atomic_open, write_json

CACHE_DIR = "cache"
PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlanSettings:
    """What decides a training split's batches besides the data."""

    batch_tokens: int
    seed: int
    max_positions: int  # pairs whose source + EOS or BOS + target exceed it are left out

    @property
    def key(self) -> str:
        text = json.dumps({"format": PLAN_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def cache_folder(data: PreparedData) -> Path:
    return data.path / CACHE_DIR / data.hash[:16]


class BatchPlan:
    """One rank's batches of a training split, epoch by epoch, from the cache or computed.

    `builds` says whether this process computes and writes missing files (one process per machine:
    the others wait in `sync` and then map what it wrote). Every process of a job must make the
    same calls in the same order, since `sync` is a collective under torchrun.
    """

    def __init__(
        self,
        data: PreparedData,
        split: str,
        src: IdColumn,
        tgt: IdColumn,
        settings: PlanSettings,
        maps: Mappings,
        *,
        rank: int = 0,
        world_size: int = 1,
        builds: bool = True,
        sync: Callable[[], None] = lambda: None,
        note: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.split, self.src, self.tgt, self.settings = split, src, tgt, settings
        self.data_path = data.path
        self.maps, self.rank, self.world_size = maps, rank, world_size
        self.builds, self.sync, self.note = builds, sync, note
        self.build_seconds = 0.0  # spent computing what the cache did not hold
        self.folder = cache_folder(data) / f"plan-{settings.key}"
        self.lengths_path = cache_folder(data) / f"lengths-{split}.npy"
        self.writable = True  # False once the cache folder refused a write
        self.bounds = self._cached(
            self.folder / "bounds.npy", self._compute_bounds, self._bounds_ok
        )
        self.pairs = len(src)
        self.kept = int(self.bounds[-1])
        if self.kept == 0:
            limit = settings.max_positions
            raise DataError(
                f"every training pair is longer than the model's {limit - 1} subwords "
                f"(model.{{rnn,transformer}}.max_positions = {limit}); raise max_positions"
            )
        if self.builds and self.writable and not (self.folder / "plan.json").is_file():
            self._write_summary()
        maps.release()

    @property
    def too_long(self) -> int:
        """Training pairs left out because they exceed `max_positions`."""
        return self.pairs - self.kept

    @property
    def num_batches(self) -> int:
        """Batches per epoch, all ranks together, before they are shared out."""
        return len(self.bounds) - 1

    def batches(self, epoch: int) -> EpochBatches:
        """This rank's batches of `epoch`; each is a list of rows of the split."""
        path = self.folder / f"epoch-{epoch}.npy"
        both = self._cached(path, lambda: self._compute_epoch(epoch), self._epoch_ok)
        order, permutation = both[: self.kept], both[self.kept :]
        return arrange(order, self.bounds, permutation, self.world_size).share(
            self.rank, self.world_size
        )

    # -- computing --------------------------------------------------------------------------------

    def lengths(self) -> np.ndarray:
        """(2, N) int32: ids per source and target sentence of the split, from the cache or
        computed from the Arrow offsets (and cached, by the builder). Needed only to compute."""
        found = self._read(self.lengths_path, self._lengths_ok)
        if found is None:
            found = self._compute_lengths()
            if self.builds:
                self._write(self.lengths_path, found)
        return found

    def _compute_lengths(self) -> np.ndarray:
        return np.stack([self.src.lengths(), self.tgt.lengths()])

    def _kept(self) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """`(rows kept or None for all, their source lengths, their target lengths)`: the pairs
        whose source + EOS and BOS + target fit the model's positions."""
        src_lens, tgt_lens = self.lengths()
        limit = self.settings.max_positions
        fits = (src_lens < limit) & (tgt_lens < limit)
        if fits.all():
            return None, src_lens, tgt_lens
        kept = np.flatnonzero(fits)
        return kept, src_lens[kept], tgt_lens[kept]

    def _compute_bounds(self) -> np.ndarray:
        _, src_lens, tgt_lens = self._kept()
        order = sort_by_length(src_lens, tgt_lens, None)
        return pack_bounds(src_lens[order] + 1, tgt_lens[order] + 1, self.settings.batch_tokens)

    def _compute_epoch(self, epoch: int) -> np.ndarray:
        kept, src_lens, tgt_lens = self._kept()
        order, permutation = epoch_order(
            src_lens, tgt_lens, self.num_batches, True, self.settings.seed, epoch
        )
        del src_lens, tgt_lens
        dtype = np.int32 if self.pairs < 2**31 else np.int64
        rows = (order if kept is None else kept[order]).astype(dtype)
        return np.concatenate([rows, permutation.astype(dtype)])

    # -- checks of what a file holds (a damaged or foreign file is rebuilt) -----------------------

    def _lengths_ok(self, array: np.ndarray) -> bool:
        return array.shape == (2, len(self.src))

    def _bounds_ok(self, array: np.ndarray) -> bool:
        return array.ndim == 1 and len(array) >= 1 and array[0] == 0

    def _epoch_ok(self, array: np.ndarray) -> bool:
        return array.shape == (self.kept + self.num_batches,)

    # -- the cache ------------------------------------------------------------------------------

    def _cached(
        self, path: Path, compute: Callable[[], np.ndarray], is_ok: Callable[[np.ndarray], bool]
    ) -> np.ndarray:
        """The array in `path`: mapped from the cache, or computed (and written, by the builder).
        A collective: every process calls it, and the others wait for the builder."""
        found = self._read(path, is_ok) if self.builds else None
        if self.builds and found is None:
            started = time.monotonic()
            computed = compute()
            self.build_seconds += time.monotonic() - started
            if self._write(path, computed):
                del computed  # mapped from the file instead, so its pages need not stay resident
            else:
                found = computed
        self.sync()
        if found is None:
            found = self._read(path, is_ok)
        if found is None:  # the builder could not write it: compute here too
            found = compute()
        return found

    def _read(self, path: Path, is_ok: Callable[[np.ndarray], bool]) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            array = self.maps.map_npy(path)
        except (OSError, ValueError):
            return None
        return array if is_ok(array) else None

    def _write(self, path: Path, array: np.ndarray) -> bool:
        if not self.writable:
            return False
        try:
            if not (self.data_path / CACHE_DIR).is_dir():
                (self.data_path / CACHE_DIR).mkdir(exist_ok=True)
                add_output_entry(self.data_path, CACHE_DIR)  # so --overwrite may replace it
            with atomic_open(path, "wb", encoding=None) as out:
                np.save(out, array)
        except OSError as exc:
            self.writable = False
            self.note(
                f"note: cannot cache the batch plan in {self.folder.parent} "
                f"({exc.strerror or exc}); computing it in memory on every run"
            )
            return False
        return True

    def _write_summary(self) -> None:
        summary: dict[str, Any] = {
            "split": self.split,
            **asdict(self.settings),
            "pairs": self.pairs,
            "kept": self.kept,
            "too_long": self.too_long,
            "batches_per_epoch": self.num_batches,
        }
        try:
            write_json(self.folder / "plan.json", summary)
        except OSError:
            pass  # a description for people; runs read the arrays
