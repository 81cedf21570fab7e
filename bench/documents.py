"""Real text in, real text out, measured (README "Translating documents").

Paragraphs: test_2016_flickr with three consecutive sentences joined per line, translated with
sentence splitting on and off: BLEU of the joined output against the joined references, and the
sentences lost (an original sentence none of whose source words any target word is aligned to,
by the model's own alignment). The one-sentence-per-line test set is translated with splitting
on and off as well (the two must agree within 0.1 BLEU).

Tags: 1-3 consecutive source words of each test sentence wrapped in <b>...</b> (and, a second
set, in <a href="...">...</a>), each sentence one <p> of an HTML document translated by
nmt/markup/html.py. Reported: outputs well-formed with their tag (and its attribute), BLEU of the
tag-stripped output beside the plain translation's, and span F1 of the placed tag against the
reference span, the target words that eflomal's alignment (grow-diag-final-and, trained on the
Multi30k training pairs plus the evaluated pairs) links to the wrapped source words: with the
references read by forced decoding (placement alone) and on the model's own output; beside a
naive baseline that puts the tag at the same relative position.

    .venv/bin/python -m bench.documents --run checkpoints/m30k-de-en-2k \\
        --data ../shared/data/multi30k --out bench/results/documents.json
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import random
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import lxml.html

from nmt.data.align import grow_diag_final_and, run_eflomal
from nmt.inference import TranslateOptions, TranslationResult, Translator
from nmt.markup.html import translate_html
from nmt.markup.inline import Aligned
from nmt.metrics import corpus_scores


def read_gz(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def bleu(hyps: list[str], refs: list[str]) -> float:
    return round(float(corpus_scores(hyps, [refs], None)["bleu"]), 2)


# ---- paragraphs --------------------------------------------------------------------------------


def join_three(lines: list[str]) -> tuple[list[str], list[list[int]]]:
    """Lines of three sentences, and the number of words of each original sentence."""
    joined, sizes = [], []
    for start in range(0, len(lines), 3):
        group = lines[start : start + 3]
        joined.append(" ".join(group))
        sizes.append([len(s.split()) for s in group])
    return joined, sizes


def lost_sentences(result: TranslationResult, sizes: list[int]) -> int:
    """Original sentences of a joined line that no target word is aligned to."""
    linked = {i for i, _ in result.alignment}
    lost, first = 0, 0
    for size in sizes:
        if size and not linked & set(range(first, first + size)):
            lost += 1
        first += size
    return lost


def paragraphs(translator: Translator, src: list[str], ref: list[str]) -> dict[str, Any]:
    joined_src, sizes = join_three(src)
    joined_ref, _ = join_three(ref)
    report: dict[str, Any] = {"joined_lines": len(joined_src), "sentences": len(src)}
    for split in (True, False):
        name = "split" if split else "no_split"
        started = time.perf_counter()
        one = translator.translate_full(src, TranslateOptions(split=split))
        report[f"one_per_line_{name}_bleu"] = bleu([r.translation for r in one], ref)
        # The same translations joined three per line: what the paragraphs' BLEU is compared
        # with (n-grams across sentence ends, ". A", count in joined lines and not in single ones).
        joined_one, _ = join_three([r.translation for r in one])
        report[f"one_per_line_{name}_joined_bleu"] = bleu(joined_one, joined_ref)
        results = translator.translate_full(
            joined_src, TranslateOptions(attention=True, split=split)
        )
        hyps = [r.translation for r in results]
        report[f"joined_{name}_bleu"] = bleu(hyps, joined_ref)
        lost = [lost_sentences(r, s) for r, s in zip(results, sizes, strict=True)]
        report[f"joined_{name}_lost"] = sum(lost)
        report[f"joined_{name}_lost_lines"] = [n for n, k in enumerate(lost) if k][:20]
        report[f"joined_{name}_units"] = sum(len(r.sentences) for r in results)
        hyp_words = sum(len(h.split()) for h in hyps)
        report[f"joined_{name}_length_ratio"] = round(
            hyp_words / sum(len(r.split()) for r in joined_ref), 3
        )
        report[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
    return report


# ---- tags --------------------------------------------------------------------------------------


def wrap_plan(src: list[str], seed: int) -> list[tuple[int, int]]:
    """For each sentence the [start, end) of 1-3 consecutive source words to wrap."""
    rng = random.Random(seed)
    plan = []
    for line in src:
        n = len(line.split())
        size = min(n, rng.randint(1, 3))
        start = rng.randint(0, n - size)
        plan.append((start, start + size))
    return plan


def tagged_document(src: list[str], plan: list[tuple[int, int]], kind: str) -> str:
    paragraphs = []
    for n, (line, (a, b)) in enumerate(zip(src, plan, strict=True)):
        words = [html.escape(w, quote=False) for w in line.split()]
        open_tag = "<b>" if kind == "b" else f'<a href="https://example.org/{n}">'
        close_tag = "</b>" if kind == "b" else "</a>"
        words[a] = open_tag + words[a]
        words[b - 1] = words[b - 1] + close_tag
        paragraphs.append(f"<p>{' '.join(words)}</p>")
    return "<div>\n" + "\n".join(paragraphs) + "\n</div>\n"


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ok = True
        self.tags: list[tuple[str, tuple[tuple[str, str | None], ...]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack.append(tag)
        self.tags.append((tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.ok = False


def placed_span(paragraph: Any, tag: str) -> tuple[str, set[int]] | None:
    """(tag-stripped text, word indices inside the tag) of one output <p>, or None without it."""
    element = paragraph.find(f".//{tag}")
    if element is None:
        return None
    before = (paragraph.text or "") + "".join(
        lxml.html.tostring(e, method="text", encoding="unicode", with_tail=True)
        for e in paragraph.iterchildren()
        if e is not element and _precedes(e, element)
    )
    first = len(before.split())
    inside = len(element.text_content().split())
    return paragraph.text_content(), set(range(first, first + inside))


def _precedes(node: Any, target: Any) -> bool:
    for other in node.itersiblings():
        if other is target:
            return True
    return False


def span_f1(predicted: set[int], reference: set[int]) -> float:
    if not predicted or not reference:
        return 0.0
    overlap = len(predicted & reference)
    if not overlap:
        return 0.0
    p, r = overlap / len(predicted), overlap / len(reference)
    return 2 * p * r / (p + r)


def naive_span(a: int, b: int, n: int, m: int) -> set[int]:
    """The tag at the same relative position of the target, at least one word."""
    if m == 0:
        return set()
    start = min(m - 1, int(a * m / n))
    end = max(start + 1, min(m, round(b * m / n)))
    return set(range(start, end))


@dataclass
class Placed:
    """One output <p>: its tag-stripped text, whether it is well-formed with its one tag (and
    attribute), the word indices inside the tag, and its HTML."""

    text: str
    ok: bool
    span: set[int]
    html: str


def read_output(out: str, kind: str, count: int) -> list[Placed]:
    root = lxml.html.fragment_fromstring(out)
    paragraphs = root.findall("p")
    assert len(paragraphs) == count
    rows = []
    for n, paragraph in enumerate(paragraphs):
        html = lxml.html.tostring(paragraph, encoding="unicode", with_tail=False)
        checker = _Balance()
        checker.feed(html)
        checker.close()
        want = ("b", ()) if kind == "b" else ("a", (("href", f"https://example.org/{n}"),))
        found = placed_span(paragraph, kind)
        ok = checker.ok and not checker.stack and checker.tags == [("p", ()), want]
        text = " ".join(paragraph.text_content().split())
        rows.append(Placed(text, ok and found is not None, found[1] if found else set(), html))
    return rows


def reference_spans(
    plan: list[tuple[int, int]],
    src: list[str],
    targets: dict[str, list[str]],
    train: tuple[list[str], list[str]],
) -> dict[str, list[set[int]]]:
    """For each target text set: per sentence the hull of the target words that eflomal links to
    the wrapped source words (empty when none is linked). One eflomal run over the training
    pairs and every set, lowercased."""
    keys = list(targets)
    all_src = [s.lower().split() for s in train[0]] + [s.lower().split() for s in src] * len(keys)
    all_tgt = [t.lower().split() for t in train[1]]
    all_tgt += [t.lower().split() for key in keys for t in targets[key]]
    directional = run_eflomal(all_src, all_tgt)[len(train[0]) :]
    spans: dict[str, list[set[int]]] = {}
    for k, key in enumerate(keys):
        rows = directional[k * len(src) : (k + 1) * len(src)]
        spans[key] = []
        for (a, b), (fwd, rev) in zip(plan, rows, strict=True):
            linked = sorted(j for i, j in grow_diag_final_and(fwd, rev) if a <= i < b)
            spans[key].append(set(range(linked[0], linked[-1] + 1)) if linked else set())
    return spans


def tags(
    translator: Translator,
    src: list[str],
    ref: list[str],
    plain: list[TranslationResult],
    train: tuple[list[str], list[str]],
    seed: int,
) -> dict[str, Any]:
    plan = wrap_plan(src, seed)
    forced = translator.score(src, ref, attention=True)
    modes = {"own": {s: r.aligned() for s, r in zip(src, plain, strict=True)},
             "forced": {s: r.aligned() for s, r in zip(src, forced, strict=True)}}  # fmt: skip
    outputs: dict[str, list[Placed]] = {}
    for kind in ("b", "a"):
        document = tagged_document(src, plan, kind)
        for mode, table in modes.items():

            def aligned(texts: list[str], table: dict[str, Aligned] = table) -> list[Aligned]:
                # The document path reads each <p> as its plain sentence, so the translations
                # (or forced readings) made above for the same texts are the ones it would make.
                return [table[t] for t in texts]

            out, units = translate_html(document, aligned)
            assert units == len(src)
            outputs[f"{kind}-{mode}"] = read_output(out, kind, len(src))
    started = time.perf_counter()
    targets = {key: [row.text for row in rows] for key, rows in outputs.items()}
    gold = reference_spans(plan, src, targets, train)
    report: dict[str, Any] = {
        "plain_bleu": bleu([r.translation for r in plain], ref),
        "eflomal_seconds": round(time.perf_counter() - started, 1),
    }
    for key, rows in outputs.items():
        scored = [(row.span, g, plan[n], len(src[n].split()), len(row.text.split()))
                  for n, (row, g) in enumerate(zip(rows, gold[key], strict=True)) if g]  # fmt: skip
        f1 = [span_f1(p, g) for p, g, *_ in scored]
        naive = [span_f1(naive_span(a, b, n, m), g) for _, g, (a, b), n, m in scored]
        report[key] = {
            "well_formed_with_tag_percent": round(100 * sum(r.ok for r in rows) / len(rows), 2),
            "span_f1": round(100 * sum(f1) / len(f1), 2),
            "naive_span_f1": round(100 * sum(naive) / len(naive), 2),
            "sentences_scored": len(scored),
        }
        if key.endswith("own"):
            report[key]["stripped_bleu"] = bleu([row.text for row in rows], ref)
    example = next(n for n in range(len(src)) if plan[n][1] - plan[n][0] == 2)
    report["example"] = {
        "source": tagged_document([src[example]], [plan[example]], "b").split("\n")[1],
        "output": outputs["b-own"][example].html,
        "forced_on_reference": outputs["b-forced"][example].html,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="folder of Multi30k task 1")
    parser.add_argument("--out", type=Path, default=Path("bench/results/documents.json"))
    parser.add_argument("--limit", type=int, default=0, help="first N test sentences only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="decode.key=value for the model (e.g. decode.attention_layer=-2)",
    )
    parser.add_argument("--no-paragraphs", action="store_true", help="measure the tags only")
    parser.add_argument("--no-tags", action="store_true", help="measure the paragraphs only")
    parser.add_argument("--align-train", type=int, default=0,
                        help="training pairs eflomal also reads (0: all)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    src = read_gz(args.data / "test_2016_flickr.de.gz")
    ref = read_gz(args.data / "test_2016_flickr.en.gz")
    if args.limit:
        src, ref = src[: args.limit], ref[: args.limit]
    train = (read_gz(args.data / "train.de.gz"), read_gz(args.data / "train.en.gz"))
    if args.align_train:
        train = (train[0][: args.align_train], train[1][: args.align_train])
    translator = Translator.load(args.run, device="cpu", overrides=args.overrides)
    report: dict[str, Any] = {"run": str(args.run), "decode": translator.info()["decode"]}
    if not args.no_paragraphs:
        report["paragraphs"] = paragraphs(translator, src, ref)
        print(json.dumps(report["paragraphs"], indent=1), flush=True)
    if not args.no_tags:
        plain = translator.translate_full(src, TranslateOptions(attention=True))
        report["tags"] = tags(translator, src, ref, plain, train, args.seed)
        print(json.dumps(report["tags"], indent=1, ensure_ascii=False), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
