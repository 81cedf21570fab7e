"""Markdown documents: the text of paragraphs, headings, list items and table cells translated in
place, everything else kept character for character.

Parsed with markdown-it-py (CommonMark, plus tables and strikethrough as GitHub writes them).
Only the inline content of a block is replaced, on the lines where it stands, so headings, list
markers, quote marks, tables, blank lines, code blocks, raw HTML blocks and link reference
definitions stay as they are. Inside a block the inline tokens are followed through the source
text, so that each element's own markup is kept literally: emphasis and strikethrough marks,
link brackets with their destination and title (URLs untouched), inline code, autolinks, images
and raw inline HTML (all verbatim). Emphasis, link text and pairs of inline HTML tags are
placed on the translation by the alignment (nmt/markup/inline.py); inline code and autolinks are
read with their sentence and written back verbatim. A paragraph's soft line breaks become
spaces (its translation stands on its first line); a hard break ends a unit and is kept.
A block whose markup cannot be followed is left untranslated and counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.helpers import parseLinkDestination, parseLinkTitle

from nmt.markup.inline import Aligned, CollapsedText, Event, Inline, Unit, transfer

_SOFTBREAK = re.compile(r" *\n[ \t]*")
_HARDBREAK = re.compile(r"(?:\\| {2,})\n[ \t]*")
_HTML_OPEN = re.compile(r"^<([A-Za-z][A-Za-z0-9-]*)\b[^>]*?(/?)>$")
_HTML_CLOSE = re.compile(r"^</([A-Za-z][A-Za-z0-9-]*)\s*>$")
_HTML_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())
_SPECIAL = re.compile(r"([\\`*_\[\]<|~])")
_ENTITY_LIKE = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_LINE_START = re.compile(r"^(\d+)([.)])|^([#>+=-])")
_PAIRED = {"em_open": "em", "strong_open": "strong", "s_open": "s"}
_CLOSING = {"em_close", "strong_close", "s_close"}


class _Unfollowed(Exception):
    """The tokens do not spell the source text as expected: the block is left as it is."""


def parser() -> MarkdownIt:
    """CommonMark with tables and strikethrough; escapes and entities stay separate tokens."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).disable("text_join")


@dataclass
class Segment:
    """Inline content up to a hard break: its unit, the literal markup before and after each of
    its elements (an opaque one's whole source in `opens`), and its [start, end) in the block's
    inline content."""

    unit: Unit
    opens: list[str]
    closes: list[str]
    start: int
    end: int
    kinds: list[str] = field(default_factory=list)  # em, strong, s, link, html:TAG, opaque


@dataclass
class _Builder:
    start: int
    chars: CollapsedText = field(default_factory=lambda: CollapsedText(" \t\n"))
    inlines: list[Inline] = field(default_factory=list)
    opens: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    stack: list[tuple[int, str]] = field(default_factory=list)  # (element, kind)

    @property
    def length(self) -> int:
        return self.chars.length

    def add_text(self, text: str) -> None:
        self.chars.add(text)

    def parent(self) -> int | None:
        return self.stack[-1][0] if self.stack else None

    def open(self, literal: str, kind: str) -> None:
        self.inlines.append(Inline(self.length, self.length, self.parent()))
        self.opens.append(literal)
        self.closes.append("")
        self.kinds.append(kind)
        self.stack.append((len(self.inlines) - 1, kind))

    def close(self, literal: str, kind: str) -> None:
        while self.stack and self.stack[-1][1] != kind:
            if not self.stack[-1][1].startswith("html:"):
                raise _Unfollowed(f"{kind} closes {self.stack[-1][1]}")
            self._unpair()
        if not self.stack:
            raise _Unfollowed(f"{kind} closes nothing")
        k, _ = self.stack.pop()
        old = self.inlines[k]
        self.inlines[k] = Inline(old.start, self.length, old.parent)
        self.closes[k] = literal

    def opaque(self, literal: str, text: str) -> None:
        start = self.length
        self.add_text(text)
        self.inlines.append(Inline(start, self.length, self.parent(), opaque=True))
        self.opens.append(literal)
        self.closes.append("")
        self.kinds.append("opaque")

    def _unpair(self) -> None:
        """An inline HTML tag that found no closing tag: an empty verbatim element, its
        children handed to its parent."""
        k, _ = self.stack.pop()
        old = self.inlines[k]
        self.inlines[k] = Inline(old.start, old.start, old.parent, opaque=True)
        for n in range(k + 1, len(self.inlines)):
            if self.inlines[n].parent == k:
                x = self.inlines[n]
                self.inlines[n] = Inline(x.start, x.end, old.parent, x.opaque)

    def finish(self, end: int) -> Segment:
        while self.stack:
            if not self.stack[-1][1].startswith("html:"):
                raise _Unfollowed("an element is not closed")
            self._unpair()
        text = self.chars.text()
        inlines = [Inline(min(x.start, len(text)), min(x.end, len(text)), x.parent, x.opaque)
                   for x in self.inlines]  # fmt: skip
        return Segment(Unit(text, inlines), self.opens, self.closes, self.start, end, self.kinds)


