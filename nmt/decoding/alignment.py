"""From the decoder's cross-attention to alignments: pick Transformer layers/heads, merge subword
matrices into word matrices, derive hard links, read/write Pharaoh files, score them with AER, and
store matrices as .npz or .jsonl.

Word merging follows SentencePiece's convention: a piece starting with "▁" (U+2581) begins a word,
any other piece continues the previous one, so words are the whitespace-separated tokens of the
(normalised) text; pieces in scripts written without spaces (Chinese, Japanese, Thai, ...) are
units of their own. A target word's row is the mean of its pieces' rows and a source word's
column the sum of its pieces' columns, so a row that summed to 1 over source pieces still sums to
1 over source words. The EOS row and column are left out of word matrices (they belong to no
word).

Hard alignments are in Pharaoh format, `i-j` with i a 0-based source word and j a 0-based target
word (what fast_align writes). Gold files may also mark possible links as `i?j` or `ipj`.
Alignment error rate, precision and recall follow Och & Ney (2003, section 5):
AER = 1 - (|A & S| + |A & P|) / (|A| + |S|), with sure links S a subset of possible links P.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import torch

from nmt.config import GUIDED_ALIGNMENT_HEAD, RunConfig
from nmt.data.spm import WORD_START, word_groups
from nmt.errors import ConfigError, DataError
from nmt.io import atomic_open, check_file, decode_utf8, parse_json

Link = tuple[int, int]  # (source word, target word)


# ---- choosing layers and heads ---------------------------------------------------------------


def supervised_head(cfg: RunConfig) -> tuple[str, str] | None:
    """(layer, head) for `reduce_attention` of the cross-attention head that guided-alignment
    training taught to align, for a Transformer trained with train.guided_alignment > 0; None
    otherwise (an RNN has a single attention, which is the one supervised)."""
    if cfg.model.arch != "transformer" or cfg.train.guided_alignment <= 0:
        return None
    layer, head = GUIDED_ALIGNMENT_HEAD
    return str(layer), str(head)


def reduce_attention(attention: torch.Tensor | np.ndarray, layer: str, head: str) -> np.ndarray:
    """The matrix to export from one hypothesis' attention, as float32.

    RNN attention (T,S) is returned as it is. Transformer attention (T,L,H,S): `layer` and `head`
    are an index (negative counts from the end), "mean" (average) or "all" (keep). With neither set
    to "all" the result is (T,S); otherwise (L',H',T,S), where a reduced axis has size 1.
    """
    a = attention.detach().cpu().numpy() if isinstance(attention, torch.Tensor) else attention
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        return a
    if a.ndim != 4:
        raise ValueError(f"attention must be (T,S) or (T,L,H,S), got shape {a.shape}")
    a = a.transpose(1, 2, 0, 3)  # (L, H, T, S)
    a = _reduce_axis(a, 0, layer, "layer")
    a = _reduce_axis(a, 1, head, "head")
    if layer != "all" and head != "all":
        return a[0, 0]  # (T, S)
    return a


def _reduce_axis(a: np.ndarray, axis: int, how: str, name: str) -> np.ndarray:
    if how == "all":
        return a
    if how == "mean":
        return a.mean(axis=axis, keepdims=True)
    index = int(how)
    size = a.shape[axis]
    if not -size <= index < size:
        raise ConfigError(f"decode.attention_{name}={index}: the model has {size} {name}s")
    return np.take(a, [index], axis=axis)


# ---- subwords to words -----------------------------------------------------------------------


def words_of(pieces: Sequence[str]) -> list[str]:
    """The words the pieces spell, one per group of `word_groups`."""
    return [
        "".join(pieces[i] for i in g).replace(WORD_START, " ").strip() for g in word_groups(pieces)
    ]


def merge_to_words(
    matrix: np.ndarray, tgt_pieces: Sequence[str], src_pieces: Sequence[str]
) -> np.ndarray:
    """Subword attention (...,T,S) -> word attention (...,Tw,Sw).

    T and S may include one extra EOS row / column beyond the pieces (as search output does);
    those are dropped. Target rows are averaged within a word, source columns summed.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    tgt_groups, src_groups = word_groups(tgt_pieces), word_groups(src_pieces)
    rows = [matrix[..., g, :].mean(axis=-2) for g in tgt_groups]  # each (..., S)
    if not rows or not src_groups:
        return np.zeros((*matrix.shape[:-2], len(tgt_groups), len(src_groups)), dtype=np.float32)
    by_row = np.stack(rows, axis=-2)  # (..., Tw, S)
    cols = [by_row[..., g].sum(axis=-1) for g in src_groups]  # each (..., Tw)
    return np.stack(cols, axis=-1).astype(np.float32)  # (..., Tw, Sw)


