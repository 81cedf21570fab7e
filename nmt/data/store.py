"""The prepared-data directory that `nmt prepare` writes and training / decoding read.

Layout of `DIR/`:
    manifest.json         languages, split sizes, vocab sizes, special ids, config, inputs with
                          their SHA-256, versions, the cache key and the data hash
    config.yaml           the resolved `PrepareConfig`
    stats.json            per split: pairs, tokens, UNKs, length percentiles, dropped pairs by
                          reason; for train also the batch sampler's padding at 4,096 tokens
    spm.model, spm.vocab  the joint SentencePiece model (or spm.<lang>.model/.vocab per side)
    splits/<name>/        one `datasets` Arrow folder per split (train, valid, test names), columns
                          src, tgt (cleaned text), src_ids, tgt_ids (int32, no BOS/EOS); with
                          alignments=eflomal the train split also has `align` (piece links)
    .nmt-output.json      marks the folder as written by `nmt prepare` and lists its entries: the
                          proof `--overwrite` needs before it replaces the folder (nmt.io)

The directory is built under a temporary name and renamed into place (`nmt.io.atomic_dir`), so a
directory with a manifest is always complete. The cache key hashes what determines the contents
(format version, the config, the inputs' SHA-256); a re-run with the same key reuses the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nmt import __version__
from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, PrepareConfig, diff, from_dict, to_dict
from nmt.data.batching import pack_bounds, packed_size
from nmt.data.corpus import CorpusSpec
from nmt.data.mapped import MappedSplit, Mappings
from nmt.data.spm import Tokenizer
from nmt.errors import DataError
from nmt.io import read_json, sha256_file, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.json"
CONFIG = "config.yaml"
SPLITS_DIR = "splits"
ALIGN_COLUMN = "align"  # piece links [s0, t0, s1, t1, ...] of a pair (prepare alignments=eflomal)
PERCENTILES = (50, 90, 95, 99)
# Config fields that change how fast prepare runs, not what it writes: left out of the cache key.
CACHE_NEUTRAL_FIELDS = ("num_proc",)
# Splits at least this large get datasets' progress bar while word-aligned.
PROGRESS_BAR_PAIRS = 200_000


@dataclass
class PreparedData:
    """A prepared directory, opened. Splits load lazily as memory-mapped `datasets.Dataset`s."""

    path: Path
    manifest: dict[str, Any]
    _splits: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def hash(self) -> str:
        """Identifies the data: the cache key (config + inputs) and the SentencePiece models."""
        return data_hash(self.manifest)

    @property
    def src_lang(self) -> str:
        return self.manifest["src_lang"]

    @property
    def tgt_lang(self) -> str:
        return self.manifest["tgt_lang"]

    @property
    def shared_vocab(self) -> bool:
        return bool(self.manifest["shared_vocab"])

    @property
    def src_vocab_size(self) -> int:
        return int(self.manifest["tokenizers"]["src"]["vocab_size"])

    @property
    def tgt_vocab_size(self) -> int:
        return int(self.manifest["tokenizers"]["tgt"]["vocab_size"])

    @property
    def src_spm_path(self) -> Path:
        return self.path / self.manifest["tokenizers"]["src"]["file"]

    @property
    def tgt_spm_path(self) -> Path:
        return self.path / self.manifest["tokenizers"]["tgt"]["file"]

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def config(self) -> PrepareConfig:
        return from_dict(PrepareConfig, self.manifest["config"])

    @property
    def stats(self) -> dict[str, Any]:
        return read_json(self.path / STATS)

    def src_tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.src_spm_path, "src")

    def tgt_tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tgt_spm_path, "tgt")

    def split(self, name: str) -> Any:
        """The split `name` ("train", "valid" or a test name) as a memory-mapped `datasets.Dataset`
        with columns src, tgt (str) and src_ids, tgt_ids (lists of int32 without BOS/EOS)."""
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.path}: no split {name!r}; it has {', '.join(self.split_names)}")
        if name not in self._splits:
            self._splits[name] = self._open_split(name)
        return self._splits[name]

    def _open_split(self, name: str) -> Any:
        """Open a split, checking that it is whole: it loads and has the recorded pair count."""
        import datasets

        folder = self.path / SPLITS_DIR / name
        expected = self.manifest["splits"][name]["pairs"]
        try:
            split = datasets.load_from_disk(str(folder))
            found = len(split)
        except Exception as exc:  # noqa: BLE001 - pyarrow and datasets raise many kinds here
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise DataError(
                f"{folder}: damaged split ({type(exc).__name__}: {first}); prepare the data "
                "again with --overwrite"
            ) from None
        if found != expected:
            raise DataError(
                f"{folder}: damaged split ({found:,} pairs, the manifest records {expected:,}); "
                "prepare the data again with --overwrite"
            )
        return split

    def mapped_split(self, name: str, maps: Mappings) -> MappedSplit:
        """The split `name` read in place (nmt.data.mapped): what training uses, so that a corpus
        larger than memory is never copied into it. DataError when it is damaged."""
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.path}: no split {name!r}; it has {', '.join(self.split_names)}")
        folder = self.path / SPLITS_DIR / name
        split = MappedSplit(folder, maps)
        expected = self.manifest["splits"][name]["pairs"]
        if len(split) != expected:
            raise DataError(
                f"{folder}: damaged split ({len(split):,} pairs, the manifest records "
                f"{expected:,}); prepare the data again with --overwrite"
            )
        return split

    def check_splits(self) -> None:
        """Open every split (DataError when one is damaged); cheap: the files are memory-mapped."""
        for name in self.split_names:
            self.split(name)

    def lengths(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Token counts (no BOS/EOS) of every sentence of a split, `(src_lens, tgt_lens)`, read from
        the Arrow list offsets without materialising the ids (cheap even for millions of rows)."""
        return split_lengths(self.split(name))


