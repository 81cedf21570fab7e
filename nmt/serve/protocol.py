"""The /translate request: parsed and checked field by field, so that every client mistake is
answered with a 4xx and a sentence that names the field, what came and what was expected."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from nmt.config import ServeConfig
from nmt.inference import TranslateOptions
from nmt.io import JSONLimitError, parse_json

FIELDS = ("text", "model", "beam", "nbest", "attention", "attention_detail", "glossary", "split",
          "format")  # fmt: skip
FORMATS = ("text", "html", "markdown")


class BadRequest(Exception):
    """A client mistake: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # The rest of the body stays unread (too large, too slow): the connection is closed.
        self.close = status in (408, 413)


@dataclass(frozen=True)
class TranslateRequest:
    """What to translate: `lines` (format "text"), or one `document` in HTML or Markdown; with
    the search settings (the JSON field `beam` is the request's spelling of `beam_size`) and
    the request's glossary as sorted (source term, target term) pairs."""

    model: str
    lines: list[str]
    options: TranslateOptions
    glossary: tuple[tuple[str, str], ...] = ()
    format: str = "text"
    document: str | None = None


def parse_translate(
    body: bytes, models: list[str], default_beam: dict[str, int], cfg: ServeConfig
) -> TranslateRequest:
    """Check a /translate body against the fields above; `models[0]` is the default model and
    `default_beam[name]` its run's decode.beam_size. Raises BadRequest."""
    data = _json_object(body)
    unknown = [key for key in data if key not in FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], FIELDS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BadRequest(422, f"unknown field {unknown[0]!r}{hint} (fields: {', '.join(FIELDS)})")
    fmt = data.get("format", "text")
    if fmt not in FORMATS:
        raise BadRequest(422, f"'format' is {fmt!r}; expected one of {', '.join(FORMATS)}")
    document = None
    if fmt == "text":
        lines = _lines(data, cfg)
    else:
        document = _document(data, fmt, cfg)
        lines = []
    model = data.get("model")
    if model is None:
        model = models[0]
    elif not isinstance(model, str):
        raise BadRequest(422, f"'model' must be a string, got {_kind(model)}")
    elif model not in models:
        raise BadRequest(422, f"unknown model {model!r}; this server has: {', '.join(models)}")
    beam = _int(data, "beam", default_beam[model], 1, cfg.max_beam)
    nbest = _int(data, "nbest", 1, 1, beam)
    detail = _bool(data, "attention_detail")
    attention = _bool(data, "attention") or detail
    glossary = _glossary(data, cfg)
    split = _bool(data, "split", True)
    options = TranslateOptions(beam, nbest, attention, detail, split)
    return TranslateRequest(model, lines, options, glossary, fmt, document)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        data = parse_json(text)
    except JSONLimitError as exc:
        raise BadRequest(400, f"malformed JSON: {exc.msg}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest(
            400, f'expected a JSON object such as {{"text": "..."}}, got {_kind(data)}'
        )
    return data


def _document(data: dict[str, Any], fmt: str, cfg: ServeConfig) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadRequest(422, f"'format': {fmt!r} takes the document as one string in 'text'")
    if len(text) > cfg.max_chars:
        raise BadRequest(
            413, f"{len(text)} characters in one request; the limit is {cfg.max_chars}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(422, "'text' is not valid Unicode") from None
    return text


def _lines(data: dict[str, Any], cfg: ServeConfig) -> list[str]:
    if "text" not in data:
        raise BadRequest(422, "missing field 'text': a string or a list of strings")
    text = data["text"]
    lines = [text] if isinstance(text, str) else text
    if not isinstance(lines, list):
        raise BadRequest(422, f"'text' must be a string or a list of strings, got {_kind(text)}")
    if not lines:
        raise BadRequest(422, "'text' is an empty list; send at least one sentence")
    for n, line in enumerate(lines):
        if not isinstance(line, str):
            raise BadRequest(422, f"'text'[{n}] must be a string, got {_kind(line)}")
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise BadRequest(422, f"'text'[{n}] is not valid Unicode") from None
        if "\n" in line or "\r" in line:
            raise BadRequest(
                422, f"'text'[{n}] holds a line break; send one sentence per list item"
            )
    if len(lines) > cfg.max_sentences:
        raise BadRequest(
            413, f"{len(lines)} sentences in one request; the limit is {cfg.max_sentences}"
        )
    chars = sum(len(line) for line in lines)
    if chars > cfg.max_chars:
        raise BadRequest(413, f"{chars} characters in one request; the limit is {cfg.max_chars}")
    return lines


def _glossary(data: dict[str, Any], cfg: ServeConfig) -> tuple[tuple[str, str], ...]:
    """The request's glossary, {"source term": "target term", ...}, as sorted pairs (so that equal
    glossaries share a decoding call); () when absent. The terms count towards max_chars."""
    value = data.get("glossary")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise BadRequest(
            422,
            f'\'glossary\' must be an object {{"source term": "target term"}}, got {_kind(value)}',
        )
    for src, tgt in value.items():
        if not isinstance(tgt, str):
            raise BadRequest(422, f"'glossary'[{src!r}] must be a string, got {_kind(tgt)}")
        if not src.strip() or not tgt.strip():
            raise BadRequest(422, f"'glossary' holds an empty term: {src!r} -> {tgt!r}")
        if "\n" in src + tgt or "\r" in src + tgt:
            raise BadRequest(422, f"'glossary'[{src!r}] holds a line break")
    chars = sum(len(src) + len(tgt) for src, tgt in value.items())
    if chars > cfg.max_chars:
        raise BadRequest(413, f"the glossary has {chars} characters; the limit is {cfg.max_chars}")
    return tuple(sorted(value.items()))


def _int(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name)
    if value is None:
        return min(default, high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(422, f"{name!r} must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        shown = str(value) if abs(value) < 10**12 else f"a number of {len(str(abs(value)))} digits"
        raise BadRequest(422, f"{name!r} is {shown}; expected {low} to {high}")
    return value


def _bool(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(422, f"{name!r} must be true or false, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """A JSON value's type, in JSON's words."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), type(value).__name__)
