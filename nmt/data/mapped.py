"""Prepared splits and cached arrays read in place from memory-mapped files.

Training on a corpus larger than memory reads each batch's token ids straight from the split's
Arrow files: `IdColumn` items are numpy views of the mapped file, so nothing proportional to the
corpus is copied when a run starts, and every rank of a machine shares the same page cache.

Pages of a file mapping count as resident memory (RSS) for as long as they stay mapped, and the
kernel maps neighbouring cached pages on every fault, so a run that samples sentences all over a
large file would see its RSS climb towards the file's size. `Mappings` therefore opens files for
random access (no read-ahead) and `release()` unmaps the pages touched so far (`MADV_DONTNEED`:
they stay in the page cache, and a later read maps them again). Called after each batch is built,
it keeps resident memory proportional to a batch, not to the corpus.
"""

from __future__ import annotations

import io
import json
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from nmt.errors import DataError

STATE_FILE = "state.json"  # datasets' list of a saved split's Arrow files
NPY_HEADER_MAX = 1 << 16  # a .npy header is padded to a multiple of 64 bytes; ours take 128


class Mappings:
    """Read-only memory maps of whole files, released together."""

    def __init__(self) -> None:
        self._maps: list[mmap.mmap] = []

    def open(self, path: Path) -> mmap.mmap:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):  # Linux, macOS; elsewhere reads just fault in
            mapped.madvise(mmap.MADV_RANDOM)
        self._maps.append(mapped)
        return mapped

    def release(self) -> None:
        """Unmap every page read so far; the data stays valid (it is read again on next use)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapped in self._maps:
                mapped.madvise(mmap.MADV_DONTNEED)

    def map_npy(self, path: Path) -> np.ndarray:
        """A read-only array over a `.npy` file's data, mapped (not read) from disk."""
        mapped = self.open(path)
        head = io.BytesIO(mapped[:NPY_HEADER_MAX])
        version = npy.read_magic(head)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(head)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: not a plain C-ordered array")
        count = int(np.prod(shape))
        return np.frombuffer(mapped, dtype=dtype, count=count, offset=head.tell()).reshape(shape)


class MappedSplit:
    """A split saved by `nmt prepare` (a `datasets` folder of Arrow stream files), mapped.

    `column(name)` gives an `IdColumn` over a list<int32> column. Opening reads each record batch's
    header (a page or so every 20k rows), then lets those pages go again.
    """

    def __init__(self, folder: Path, maps: Mappings) -> None:
        import pyarrow as pa

        self.folder = folder
        self.batches: list[Any] = []
        try:
            files = [folder / entry["filename"] for entry in _read_state(folder)["_data_files"]]
            for path in files:
                self.batches += list(pa.ipc.open_stream(pa.py_buffer(maps.open(path))))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise DataError(
                f"{folder}: damaged split ({type(exc).__name__}: {str(exc)[:120]}); prepare the "
                "data again with --overwrite"
            ) from None
        if not self.batches:
            raise DataError(f"{folder}: damaged split (no record batches)")
        self.column_names: list[str] = self.batches[0].schema.names
        self.num_rows = sum(batch.num_rows for batch in self.batches)
        maps.release()

    def __len__(self) -> int:
        return self.num_rows

    def column(self, name: str) -> IdColumn:
        return IdColumn([batch.column(name) for batch in self.batches])


def _read_state(folder: Path) -> dict[str, Any]:
    with open(folder / STATE_FILE, encoding="utf-8") as handle:
        state = json.load(handle)
    if not isinstance(state, dict):
        raise ValueError(f"{STATE_FILE} is not a JSON object")
    return state


class IdColumn:
    """A list<int32> column as per-chunk numpy views of its offsets and values: item `i` is a view
    of sentence `i`'s ids, found through the chunk that holds row `i`. No id is copied."""

    def __init__(self, chunks: list[Any]) -> None:
        self._offsets = [_view(chunk.offsets) for chunk in chunks]
        self._values = [_view(chunk.values) for chunk in chunks]
        self._first = np.cumsum([0] + [len(chunk) for chunk in chunks])  # (chunks + 1,)

    def __len__(self) -> int:
        return int(self._first[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        chunk = int(np.searchsorted(self._first, i, side="right")) - 1
        row = i - int(self._first[chunk])
        offsets = self._offsets[chunk]
        return self._values[chunk][offsets[row] : offsets[row + 1]]

    def lengths(self) -> np.ndarray:
        """Ids per sentence, (N,) int32, from the offsets alone."""
        parts = [np.diff(offsets).astype(np.int32) for offsets in self._offsets]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def _view(array: Any) -> np.ndarray:
    # Zero-copy for the int32 buffers nmt prepare writes; a copy only for odd files (nulls).
    return array.to_numpy(zero_copy_only=False)