def prepared_folder_around(path: Path) -> Path | None:
    """The prepared data folder that `path` lies in (itself included), found by its manifest and
    splits, or None."""
    for folder in (Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents):
        if (folder / MANIFEST).is_file() and (folder / SPLITS_DIR).is_dir():
            return folder
    return None


def split_lengths(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(src_lens, tgt_lens)` of an encoded split (see `PreparedData.lengths`)."""
    table = dataset.data
    return _list_lengths(table.column("src_ids")), _list_lengths(table.column("tgt_ids"))


def _list_lengths(column: Any) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def load_prepared(path: str | Path) -> PreparedData:
    """Open a directory written by `nmt prepare`; a missing or foreign one is a `DataError`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"{path}: prepared data not found; create it with `nmt prepare ... --out {path}`"
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"{path}: not a prepared data directory (no {MANIFEST}); create it with `nmt prepare`"
        )
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: unreadable ({exc})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise DataError(f"{manifest_path}: not an nmt manifest (no format_version)")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path}: written by a newer nmt (format {version}, this one reads {FORMAT_VERSION}); "
            "upgrade nmt or prepare the data again"
        )
    _check_manifest(manifest, manifest_path)
    data = PreparedData(path, manifest)
    for side in ("src", "tgt"):
        model = path / manifest["tokenizers"][side]["file"]
        if not model.is_file():
            raise DataError(f"{model}: SentencePiece model missing from the prepared directory")
    for name in data.split_names:
        if not (path / SPLITS_DIR / name).is_dir():
            raise DataError(f"{path / SPLITS_DIR / name}: split folder missing")
    return data


# Dotted manifest keys that readers rely on, with the type each must have.
MANIFEST_KEYS = {
    "src_lang": str, "tgt_lang": str, "shared_vocab": bool, "cache_key": str, "splits": dict,
    "config": dict, "tokenizers.src.file": str, "tokenizers.src.vocab_size": int,
    "tokenizers.src.sha256": str, "tokenizers.tgt.file": str, "tokenizers.tgt.vocab_size": int,
    "tokenizers.tgt.sha256": str,
}  # fmt: skip


def _check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """DataError naming the first key that is missing or of the wrong type."""
    for dotted, kind in MANIFEST_KEYS.items():
        node: Any = manifest
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, kind):
            raise DataError(
                f"{where}: damaged manifest ({dotted!r} missing or not a {kind.__name__}); "
                "prepare the data again with --overwrite"
            )
    for name, entry in manifest["splits"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("pairs"), int):
            raise DataError(f"{where}: damaged manifest (split {name!r} has no pair count)")


# ---- identity: input hashes, cache key, data hash -----------------------------------------------


def _file_entries(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    """Every file behind the paths (folders walked in sorted order) with its size and SHA-256."""
    entries = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            entries.append(
                {
                    "path": str(file.resolve()),
                    "bytes": file.stat().st_size,
                    "sha256": sha256_file(file),
                }
            )
    return entries


def describe_inputs(specs: Mapping[str, CorpusSpec]) -> dict[str, dict[str, Any]]:
    """Per split: the SPEC, its kind and the local files it reads with their SHA-256.

    A hub dataset has no local files: it is identified by name, config and split (the hub versions
    datasets under their names), so a re-run does not need the network to know it is unchanged.
    """
    out = {}
    for role, spec in specs.items():
        entry: dict[str, Any] = {
            "spec": spec.text,
            "kind": spec.kind,
            "files": _file_entries(spec.paths),
        }
        if spec.fmt:
            entry["format"] = spec.fmt
        if spec.kind in ("hf", "disk"):
            entry["split"] = spec.split
        if spec.kind == "hf":
            entry["hf"] = {"name": spec.name, "config": spec.config, "local": bool(spec.paths)}
        out[role] = entry
    return out


def _input_identity(entry: Mapping[str, Any]) -> dict[str, Any]:
    # Paths are left out on purpose: the same bytes under another name are the same data.
    ident = {k: entry.get(k) for k in ("kind", "format", "split")}
    ident["sha256"] = [f["sha256"] for f in entry.get("files", [])]
    hub = entry.get("hf")
    if hub and not hub.get("local"):
        ident["hf"] = [hub["name"], hub["config"]]
    return ident


def cache_key(cfg: PrepareConfig, inputs: Mapping[str, Mapping[str, Any]]) -> str:
    """SHA-256 of everything that decides a prepared directory's contents."""
    config = to_dict(cfg)
    for name in CACHE_NEUTRAL_FIELDS:
        config.pop(name, None)
    if config.get("alignments") == "none":  # so data prepared before the field keeps its key
        config.pop("alignments")
    # Reused models count by content, not by path.
    for name in ("spm_model", "spm_tgt_model"):
        if config.get(name):
            config[name] = sha256_file(Path(config[name]))
    identity = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "inputs": {role: _input_identity(entry) for role, entry in inputs.items()},
    }
    return _digest(identity)


def data_hash(manifest: Mapping[str, Any]) -> str:
    tokenizers = manifest["tokenizers"]
    return _digest(
        {
            "cache_key": manifest["cache_key"],
            "src": tokenizers["src"]["sha256"],
            "tgt": tokenizers["tgt"]["sha256"],
        }
    )


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_out_dir(
    out: Path, key: str, cfg: PrepareConfig, inputs: Mapping[str, Any], overwrite: bool
) -> PreparedData | None:
    """The existing prepared directory when it matches `key` (reuse it), else None (build anew).

    Refuses (DataError) to replace a prepared directory made from another config or other inputs
    unless `overwrite`, and never replaces a non-empty folder that holds no prepared data.
    With `overwrite` a matching directory is rebuilt too.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another --out")
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise DataError(
                f"{out}: exists, is not empty and holds no prepared data (no {MANIFEST}); "
                "choose another --out or remove it"
            )
        return None
    try:
        manifest = read_json(out / MANIFEST)
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("cache_key") == key and not overwrite:
        data = load_prepared(out)
        data.check_splits()  # a truncated Arrow file must not be reused
        return data
    if overwrite:
        return None
    changed = diff(manifest.get("config", {}), to_dict(cfg))
    changed = [name for name in changed if name not in CACHE_NEUTRAL_FIELDS]
    old_inputs = manifest.get("inputs", {})
    for role in sorted(set(old_inputs) | set(inputs)):
        if role not in old_inputs or role not in inputs:
            changed.append(f"split {role}")
        elif _input_identity(old_inputs[role]) != _input_identity(inputs[role]):
            changed.append(f"input {role}")
    what = ", ".join(changed) or "format"
    raise DataError(
        f"{out}: holds data prepared with a different config or inputs (changed: {what}); "
        "pass --overwrite to replace it, or choose another --out"
    )


# ---- writing ------------------------------------------------------------------------------------


def split_features() -> Any:
    import datasets

    # `List` replaced `Sequence` for list columns in datasets 4; both store Arrow list<int32>.
    list_of = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features(
        {
            "src": datasets.Value("string"),
            "tgt": datasets.Value("string"),
            "src_ids": list_of(datasets.Value("int32")),
            "tgt_ids": list_of(datasets.Value("int32")),
        }
    )


@dataclass(frozen=True)
class TextFile:
    """Cleaned pairs in an Arrow stream file (columns src, tgt), read back in chunks."""

    path: Path
    rows: int

    def __len__(self) -> int:
        return self.rows


def write_text(path: Path, pairs: Iterable[tuple[str, str]], chunk: int = 20_000) -> TextFile:
    """Stream (source, target) pairs into an Arrow file at `path`, `chunk` pairs at a time:
    however large the corpus, only one chunk is ever held in memory."""
    import pyarrow as pa

    schema = pa.schema([("src", pa.string()), ("tgt", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        pairs = iter(pairs)
        while block := list(itertools.islice(pairs, chunk)):
            src, tgt = zip(*block, strict=True)
            writer.write_batch(pa.record_batch([list(src), list(tgt)], schema=schema))
            rows += len(block)
    return TextFile(path, rows)


def iter_chunks(text: TextFile) -> Iterator[Any]:
    """The record batches of a `TextFile`, each read into memory when its turn comes. Plain reads,
    not a memory map: mapped pages would count as resident while mapped, and a pass over a large
    file would leave all of them counted."""
    import pyarrow as pa

    with pa.OSFile(str(text.path), "rb") as source:
        yield from pa.ipc.open_stream(source)


def iter_column(text: TextFile, column: str, rows: np.ndarray | None = None) -> Iterator[str]:
    """The values of one text column in row order; with `rows` (sorted row numbers) only those."""
    first = 0
    for chunk in iter_chunks(text):
        values = chunk.column(column)
        if rows is not None:
            wanted = rows[np.searchsorted(rows, first) : np.searchsorted(rows, first + len(values))]
            values = values.take(wanted - first)
        first += chunk.num_rows
        yield from values.to_pylist()


def write_split(
    root: Path, name: str, text: TextFile, src_tok: Tokenizer, tgt_tok: Tokenizer, threads: int
) -> LengthTally:
    """Encode the pairs of `text` chunk by chunk (SentencePiece's batch encoder on `threads`
    threads; 1: the library's default) and save the split under `root/splits/name` as a
    `datasets` folder, one Arrow record batch per chunk. Memory holds one chunk at a time.
    Returns the split's lengths and unknown-piece counts, tallied on the way."""
    import datasets
    import pyarrow as pa

    features = split_features()
    folder = root / SPLITS_DIR / name
    # datasets writes its own description of the folder (state.json, dataset_info.json) around a
    # one-row file, whose data we then replace with the whole split, streamed.
    one_row = {"src": [""], "tgt": [""], "src_ids": [[]], "tgt_ids": [[]]}
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_dict(one_row, features=features).save_to_disk(str(folder))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    (data_file,) = (entry["filename"] for entry in read_json(folder / "state.json")["_data_files"])
    tally = LengthTally()
    id_lists = pa.list_(pa.int32())
    options: dict[str, Any] = {} if threads <= 1 else {"num_threads": threads}
    with (
        pa.OSFile(str(folder / data_file), "wb") as sink,
        pa.ipc.new_stream(sink, features.arrow_schema) as writer,
    ):
        for chunk in iter_chunks(text):
            src, tgt = chunk.column("src"), chunk.column("tgt")
            src_ids = pa.array(src_tok.encode_batch(src.to_pylist(), **options), type=id_lists)
            tgt_ids = pa.array(tgt_tok.encode_batch(tgt.to_pylist(), **options), type=id_lists)
            tally.add(src_ids, tgt_ids)
            batch = [src, tgt, src_ids, tgt_ids]
            writer.write_batch(pa.record_batch(batch, schema=features.arrow_schema))
    return tally


@contextlib.contextmanager
def progress_bars(show: bool) -> Iterator[None]:
    """datasets' progress bars inside the block only when `show` and standard error is a
    terminal: redirected to a file, their redraws would fill the log."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not (show and sys.stderr.isatty()):
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


class LengthTally:
    """Subword lengths and unknown pieces of a split, counted chunk by chunk: histograms, not
    one number per sentence, so that memory does not grow with the corpus."""

    def __init__(self) -> None:
        self.rows = 0
        self.unk = {"src": 0, "tgt": 0}
        self.hist = {"src": np.zeros(1, dtype=np.int64), "tgt": np.zeros(1, dtype=np.int64)}
        self.pairs: dict[int, int] = {}  # (src length << 32 | tgt length) -> sentences

    def add(self, src_ids: Any, tgt_ids: Any) -> None:
        """Count one chunk: two Arrow list<int32> arrays of equal length."""
        lens = {}
        for side, ids in (("src", src_ids), ("tgt", tgt_ids)):
            lens[side] = np.diff(ids.offsets.to_numpy(zero_copy_only=False)).astype(np.int64)
            self.unk[side] += int(np.count_nonzero(ids.values.to_numpy() == UNK_ID))
            counts = np.bincount(lens[side])
            if len(counts) > len(self.hist[side]):
                counts[: len(self.hist[side])] += self.hist[side]
                self.hist[side] = counts
            else:
                self.hist[side][: len(counts)] += counts
        keys, counts = np.unique((lens["src"] << 32) | lens["tgt"], return_counts=True)
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.pairs[key] = self.pairs.get(key, 0) + count
        self.rows += len(lens["src"])

    def stats(self, read: int, dropped: Mapping[str, int]) -> dict[str, Any]:
        """The split's entry of stats.json; `read` and `dropped` are the pairs read and dropped
        by cleaning. Percentiles as numpy computes them from every length."""
        out: dict[str, Any] = {"read": read, "pairs": self.rows, "dropped": dict(dropped)}
        for side in ("src", "tgt"):
            hist = self.hist[side]
            lens = np.repeat(np.arange(len(hist), dtype=np.int32), hist)  # sorted, briefly
            out[side] = {
                "tokens": int(np.arange(len(hist)) @ hist),
                "unk": self.unk[side],
                "length": {
                    "mean": round(float(lens.mean()), 2) if len(lens) else 0.0,
                    **{
                        f"p{q}": int(np.percentile(lens, q)) if len(lens) else 0
                        for q in PERCENTILES
                    },  # fmt: skip
                    "max": int(lens.max()) if len(lens) else 0,
                },
            }
        return out

    def padding_fraction(self, batch_tokens: int) -> float:
        """Share of padding in an epoch of `TokenBatchSampler` batches of `batch_tokens`: packing
        follows the sorted lengths, which the pair histogram gives in order without a sort."""
        if not self.pairs:
            return 0.0
        keys = np.array(sorted(self.pairs), dtype=np.int64)
        counts = np.array([self.pairs[key] for key in keys.tolist()], dtype=np.int64)
        src_cost = np.repeat(keys >> 32, counts) + 1
        tgt_cost = np.repeat(keys & 0xFFFFFFFF, counts) + 1
        bounds = pack_bounds(src_cost, tgt_cost, batch_tokens)
        real, padded = packed_size(src_cost, tgt_cost, bounds[:-1], bounds[1:])
        return 1.0 - real / padded if padded else 0.0


def add_alignments(root: Path, name: str, src_tok: Tokenizer, tgt_tok: Tokenizer) -> None:
    """Word-align the encoded split `name` (nmt.data.align: eflomal, symmetrised, mapped to
    pieces) and save it again with the piece links as column `align`. The aligner needs the whole
    corpus at once, so its pieces are held in memory here (unlike the rest of `nmt prepare`)."""
    import datasets

    from nmt.data.align import align_pieces

    split = datasets.load_from_disk(str(root / SPLITS_DIR / name))
    src = [src_tok.pieces(ids) for ids in split["src_ids"]]
    tgt = [tgt_tok.pieces(ids) for ids in split["tgt_ids"]]
    links = align_pieces(src, tgt)
    list_of = getattr(datasets, "List", None) or datasets.Sequence
    aligned = split.add_column(ALIGN_COLUMN, links, feature=list_of(datasets.Value("int32")))
    final, staged = root / SPLITS_DIR / name, root / SPLITS_DIR / f"{name}.aligned"
    with progress_bars(len(aligned) >= PROGRESS_BAR_PAIRS):
        aligned.save_to_disk(str(staged))
    del split, aligned  # their files are memory-mapped from the folder about to go
    shutil.rmtree(final)
    os.replace(staged, final)


def build_manifest(
    cfg: PrepareConfig,
    key: str,
    inputs: Mapping[str, Any],
    tokenizers: Mapping[str, tuple[str, Tokenizer, str | None]],
    split_sizes: Mapping[str, int],
    spm_pairs: int,
) -> dict[str, Any]:
    """The manifest. `tokenizers` maps side -> (file name in the directory, tokenizer, the path
    it was reused from or None), as `nmt.data.spm.make_tokenizers` returns it; `spm_pairs` is the
    number of training pairs SentencePiece was trained on (`nmt.data.spm.sample_rows`)."""
    import datetime

    import datasets
    import sentencepiece

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "nmt_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "src_lang": cfg.src_lang,
        "tgt_lang": cfg.tgt_lang,
        "shared_vocab": tokenizers["src"][0] == tokenizers["tgt"][0],
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "tokenizers": {
            side: {
                "file": file,
                "vocab_size": tok.vocab_size,
                "sha256": tok.sha256,
                "model_type": cfg.model_type,
                "reused_from": reused,
            }
            for side, (file, tok, reused) in tokenizers.items()
        },
        "splits": {
            name: {"pairs": n, "dir": f"{SPLITS_DIR}/{name}"} for name, n in split_sizes.items()
        },
        # The sample SentencePiece learned from: at most input_sentence_size sentences (both
        # sides count for a joint vocabulary), drawn from the training pairs with the seed.
        "sentencepiece_sample": {
            "input_sentence_size": cfg.spm_max_sentences,
            "pairs": spm_pairs,
            "of_pairs": split_sizes["train"],
            "seed": cfg.seed,
        },
        "config": to_dict(cfg),
        "inputs": dict(inputs),
        "cache_key": key,
        "versions": {
            "nmt": __version__,
            "sentencepiece": sentencepiece.__version__,
            "datasets": datasets.__version__,
        },
    }
    manifest["hash"] = data_hash(manifest)
    return manifest


def write_manifest(root: Path, manifest: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    write_json(root / STATS, stats)
    write_json(root / MANIFEST, manifest)  # last: its presence marks a complete directory