# ---- hard alignments -------------------------------------------------------------------------


def hard_alignment(word_matrix: np.ndarray, threshold: float = 0.0) -> list[Link]:
    """Links (source word, target word) from a word matrix (Tw,Sw), sorted.

    threshold 0: each target word links to its most attended source word (argmax). threshold > 0:
    every pair whose weight is at least `threshold` (a target word may get none or several).
    """
    m = np.asarray(word_matrix)
    if m.ndim != 2:
        raise ValueError(f"hard alignments need a (Tw,Sw) matrix, got shape {m.shape}")
    if m.size == 0:
        return []
    if threshold > 0:
        tgt, src = np.nonzero(m >= threshold)
        return sorted(zip(src.tolist(), tgt.tolist(), strict=True))
    return sorted((int(i), j) for j, i in enumerate(m.argmax(axis=1).tolist()))


def format_pharaoh(links: Iterable[Link]) -> str:
    """`[(0, 0), (2, 1)]` -> "0-0 2-1"."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


_LINK = re.compile(r"^(\d+)([-?pP])(\d+)$")


def parse_pharaoh(line: str, where: str = "<line>") -> tuple[set[Link], set[Link]]:
    """One Pharaoh line -> (sure links, possible links). `i-j` is sure; `i?j` and `ipj` are
    possible only. The possible set returned includes the sure links (P contains S)."""
    sure: set[Link] = set()
    possible: set[Link] = set()
    for token in line.split():
        match = _LINK.match(token)
        if match is None:
            raise DataError(
                f"{where}: {token!r} is not an alignment link; expected i-j (sure) or i?j "
                "(possible) with 0-based source index i and target index j"
            )
        link = (int(match.group(1)), int(match.group(3)))
        (sure if match.group(2) == "-" else possible).add(link)
    return sure, possible | sure


def read_pharaoh(path: str | Path) -> list[tuple[set[Link], set[Link]]]:
    """(sure, possible) links per line of a Pharaoh file; an empty line has no links."""
    path = Path(path)
    check_file(path, DataError)
    lines = decode_utf8(path.read_bytes(), path, DataError).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return [parse_pharaoh(line, f"{path}:{n}") for n, line in enumerate(lines, 1)]


def write_pharaoh(path: str | Path, alignments: Iterable[Iterable[Link]]) -> None:
    with atomic_open(path) as handle:
        for links in alignments:
            handle.write(format_pharaoh(links) + "\n")


@dataclass(frozen=True)
class AlignmentScores:
    """Corpus-level scores: the link counts are summed over sentences before dividing."""

    aer: float
    precision: float
    recall: float
    hyp_links: int
    sure_links: int
    possible_links: int
    sentences: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def alignment_error_rate(
    hyp: Sequence[set[Link]], gold: Sequence[tuple[set[Link], set[Link]]]
) -> AlignmentScores:
    """AER, precision |A&P|/|A| and recall |A&S|/|S| of hypothesis links A against gold (S, P)."""
    if len(hyp) != len(gold):
        raise ValueError(f"{len(hyp)} hypothesis lines but {len(gold)} gold lines")
    a = s = p = a_s = a_p = 0
    for links, (sure, possible) in zip(hyp, gold, strict=True):
        possible = possible | sure
        a += len(links)
        s += len(sure)
        p += len(possible)
        a_s += len(links & sure)
        a_p += len(links & possible)
    aer = 1.0 - (a_s + a_p) / (a + s) if a + s else 0.0
    return AlignmentScores(
        aer=aer,
        precision=a_p / a if a else 0.0,
        recall=a_s / s if s else 0.0,
        hyp_links=a,
        sure_links=s,
        possible_links=p,
        sentences=len(hyp),
    )


# ---- attention files -------------------------------------------------------------------------


@dataclass
class AttentionRecord:
    """The attention of one translated sentence.

    `matrix` is (T,S) or (L',H',T,S) over subwords, T = len(tgt_pieces) + 1 (EOS row) and
    S = len(src_pieces) + 1 (source EOS column); `word_matrix` is the same merged to words
    (...,Tw,Sw) without EOS. An empty input line has empty pieces and 0-sized matrices.
    """

    index: int
    src_pieces: list[str]
    tgt_pieces: list[str]
    matrix: np.ndarray
    src_words: list[str] = field(default_factory=list)
    tgt_words: list[str] = field(default_factory=list)
    word_matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sentence: int = 0  # position in its line, when the line was split into sentences


def make_record(
    index: int,
    src_pieces: Sequence[str],
    tgt_pieces: Sequence[str],
    attention: torch.Tensor | np.ndarray | None,
    layer: str,
    head: str,
) -> AttentionRecord:
    """Reduce one hypothesis' attention (see `reduce_attention`) and merge it to words."""
    if attention is None:
        matrix = np.zeros((0, 0), dtype=np.float32)
    else:
        matrix = reduce_attention(attention, layer, head)
    words = (
        merge_to_words(matrix, tgt_pieces, src_pieces)
        if matrix.size
        else np.zeros((*matrix.shape[:-2], 0, 0), np.float32)
    )
    return AttentionRecord(
        index=index,
        src_pieces=list(src_pieces),
        tgt_pieces=list(tgt_pieces),
        matrix=matrix,
        src_words=words_of(src_pieces),
        tgt_words=words_of(tgt_pieces),
        word_matrix=words,
    )


