"""Markdown documents (nmt/markup/markdown.py): block structure, code, URLs and raw HTML kept
character for character; emphasis and link text moved by the alignment."""

from __future__ import annotations

import collections

import pytest
from markup_support import identity, reverse, scrambled

from nmt.markup.markdown import parser, translate_markdown

DOCUMENT = """# Ein *kleiner* Test #

Das ist **fett**, *kursiv*, __auch fett__, _auch kursiv_ und ~~durch~~.
Rufe `make test && echo "<ok>"` auf, dann ``a ` b`` und <kbd>Strg</kbd> mit <br> Umbruch.
Ein [Link mit **fett**](https://example.org/a_(b)?x=1&y=2 "Titel") und [Verweis][ref],
ein Bild ![Alt *Text*](bild.png "Bild") und <https://auto.example.org/x_y>.
Zeichen: &amp; &copy; \\* \\_ 3 * 4 und ein Ende.\\
Nach dem harten Umbruch.

Unterstrichen
-------------

> Zitat mit *Betonung*
> über zwei Zeilen.

- Eins **zwei**
- Drei
  1. Vier `vier`
  2. Fünf

| Kopf | **Zelle** |
|------|:---------:|
| a \\| b | [c](http://c.example "t") |

```python
print("*nicht* übersetzen")  # [kein](link)
```

    eingerückter Code *bleibt*

<div class="x">
Rohes *HTML* bleibt.
</div>

[ref]: https://example.org/ref "Ref"
"""


def inline_markup(text: str) -> collections.Counter:
    """What the inline content holds besides words: emphasis, links with their targets, code,
    images, raw HTML."""
    found: collections.Counter = collections.Counter()
    empty = {"<em>": "em_open", "<strong>": "strong_open", "<del>": "s_open"}
    for tok in parser().parse(text):
        for child in tok.children or []:
            if child.type in ("strong_open", "em_open", "s_open", "hardbreak"):
                found[child.type] += 1
            elif child.type == "html_inline" and child.content in empty:
                found[empty[child.content]] += 1  # an element left without words
            elif child.type == "html_inline" and child.content in ("</em>", "</strong>", "</del>"):
                continue
            elif child.type == "link_open":
                found[("link", child.attrs.get("href"), child.attrs.get("title"))] += 1
            elif child.type in ("code_inline", "html_inline"):
                found[(child.type, child.content)] += 1
            elif child.type == "image":
                found[("image", child.attrs.get("src"), child.attrs.get("title"))] += 1
    return found


def blocks(text: str) -> list[tuple[str, str]]:
    """The block structure, with the verbatim blocks' content."""
    kept = ("fence", "code_block", "html_block")
    return [(tok.type, tok.content if tok.type in kept else tok.tag)
            for tok in parser().parse(text) if tok.type != "inline"]  # fmt: skip


@pytest.mark.parametrize("name", ["identity", "reverse"] + [f"scrambled-{n}" for n in range(8)])
def test_structure_code_and_urls_survive_any_alignment(name: str) -> None:
    translate = {"identity": identity, "reverse": reverse}.get(name) or scrambled(
        int(name.rsplit("-", 1)[-1])
    )
    out, units, skipped = translate_markdown(DOCUMENT, translate)
    assert skipped == 0 and units == 13
    assert blocks(out) == blocks(DOCUMENT)
    assert inline_markup(out) == inline_markup(DOCUMENT)
    assert out.count("\n\n") == DOCUMENT.count("\n\n")  # blank lines kept
    for line in ('print("*nicht* übersetzen")  # [kein](link)', "    eingerückter Code *bleibt*",
                 "Rohes *HTML* bleibt.", '[ref]: https://example.org/ref "Ref"',
                 "|------|:---------:|"):  # fmt: skip
        assert line in out.splitlines()


def test_identity_translation_changes_only_soft_line_breaks() -> None:
    out, _, _ = translate_markdown(DOCUMENT, identity)
    # A paragraph's translation stands on its first line; entities come back as characters.
    expected = DOCUMENT.replace("und ~~durch~~.\nRufe", "und ~~durch~~. Rufe")
    expected = expected.replace("Umbruch.\nEin [Link", "Umbruch. Ein [Link").replace(
        "[Verweis][ref],\nein", "[Verweis][ref], ein"
    )
    expected = expected.replace("x_y>.\nZeichen: &amp; &copy;", "x_y>. Zeichen: & ©")
    expected = expected.replace("> Zitat mit *Betonung*\n> über", "> Zitat mit *Betonung* über")
    expected = expected.replace("3 * 4", "3 \\* 4")
    assert out == expected


def test_reversed_words_carry_their_emphasis() -> None:
    out, _, _ = translate_markdown("- das ist *sehr* **gut** so\n", reverse)
    assert out == "- SO **GUT** *SEHR* IST DAS\n"


def test_translated_text_is_escaped() -> None:
    def stars(texts: list[str]) -> list:  # a translation full of Markdown's characters
        return [a.__class__("# 1. *a* [b] <c> | _d_", a.src_words, ["#", "1.", "*a*", "[b]",
                "<c>", "|", "_d_"], []) for a in identity(texts)]  # fmt: skip

    out, _, _ = translate_markdown("Text hier\n", stars)
    parsed = [t for t in parser().parse(out) if t.type == "inline"][0]
    assert [c.type for c in parsed.children if c.type != "text_special"] == ["text"] * len(
        [c for c in parsed.children if c.type == "text"]
    )
    assert out.splitlines()[0].startswith("\\#")
