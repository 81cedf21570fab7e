"""The page at / in a real browser: Playwright driving the system's Chromium (Debian's `chromium`
package; Playwright's own browser downloads are not used). Skips when no Chromium is found."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import Server, call

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright (pip install -e .[dev])"
)

CANDIDATES = ["ha ke lo ba ce", "ba ce do fe", "fo ge ha ke", "do fe ga ke lo"]


def find_chromium() -> str | None:
    named = os.environ.get("NMT_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found: apt-get install chromium (or set NMT_CHROMIUM to its path); "
            "Playwright's own browser downloads are not used"
        )
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh page on the server; any request that leaves the server fails the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    opened = context.new_page()
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    opened.route("**/*", only_local)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(server.url + "/")
    opened.wait_for_function("document.querySelectorAll('#model option').length === 2")
    yield opened
    context.close()
    assert not outside, f"the page asked for {outside}"
    assert not errors, errors


def longest_translation(server: Server) -> dict[str, Any]:
    """The API's answer (with every layer and head) for the candidate with most target words."""
    body = {"text": CANDIDATES, "attention_detail": True}
    rows = call(server.url + "/translate", body).data["translations"]
    n = max(range(len(rows)), key=lambda k: len(rows[k]["attention"]["tgt_words"]))
    return {"sentence": CANDIDATES[n], **rows[n]}


def translate_on_page(page: Any, sentence: str, model: str = "tiny-transformer") -> None:
    page.fill("#text", sentence)
    page.select_option("#model", model)
    page.click("#go")
    page.wait_for_selector(".result .tgt-word")


def highlighted(page: Any) -> set[int]:
    return {int(e.get_attribute("data-src")) for e in page.query_selector_all(".src-word.aligned")}


def cell_weight(page: Any, j: int, i: int) -> float:
    """The attention weight the heatmap cell (target word j, source word i) is painted with
    (its data-weight: the colour's alpha channel holds only 8 bits)."""
    cell = f".heatmap tbody tr:nth-child({j + 1}) td:nth-of-type({i + 1})"
    return float(page.get_attribute(cell, "data-weight"))


def test_hover_lights_up_the_aligned_source_words(
    page: Any, server: Server, tmp_path: Path
) -> None:
    api = longest_translation(server)
    att = api["attention"]
    assert len(att["tgt_words"]) >= 2, api  # the tiny model says enough to hover over
    translate_on_page(page, api["sentence"])
    assert page.inner_text(".result .translation") == api["translation"]
    assert page.locator(".src-word").all_inner_texts() == att["src_words"]
    assert page.locator(".tgt-word").all_inner_texts() == att["tgt_words"]
    links = [tuple(map(int, pair.split("-"))) for pair in api["alignment"].split()]
    assert page.locator("svg.links line").count() == len(links)
    for j in range(len(att["tgt_words"])):
        page.hover(f'.tgt-word[data-tgt="{j}"]')
        assert highlighted(page) == {src for src, tgt in links if tgt == j}
        assert page.locator("svg.links line.on").count() == sum(tgt == j for _, tgt in links)
        assert page.locator(".heatmap tbody tr.active th").inner_text() == att["tgt_words"][j]
    # A tap pins the word: it stays lit when the pointer moves away.
    page.click('.tgt-word[data-tgt="0"]')
    page.hover("h1")
    assert highlighted(page) == {src for src, tgt in links if tgt == 0}
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 5000


def link_cells(page: Any) -> set[tuple[int, int]]:
    """(source, target) of the heatmap cells boxed as alignment links."""
    found = page.evaluate(
        """() => [...document.querySelectorAll('.heatmap tbody tr')].flatMap((row, j) =>
        [...row.querySelectorAll('td')].map((td, i) => td.classList.contains('link') ? [i, j]
        : null)).filter((x) => x)"""
    )
    return {(int(i), int(j)) for i, j in found}


