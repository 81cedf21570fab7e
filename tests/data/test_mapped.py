"""nmt.data.mapped: a prepared split read in place. Ids come out as views of the mapped file (no
copy into Arrow's memory pool, so start-up memory does not grow with the corpus), equal to what
`datasets` reads, and stay valid after their pages are released."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from nmt.data.mapped import IdColumn, Mappings
from nmt.data.store import SPLITS_DIR, load_prepared
from nmt.errors import DataError


def test_ids_equal_the_datasets_rows_and_are_views_of_the_file(tiny_prepared: Path) -> None:
    data = load_prepared(tiny_prepared)
    expected = data.split("train")
    allocated = pa.total_allocated_bytes()
    maps = Mappings()
    split = data.mapped_split("train", maps)
    src, tgt = split.column("src_ids"), split.column("tgt_ids")
    assert pa.total_allocated_bytes() == allocated  # nothing copied into Arrow's memory pool
    assert len(split) == len(src) == len(expected) == 400
    assert set(split.column_names) >= {"src", "tgt", "src_ids", "tgt_ids"}
    for i in (0, 1, 199, 399):
        assert src[i].tolist() == expected[i]["src_ids"]
        assert tgt[i].tolist() == expected[i]["tgt_ids"]
        assert not src[i].flags.owndata and src[i].dtype == np.int32
    assert src.lengths().tolist() == [len(ids) for ids in expected["src_ids"]]
    maps.release()  # pages let go: the views read them again
    assert [ids.tolist() for ids in tgt] == list(expected["tgt_ids"])


def test_ids_across_record_batches(tmp_path: Path) -> None:
    # Three chunks of different sizes: row i lies in the chunk whose first row is at most i.
    rows = [[i] * (i % 4) for i in range(23)]
    chunks = [
        pa.array(rows[a:b], type=pa.list_(pa.int32())) for a, b in ((0, 10), (10, 11), (11, 23))
    ]
    column = IdColumn(chunks)
    assert len(column) == 23
    assert [column[i].tolist() for i in range(23)] == rows
    assert column.lengths().tolist() == [i % 4 for i in range(23)]


def test_npy_files_map_to_the_saved_arrays(tmp_path: Path) -> None:
    maps = Mappings()
    for array in (np.arange(10, dtype=np.int64), np.arange(12, dtype=np.int32).reshape(2, 6)):
        np.save(tmp_path / "a.npy", array)
        mapped = maps.map_npy(tmp_path / "a.npy")
        assert mapped.dtype == array.dtype and np.array_equal(mapped, array)
        assert not mapped.flags.writeable
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 2))))
    with pytest.raises(ValueError, match="not a plain C-ordered array"):
        maps.map_npy(tmp_path / "f.npy")


def test_a_damaged_split_is_one_clear_error(tiny_prepared: Path, tmp_path: Path) -> None:
    copy = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, copy, ignore=shutil.ignore_patterns("cache"))
    arrow = next((copy / SPLITS_DIR / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-700])  # the last record batch cut short
    with pytest.raises(DataError, match=r"splits/train: damaged split"):
        load_prepared(copy).mapped_split("train", Mappings())
    with pytest.raises(DataError, match="no split 'dev'"):
        load_prepared(copy).mapped_split("dev", Mappings())