def segments(content: str, children: Sequence[Any]) -> list[Segment]:
    """The segments of a block's inline `content` from its markdown-it tokens. Raises
    _Unfollowed when the tokens cannot be matched to the text."""
    found: list[Segment] = []
    seg = _Builder(0)
    cur = 0
    n = 0
    while n < len(children):
        tok = children[n]
        kind = tok.type
        if kind == "text":
            cur = _take(content, cur, tok.content)
            seg.add_text(tok.content)
        elif kind == "text_special":
            cur = _take(content, cur, tok.markup)
            seg.add_text(tok.content)
        elif kind == "softbreak":
            cur = _take_re(content, cur, _SOFTBREAK)
            seg.add_text(" ")
        elif kind == "hardbreak":
            start = cur
            cur = _take_re(content, cur, _HARDBREAK)
            if seg.stack:  # inside an element: kept where it is, as a verbatim break
                seg.opaque(content[start:cur], " ")
            else:
                found.append(seg.finish(start))
                seg = _Builder(cur)
        elif kind in _PAIRED:
            cur = _take(content, cur, tok.markup)
            seg.open(tok.markup, _PAIRED[kind])
        elif kind in _CLOSING:
            cur = _take(content, cur, tok.markup)
            seg.close(tok.markup, kind.removesuffix("_close"))
        elif kind == "code_inline":
            start = cur
            cur = _code_end(content, cur, tok.markup)
            seg.opaque(content[start:cur], tok.content)
        elif kind == "html_inline":
            cur = _take(content, cur, tok.content)
            _html(seg, tok.content)
        elif kind == "image":
            start = cur
            cur = _link_tail(content, _label_end(content, _take(content, cur, "!")) + 1)
            seg.opaque(content[start:cur], "")
        elif kind == "link_open" and tok.markup == "autolink":
            start = cur
            end = content.find(">", cur)
            if not content.startswith("<", cur) or end < 0:
                raise _Unfollowed("autolink")
            cur = end + 1
            seg.opaque(content[start:cur], content[start + 1 : cur - 1])
            while n < len(children) and children[n].type != "link_close":
                n += 1
        elif kind == "link_open":
            cur = _take(content, cur, "[")
            seg.open("[", "link")
        elif kind == "link_close":
            start = cur
            cur = _link_tail(content, _take(content, cur, "]"))
            seg.close(content[start:cur], "link")
        else:
            raise _Unfollowed(f"token {kind}")
        n += 1
    if cur != len(content):
        raise _Unfollowed(f"text left after the tokens at {cur}")
    found.append(seg.finish(cur))
    return found


def _take(content: str, cur: int, literal: str) -> int:
    if not content.startswith(literal, cur):
        raise _Unfollowed(f"expected {literal!r} at {cur}")
    return cur + len(literal)


def _take_re(content: str, cur: int, pattern: re.Pattern[str]) -> int:
    match = pattern.match(content, cur)
    if match is None:
        raise _Unfollowed(f"expected {pattern.pattern!r} at {cur}")
    return match.end()


def _code_end(content: str, cur: int, fence: str) -> int:
    """End of the code span opened by the backtick run `fence` at `cur`: after the next run of
    exactly as many backticks."""
    pos = _take(content, cur, fence)
    for match in re.finditer(r"`+", content[pos:]):
        if len(match.group()) == len(fence):
            return pos + match.end()
    raise _Unfollowed("code span not closed")


def _label_end(content: str, pos: int) -> int:
    """Index of the "]" that closes the "[" at `pos` (backslash escapes skipped)."""
    depth = 0
    while pos < len(content):
        ch = content[pos]
        if ch == "\\":
            pos += 2
            continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return pos
        pos += 1
    raise _Unfollowed("link label not closed")


def _link_tail(content: str, pos: int) -> int:
    """End of what follows a link's "]": an inline destination and title in parentheses, a
    reference label in brackets, or nothing (a shortcut reference)."""
    if content.startswith("(", pos):
        end = _inline_destination(content, pos + 1)
        if end is not None:
            return end
    if content.startswith("[", pos):
        close = content.find("]", pos)
        if close >= 0:
            return close + 1
    return pos


def _inline_destination(content: str, pos: int) -> int | None:
    limit = len(content)

    def skip(p: int) -> int:
        while p < limit and content[p] in " \t\n":
            p += 1
        return p

    pos = skip(pos)
    if pos < limit and content[pos] != ")":
        dest = parseLinkDestination(content, pos, limit)
        if not dest.ok:
            return None
        pos = skip(dest.pos)
        title = parseLinkTitle(content, pos, limit)
        if title.ok:
            pos = skip(title.pos)
    return pos + 1 if pos < limit and content[pos] == ")" else None