class AttentionWriter:
    """Streams AttentionRecords to `.npz` or `.jsonl` (chosen by the file's suffix), atomically:
    the file appears only when the writer is closed without an error.

    Records are sentences, in the order written: a line split into several sentences gives one
    record each, with `index` the 0-based input line and `sentence` the sentence's place in it
    (a line read whole is sentence 0, so without splitting record k is line k).
    .npz: for record k the arrays `attention_k` (float32 subword matrix), `words_k` (word matrix),
    `src_k`, `tgt_k` (subword strings), `src_words_k`, `tgt_words_k`, `index_k` and `sentence_k`;
    plus `meta`, a JSON string with the number of records and the settings (arch,
    attention_layer, attention_head).
    .jsonl: one JSON object per record with the same fields (`index`, `sentence`, `src`, `tgt`,
    `attention`, `src_words`, `tgt_words`, `word_attention`), and the settings in every line.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in (".npz", ".jsonl"):
            raise ConfigError(f"{self.path}: attention file must end in .npz or .jsonl")
        self.meta = dict(meta)
        self.count = 0
        self._ctx = atomic_open(self.path, "wb" if self.kind == ".npz" else "w")
        self._handle: IO[Any] = self._ctx.__enter__()
        self._zip = (
            zipfile.ZipFile(self._handle, "w", compression=zipfile.ZIP_DEFLATED)
            if self.kind == ".npz"
            else None
        )

    def write(self, record: AttentionRecord) -> None:
        try:
            self._write(record)
        except OSError as exc:
            raise _named(exc, self.path) from None

    def _write(self, record: AttentionRecord) -> None:
        if self._zip is not None:
            i = self.count
            self._array(f"index_{i}", np.array(record.index))
            self._array(f"sentence_{i}", np.array(record.sentence))
            self._array(f"attention_{i}", record.matrix.astype(np.float32))
            self._array(f"words_{i}", record.word_matrix.astype(np.float32))
            for name in ("src", "tgt"):
                self._array(f"{name}_{i}", _strings(getattr(record, f"{name}_pieces")))
                self._array(f"{name}_words_{i}", _strings(getattr(record, f"{name}_words")))
        else:
            row = {
                "index": record.index,
                "sentence": record.sentence,
                **self.meta,
                "src": record.src_pieces,
                "tgt": record.tgt_pieces,
                "attention": _rounded(record.matrix),
                "src_words": record.src_words,
                "tgt_words": record.tgt_words,
                "word_attention": _rounded(record.word_matrix),
            }
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1

    def _array(self, name: str, value: np.ndarray) -> None:
        assert self._zip is not None
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)

    def close(self, error: BaseException | None = None) -> None:
        """Finish the file, or after `error` drop it. The temp file is let go of either way, and
        a write that fails here (a full disk) is raised naming this file."""
        failure: BaseException | None = None
        try:
            if self._zip is not None:
                meta = json.dumps({"sentences": self.count, **self.meta})
                if error is None:
                    self._array("meta", np.array(meta))
                self._zip.close()
        except BaseException as exc:
            failure = exc
        outcome = error or failure
        try:
            if outcome is None:
                self._ctx.__exit__(None, None, None)
            else:
                self._ctx.__exit__(type(outcome), outcome, outcome.__traceback__)
        except BaseException as exc:
            failure = failure or exc
        if failure is not None:
            raise _named(failure, self.path)

    def __enter__(self) -> AttentionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exc)


def _named(error: BaseException, path: Path) -> BaseException:
    """`error`, given `path` as its file name when it is an OSError without one (a full disk
    says only ENOSPC), so that the message names the file that could not be written."""
    if isinstance(error, OSError) and not error.filename:
        error.filename = str(path)
    return error


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def _rounded(matrix: np.ndarray) -> Any:
    return np.round(matrix.astype(np.float64), 6).tolist()


def read_attention(path: str | Path) -> tuple[dict[str, Any], Iterator[AttentionRecord]]:
    """(meta, records) of a file written by `AttentionWriter`. Raises DataError if it is not one."""
    path = Path(path)
    check_file(path, DataError, "attention file not found")
    if path.suffix.lower() == ".npz":
        if not zipfile.is_zipfile(path):  # else numpy takes it for a pickle and advises loading it
            raise DataError(f"{path}: not an attention file written by nmt translate (not .npz)")
        try:
            data = np.load(path, allow_pickle=False)
            meta = parse_json(str(data["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            why = "it holds Python objects" if "allow_pickle" in str(exc) else str(exc)
            raise DataError(
                f"{path}: not an attention file written by nmt translate ({why})"
            ) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("sentences"), int):
            raise DataError(f"{path}: not an attention file written by nmt translate (no count)")
        return meta, _npz_records(data, meta["sentences"], path)
    if path.suffix.lower() == ".jsonl":
        rows = []
        text = decode_utf8(path.read_bytes(), path, DataError)
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(parse_json(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
        meta = {k: v for k, v in (rows[0] if rows else {}).items() if k in _META_KEYS}
        meta["sentences"] = len(rows)
        return meta, (_json_record(r, f"{path}:{n}") for n, r in enumerate(rows, 1))
    raise DataError(f"{path}: attention file must end in .npz or .jsonl")


_META_KEYS = ("arch", "attention_layer", "attention_head")


def _npz_records(data: Any, count: int, path: Path) -> Iterator[AttentionRecord]:
    for i in range(count):
        try:
            # Files written before sentence splitting hold one record per line, in line order.
            index = int(data[f"index_{i}"]) if f"index_{i}" in data.files else i
            sentence = int(data[f"sentence_{i}"]) if f"sentence_{i}" in data.files else 0
            yield AttentionRecord(
                index=index,
                sentence=sentence,
                src_pieces=data[f"src_{i}"].tolist(),
                tgt_pieces=data[f"tgt_{i}"].tolist(),
                matrix=data[f"attention_{i}"],
                src_words=data[f"src_words_{i}"].tolist(),
                tgt_words=data[f"tgt_words_{i}"].tolist(),
                word_matrix=data[f"words_{i}"],
            )
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{path}: sentence {i} is missing or damaged ({str(exc)[:100]})"
            ) from None


def check_record(record: AttentionRecord, where: str) -> None:
    """DataError unless the matrices fit the pieces and words: (..., T+1, S+1) over subwords with
    the EOS row and column, (..., Tw, Sw) over words, finite values; 2 or 4 dimensions."""
    rows, cols = len(record.tgt_pieces) + 1, len(record.src_pieces) + 1
    words = (len(record.tgt_words), len(record.src_words))
    matrix, word_matrix = np.asarray(record.matrix), np.asarray(record.word_matrix)
    if not matrix.size and not record.src_pieces:
        return  # an empty input line
    problems = []
    if matrix.ndim not in (2, 4) or matrix.shape[-2:] != (rows, cols):
        need = f"(..., {rows}, {cols})"
        problems.append(f"attention has shape {matrix.shape}, the pieces need {need}")
    if word_matrix.ndim != matrix.ndim or word_matrix.shape[-2:] != words:
        problems.append(f"word attention has shape {word_matrix.shape}, the words need {words}")
    for array in (matrix, word_matrix):
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            problems.append("attention holds values that are not finite numbers")
            break
    if problems:
        raise DataError(f"{where}: sentence {record.index}: {problems[0]}")


def _json_record(row: dict[str, Any], where: str) -> AttentionRecord:
    try:
        return AttentionRecord(
            index=int(row["index"]),
            sentence=int(row.get("sentence", 0)),
            src_pieces=list(row["src"]),
            tgt_pieces=list(row["tgt"]),
            matrix=np.asarray(row["attention"], dtype=np.float32),
            src_words=list(row["src_words"]),
            tgt_words=list(row["tgt_words"]),
            word_matrix=np.asarray(row["word_attention"], dtype=np.float32),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: not an attention record written by nmt translate ({exc})"
        ) from None


def get_record(
    path: str | Path, index: int, sentence: int = 0
) -> tuple[dict[str, Any], AttentionRecord]:
    """The record of sentence `sentence` of input line `index` (both 0-based) of an attention
    file."""
    meta, records = read_attention(path)
    count = meta.get("sentences", 0)
    if index < 0 or sentence < 0:
        raise DataError(f"{path}: --index and --sentence count from 0; got {index}, {sentence}")
    lines = set()
    for record in records:
        lines.add(record.index)
        if record.index == index and record.sentence == sentence:
            check_record(record, str(path))
            return meta, record
    if index not in lines:
        raise DataError(
            f"{path}: --index {index} is out of range; the file holds {len(lines)} lines "
            f"({count} sentences)"
        )
    raise DataError(f"{path}: line {index} has no sentence {sentence}")
