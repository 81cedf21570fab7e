"""Sentence splitting of input lines and joining their translations (nmt/data/sentences.py)."""

from __future__ import annotations

import pytest
import sentencex

from nmt.data.sentences import cut_long, join_sentences, split_sentences, whole_line

# Paragraphs of 1-5 sentences with abbreviations, decimals, quotes and ellipses, and the
# sentences sentencex finds in them.
CASES = {
    "en": [
        ("Dr. Smith paid $3.50 at 5 p.m. on Jan. 3. He said \"Fine!\" and left... Then it rained.",
         ["Dr. Smith paid $3.50 at 5 p.m. on Jan. 3.", "He said \"Fine!\" and left...",
          "Then it rained."]),
        ("Mr. Brown met Mrs. Green in the U.S. last year.",
         ["Mr. Brown met Mrs. Green in the U.S. last year."]),
        ("The price rose by 2.5 percent.  \"Is that right?\" she asked. Yes. No. Maybe.",
         ["The price rose by 2.5 percent.", "\"Is that right?\" she asked.", "Yes.", "No.",
          "Maybe."]),
    ],
    "de": [
        ("Dr. Müller kam um 3.15 Uhr an. Er sagte: „Das ist z. B. gut.“ Dann ging er... "
         "Heute ist der 3. Oktober.",
         ["Dr. Müller kam um 3.15 Uhr an.", "Er sagte: „Das ist z. B. gut.“", "Dann ging er...",
          "Heute ist der 3. Oktober."]),
        ("Das kostet 2,50 Euro. Wirklich? Ja!", ["Das kostet 2,50 Euro.", "Wirklich?", "Ja!"]),
    ],
    "fr": [
        ("Il a dit « Bonjour ! » et il est parti... Le prix est de 3,5 euros. C'est-à-dire trop.",
         ["Il a dit « Bonjour ! » et il est parti...", "Le prix est de 3,5 euros.",
          "C'est-à-dire trop."]),
        ("Il est 10 h 30. On part ?  Oui !", ["Il est 10 h 30.", "On part ?", "Oui !"]),
    ],
    "ja": [
        ("今日は晴れです。明日は雨でしょう！本当ですか？",
         ["今日は晴れです。", "明日は雨でしょう！", "本当ですか？"]),
        ("価格は3.5ドルです…。安い！", ["価格は3.5ドルです…。", "安い！"]),
    ],
}  # fmt: skip
FLAT = [(lang, line, want) for lang, cases in CASES.items() for line, want in cases]


@pytest.mark.parametrize(("lang", "line", "want"), FLAT, ids=[f"{c[0]}-{n}" for n, c in
                                                             enumerate(FLAT)])  # fmt: skip
def test_split_as_the_library_does_and_rejoin_with_the_line_spacing(
    lang: str, line: str, want: list[str]
) -> None:
    spans = split_sentences(line, lang)
    assert [line[a:b] for a, b in spans] == want
    library = [s.strip() for s in sentencex.segment(lang, line) if s.strip()]
    assert [line[a:b] for a, b in spans] == library
    # The translation of each sentence is itself: the line comes back character for character.
    text, out_spans = join_sentences(line, spans, want, lang, lang)
    assert text == line
    assert [text[a:b] for a, b in out_spans] == want


def test_spacing_between_sentences_and_around_the_line_is_kept() -> None:
    line = "  Eins.   Zwei.\tDrei. "
    spans = split_sentences(line, "de")
    text, out = join_sentences(line, spans, ["One.", "Two.", "Three."], "de", "en")
    assert text == "  One.   Two.\tThree. "
    assert [text[a:b] for a, b in out] == ["One.", "Two.", "Three."]


def test_spaceless_languages_join_with_and_without_spaces() -> None:
    line = "今日は晴れです。明日は雨です。"
    spans = split_sentences(line, "ja")
    assert join_sentences(line, spans, ["Sunny today.", "Rain tomorrow."], "ja", "en")[0] == (
        "Sunny today. Rain tomorrow."
    )
    line = "It is sunny. It rains."
    spans = split_sentences(line, "en")
    assert join_sentences(line, spans, ["晴れです。", "雨です。"], "en", "ja")[0] == (
        "晴れです。雨です。"
    )


def test_blank_lines_and_lost_sentences() -> None:
    assert split_sentences("", "en") == [] and split_sentences("  \t", "de") == []
    assert join_sentences("   ", whole_line("   "), [""])[0] == ""
    with pytest.raises(ValueError, match="2 sentences in but 1 translations out"):
        join_sentences("A. B.", [(0, 2), (3, 5)], ["x"])


def test_a_long_sentence_is_cut_at_word_boundaries_preferring_clause_marks() -> None:
    words = "one two three, four five six seven eight nine ten".split()
    text = "  " + " ".join(words) + "  "
    start = 2
    pieces = cut_long(text, (start, len(text) - 2), lambda s: len(s.split()), 4)
    cut = [text[a:b] for a, b in pieces]
    assert cut == ["one two three,", "four five six seven", "eight nine ten"]
    assert " ".join(cut) == text.strip()  # nothing dropped
    # A word over the limit stays a piece of its own (the caller truncates it).
    assert cut_long("aaaaaaaa b", (0, 10), len, 3) == [(0, 8), (9, 10)]
