"""Which kind of document a file is, and translating one whole.

`nmt translate -i FILE` picks the format from the file's extension (or `--format`): plain text
is translated line by line (each line split into sentences, blank lines kept), Markdown and
HTML through nmt/markup/markdown.py and nmt/markup/html.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import ConfigError
from nmt.markup.html import translate_html
from nmt.markup.inline import Aligned
from nmt.markup.markdown import translate_markdown

FORMATS = ("text", "markdown", "html")
SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
            ".htm": "html", ".xhtml": "html"}  # fmt: skip


@dataclass(frozen=True)
class DocumentResult:
    """A translated document: its text, how many blocks were translated, and how many were
    left as they were (Markdown whose markup could not be followed)."""

    text: str
    units: int
    skipped: int = 0


def document_format(path: Path | None, given: str | None) -> str:
    """`given` when set (checked), else the format of `path`'s extension (.gz ignored); text
    for anything else and for standard input."""
    if given is not None:
        if given not in FORMATS:
            raise ConfigError(f"--format {given!r}: expected one of {', '.join(FORMATS)}")
        return given
    if path is None:
        return "text"
    name = Path(path).name.lower().removesuffix(".gz")
    return SUFFIXES.get(Path(name).suffix, "text")


def translate_document(
    source: str, fmt: str, translate: Callable[[list[str]], list[Aligned]]
) -> DocumentResult:
    """A Markdown or HTML document translated by `translate` (block texts in, aligned
    translations out, one each)."""
    if fmt == "html":
        text, units = translate_html(source, translate)
        return DocumentResult(text, units)
    if fmt == "markdown":
        text, units, skipped = translate_markdown(source, translate)
        return DocumentResult(text, units, skipped)
    raise ValueError(f"translate_document takes markdown or html, not {fmt!r}")


__all__ = ["FORMATS", "DocumentResult", "document_format", "translate_document"]
