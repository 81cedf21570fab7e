"""`nmt translate`: text in (a file, checked whole first, or a pipe answered as lines arrive),
translations out, with the attention, alignments and heatmaps on request; a Markdown or HTML
document translated whole; or, with --force, the model's reading of given translations (forced
decoding)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nmt.checkpoint import guard_outputs
from nmt.data import textio
from nmt.data.corpus import open_input, read_text
from nmt.data.glossary import Glossary
from nmt.errors import ConfigError, DataError
from nmt.inference import (
    TranslateOptions,
    TranslationResult,
    Translator,
    decode_overrides,
    set_up_process,
)
from nmt.io import Input, Output, atomic_open, is_stream, write_text
from nmt.markup.document import document_format
from nmt.markup.document import translate_document as translate_markup
from nmt.outputs import (
    AttentionSinks,
    TranslationWriter,
    check_output_path,
    given,
    log_stderr,
    log_too_long,
    model_inputs,
    progress_bar,
    reader_gone,
)

OUTPUT_FORMATS = ("text", "jsonl")
INPUT_FORMATS = ("text", "jsonl")
FORCE_ONE_TRANSLATION = (
    "--force reads one given translation per line: it takes no --nbest > 1 and no sampling"
)


def translate(
    checkpoints: list[Path],
    input_path: Path | None = None,
    output_path: Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    device: str = "auto",
    attention_out: Path | None = None,
    alignments_out: Path | None = None,
    plot_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    output_format: str = "text",
    with_attention: bool = False,
    force_path: Path | None = None,
    glossary_path: Path | None = None,
    input_format: str = "text",
    doc_format: str | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """`nmt translate`: lines from `input_path` (or stdin) to translations in `output_path` (or
    stdout), one per input line, in input order; each line split into sentences unless
    decode.split is false, their translations joined with the line's spacing. Text output (with
    nbest > 1 Moses n-best lines `LINE ||| translation ||| score`) or JSONL
    (`TranslationResult.to_dict`; `with_attention` adds the word attention); the attention to
    `attention_out` (.npz/.jsonl, one record per sentence), hard word links to `alignments_out`
    (Pharaoh, one line per input line), heatmaps to `plot_dir`. `force_path`: one given
    translation per line, read instead of searched (forced decoding). `glossary_path`: terms
    whose translation is fixed (nmt/data/glossary.py); `input_format` jsonl reads
    {"text", "glossary"} objects. A Markdown or HTML document (`doc_format`, or the input's
    extension) goes to `translate_document`. A file is checked whole before the model loads;
    a pipe is answered in micro-batches as lines arrive. `threads` > 0 sets torch's CPU threads.
    Returns {"lines", "sentences", "tokens", "seconds"}.
    """
    log = log or log_stderr
    check_outputs(checkpoints, output_format, input_format, with_attention, input_path,
                  force_path, glossary_path, output_path, attention_out, alignments_out,
                  plot_dir)  # fmt: skip
    fmt = document_format(input_path, doc_format)
    if fmt != "text":
        exports = {"--attention-out": attention_out, "--alignments-out": alignments_out,
                   "--plot-dir": plot_dir, "--force": force_path}  # fmt: skip
        check_document_flags(fmt, exports, input_format, output_format, with_attention)
        glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
        return translate_document(checkpoints, input_path, output_path, fmt, overrides, flags,
                                  device, log, threads, glossary)  # fmt: skip
    # `--set` read once: for the checks of --force and for the Translator; the named flags win.
    settings = decode_overrides(overrides or [])
    settings |= {k: v for k, v in (flags or {}).items() if v is not None}
    check_forced(force_path, input_path, glossary_path, settings)
    glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
    batches, forced, where, sources = open_inputs(input_path, force_path, input_format)
    writes_links = bool(alignments_out) or output_format == "jsonl"
    translator = load_translator(checkpoints, device, log, glossary, settings, threads,
                                 force_path, writes_links)  # fmt: skip
    writer = TranslationWriter(translator, output_format, with_attention, output_path)
    need_attention = bool(attention_out or alignments_out or plot_dir or output_format == "jsonl")
    if input_path is None and sys.stdin is not None and sys.stdin.isatty():
        log("type a sentence and press Enter; Ctrl-D ends")
    total = sources if input_path is not None and (output_path or not sys.stdout.isatty()) else 0
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_open(output_path)) if output_path else sys.stdout
        sinks = stack.enter_context(
            AttentionSinks(translator, attention_out, alignments_out, plot_dir)
        )
        advance = stack.enter_context(progress_bar(total, "translating"))
        for lines in batches:
            results = translate_batch(translator, lines, forced, where, force_path, input_format,
                                      glossary, need_attention, writer.count)  # fmt: skip
            writer.write(out, results)
            sinks.write(results)
            writer.flush(out)
            advance(len(lines))
    seconds = time.perf_counter() - started
    log(summary_line(writer, forced is not None, seconds))
    log_too_long(translator, log)
    return {"lines": writer.count, "sentences": writer.sentences, "tokens": writer.tokens,
            "seconds": seconds}  # fmt: skip


def summary_line(writer: TranslationWriter, forced: bool, seconds: float) -> str:
    """The closing log line: lines read (--force) or translated, their sentences where lines
    were split, and the time."""
    done = "read" if forced else "translated"
    noun = "line" if writer.count == 1 else "lines"
    split = f" ({writer.sentences:,} sentences)" if writer.sentences != writer.count else ""
    return f"{done} {writer.count:,} {noun}{split} in {seconds:.1f} s"


def note_guided_alignment(translator: Translator, log: Callable[[str], None]) -> None:
    """Say where the hard alignments of a run trained with guided alignment come from: its taught
    head, whatever decode.attention_layer / attention_head choose for the exported attention."""
    if translator.aligned_head is not None:
        layer, head = translator.aligned_head
        log(f"note: trained with guided alignment, so the hard alignments come from decoder layer "
            f"{layer}, head {head} (the head taught to align); decode.attention_layer and "
            "attention_head choose only the exported attention")  # fmt: skip


def load_translator(
    checkpoints: list[Path],
    device: str,
    log: Callable[[str], None],
    glossary: Glossary | None,
    settings: dict[str, Any],
    threads: int,
    force_path: Path | None,
    writes_links: bool,
) -> Translator:
    """The models and decode settings, loaded once every input is checked; with --force the
    run's own settings may not ask for an n-best list or sampling either."""
    set_up_process(threads)
    translator = Translator.load(checkpoints, device, log=log, glossary=glossary, **settings)
    if force_path is not None and (translator.cfg.nbest > 1 or translator.cfg.sample):
        raise ConfigError(FORCE_ONE_TRANSLATION)  # the run's own decode settings ask for them
    if force_path is not None:
        log(f"forced decoding: no search; the translations are read from {force_path}")
    if writes_links:
        note_guided_alignment(translator, log)
    return translator