def test_layer_and_head_selection_repaints_the_heatmap_and_the_links(
    page: Any, server: Server
) -> None:
    api = longest_translation(server)
    layers = api["attention"]["layers"]  # [layer][head][tgt][src]
    translate_on_page(page, api["sentence"])
    assert page.locator(".result .layer option").all_inner_texts() == ["mean", "0", "1"]
    assert page.locator(".result .head option").all_inner_texts() == ["mean", "0", "1"]
    # It opens on the run's own choice (decode.attention_layer=-1, head mean) and its links.
    assert page.input_value(".result .layer") == "1" and page.input_value(".result .head") == "mean"
    n_heads = len(layers[0])
    mean = sum(layers[1][h][0][1] for h in range(n_heads)) / n_heads
    assert cell_weight(page, 0, 1) == pytest.approx(mean, abs=2e-4)
    server_links = {tuple(map(int, p.split("-"))) for p in api["alignment"].split()}
    assert link_cells(page) == server_links
    page.select_option(".result .layer", value="0")
    page.select_option(".result .head", value="1")
    assert cell_weight(page, 0, 1) == pytest.approx(layers[0][1][0][1], abs=2e-4)
    # The boxes and the lines now show that head's own links: each target word's top source.
    chosen = np.array(layers[0][1])
    argmax = {(int(chosen[j].argmax()), j) for j in range(chosen.shape[0])}
    assert link_cells(page) == argmax
    assert page.locator("svg.links line").count() == len(argmax)
    page.hover('.tgt-word[data-tgt="0"]')
    assert highlighted(page) == {i for i, j in argmax if j == 0}


def test_a_paragraph_gets_a_view_per_sentence(page: Any, server: Server) -> None:
    page.fill("#text", "ba ce do. Fo ge ha! Ke lo")
    page.click("#go")
    page.wait_for_selector(".result .tgt-word")
    assert page.locator(".result").count() == 1
    assert page.locator(".result .view").count() == 3
    assert page.locator(".result .heatmap").count() == 3
    heads = page.locator(".sentence-head").all_inner_texts()
    assert [h.split(":")[0] for h in heads] == ["Sentence 1", "Sentence 2", "Sentence 3"]
    meta = page.inner_text(".result .meta")
    assert "3 sentences" in meta and "word" in meta and "subword piece" in meta
    assert "1 line, 3 sentences" in page.inner_text("#status")


def test_an_error_clears_the_previous_translation(page: Any) -> None:
    translate_on_page(page, "ha ke lo ba")
    assert page.locator(".result").count() == 1
    page.fill("#text", "\n".join(["ce"] * 9))  # over the server's limit of 8
    page.click("#go")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator(".result").count() == 0


def test_a_long_sentence_scrolls_inside_its_box(page: Any) -> None:
    page.set_viewport_size({"width": 480, "height": 900})
    translate_on_page(page, " ".join(["ha ke lo ba ce do fe ga"] * 2))
    box = page.locator(".result .links-box").first
    sizes = box.evaluate("(b) => [b.scrollWidth, b.clientWidth]")
    assert sizes[0] > sizes[1]  # wider than its box: it scrolls there, not off the page
    assert page.evaluate("document.documentElement.scrollWidth") <= 480
    box.evaluate("(b) => { b.scrollLeft = b.scrollWidth; }")
    last = page.locator(".result .src-word").last.bounding_box()
    assert last is not None and last["x"] + last["width"] <= 480


def test_rnn_model_has_no_layer_selection(page: Any) -> None:
    translate_on_page(page, "fo ge ha", model="tiny-rnn")
    assert page.locator(".result .selectors").is_hidden()
    assert page.locator(".result .heatmap tbody tr").count() >= 1


def test_error_message_and_phone_width(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True)
    phone = context.new_page()
    phone.goto(server.url + "/")
    phone.wait_for_function("document.querySelectorAll('#model option').length === 2")
    phone.fill("#text", "\n".join(["ce"] * 9))  # over the server's limit of 8
    phone.click("#go")
    phone.wait_for_selector("#error:not([hidden])")
    assert "9 sentences" in phone.inner_text("#error")
    translate_on_page(phone, "ha ke lo ba ce do fe ga")
    phone.tap('.tgt-word[data-tgt="0"]')
    assert phone.locator(".tgt-word.active").count() == 1
    # Nothing is wider than the screen: long sentences scroll inside their own boxes.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()
