"""HTML documents: the text of each block translated, everything else kept.

Parsed with lxml's HTML parser (libxml2: it reads real-world HTML, repairs what browsers repair,
and writes well-formed HTML back). The text of a document is cut into runs: the content of a
block element (p, li, td, h1, ...) up to its next block child, a top-level <br> or its end. A run
that holds text becomes a `Unit` whose inline elements (b, i, em, strong, a, span, ...) are
placed on the translation by the alignment (nmt/markup/inline.py); whitespace inside a run is
collapsed as a browser shows it, and the run's leading and trailing whitespace is kept.

Kept as they are: attribute values (alt and title too: they often name things that must not
change, and keeping them keeps the document's tags and attributes exactly), comments,
<script>, <style>, <pre>, <textarea>, <svg>, <math>, <template> and any element marked
translate="no" or class="notranslate". Inline <code>, <kbd>, <samp> and <var> are read by the
model with their sentence (so that it reads whole sentences) and written back verbatim in place
of the words aligned to them. Entities come back as characters (&nbsp; as U+00A0), except those
HTML must escape (&amp; &lt; &gt;).
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lxml.html
from lxml import etree

from nmt.errors import DataError
from nmt.markup.inline import Aligned, CollapsedText, Event, Inline, Unit, transfer

BLOCK_TAGS = frozenset(
    "address article aside blockquote body caption dd details dialog div dl dt fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html legend li main "
    "menu nav ol option p section summary table tbody td tfoot th thead title tr ul".split()
)
# Left alone with everything inside them, wherever they are.
UNTOUCHED_TAGS = frozenset(
    "script style pre textarea svg math template noscript iframe object canvas video audio "
    "select".split()
)
# Inline and read with the sentence, but written back verbatim.
VERBATIM_TAGS = frozenset({"code", "kbd", "samp", "var"})
_HTML_SPACE = " \t\n\r\f"
_DOCUMENT = re.compile(r"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype|html)\b", re.I | re.S)


@dataclass
class Run:
    """A run of inline content of `parent`: after `anchor` (None: the parent's own text) and
    through `items`, the inline nodes it holds."""

    parent: Any
    anchor: Any
    items: list[Any]
    unit: Unit
    nodes: list[Any] = field(default_factory=list)  # the node of each of unit.inlines
    lead: str = ""
    trail: str = ""


def parse(source: str) -> tuple[Any, bool]:
    """(root, is_document): a whole document (doctype or <html>) or a fragment in a <div>."""
    try:
        if _DOCUMENT.match(source):
            return lxml.html.document_fromstring(source), True
        return lxml.html.fragment_fromstring(source, create_parent="div"), False
    except (etree.ParserError, ValueError) as exc:
        raise DataError(f"cannot parse the HTML: {exc}") from None


def serialize(root: Any, is_document: bool) -> str:
    """The tree as HTML text: a document with its doctype, a fragment without its <div>."""
    if is_document:
        doctype = root.getroottree().docinfo.doctype
        text = lxml.html.tostring(root, encoding="unicode", doctype=doctype or None)
        return str(text) + "\n"
    inner = html.escape(root.text or "", quote=False)
    return inner + "".join(lxml.html.tostring(child, encoding="unicode") for child in root)


def runs(root: Any) -> list[Run]:
    """Every run of the tree that holds text, in document order."""
    found: list[Run] = []
    _collect(root, found)
    return found


def _is_untouched(node: Any) -> bool:
    if not isinstance(node.tag, str):
        return False
    classes = (node.get("class") or "").split()
    return node.tag in UNTOUCHED_TAGS or node.get("translate") == "no" or "notranslate" in classes


def _breaks_run(node: Any) -> bool:
    if not isinstance(node.tag, str):
        return False
    if node.tag in BLOCK_TAGS or node.tag in ("pre", "br", "textarea"):
        return True
    return any(isinstance(d.tag, str) and d.tag in BLOCK_TAGS for d in node.iterdescendants())


def _collect(element: Any, found: list[Run]) -> None:
    if _is_untouched(element):
        return
    anchor = None
    items: list[Any] = []
    for child in element:
        if _breaks_run(child):
            _add_run(element, anchor, items, found)
            _collect(child, found)
            anchor, items = child, []
        else:
            items.append(child)
    _add_run(element, anchor, items, found)


def _add_run(parent: Any, anchor: Any, items: list[Any], found: list[Run]) -> None:
    first = parent.text if anchor is None else anchor.tail
    builder = CollapsedText(_HTML_SPACE)
    inlines: list[Inline | None] = []
    nodes: list[Any] = []
    builder.add(first or "")
    for item in items:
        _add_inline(item, None, builder, inlines, nodes)
    text = builder.text()
    if not text:
        return
    end = len(text)
    clipped = [Inline(min(x.start, end), min(x.end, end), x.parent, x.opaque)
               for x in inlines if x is not None]  # fmt: skip
    last = (items[-1].tail if items else first) or ""
    lead = (first or "")[: len(first or "") - len((first or "").lstrip(_HTML_SPACE))]
    trail = last[len(last.rstrip(_HTML_SPACE)) :]
    found.append(Run(parent, anchor, list(items), Unit(text, clipped), nodes, lead, trail))


def _add_inline(
    node: Any,
    parent: int | None,
    builder: CollapsedText,
    inlines: list[Inline | None],
    nodes: list[Any],
) -> None:
    """Append `node` (and its tail) to the run's text, recording it and its inline children."""
    k = len(inlines)
    start = builder.length
    inlines.append(None)
    nodes.append(node)
    if not isinstance(node.tag, str) or node.tag in UNTOUCHED_TAGS or node.tag in _VOID:
        inlines[k] = Inline(start, start, parent, opaque=True)
    elif node.tag == "br":  # inside an inline element: kept in place, read as a space
        inlines[k] = Inline(start, start, parent, opaque=True)
        builder.add(" ")
    elif node.tag in VERBATIM_TAGS or _is_untouched(node):
        builder.add(node.text_content())
        inlines[k] = Inline(start, builder.length, parent, opaque=True)
    else:
        builder.add(node.text or "")
        for child in node:
            _add_inline(child, k, builder, inlines, nodes)
        inlines[k] = Inline(start, builder.length, parent)
    builder.add(node.tail or "")


_VOID = frozenset("img input wbr embed source track area col param".split())


def splice(run: Run, events: Sequence[Event]) -> None:
    """Replace the run's content in the tree with the translated events."""
    holder = lxml.html.Element("div")
    stack = [holder]

    def add_text(text: str) -> None:
        top = stack[-1]
        if len(top):
            top[-1].tail = (top[-1].tail or "") + text
        else:
            top.text = (top.text or "") + text

    add_text(run.lead)
    for kind, value in events:
        if kind == "text":
            add_text(str(value))
            continue
        node = run.nodes[int(value)]
        if kind == "open":
            element = node.makeelement(node.tag, dict(node.attrib))
            stack[-1].append(element)
            stack.append(element)
        elif kind == "close":
            stack.pop()
        else:
            kept = copy.deepcopy(node)
            kept.tail = None
            stack[-1].append(kept)
    add_text(run.trail)
    parent = run.parent
    for item in run.items:
        parent.remove(item)
    if run.anchor is None:
        parent.text = holder.text
        index = 0
    else:
        run.anchor.tail = holder.text
        index = parent.index(run.anchor) + 1
    for n, node in enumerate(list(holder)):
        parent.insert(index + n, node)


def translate_html(source: str, translate: Callable[[list[str]], list[Aligned]]) -> tuple[str, int]:
    """The document with each run's text translated by `translate` (unit texts in, aligned
    translations out, one each) and its inline elements placed. Returns (HTML, units)."""
    root, is_document = parse(source)
    found = runs(root)
    aligned = translate([run.unit.text for run in found])
    if len(aligned) != len(found):
        raise ValueError(f"{len(found)} blocks in but {len(aligned)} translations out")
    for run, result in zip(found, aligned, strict=True):
        splice(run, transfer(run.unit, result))
    return serialize(root, is_document), len(found)


__all__ = ["Run", "parse", "runs", "serialize", "splice", "translate_html"]
