"""What `nmt translate` and the other commands write besides their results' files: translations
as text, Moses n-best or JSONL, the attention outputs (matrices, Pharaoh links, heatmaps), checks
of output paths before any work, a progress bar and messages on standard error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from nmt.checkpoint import run_inputs
from nmt.decoding.alignment import AttentionWriter, format_pharaoh
from nmt.decoding.plot import plot_attention
from nmt.errors import ConfigError, DataError
from nmt.inference import EOS_PIECE, TranslationResult, Translator
from nmt.io import Input, atomic_open, check_output_file


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before any work, an output that cannot be written as a file (`check_output_file`:
    a directory, a path under a regular file, an unwritable folder). Whether it is one of the
    command's inputs is `check_outputs`' question."""
    path = Path(path)
    try:
        check_output_file(path)
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory; give a file name") from None
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot be written ({exc.filename}: {exc.strerror})"
        ) from None


def model_inputs(checkpoints: list[Path]) -> list[Input]:
    """What a command that loads `checkpoints` reads, now or later: their run folders' files."""
    return [source for path in checkpoints for source in run_inputs(path)]


def given(*pairs: tuple[str, Path | None]) -> list[tuple[str, Path]]:
    """The (flag, path) pairs whose path was given."""
    return [(flag, Path(path)) for flag, path in pairs if path is not None]


def reader_gone(lines_done: int) -> DataError:
    """The error for a reader that closed our stdout (`nmt translate ... | head`). Standard
    output is pointed at /dev/null first, so that the interpreter's own last flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return DataError(f"<stdout>: the reader closed the pipe after {lines_done:,} lines")


class TranslationWriter:
    """Writes results as text (or Moses n-best) or JSONL, counting lines and target tokens."""

    def __init__(
        self, translator: Translator, output_format: str, with_attention: bool, path: Path | None
    ) -> None:
        self.nbest = translator.cfg.nbest > 1
        self.jsonl = output_format == "jsonl"
        self.with_attention = with_attention
        self.where = str(path) if path is not None else "<stdout>"  # names a failed write
        self.count = 0
        self.sentences = 0
        self.tokens = 0

    def flush(self, out: Any) -> None:
        """Flush after each batch, so that a pipe's reader gets its answers at once."""
        try:
            out.flush()
        except BrokenPipeError:
            raise reader_gone(self.count) from None
        except OSError as exc:
            exc.filename = exc.filename or self.where
            raise

    def write(self, out: Any, results: list[TranslationResult]) -> None:
        try:
            for result in results:
                if self.jsonl:
                    row = result.to_dict(nbest=self.nbest, attention=self.with_attention)
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                elif self.nbest:
                    for cand in result.nbest:
                        out.write(f"{self.count} ||| {cand.translation} ||| {cand.score:.4f}\n")
                else:
                    out.write(result.translation + "\n")
                self.count += 1
                self.sentences += max(1, len(result.sentences))
                self.tokens += sum(t != EOS_PIECE for t in result.tokens)
        except BrokenPipeError:
            raise reader_gone(self.count) from None
        except OSError as exc:  # a full disk: named here, not by another output's file
            exc.filename = exc.filename or self.where
            raise


class AttentionSinks:
    """The attention outputs of `nmt translate`: matrices (.npz/.jsonl), Pharaoh links, heatmaps.
    The files appear only when translation finished without an error."""

    def __init__(
        self,
        translator: Translator,
        attention_out: Path | None,
        alignments_out: Path | None,
        plot_dir: Path | None,
    ) -> None:
        self.translator = translator
        self.paths = (attention_out, alignments_out)
        self.plot_dir = plot_dir
        self._stack = contextlib.ExitStack()
        self.attention: Any = None
        self.alignments: Any = None

    def __enter__(self) -> AttentionSinks:
        attention_out, alignments_out = self.paths
        cfg = self.translator.cfg
        meta = {"arch": self.translator.arch, "attention_layer": cfg.attention_layer,
                "attention_head": cfg.attention_head}  # fmt: skip
        if attention_out is not None:
            self.attention = self._stack.enter_context(AttentionWriter(attention_out, meta))
        if alignments_out is not None:
            # Opened now, so that an unwritable path fails before any translation.
            self.alignments = self._stack.enter_context(atomic_open(alignments_out))
        return self

    def write(self, results: list[TranslationResult]) -> None:
        for result in results:
            sentences = result.sentences or [result]
            for sentence in sentences:
                record = sentence.record
                if self.attention is not None and record is not None:
                    self.attention.write(record)
                if self.plot_dir is not None and record is not None and record.word_matrix.size:
                    name = f"attention_{record.index}" + (
                        f"_{record.sentence}" if len(sentences) > 1 else ""
                    )
                    plot_attention(record, Path(self.plot_dir) / f"{name}.png")
            if self.alignments is not None:
                try:
                    self.alignments.write(format_pharaoh(result.alignment) + "\n")
                except OSError as exc:
                    exc.filename = exc.filename or str(self.paths[1])
                    raise

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


@contextlib.contextmanager
def progress_bar(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr, only when stderr is a terminal and there is a known
    `total` (lines); yields the function that advances it. The bar leaves no trace."""
    if not total or not sys.stderr.isatty():
        yield lambda done: None
        return
    columns = (f"{what}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # stdout may be the translation itself: only stderr goes through the live display.
    with Progress(*columns, console=Console(stderr=True), transient=True,
                  redirect_stdout=False) as bar:  # fmt: skip
        task = bar.add_task(what, total=total)
        yield lambda done: bar.advance(task, done)


TOO_LONG_DONE = {"split": "translated in pieces cut at word boundaries",
                 "truncate": "cut short (decode.too_long=truncate)"}  # fmt: skip


def log_too_long(translator: Translator, log: Callable[[str], None]) -> None:
    """The count of sentences longer than the model takes, after the per-line warnings."""
    count = translator.too_long_sentences
    if count:
        how = TOO_LONG_DONE[translator.cfg.too_long]
        log(f"{count:,} sentence(s) longer than the model's maximum of {translator.max_src_len} "
            f"subwords: {how}")  # fmt: skip


def log_stderr(message: str) -> None:
    """Where commands say what they do: one line on standard error, flushed at once."""
    print(message, file=sys.stderr, flush=True)