def translate_batch(
    translator: Translator,
    lines: list[str],
    forced: Iterator[list[str]] | None,
    where: str,
    force_path: Path | None,
    input_format: str,
    glossary: Glossary | None,
    need_attention: bool,
    first_index: int,
) -> list[TranslationResult]:
    """One batch of input lines translated (or, with --force, its given translations read),
    each JSONL line with its own glossary terms."""
    if forced is not None:
        return translator.score(lines, next(forced), attention=need_attention,
                                first_index=first_index, where=where,
                                target_where=str(force_path))  # fmt: skip
    line_glossaries = None
    if input_format == "jsonl":
        lines, line_glossaries = jsonl_requests(lines, where, first_index, glossary)
    return translator.translate_full(
        lines,
        TranslateOptions(attention=need_attention),
        first_index=first_index,
        where=where,
        glossary=line_glossaries,
    )


def check_document_flags(
    fmt: str,
    exports: dict[str, Path | None],
    input_format: str,
    output_format: str,
    with_attention: bool,
) -> None:
    """A Markdown or HTML document is written whole: the flags of plain text are refused."""
    refused = [flag for flag, value in exports.items() if value is not None]
    if input_format != "text":
        refused.append(f"--input-format {input_format}")
    if refused or output_format != "text" or with_attention:
        what = refused[0] if refused else "--output-format jsonl / --attention"
        raise ConfigError(f"{what}: works on plain text; a {fmt} document is written whole")