def _html(seg: _Builder, literal: str) -> None:
    """An inline HTML tag: an opening tag waits for its closing one to make an element; a lone
    or void tag (or a comment) is an empty verbatim element."""
    opening, closing = _HTML_OPEN.match(literal), _HTML_CLOSE.match(literal)
    if opening and not opening.group(2) and opening.group(1).lower() not in _HTML_VOID:
        seg.open(literal, f"html:{opening.group(1).lower()}")
    elif closing and any(kind == f"html:{closing.group(1).lower()}" for _, kind in seg.stack):
        seg.close(literal, f"html:{closing.group(1).lower()}")
    else:
        seg.opaque(literal, "")


# ---- writing ------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Translated text as Markdown that shows it literally."""
    text = _ENTITY_LIKE.sub(r"\\&", _SPECIAL.sub(r"\\\1", text))
    return _LINE_START.sub(lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1)
                           else f"\\{m.group(3)}", text, count=1)  # fmt: skip


# Emphasis around no text is no emphasis in Markdown: an element the alignment left without
# words is written as its HTML tag, which keeps it in the rendered page.
_EMPTY_AS_HTML = {"em": "<em></em>", "strong": "<strong></strong>", "s": "<del></del>"}


def render(segment: Segment, events: Sequence[Event]) -> str:
    """A segment's events as Markdown: the elements' own markup around the escaped text."""
    out = []
    for n, (kind, value) in enumerate(events):
        k = int(value) if kind != "text" else -1
        if kind == "text":
            out.append(escape(str(value)))
        elif kind == "open" and events[n + 1] == ("close", k) and k < len(segment.kinds):
            out.append(_EMPTY_AS_HTML.get(segment.kinds[k], segment.opens[k] + segment.closes[k]))
        elif kind == "close" and n > 0 and events[n - 1] == ("open", k):
            continue
        elif kind == "close":
            out.append(segment.closes[k])
        else:  # open, or an opaque element's whole source
            out.append(segment.opens[k])
    return "".join(out)


@dataclass
class _Block:
    """A block's inline content located in the source lines: (line, column, source length) of
    each of its content lines."""

    content: str
    places: list[tuple[int, int, int]]
    segments: list[Segment]

    def where(self, pos: int) -> tuple[int, int]:
        """Source (line, column) of position `pos` of the content."""
        start = 0
        for k, part in enumerate(self.content.split("\n")):
            line, col, size = self.places[k]
            if pos <= start + len(part):
                offset = pos - start
                return line, col + (size if offset == len(part) else offset)
            start += len(part) + 1
        line, col, size = self.places[-1]
        return line, col + size


def _locate(content: str, first_line: int, lines: list[str], cursors: dict[int, int]) -> Any:
    """(line, column, source length) of each content line, searched from each line's cursor
    (table cells share a line); None when a line is not found."""
    places = []
    for k, part in enumerate(content.split("\n")):
        n = first_line + k
        if n >= len(lines):
            return None
        start = cursors.get(n, 0)
        for variant in (part, part.replace("|", "\\|")):
            col = lines[n].find(variant, start)
            if col >= 0:
                places.append((n, col, len(variant)))
                cursors[n] = col + len(variant)
                break
        else:
            return None
    return places


def translate_markdown(
    source: str, translate: Callable[[list[str]], list[Aligned]]
) -> tuple[str, int, int]:
    """The document with the inline content of its blocks translated by `translate` (unit texts
    in, aligned translations out) and its markup placed. Returns (Markdown, units translated,
    blocks left as they were because their markup could not be followed)."""
    lines = source.split("\n")
    blocks: list[_Block] = []
    skipped = 0
    cursors: dict[int, int] = {}
    for tok in parser().parse(source):
        if tok.type != "inline" or not tok.map or tok.children is None or not tok.content:
            continue
        places = _locate(tok.content, tok.map[0], lines, cursors)
        try:
            if places is None:
                raise _Unfollowed("content not found on its lines")
            blocks.append(_Block(tok.content, places, segments(tok.content, tok.children)))
        except _Unfollowed:
            skipped += 1
    todo = [seg for block in blocks for seg in block.segments if seg.unit.text]
    aligned = translate([seg.unit.text for seg in todo])
    if len(aligned) != len(todo):
        raise ValueError(f"{len(todo)} blocks in but {len(aligned)} translations out")
    rendered = {}
    for seg, result in zip(todo, aligned, strict=True):
        rendered[id(seg)] = render(seg, transfer(seg.unit, result))
    edits = []
    for block in blocks:
        for seg in block.segments:
            if id(seg) in rendered:
                edits.append((block.where(seg.start), block.where(seg.end), rendered[id(seg)]))
    for (l1, c1), (l2, c2), text in sorted(edits, reverse=True):
        lines[l1 : l2 + 1] = [lines[l1][:c1] + text + lines[l2][c2:]]
    return "\n".join(lines), len(todo), skipped


__all__ = ["Segment", "escape", "parser", "render", "segments", "translate_markdown"]
