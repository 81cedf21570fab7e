"""HTML documents (nmt/markup/html.py): every block translated, every tag and attribute kept,
nesting valid whatever the alignment, code and scripts untouched."""

from __future__ import annotations

import collections
from html.parser import HTMLParser

import lxml.html
import pytest
from markup_support import identity, reverse, scrambled

from nmt.markup.html import translate_html

DOCUMENT = """<!DOCTYPE html>
<html lang="de">
<head><meta charset="utf-8"><title>Ein kleiner Test</title>
<style>p > b { color: red; }</style>
<script>if (a < b && c) { document.write("<b>nicht</b>"); }</script>
</head>
<body>
<h1 id="top">Willkommen <em>bei</em> uns</h1>
<!-- ein Kommentar -->
<p class="lead">Das ist <b>fett</b>, <i>kursiv</i>, <strong>stark <em>und betont</em></strong>
  und <a href="https://example.org/?a=1&amp;b=2" title="Beispiel" target="_blank">ein
  <span data-x="1">Link</span></a>. Preis: 3&nbsp;&euro; &amp; mehr &lt;hier&gt;.</p>
<p>Rufe <code>make test &amp;&amp; echo "&lt;ok&gt;"</code> auf, dann
<kbd>Strg</kbd>+<kbd>C</kbd>.<br>
Zweite Zeile mit <u>Unterstrich</u>, <s>alt</s>, <mark>markiert</mark>, <small>klein</small>,
<sub>tief</sub> und <sup>hoch</sup> <abbr title="zum Beispiel">z. B.</abbr> <q>Zitat</q>.
Ein Bild <img src="a.png" alt="Ein Bild"> und <cite>Quelle</cite> <dfn>Begriff</dfn>
<var>x</var> <samp>Ausgabe</samp> <time datetime="2024-01-01">Neujahr</time> <bdi>x</bdi>
<del>weg</del> <ins>neu</ins> <label for="f">Feld</label>
<input id="f" value="Wert nicht übersetzen">.</p>
<pre>  Vorformatiert   bleibt
    wie es ist &lt;b&gt;</pre>
<ul><li>Eins <b>zwei</b></li><li>Drei<ul><li>Vier</li></ul> nach der Liste</li></ul>
<table><tr><th>Kopf</th><td>Zelle <i>eins</i></td></tr></table>
<div>Text im div <p>Absatz im div</p> und danach</div>
<p translate="no">Nicht übersetzen</p>
</body>
</html>
"""
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
KEPT = ("script", "style", "pre", "code", "kbd", "samp", "var")


def tags_and_attributes(html: str) -> collections.Counter:
    root = lxml.html.document_fromstring(html)
    return collections.Counter(
        (el.tag, tuple(sorted(el.attrib.items()))) for el in root.iter() if isinstance(el.tag, str)
    )


def kept_content(html: str) -> collections.Counter:
    """Verbatim elements with their content (the alignment may reorder them)."""
    root = lxml.html.document_fromstring(html)
    return collections.Counter(
        lxml.html.tostring(el, encoding="unicode", with_tail=False) for el in root.iter(*KEPT)
    )


class Balance(HTMLParser):
    """Well-formed: every element that is not void is closed, in the order opened."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.comments = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_comment(self, data: str) -> None:
        self.comments += 1


def check_well_formed(html: str) -> Balance:
    checker = Balance()
    checker.feed(html)
    checker.close()
    assert not checker.problems and not checker.stack, (checker.problems, checker.stack, html)
    return checker


@pytest.mark.parametrize("name", ["identity", "reverse"] + [f"scrambled-{n}" for n in range(8)])
def test_tags_attributes_and_code_survive_any_alignment(name: str) -> None:
    translate = {"identity": identity, "reverse": reverse}.get(name) or scrambled(
        int(name.rsplit("-", 1)[-1])
    )
    out, units = translate_html(DOCUMENT, translate)
    assert units >= 12
    check_well_formed(DOCUMENT)
    checker = check_well_formed(out)
    assert checker.comments == 1
    assert out.startswith("<!DOCTYPE html>")
    assert tags_and_attributes(out) == tags_and_attributes(DOCUMENT)
    assert kept_content(out) == kept_content(DOCUMENT)
    assert "Nicht übersetzen" in out and 'value="Wert nicht übersetzen"' in out


def test_identity_translation_gives_the_same_text() -> None:
    out, _ = translate_html(DOCUMENT, identity)
    before = lxml.html.document_fromstring(DOCUMENT)
    after = lxml.html.document_fromstring(out)
    assert " ".join(after.text_content().split()) == " ".join(before.text_content().split())
    # The elements wrap the same words as before.
    names = ("b", "i", "em", "a", "span", "u", "q")
    for old, new in zip(before.iter(*names), after.iter(*names), strict=True):
        assert " ".join(new.text_content().split()) == " ".join(old.text_content().split())


def test_reversed_words_carry_their_tags() -> None:
    out, _ = translate_html("<p>das ist <b>sehr</b> <i>gut</i> so</p>", reverse)
    assert out == "<p>SO <i>GUT</i> <b>SEHR</b> IST DAS</p>"


def test_fragment_keeps_text_around_it_and_entities() -> None:
    source = "Vorher <b>fett</b> &amp; &lt;nach&gt;\n<p>Absatz</p>\n"
    out, units = translate_html(source, identity)
    assert out == source and units == 2