def check_outputs(
    checkpoints: list[Path],
    output_format: str,
    input_format: str,
    with_attention: bool,
    input_path: Path | None,
    force_path: Path | None,
    glossary_path: Path | None,
    output_path: Path | None,
    attention_out: Path | None,
    alignments_out: Path | None,
    plot_dir: Path | None,
) -> None:
    """Every format and output flag checked before any work: writable files that are none of
    the inputs (nor of the models' run folders) and no file given for two outputs."""
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--output-format {output_format!r}: expected text or jsonl")
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"--input-format {input_format!r}: expected text or jsonl")
    if input_format == "jsonl" and force_path is not None:
        raise ConfigError("--force pairs plain lines with translations: use --input-format text")
    if with_attention and output_format != "jsonl":
        raise ConfigError("--attention adds the attention matrix to JSONL rows: use it with "
                          "--output-format jsonl (or --attention-out FILE)")  # fmt: skip
    if attention_out is not None and Path(attention_out).suffix.lower() not in (".npz", ".jsonl"):
        raise ConfigError(f"--attention-out {attention_out}: the file must end in .npz or .jsonl")
    files = given(("-o", output_path), ("--attention-out", attention_out),
                  ("--alignments-out", alignments_out))  # fmt: skip
    for flag, path in files:
        check_output_path(path, flag)
    if plot_dir is not None and Path(plot_dir).exists() and not Path(plot_dir).is_dir():
        raise ConfigError(f"--plot-dir {plot_dir}: is a file; give a folder")
    outputs = [Output(flag, path) for flag, path in files]
    if output_path is None:  # translations go to stdout, which may be redirected onto an input
        outputs.append(Output("the standard output", Path("/dev/stdout")))
    if plot_dir is not None:
        outputs.append(Output("--plot-dir", Path(plot_dir), "files", "attention_*.png"))
    read = given(("-i", input_path), ("--force", force_path), ("--glossary", glossary_path))
    inputs = [Input(path, flag) for flag, path in read]
    if input_path is None:  # a file redirected to stdin (`< x`) is an input as well
        inputs.append(Input(Path("/dev/stdin"), "the standard input"))
    guard_outputs(outputs, inputs + model_inputs(checkpoints), ConfigError)


def check_forced(
    force_path: Path | None,
    input_path: Path | None,
    glossary_path: Path | None,
    settings: dict[str, Any],
) -> None:
    """--force reads one given translation per line of a regular file: no n-best, no sampling,
    no glossary, no pipe."""
    if force_path is None:
        return
    if input_path is None:
        raise ConfigError("--force pairs translations with the lines of a file: give it with -i")
    if glossary_path is not None:
        raise ConfigError("--force reads given translations and searches none: drop --glossary")
    if (settings.get("nbest") or 1) > 1 or settings.get("sample") in (True, "true", "True"):
        raise ConfigError(FORCE_ONE_TRANSLATION)
    for flag, path in given(("-i", input_path), ("--force", force_path)):
        if is_stream(path):
            raise ConfigError(
                f"{flag} {path}: is a pipe or device, read once; --force reads both files "
                "twice (counted, then paired): give regular files"
            )


def open_inputs(
    input_path: Path | None, force_path: Path | None, input_format: str
) -> tuple[Iterator[list[str]], Iterator[list[str]] | None, str, int]:
    """The input's batches of lines (a checked file in chunks; a pipe, FIFO or stdin as lines
    arrive), the forced translations in the same chunks (with --force), the input's name for
    messages and its number of lines (0 when not known in advance: the progress bar's total)."""
    if input_path is None:
        return textio.micro_batches(textio.stdin_binary(sys.stdin)), None, "<stdin>", 0
    where = str(input_path)
    if is_stream(Path(input_path)):
        # A pipe, FIFO or <(process substitution) can be read only once: answered as it comes.
        return textio.micro_batches(open_input(Path(input_path)), where), None, where, 0
    sources = textio.check_text_file(Path(input_path), jsonl=input_format == "jsonl")
    forced = None
    if force_path is not None:
        forced = forced_translations(Path(force_path), sources, Path(input_path))
    return textio.file_chunks(Path(input_path)), forced, where, sources


