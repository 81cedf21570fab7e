"""Read a parallel corpus of any supported kind into (src, tgt) text pairs, and clean it.

A corpus SPEC is one of:
- `PREFIX`: `PREFIX.<src_lang>` and `PREFIX.<tgt_lang>`, one sentence per line (either may be .gz);
- `SRC_FILE,TGT_FILE`: two such files named one by one;
- a `.tsv`, `.csv`, `.jsonl` (each optionally `.gz`) or `.parquet` file: columns / keys named by the
  language codes (or `src_column` / `tgt_column`), the hub's `{"translation": {"de": .., "en": ..}}`
  shape, or, for a header-less two-column TSV/CSV, source first and target second;
- a folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict: `FOLDER@SPLIT` or
  the split that the role implies);
- `hf:NAME[:CONFIG][@SPLIT]`: `datasets.load_dataset(NAME, CONFIG)`; NAME may be a local folder.

Without an explicit split, the role picks one: train -> `train`; valid -> `validation`, `valid`,
`dev` or `val`; a test set called NAME -> `NAME`, else `test`.

Every problem with the input is a `DataError` that names the file (and line where there is one).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from nmt.config import PrepareConfig
from nmt.errors import ConfigError, DataError
from nmt.io import check_file, open_binary, parse_json

Kind = Literal["files", "table", "disk", "hf"]

# Table formats by file suffix (after an optional `.gz`).
TABLE_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
VALID_SPLIT_NAMES = ("validation", "valid", "dev", "val")
DROP_REASONS = ("empty", "too_short", "too_long", "ratio", "duplicate")

# Scripts written without spaces between words: with length_unit "auto", a line that contains them
# is measured in characters / 4 (about one word per 4 characters) instead of in words.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"  # CJK ideographs
)
# A cell that looks like a language code ("de", "en", "pt_BR", "zh-Hans"): a first row made of such
# cells is a header, even when it does not name the languages asked for.
_LANG_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z]{2,4})?$")


@dataclass(frozen=True)
class CorpusSpec:
    """A parsed corpus SPEC: what to read and which local files lie behind it (for hashing)."""

    text: str  # the SPEC as the user wrote it
    kind: Kind
    paths: tuple[Path, ...] = ()  # files (src, tgt), one table file, or a folder
    fmt: str = ""  # table format: tsv, csv, jsonl, parquet
    name: str = ""  # hf: dataset name or local folder
    config: str | None = None  # hf: dataset config
    split: str | None = None  # explicit @SPLIT


@dataclass
class Pairs:
    """Parallel text: `src[i]` translates to `tgt[i]`. `where` names the origin for messages."""

    src: list[str]
    tgt: list[str]
    where: str
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> pairs (after `clean_pairs`)
    read: int = 0  # pairs before cleaning

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Tally:
    """What a stream of pairs has seen so far: pairs read, and pairs dropped by reason."""

    read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


# ---- SPEC parsing -------------------------------------------------------------------------------


def parse_spec(text: str, src_lang: str, tgt_lang: str) -> CorpusSpec:
    """Turn a SPEC into a `CorpusSpec`, checking that the local files it names exist."""
    spec = text.strip()
    if not spec:
        raise DataError(
            "empty corpus SPEC; expected a file prefix, SRC,TGT files, a table or hf:NAME"
        )
    if spec.startswith("hf:"):
        body, split = spec[3:], None
        if "@" in body:
            body, split = body.rsplit("@", 1)
        name, _, config = body.partition(":")
        if not name:
            raise DataError(f"{spec}: expected hf:NAME[:CONFIG][@SPLIT]")
        local = Path(name).expanduser()
        return CorpusSpec(
            spec,
            "hf",
            (local,) if local.exists() else (),
            name=name,
            config=config or None,
            split=split or None,
        )
    if "," in spec:
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{spec}: expected two files SRC_FILE,TGT_FILE")
        paths = tuple(Path(p).expanduser() for p in parts)
        for path in paths:
            check_file(path, DataError)
        return CorpusSpec(spec, "files", paths)

    path, split = Path(spec).expanduser(), None
    if not path.exists() and "@" in spec:
        head, _, tail = spec.rpartition("@")
        if Path(head).expanduser().is_dir():
            path, split = Path(head).expanduser(), tail
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return CorpusSpec(spec, "disk", (path,), split=split)
        raise DataError(
            f"{path}: a folder, but not one written by datasets' save_to_disk (no "
            "dataset_dict.json or state.json); for a local dataset folder use hf:PATH"
        )
    fmt = _table_format(path)
    if path.is_file():
        if fmt is None:
            raise DataError(
                f"{path}: unknown corpus file type; expected .tsv, .csv, .jsonl (optionally .gz) "
                f"or .parquet, a prefix of {path.name}.{src_lang} + .{tgt_lang}, or SRC,TGT files"
            )
        return CorpusSpec(spec, "table", (path,), fmt=fmt)
    if fmt is not None or path.exists():  # a table that is not there, a pipe or a device
        check_file(path, DataError)
    return CorpusSpec(spec, "files", (_find_side(path, src_lang), _find_side(path, tgt_lang)))


def _table_format(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # parquet compresses itself
    return TABLE_FORMATS.get(suffixes[-1]) if suffixes else None


def _find_side(prefix: Path, lang: str) -> Path:
    plain = prefix.with_name(f"{prefix.name}.{lang}")
    packed = prefix.with_name(f"{prefix.name}.{lang}.gz")
    for candidate in (plain, packed):
        if candidate.exists():
            check_file(candidate, DataError)  # a folder, pipe or device by that name
            return candidate
    raise DataError(
        f"{plain}: file not found (nor {packed.name}); a SPEC is a prefix, SRC,TGT files, "
        ".tsv/.csv/.jsonl/.parquet, a save_to_disk folder or hf:NAME"
    )


# A test set's name names files (NAME.hyp in evaluate's --hyp-out folder, the prepared split):
# no folder separators, no leading dot.
TEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_test_name(name: str, given: str, reserved: Sequence[str] = ()) -> None:
    """ConfigError when `name` (of the `--test` value `given`) is not a TEST_NAME or is one of
    `reserved`."""
    if not TEST_NAME.fullmatch(name) or name in reserved:
        besides = f" and is none of {', '.join(reserved)}" if reserved else ""
        raise ConfigError(
            f"--test {given}: a test name is letters, digits, _ . - (the first a letter or "
            f"digit){besides}"
        )


def split_test_option(text: str, src_lang: str) -> tuple[str, str]:
    """(name, SPEC) of a `--test [NAME=]SPEC` value: the text before "=" names the test set,
    unless the value is a hf: SPEC or names files as a whole (a path may hold "=")."""
    name, sep, spec = text.partition("=")
    if not sep or not spec or name.startswith("hf:") or _names_files(text, src_lang):
        return default_split_name(text), text
    return name, spec


def _names_files(spec: str, src_lang: str) -> bool:
    first = Path(spec.split(",")[0]).expanduser()
    sides = [first.with_name(f"{first.name}.{src_lang}{gz}") for gz in ("", ".gz")]
    return any(path.exists() for path in (first, *sides))


def default_split_name(text: str) -> str:
    """A test set's name when `--test` gives no `NAME=`: the file or split name without suffixes.

    `data/raw/newstest2014` -> `newstest2014`; `a/t.de,a/t.en` -> `t`;
    `hf:wmt14:de-en@test` -> `test`.
    """
    spec = text.strip()
    if spec.startswith("hf:"):
        body = spec[3:]
        if "@" in body:
            return body.rsplit("@", 1)[1]
        return "test"
    if "@" in spec and not Path(spec).exists():
        return spec.rsplit("@", 1)[1]
    first = spec.split(",")[0].rstrip("/")
    name = Path(first).name
    if name.endswith(".gz"):
        name = name[:-3]
    if "," in spec or Path(name).suffix in TABLE_FORMATS:
        name = Path(name).stem
    return name or "test"


# ---- reading ------------------------------------------------------------------------------------


def read_pairs(spec: CorpusSpec, cfg: PrepareConfig, role: str) -> Pairs:
    """Read every pair of `spec`, raw (before cleaning). `role` is train, valid or a test name."""
    pairs, where = iter_pairs(spec, cfg, role)
    src, tgt = [], []
    for s, t in pairs:
        src.append(s)
        tgt.append(t)
    return Pairs(src, tgt, where, read=len(src))


def iter_pairs(
    spec: CorpusSpec, cfg: PrepareConfig, role: str
) -> tuple[Iterator[tuple[str, str]], str]:
    """The raw pairs of `spec` one at a time, and the name of their origin. Plain text files,
    Parquet files and datasets (hub or saved) are streamed chunk by chunk, so a corpus of any size
    passes through in constant memory; TSV, CSV and JSONL files are read whole first. Problems
    with the columns are found before the first pair is returned."""
    if spec.kind == "files":
        src_path, tgt_path = spec.paths
        return _stream_files(src_path, tgt_path, cfg.errors), f"{src_path},{tgt_path}"
    if spec.kind == "table":
        (path,) = spec.paths
        if spec.fmt == "parquet":
            return _parquet_pairs(path, cfg), str(path)
        if spec.fmt == "jsonl":
            src, tgt = _read_jsonl(path, cfg)
        else:
            src, tgt = _read_delimited(path, cfg, spec.fmt)
        return zip(src, tgt, strict=True), str(path)
    if spec.kind == "disk":
        return _saved_pairs(spec, cfg, role), str(spec.paths[0])
    return _hub_pairs(spec, cfg, role), spec.text


def _stream_files(src_path: Path, tgt_path: Path, errors: str) -> Iterator[tuple[str, str]]:
    src, tgt = binary_lines(src_path), binary_lines(tgt_path)
    with contextlib.closing(src), contextlib.closing(tgt):
        for number, (s, t) in enumerate(itertools.zip_longest(src, tgt), start=1):
            if s is None or t is None:
                src_lines = number - 1 + (s is not None) + sum(1 for _ in src)
                tgt_lines = number - 1 + (t is not None) + sum(1 for _ in tgt)
                raise DataError(
                    f"{src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}; a parallel "
                    "corpus needs one sentence per line on both sides"
                )
            yield (
                decode_line(s, src_path, number, errors),
                decode_line(t, tgt_path, number, errors),
            )


# The most one line of text may hold, in bytes (its newline left out). A sentence is far shorter;
# the bound keeps /dev/zero or a file without newlines from filling the memory, and a huge line
# from reaching SentencePiece, which encodes a whole line before anything can cut it.
MAX_LINE_BYTES = 1 << 20


def open_input(path: Path) -> IO[bytes]:
    """`path` opened for reading bytes (gunzipped when it ends in .gz: `nmt.io.open_binary`);
    DataError when it cannot be opened."""
    try:
        return open_binary(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def bounded_lines(handle: IO[bytes], where: str) -> Iterator[bytes]:
    """The lines of `handle`, each with its b"\\n"; a line longer than MAX_LINE_BYTES is a
    DataError naming it, raised before more than that is read."""
    for number in itertools.count(1):
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DataError(
                f"{where}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes, the limit for "
                "one sentence; is this a text file with one sentence per line?"
            )
        yield raw


def binary_lines(path: Path) -> Generator[bytes, None, None]:
    """The lines of `path` (gunzipped when it ends in .gz) as bytes. Lines end at b"\\n" only, as
    in `read_lines`: U+2028 and friends stay inside their sentence. A line may hold at most
    MAX_LINE_BYTES."""
    with open_input(path) as handle:
        try:
            yield from bounded_lines(handle, str(path))
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None


# The way out that `prepare` offers for invalid UTF-8; commands without --errors pass their own.
ERRORS_HINT = "fix the file, or pass --errors replace to read such bytes as U+FFFD"


def _utf8_error(path: Path, line: int, byte: int, column: int, hint: str) -> DataError:
    return DataError(
        f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x} at byte column {column}); {hint}"
    )


def decode_line(
    raw: bytes, path: Path, number: int, errors: str = "strict", hint: str = ERRORS_HINT
) -> str:
    """One line of a text file: UTF-8, without its "\\n" (and "\\r"),
    without a BOM on the first line; invalid UTF-8 is an error naming the line and byte column."""
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, number, raw[exc.start], exc.start + 1, hint) from None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text[1:] if number == 1 and text.startswith("\ufeff") else text


def read_text(path: Path, errors: str = "strict") -> str:
    """The whole file (gunzipped when it ends in .gz) as text; a leading BOM is dropped.

    Invalid UTF-8 under `errors="strict"` is a `DataError` naming the line, byte and the way out.
    """
    try:
        with open_binary(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _utf8_error(path, line, data[exc.start], column, ERRORS_HINT) from None
    return text[1:] if text.startswith("\ufeff") else text


def _wanted(cfg: PrepareConfig) -> tuple[str, str]:
    return (cfg.src_column or cfg.src_lang, cfg.tgt_column or cfg.tgt_lang)


def _read_delimited(path: Path, cfg: PrepareConfig, fmt: str) -> tuple[list[str], list[str]]:
    """TSV (split on tabs, no quoting) or CSV (RFC 4180 quoting, via the csv module)."""
    text = read_text(path, cfg.errors)
    kind = "tab-separated" if fmt == "tsv" else "comma-separated"
    if fmt == "tsv":
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        rows: list[tuple[int, list[str]]] = [
            (n, line.rstrip("\r").split("\t")) for n, line in enumerate(lines, start=1)
        ]
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = []
        try:
            for row in reader:
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        return [], []

    want_src, want_tgt = _wanted(cfg)
    first = [cell.strip() for cell in rows[0][1]]
    if want_src.isdigit() and want_tgt.isdigit():
        cols, width, body = (int(want_src), int(want_tgt)), None, rows
    elif want_src in first and want_tgt in first:
        cols, width, body = (first.index(want_src), first.index(want_tgt)), len(first), rows[1:]
    elif cfg.src_column or want_src in first or want_tgt in first or _looks_like_header(first):
        missing = [c for c in (want_src, want_tgt) if c not in first]
        raise DataError(
            f"{path}:1: no column named {' or '.join(repr(m) for m in missing)} in the header; "
            f"found: {', '.join(first)} (set src_column/tgt_column to pick others)"
        )
    elif len(first) == 2:
        cols, width, body = (0, 1), 2, rows  # positional: no header
    else:
        raise DataError(
            f"{path}:1: cannot tell which columns hold {want_src} and {want_tgt}: the first line "
            f"has {len(first)} columns and no header naming them (found: {', '.join(first[:8])}); "
            "add a header, or set src_column/tgt_column (names, or 0-based numbers)"
        )

    src, tgt = [], []
    need = max(cols) + 1
    for line_no, row in body:
        if row == [] or row == [""]:
            src.append("")  # an empty line is an empty pair, dropped by cleaning
            tgt.append("")
            continue
        if (width is not None and len(row) != width) or len(row) < need:
            expected = width if width is not None else f"at least {need}"
            raise DataError(
                f"{path}:{line_no}: expected {expected} {kind} columns, found {len(row)}"
            )
        src.append(row[cols[0]])
        tgt.append(row[cols[1]])
    return src, tgt


def _looks_like_header(cells: Sequence[str]) -> bool:
    return len(cells) >= 2 and all(_LANG_CODE.match(cell) for cell in cells)


def _read_jsonl(path: Path, cfg: PrepareConfig) -> tuple[list[str], list[str]]:
    want_src, want_tgt = _wanted(cfg)
    src, tgt = [], []
    nested: bool | None = None
    for line_no, line in enumerate(read_text(path, cfg.errors).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
            )
        if nested is None:  # the first record decides the shape
            nested = not (want_src in record and want_tgt in record) and isinstance(
                record.get("translation"), dict
            )
        fields = (
            record["translation"]
            if nested and isinstance(record.get("translation"), dict)
            else record
        )
        if want_src not in fields or want_tgt not in fields:
            found = ", ".join(map(str, itertools.islice(fields, 20)))[:200] or "none"
            inside = " inside 'translation'" if nested else ""
            raise DataError(
                f"{path}:{line_no}: no key {want_src!r} and {want_tgt!r}{inside}; found: {found} "
                '(expected {"src": .., "tgt": ..} keyed by the language codes, or '
                '{"translation": {..}}; set src_column/tgt_column for other keys)'
            )
        src.append(_as_text(fields[want_src], f"{path}:{line_no}"))
        tgt.append(_as_text(fields[want_tgt], f"{path}:{line_no}"))
    return src, tgt


def _as_text(value: Any, where: str) -> str:
    """A JSON value as a sentence: a string, or null for a missing side (an empty sentence, which
    cleaning drops). A number is refused: NaN or 1e999 would be stored as "nan" / "inf"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        raise DataError(
            f"{where}: expected a string, found the JSON value {json.dumps(value)[:40]}; put "
            "the sentence in quotes"
        )
    raise DataError(f"{where}: expected a string, found {type(value).__name__}")


