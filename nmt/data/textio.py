"""Reading text to translate: files checked whole before any work, pipes answered as lines arrive.

A file (`.gz` allowed) is read twice: once to check that it decompresses and is UTF-8 throughout,
so that a bad byte on line 90,000 is reported (with its line number) before a single line is
translated, then again in chunks. A pipe, FIFO, device or terminal (stdin, `-i <(cmd)`) cannot be
read twice; a reader thread feeds its lines to `micro_batches`, which hands over whatever has
arrived within a few milliseconds, so a program that writes one line and waits gets its answer,
and a fast producer still fills batches. Either way no line may hold more than MAX_LINE_BYTES.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO

from nmt.data.corpus import binary_lines, bounded_lines, decode_line
from nmt.errors import DataError
from nmt.io import parse_json

CHUNK_LINES = 1000  # lines per batch at most: enough to sort by length, small enough to stream
WAIT_SECONDS = 0.005  # how long a micro-batch waits for more lines once it has one
_END = None  # queue marker: the stream is finished
HINT = "fix the input"  # what to do about invalid UTF-8 (translate has no --errors replace)


def check_text_file(path: Path, jsonl: bool = False) -> int:
    """Read the whole file once and return its number of lines; a DataError names the line of the
    first invalid UTF-8 byte, or says that a .gz file cannot be read (truncated, not gzip). With
    `jsonl`, every line must also be a request `parse_jsonl_line` takes."""
    lines = 0
    for lines, raw in enumerate(binary_lines(path), 1):  # noqa: B007 (the count is the result)
        line = decode_line(raw, path, lines, hint=HINT)
        if jsonl:
            parse_jsonl_line(line, f"{path}:{lines}")
    return lines


def parse_jsonl_line(line: str, where: str) -> tuple[str, list[tuple[str, str]] | None]:
    """One line of JSONL input, {"text": "...", "glossary": {"source term": "target term", ...}}
    ("glossary" optional) -> (text, term pairs or None). A DataError names `where` (file:line)."""
    try:
        data = parse_json(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise DataError(f'{where}: expected an object with a string "text", e.g. {{"text": "..."}}')
    unknown = sorted(set(data) - {"text", "glossary"})
    if unknown:
        raise DataError(f'{where}: unknown field {unknown[0]!r} (fields: "text", "glossary")')
    text, terms = data["text"], data.get("glossary")
    if "\n" in text or "\r" in text:
        raise DataError(f"{where}: the text holds a line break; give one sentence per line")
    if terms is not None and (
        not isinstance(terms, dict) or not all(isinstance(t, str) for t in terms.values())
    ):
        raise DataError(f'{where}: "glossary" must map source terms to target terms (strings)')
    pairs = None if terms is None else list(terms.items())
    for string in [text, *(s for pair in pairs or [] for s in pair)]:
        if not _is_unicode(string):  # "\ud800": a lone surrogate, which JSON escapes allow
            raise DataError(f"{where}: a string holds a lone surrogate (\\uD800-\\uDFFF), not text")
    return text, pairs


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def file_chunks(path: Path, size: int = CHUNK_LINES) -> Iterator[list[str]]:
    """Lines of a (checked) file in lists of up to `size`."""
    chunk: list[str] = []
    for lineno, raw in enumerate(binary_lines(path), 1):
        chunk.append(decode_line(raw, path, lineno, hint=HINT))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def stdin_binary(stdin: TextIO | None) -> IO[bytes]:
    """The byte stream under `sys.stdin`; DataError when standard input is closed."""
    if stdin is None:
        raise DataError("<stdin>: standard input is closed; give -i FILE or pipe text in")
    try:
        stdin.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        # Not a real file descriptor (a test runner's buffer): read its bytes directly.
        if hasattr(stdin, "buffer"):
            return stdin.buffer
        raise DataError("<stdin>: standard input is closed; give -i FILE or pipe text in") from None
    return stdin.buffer


def micro_batches(
    stream: IO[bytes],
    where: str = "<stdin>",
    size: int = CHUNK_LINES,
    wait: float = WAIT_SECONDS,
) -> Iterator[list[str]]:
    """Lines of a pipe in batches: each batch starts with the next line to arrive and takes what
    else arrives within `wait` seconds of the last one, up to `size` lines."""
    lines: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4 * size)

    def feed() -> None:
        try:
            for raw in bounded_lines(stream, where):
                lines.put(raw)
        except (OSError, ValueError, EOFError, DataError) as exc:  # broke, closed, too long
            lines.put(exc)
        lines.put(_END)

    threading.Thread(target=feed, name="nmt-stdin", daemon=True).start()
    lineno = 0
    finished = False
    while not finished:
        batch: list[str] = []
        item = lines.get()
        deadline = time.monotonic() + wait
        while True:
            if item is _END:
                finished = True
                break
            if isinstance(item, BaseException):
                if batch:  # the lines before the failure are still answered
                    yield batch
                if isinstance(item, DataError):
                    raise item
                raise DataError(f"{where}: reading failed after line {lineno:,} ({item})")
            lineno += 1
            try:
                batch.append(decode_line(item, Path(where), lineno, hint=HINT))
            except DataError:
                if batch:  # the lines before the bad one are still answered
                    yield batch
                raise
            if len(batch) == size:
                break
            try:
                item = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            deadline = time.monotonic() + wait
        if batch:
            yield batch
