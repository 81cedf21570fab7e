"""Tags follow the model's own alignment: forced decoding of a given translation with a real
(tiny) model gives links, and each element must land on the target words those links name; the
document commands end to end on the same model."""

from __future__ import annotations

import collections
from pathlib import Path

import lxml.html
import pytest
from typer.testing import CliRunner

from nmt.cli import app
from nmt.inference import Translator
from nmt.markup.html import translate_html
from nmt.markup.markdown import translate_markdown

SOURCES = ["ba ce do fo ga", "ke lo ba ce", "ha ke lo ba ce do", "fo ga ha ke"]


@pytest.fixture(scope="module")
def translator(tiny_transformer_run: Path) -> Translator:
    return Translator.load(tiny_transformer_run, device="cpu")


def forced(translator: Translator, targets: dict[str, str]):  # type: ignore[no-untyped-def]
    """Translate by reading the given translation of each block (forced decoding)."""

    def translate(texts: list[str]) -> list:
        results = translator.score(texts, [targets[t] for t in texts], attention=True)
        return [r.aligned() for r in results]

    return translate


def test_each_word_in_bold_lands_on_the_target_words_it_is_linked_to(
    translator: Translator,
) -> None:
    targets = {s: " ".join(reversed(s.split())).upper() for s in SOURCES}
    checked = 0
    for source in SOURCES:
        links = translator.score([source], [targets[source]], attention=True)[0].alignment
        tgt_words = targets[source].split()
        for k, word in enumerate(source.split()):
            words = source.split()
            words[k] = f"<b>{word}</b>"
            out, _ = translate_html(f"<p>{' '.join(words)}</p>", forced(translator, targets))
            bold = lxml.html.fragment_fromstring(out).find(".//b")
            assert bold is not None  # every tag kept
            linked = sorted(j for i, j in links if i == k)
            if linked and linked == list(range(linked[0], linked[-1] + 1)):
                assert bold.text_content().split() == tgt_words[linked[0] : linked[-1] + 1]
                checked += 1
    assert checked >= 5  # enough words had a contiguous set of links to check exactly


def test_markdown_emphasis_follows_the_same_links(translator: Translator) -> None:
    source = "ke lo ba ce"
    target = "CE BA LO KE"
    links = translator.score([source], [target], attention=True)[0].alignment
    out, _, _ = translate_markdown("ke *lo* ba ce\n", forced(translator, {source: target}))
    linked = sorted(j for i, j in links if i == 1)
    inside = out.split("*")[1].split()
    if linked and linked == list(range(linked[0], linked[-1] + 1)):
        assert inside == target.split()[linked[0] : linked[-1] + 1]
    assert out.count("*") == 2


def invoke(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_translate_html_and_markdown_files(tiny_transformer_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body><h1>ba <i>ce</i></h1>\n<p>ke <b>lo</b> ba. "
                    "<a href='x.html'>Ce do</a> fo!</p><pre>ba ce</pre></body></html>\n",
                    encoding="utf-8")  # fmt: skip
    result = invoke("translate", tiny_transformer_run, "-i", page, "-o", tmp_path / "out.html")
    assert result.exit_code == 0, result.output
    assert "translated html: 2 blocks (3 sentences)" in result.stderr
    out = (tmp_path / "out.html").read_text(encoding="utf-8")
    root = lxml.html.document_fromstring(out)
    tags = collections.Counter(el.tag for el in root.iter() if isinstance(el.tag, str))
    assert tags == collections.Counter(["html", "body", "h1", "i", "p", "b", "a", "pre"])
    assert root.find(".//a").get("href") == "x.html" and "<pre>ba ce</pre>" in out
    readme = tmp_path / "notes.md"
    readme.write_text("# ba *ce*\n\nke **lo** ba `code` do.\n\n```\nba ce\n```\n", encoding="utf-8")
    result = invoke("translate", tiny_transformer_run, "-i", readme)
    assert result.exit_code == 0, result.output
    assert "```\nba ce\n```" in result.stdout and "`code`" in result.stdout
    # The tiny model says little: bold that found no word is kept as its HTML tag.
    assert result.stdout.count("**") == 2 or result.stdout.count("<strong></strong>") == 1
    assert result.stdout.startswith("# ")
    # --format overrides the extension; exports are refused for documents.
    plain = invoke("translate", tiny_transformer_run, "-i", readme, "--format", "text")
    assert plain.exit_code == 0 and len(plain.stdout.splitlines()) == 7
    refused = invoke("translate", tiny_transformer_run, "-i", page, "--alignments-out",
                     tmp_path / "a.txt")  # fmt: skip
    assert refused.exit_code == 2 and "--alignments-out: works on plain text" in refused.stderr
    same = invoke("translate", tiny_transformer_run, "-i", page, "-o", page)
    assert same.exit_code == 2 and "is also -i" in same.stderr