ARROW_CHUNK = 20_000  # pairs per chunk read from Parquet files and datasets


def _parquet_pairs(path: Path, cfg: PrepareConfig) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    pick = _pair_columns(schema, cfg, str(path))
    return _stream_columns(parquet.iter_batches(batch_size=ARROW_CHUNK), pick)


def _pair_columns(schema: Any, cfg: PrepareConfig, where: str) -> Callable[[Any], list[Any]]:
    """How to take the source and target text out of a table or record batch of `schema`: flat
    language columns or a `translation` struct column (the hub's shape). DataError when neither
    is there or they do not hold text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    want_src, want_tgt = _wanted(cfg)
    names = schema.names
    if want_src in names and want_tgt in names:
        types = [schema.field(want_src).type, schema.field(want_tgt).type]

        def pick(table: Any) -> list[Any]:
            return [table.column(want_src), table.column(want_tgt)]

    elif "translation" in names and pa.types.is_struct(schema.field("translation").type):
        struct = schema.field("translation").type
        fields = [struct.field(i).name for i in range(struct.num_fields)]
        if want_src not in fields or want_tgt not in fields:
            raise DataError(
                f"{where}: no language {want_src!r} and {want_tgt!r} in column 'translation'; "
                f"found: {', '.join(fields)}"
            )
        types = [struct.field(want_src).type, struct.field(want_tgt).type]

        def pick(table: Any) -> list[Any]:
            column = table.column("translation")
            return [pc.struct_field(column, [fields.index(want)]) for want in (want_src, want_tgt)]

    else:
        raise DataError(
            f"{where}: no columns named {want_src!r} and {want_tgt!r} (nor a 'translation' "
            f"column); found: {', '.join(names)} (set src_column/tgt_column to pick others)"
        )
    for kind in types:
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{where}: expected text columns, found type {kind}")
    return pick


def _stream_columns(
    chunks: Iterable[Any], pick: Callable[[Any], list[Any]]
) -> Iterator[tuple[str, str]]:
    """The (source, target) pairs of Arrow tables or record batches; a missing cell is ""."""
    for chunk in chunks:
        src, tgt = (["" if v is None else v for v in c.to_pylist()] for c in pick(chunk))
        yield from zip(src, tgt, strict=True)


def _pick_split(splits: dict[str, Any], role: str, requested: str | None, where: str) -> Any:
    names = list(splits)
    if requested is not None:
        if requested not in splits:
            raise DataError(f"{where}: no split {requested!r}; found: {', '.join(names)}")
        return splits[requested]
    if role == "train":
        candidates: tuple[str, ...] = ("train",)
    elif role == "valid":
        candidates = VALID_SPLIT_NAMES
    else:
        candidates = (role, "test")
    for name in candidates:
        if name in splits:
            return splits[name]
    raise DataError(
        f"{where}: no split for {role} (looked for {', '.join(candidates)}); found: "
        f"{', '.join(names)}; name one with @SPLIT"
    )


def _dataset_chunks(dataset: Any) -> Iterator[Any]:
    """A `datasets.Dataset`'s rows as Arrow record batches. Its cache files are read with plain
    reads where they hold the rows as they are (no index mapping): pages of the memory map that
    datasets keeps would count as resident memory for as long as it is open."""
    import pyarrow as pa

    files = [entry["filename"] for entry in dataset.cache_files]
    if dataset._indices is not None or not files:
        yield from dataset.with_format("arrow").iter(batch_size=ARROW_CHUNK)
        return
    for file in files:
        with pa.OSFile(file, "rb") as source:
            yield from pa.ipc.open_stream(source)


def _dataset_pairs(dataset: Any, cfg: PrepareConfig, where: str) -> Iterator[tuple[str, str]]:
    pick = _pair_columns(dataset.features.arrow_schema, cfg, where)
    return _stream_columns(_dataset_chunks(dataset), pick)


def _saved_pairs(spec: CorpusSpec, cfg: PrepareConfig, role: str) -> Iterator[tuple[str, str]]:
    import datasets

    (path,) = spec.paths
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load with datasets.load_from_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(dict(loaded), role, spec.split, str(path))
    elif spec.split is not None:
        raise DataError(f"{path}: holds a single Dataset, not a DatasetDict; drop @{spec.split}")
    return _dataset_pairs(loaded, cfg, str(path))


def _hub_pairs(spec: CorpusSpec, cfg: PrepareConfig, role: str) -> Iterator[tuple[str, str]]:
    import datasets

    try:
        loaded = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - anything the hub or a builder raises is about the input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{spec.text}: datasets.load_dataset failed ({first}); without network only datasets "
            "already in the HF cache or local folders load"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(dict(loaded), role, None, spec.text)
    return _dataset_pairs(loaded, cfg, spec.text)


# ---- cleaning -----------------------------------------------------------------------------------


def clean_text(text: str, cfg: PrepareConfig) -> str:
    """The normalisation every sentence gets (training data, references, and text to translate):
    NFKC when `cfg.normalize`, whitespace runs collapsed to one space and trimmed, lowercasing when
    `cfg.lowercase`."""
    if cfg.normalize:
        text = unicodedata.normalize("NFKC", text)
    text = " ".join(text.split())  # str.split() also splits on tabs, NBSP-like and line separators
    return text.lower() if cfg.lowercase else text


def text_length(text: str, unit: str) -> int:
    """Length of a cleaned line for the length filters: words, or characters / 4 (rounded up) for
    `unit="chars"` and, under `unit="auto"`, for lines in scripts written without spaces."""
    if not text:
        return 0
    words = text.count(" ") + 1  # cleaned text has single spaces
    if unit == "words":
        return words
    chars = -(-len(text) // 4)
    if unit == "chars":
        return chars
    return max(words, chars) if _UNSPACED.search(text) else words


def clean_pairs(pairs: Pairs, cfg: PrepareConfig, filter_pairs: bool = True) -> Pairs:
    """`clean_stream` over pairs in memory."""
    tally = Tally()
    src, tgt = [], []
    for s, t in clean_stream(zip(pairs.src, pairs.tgt, strict=True), cfg, filter_pairs, tally):
        src.append(s)
        tgt.append(t)
    return Pairs(src, tgt, pairs.where, tally.dropped, pairs.read)


def clean_stream(
    pairs: Iterable[tuple[str, str]], cfg: PrepareConfig, filter_pairs: bool, tally: Tally
) -> Iterator[tuple[str, str]]:
    """Clean every sentence; with `filter_pairs` also drop pairs by the configured filters.
    `tally` counts the pairs read and dropped as the stream is consumed.

    Each dropped pair counts under the first reason that applies, in `DROP_REASONS` order:
    `empty` (a side is empty), `too_short` / `too_long` (a side outside [min_len, max_len]), `ratio`
    (longer / shorter side above max_ratio), `duplicate` (an identical cleaned pair came before).
    Valid and test sets are cleaned but not filtered, so their references stay complete.

    Duplicates are found by a 64-bit digest of each kept pair rather than the pair itself, so
    memory grows by a few dozen bytes per pair, not by the corpus (two different pairs share a
    digest with probability ~N^2 / 2^65: about 1e-6 for 5M pairs).
    """
    if filter_pairs:
        tally.dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[bytes] = set()
    for raw_src, raw_tgt in pairs:
        tally.read += 1
        s, t = clean_text(raw_src, cfg), clean_text(raw_tgt, cfg)
        if filter_pairs:
            reason = _drop_reason(s, t, cfg, seen)
            if reason:
                tally.dropped[reason] += 1
                continue
        yield s, t


def _drop_reason(s: str, t: str, cfg: PrepareConfig, seen: set[bytes]) -> str | None:
    if not s or not t:
        return "empty"
    ls, lt = text_length(s, cfg.length_unit), text_length(t, cfg.length_unit)
    if min(ls, lt) < cfg.min_len:
        return "too_short"
    if max(ls, lt) > cfg.max_len:
        return "too_long"
    if cfg.max_ratio and max(ls, lt) > cfg.max_ratio * max(min(ls, lt), 1):
        return "ratio"
    if cfg.dedup:
        # The source's length keeps ("a b", "c") and ("a", "b c") apart.
        digest = hashlib.blake2b(f"{len(s)}:{s}{t}".encode(), digest_size=8).digest()
        if digest in seen:
            return "duplicate"
        seen.add(digest)
    return None