def forced_translations(
    force_path: Path, source_lines: int, input_path: Path
) -> Iterator[list[str]]:
    """The lines of `force_path` in the chunks `file_chunks` gives the input, after checking the
    file whole and that it has a line for each of the input's `source_lines` lines."""
    targets = textio.check_text_file(force_path)
    if source_lines != targets:
        raise DataError(
            f"--force {force_path}: {targets:,} translations for the {source_lines:,} lines of "
            f"{input_path}; give one translation per input line"
        )
    return textio.file_chunks(force_path)


def jsonl_requests(
    lines: list[str], where: str, first_index: int, glossary: Glossary | None
) -> tuple[list[str], list[Glossary | None] | None]:
    """JSONL input lines -> their texts and each line's glossary: `glossary` (the --glossary
    file's, or None) with the line's own terms added; None when no line has any."""
    texts, per_line = [], []
    for n, line in enumerate(lines):
        line_where = f"{where}:{first_index + n + 1}"
        text, pairs = textio.parse_jsonl_line(line, line_where)
        texts.append(text)
        if pairs is None:
            per_line.append(glossary)
        elif glossary is None:
            per_line.append(Glossary.from_pairs(pairs, line_where))
        else:
            per_line.append(glossary.extended(pairs, line_where))
    return texts, None if all(g is None for g in per_line) else per_line


def translate_document(
    checkpoints: list[Path],
    input_path: Path | None,
    output_path: Path | None,
    fmt: str,
    overrides: list[str] | None,
    flags: dict[str, Any] | None,
    device: str,
    log: Callable[[str], None],
    threads: int = 0,
    glossary: Glossary | None = None,
) -> dict[str, Any]:
    """`nmt translate` on a Markdown or HTML document (nmt/markup/): read whole, its blocks
    translated sentence by sentence in token batches (following `glossary` when given), inline
    markup placed by the alignment, written whole (atomically to `output_path`, else to
    stdout)."""
    where = str(input_path) if input_path is not None else "<stdin>"
    if input_path is not None:
        source = read_text(Path(input_path))
    else:
        try:
            source = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"<stdin>: not valid UTF-8 (byte {exc.start})") from None
    set_up_process(threads)
    translator = Translator.load(
        checkpoints, device, overrides or [], log, glossary=glossary, **(flags or {})
    )
    started = time.perf_counter()
    counts = {"units": 0, "sentences": 0}

    def aligned(texts: list[str]) -> list[Any]:
        results = []
        with progress_bar(len(texts) if len(texts) > 1 else 0, "translating") as advance:
            for first in range(0, len(texts), 1000):
                chunk = texts[first : first + 1000]
                results += translator.translate_full(chunk, TranslateOptions(attention=True),
                                                     first_index=first,
                                                     where=f"{where} (block)")  # fmt: skip
                advance(len(chunk))
        counts["units"] = len(results)
        counts["sentences"] = sum(len(r.sentences) for r in results)
        return [r.aligned() for r in results]

    result = translate_markup(source, fmt, aligned)
    if output_path is not None:
        write_text(Path(output_path), result.text)
    else:
        try:
            sys.stdout.write(result.text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise reader_gone(0) from None
    seconds = time.perf_counter() - started
    log(f"translated {fmt}: {counts['units']:,} blocks ({counts['sentences']:,} sentences) in "
        f"{seconds:.1f} s")  # fmt: skip
    if result.skipped:
        log(f"warning: {where}: {result.skipped:,} block(s) left untranslated: their markup "
            "could not be followed")  # fmt: skip
    log_too_long(translator, log)
    return {"lines": counts["units"], "sentences": counts["sentences"], "tokens": 0,
            "seconds": seconds, "skipped": result.skipped}  # fmt: skip
