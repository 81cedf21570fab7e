"""Terminology on Multi30k: a term list made from the test set's own references, then the test set
translated with and without it: terms placed, BLEU, chrF and speed (README "Terminology").

    .venv/bin/python -m bench.terminology --run /work/main/checkpoints/m30k-de-en-2k \\
        --data ../shared/data/multi30k

Term list: each source sentence is aligned to its reference by eflomal (nmt/data/align.py, with
the training split aligned alongside as context, since eflomal learns from the corpus it is given)
and the two directions are symmetrised with grow-diag-final-and. Candidates are one-to-one links
between content words: letters only, 3 letters or more, not on the short function-word lists below,
each word once in its sentence, the target word not the first of its sentence (whose capital says
nothing about the term). Up to 2 candidates per sentence are drawn, seeded. A sentence's pairs are
its own glossary (one per line, `Translator.translate_full(glossary=[...])`), so a term never
applies to another sentence. The term list is written to --work (it is corpus text, so it stays
out of the repository); the numbers go to bench/results/terminology-*.json. eflomal samples
(Markov chain Monte Carlo) without a seed one can set, so a new list differs a little from run to
run: `--terms WORK/terms.jsonl` reuses one.

Speed: chunks of 100 sentences go through the three searches in turn (without glossary, with it,
and without it but with the attention computed, which a glossary needs), the order rotating from
chunk to chunk, so that load from other processes falls on all three alike.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import machine, print_table, write_results

WORD = re.compile(r"\w+|[^\w\s]")
# Function words left out of the term candidates (articles, pronouns, prepositions, auxiliaries).
STOP = {
    "de": set(
        "der die das den dem des ein eine einer eines einem einen und oder aber mit von vor "
        "auf aus bei beim im in ins am an zu zum zur für über unter neben hinter durch gegen "
        "ohne um bis nach ist sind war waren wird werden hat haben sein seine seiner seinem "
        "seinen ihr ihre ihrem ihren ihrer sich es er sie wir man nicht als wie was wer wo "
        "während dabei etwas einige andere anderen anderer dass noch auch sehr".split()
    ),
    "en": set(
        "the and or but with of in on at to for from by into onto over under near next behind "
        "through against without about around after before while his her hers its their they "
        "them he she him it we you this that these those who whom which what where when there "
        "here is are was were be been being has have had not as some other another one ones "
        "very also out off up down than".split()
    ),
}
SPEED_CHUNK = 100
ARMS = ("plain", "glossary", "plain+attention")


def words(line: str) -> list[str]:
    """Words and punctuation marks, as the aligner sees a sentence."""
    return WORD.findall(line)


def is_candidate(word: str, lang: str) -> bool:
    return word.isalpha() and len(word) >= 3 and word.lower() not in STOP[lang]


def once(word: str, sentence: Sequence[str]) -> bool:
    """The word occurs once in the sentence (ignoring case when it is lowercase, as a lowercase
    glossary term matches any case)."""
    if word.islower():
        return sum(w.lower() == word for w in sentence) == 1
    return sentence.count(word) == 1


def term_pairs(
    src: Sequence[str],
    tgt: Sequence[str],
    links: set[tuple[int, int]],
    src_lang: str,
    tgt_lang: str,
    rng: random.Random,
) -> list[tuple[str, str]]:
    """Up to 2 one-to-one aligned content-word pairs of one sentence pair, drawn with `rng`."""
    per_src: dict[int, int] = {}
    per_tgt: dict[int, int] = {}
    for s, t in links:
        per_src[s] = per_src.get(s, 0) + 1
        per_tgt[t] = per_tgt.get(t, 0) + 1
    found = [
        (src[s], tgt[t])
        for s, t in sorted(links)
        if per_src[s] == 1 and per_tgt[t] == 1 and t > 0
        if is_candidate(src[s], src_lang) and is_candidate(tgt[t], tgt_lang)
        if once(src[s], src) and once(tgt[t], tgt)
    ]
    return rng.sample(found, min(2, len(found)))


def make_terms(
    data: Path, split: str, src_lang: str, tgt_lang: str, seed: int
) -> list[list[tuple[str, str]]]:
    """The term pairs of each test sentence (see the module docstring)."""
    from nmt.data.align import grow_diag_final_and, run_eflomal
    from nmt.metrics import read_lines

    def read(name: str, lang: str) -> list[list[str]]:
        return [words(line) for line in read_lines(data / f"{name}.{lang}.gz")]

    test_src, test_tgt = read(split, src_lang), read(split, tgt_lang)
    train_src, train_tgt = read("train", src_lang), read("train", tgt_lang)
    started = time.perf_counter()
    directional = run_eflomal(test_src + train_src, test_tgt + train_tgt)[: len(test_src)]
    seconds = time.perf_counter() - started
    print(f"eflomal: {len(test_src) + len(train_src):,} pairs in {seconds:.0f} s")
    rng = random.Random(seed)
    return [
        term_pairs(s, t, grow_diag_final_and(fwd, rev), src_lang, tgt_lang, rng)
        for s, t, (fwd, rev) in zip(test_src, test_tgt, directional, strict=True)
    ]


def contains_word(text: str, term: str) -> bool:
    """`term` stands in `text` as whole words, as written."""
    return re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", text) is not None


def timed_arms(translator: Any, lines: list[str], glossaries: list[Any]) -> dict[str, Any]:
    """Translate `lines` in each arm, chunk by chunk in rotating order: results and seconds."""
    from nmt.inference import TranslateOptions

    attention = TranslateOptions(attention=True)
    calls = {
        "plain": lambda a, b: translator.translate_full(lines[a:b]),
        "glossary": lambda a, b: translator.translate_full(lines[a:b], glossary=glossaries[a:b]),
        "plain+attention": lambda a, b: translator.translate_full(lines[a:b], attention),
    }
    for call in calls.values():  # warm-up: allocator, kernels, thread pool
        call(0, 32)
    results: dict[str, list[Any]] = {arm: [] for arm in ARMS}
    seconds = dict.fromkeys(ARMS, 0.0)
    for n, start in enumerate(range(0, len(lines), SPEED_CHUNK)):
        end = min(start + SPEED_CHUNK, len(lines))
        for k in range(len(ARMS)):
            arm = ARMS[(n + k) % len(ARMS)]
            began = time.perf_counter()
            results[arm] += calls[arm](start, end)
            seconds[arm] += time.perf_counter() - began
    return {"results": results, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory or checkpoint")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/multi30k"))
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--src-lang", default="de")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nmt-terminology"))
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only (a trial)")
    parser.add_argument("--terms", type=Path, help="reuse this term list (terms.jsonl)")
    args = parser.parse_args()

    import torch

    from nmt.data.glossary import Glossary
    from nmt.inference import Translator
    from nmt.metrics import corpus_scores, read_lines

    torch.set_num_threads(args.threads)
    lines = read_lines(args.data / f"{args.split}.{args.src_lang}.gz")
    refs = read_lines(args.data / f"{args.split}.{args.tgt_lang}.gz")
    if args.terms is not None:
        lines_of = args.terms.read_text(encoding="utf-8").splitlines()
        terms = [list(json.loads(line).items()) for line in lines_of]
    else:
        terms = make_terms(args.data, args.split, args.src_lang, args.tgt_lang, args.seed)
        args.work.mkdir(parents=True, exist_ok=True)
        listed = "".join(json.dumps(dict(pairs), ensure_ascii=False) + "\n" for pairs in terms)
        (args.work / "terms.jsonl").write_text(listed, encoding="utf-8")
        print(f"term list: {args.work / 'terms.jsonl'}")
    if args.limit:
        lines, refs, terms = lines[: args.limit], refs[: args.limit], terms[: args.limit]
    where = f"{args.split}.{args.src_lang}"
    glossaries = [
        Glossary.from_pairs(pairs, f"{where}:{n + 1}") if pairs else None
        for n, pairs in enumerate(terms)
    ]
    translator = Translator.load(args.run, "cpu", beam_size=args.beam, nbest=1)
    translator.log = lambda message: None  # the placement warnings are counted below instead
    run = timed_arms(translator, lines, glossaries)

    term_count = sum(len(p) for p in terms)
    rows = []
    for arm in ARMS:
        results = run["results"][arm]
        hyps = [r.translation for r in results]
        scores = corpus_scores(hyps, [refs])
        in_output = sum(
            contains_word(h, tgt) for h, p in zip(hyps, terms, strict=True) for _, tgt in p
        )
        row: dict[str, Any] = {
            "arm": arm,
            "bleu": round(scores["bleu"], 2),
            "chrf": round(scores["chrf"], 2),
            "terms_in_output_percent": round(100 * in_output / term_count, 2),
            "sentences_per_s": round(len(lines) / run["seconds"][arm], 2),
            "seconds": round(run["seconds"][arm], 1),
        }
        placements = [p for r in results for p in (r.terms or [])]
        if placements:
            row["terms_placed_percent"] = round(
                100 * sum(p.is_placed for p in placements) / len(placements), 2
            )
            row["terms_far_from_source"] = sum(p.is_far for p in placements)
        rows.append(row)
    print_table(rows, ["arm", "bleu", "chrf", "terms_in_output_percent", "terms_placed_percent",
                       "terms_far_from_source", "sentences_per_s", "seconds"])  # fmt: skip
    payload = {
        "bench": "terminology",
        "run": str(args.run),
        "split": args.split,
        "terms_file": str(args.terms or args.work / "terms.jsonl"),
        "beam": args.beam,
        "sentences": len(lines),
        "sentences_with_terms": sum(bool(p) for p in terms),
        "terms": term_count,
        "bleu_signature": corpus_scores(lines[:1], [refs[:1]])["bleu_signature"],
        "rows": rows,
        "machine": machine(),
    }
    print(f"results: {write_results('terminology', payload)}")


if __name__ == "__main__":
    main()
