"""Scores the attention study's runs (scripts/attention-study.sh trains them).

For every run: BLEU and chrF of beam search on test_2016_flickr (sacreBLEU, as `nmt evaluate`),
and for every view of its attention (the RNN's one attention; a Transformer's last-layer mean of
heads, each single head, and the head guided alignment trains):
- AER of its hard links against eflomal's links of the same pairs (a silver standard): the model
  reads the reference translation (forced decoding, `Translator.score`) and each target word links
  to the source word it attends to most; eflomal aligns train + val + test together, both
  directions symmetrised with grow-diag-final-and, on the words the model's pieces spell;
- mean attention entropy: the entropy (nats) of each target piece's attention over the source
  pieces and the source EOS, averaged over all target pieces of the test set.
A Transformer's best single head is chosen by AER on val, then reported on test. Writes
results.json, table.md and attention.png (one test sentence under every kind) to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmt import Translator
from nmt.data.align import grow_diag_final_and, run_eflomal, word_strings
from nmt.data.corpus import clean_text
from nmt.decoding.alignment import (
    Link,
    alignment_error_rate,
    hard_alignment,
    merge_to_words,
    supervised_head,
    words_of,
    write_pharaoh,
)
from nmt.io import atomic_open, read_jsonl
from nmt.metrics import corpus_scores, read_lines

LABELS = {
    "bahdanau": "Bahdanau (additive)",
    "luong-dot": "Luong dot",
    "luong-general": "Luong general",
    "local-p": "Luong local-p",
    "local-m": "Luong local-m",
    "hard": "hard (Gumbel ST)",
    "transformer": "Transformer",
    "transformer-guided": "Transformer + guided alignment",
}


def main() -> None:
    args = parse_args()
    if args.limit and args.sentence >= args.limit:
        raise SystemExit(f"--sentence {args.sentence} is not among the first --limit {args.limit}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    splits = {
        name: (read_lines(corpus / f"{name}.de.gz"), read_lines(corpus / f"{name}.en.gz"))
        for name in ("val", "test_2016_flickr")
    }
    first = Translator.load(Path(args.runs) / args.names[0], "cpu")
    silver = silver_links(first, Path(args.data), splits, Path(args.runs) / "silver.json")
    for name, links in silver.items():  # for `nmt align-eval --gold` (README)
        write_pharaoh(Path(args.runs) / f"silver.{name}.align", links)
    if args.limit:
        splits = {k: (s[: args.limit], r[: args.limit]) for k, (s, r) in splits.items()}
        silver = {k: v[: args.limit] for k, v in silver.items()}
    rows, views, figure = [], [], []
    for name in args.names:
        run = Path(args.runs) / name
        print(f"== {name}", flush=True)
        reported, scored, panels = score_run(run, name, splits, silver, args.sentence)
        rows.extend(reported)
        views.extend(scored)
        figure.extend(panels)
    write_json(out / "results.json", {"rows": rows, "every_view": views, "sentence": args.sentence})
    table = markdown_table(rows)
    with atomic_open(out / "table.md", "w") as f:
        f.write(table)
    print(table)
    draw(figure, out / "attention.png")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True, help="folder holding one run per name")
    p.add_argument("--corpus", required=True, help="Multi30k folder (val / test_2016_flickr)")
    p.add_argument("--data", required=True, help="the prepared data of the runs (its train split)")
    p.add_argument("--out", required=True, help="where results.json, table.md, attention.png go")
    p.add_argument("--sentence", type=int, default=16, help="test line (0-based) of the figure")
    p.add_argument("--limit", type=int, default=0, help="score the first N lines only (a check)")
    p.add_argument("names", nargs="+", help="run names, in table order")
    return p.parse_args()


# ---- the silver standard --------------------------------------------------------------------


def silver_links(
    t: Translator, data: Path, splits: dict[str, tuple[list[str], list[str]]], cache: Path
) -> dict[str, list[set[Link]]]:
    """Symmetrised eflomal word links of val and test, aligned together with the training pairs
    (eflomal needs the corpus statistics), on the words of the runs' shared SentencePiece pieces.
    Kept in `cache`, which is used again only for the same prepared data and texts."""
    import datasets

    key = {"data": json.loads((data / "manifest.json").read_text()).get("hash"),
           "texts": {name: hashlib.sha256("\n".join(s + r).encode()).hexdigest()
                     for name, (s, r) in splits.items()}}  # fmt: skip
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return {k: [{(s, t) for s, t in links} for links in v]
                    for k, v in stored["links"].items()}  # fmt: skip

    train = datasets.load_from_disk(str(data / "splits" / "train"))
    src_pieces = [t.src_tok.pieces(ids) for ids in train["src_ids"]]
    tgt_pieces = [t.tgt_tok.pieces(ids) for ids in train["tgt_ids"]]
    sizes = {}
    for name, (src, ref) in splits.items():
        src_pieces += pieces_of(t, src, source=True)
        tgt_pieces += pieces_of(t, ref, source=False)
        sizes[name] = len(src)
    start = time.perf_counter()
    directional = run_eflomal(
        [word_strings(p) for p in src_pieces], [word_strings(p) for p in tgt_pieces]
    )
    print(f"eflomal: {len(directional):,} pairs in {time.perf_counter() - start:.0f} s")
    links, offset = {}, len(train)
    for name, size in sizes.items():
        links[name] = [grow_diag_final_and(*d) for d in directional[offset : offset + size]]
        offset += size
    write_json(cache, {"key": key, "links": {k: [sorted(x) for x in v] for k, v in links.items()}})
    return links


def pieces_of(t: Translator, lines: Sequence[str], source: bool) -> list[list[str]]:
    """The pieces the model reads for `lines` (Translator.encode / Translator.score's encoding)."""
    tok = t.src_tok if source else t.tgt_tok
    return [tok.pieces(ids) for ids in tok.encode_batch([clean_text(x, t.cleaning) for x in lines])]


# ---- one run ----------------------------------------------------------------------------------


def score_run(
    run: Path,
    name: str,
    splits: dict[str, tuple[list[str], list[str]]],
    silver: dict[str, list[set[Link]]],
    sentence: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The table rows of one run (the attention views reported), the scores of every view (each
    Transformer head) and the run's figure panels."""
    t = Translator.load(run, "cpu", attention_layer="all", attention_head="all")
    src, ref = splits["test_2016_flickr"]
    start = time.perf_counter()
    hyps = t.translate(src)
    seconds = time.perf_counter() - start
    scores = corpus_scores(hyps, [ref])
    base = {
        "run": name,
        "kind": LABELS[name],
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "bleu_signature": scores["bleu_signature"],
        "beam": t.cfg.beam_size,
        "test_sentences_per_s": len(src) / seconds,
        **training_speed(run),
    }
    forced = {split: t.score(s, r, attention=True) for split, (s, r) in splits.items()}
    sample = forced["val"][0].record
    assert sample is not None
    views = attention_views(sample.matrix, supervised_head(t.runs[0].config))
    scored = []
    for label, view in views.items():
        stats = {
            split: view_stats(results, view, silver[split]) for split, results in forced.items()
        }
        scored.append({**base, "view": label, "view_key": label, "val": stats["val"],
                       "test": stats["test_2016_flickr"]})  # fmt: skip
    rows = pick_rows(scored) if t.arch == "transformer" else scored
    panels = []
    record = forced["test_2016_flickr"][sentence].record
    assert record is not None
    for row in rows:
        test = row["test"]
        print(f"{row['kind']}, {row['view']}: BLEU {row['bleu']:.2f}, test AER {test['aer']:.3f}, "
              f"entropy {test['entropy']:.3f}", flush=True)  # fmt: skip
        view = views[row["view_key"]]
        panels.append({
            "title": row["kind"] if row["view"] == "attention" else f"{row['kind']}\n{row['view']}",
            "matrix": merge_to_words(view(record.matrix), record.tgt_pieces, record.src_pieces),
            "src": words_of(record.src_pieces),
            "tgt": words_of(record.tgt_pieces),
        })  # fmt: skip
    return rows, scored, panels


View = Any  # a function: the subword matrix of a record -> one (T, S) matrix

LAST_MEAN = "last layer, mean of heads"
GUIDED = "the guided head (layer {}, head {})"


def attention_views(matrix: np.ndarray, guided: tuple[str, str] | None) -> dict[str, View]:
    """The (T, S) matrices a run is scored on: the RNN's attention; for a Transformer (records
    of every layer and head, (L, H, T, S)) the last layer's mean of heads and every single head,
    and the head guided alignment trained (`guided`: its layer and head) when there is one."""
    if matrix.ndim == 2:
        return {"attention": lambda m: m}
    layers, heads = matrix.shape[:2]
    views: dict[str, View] = {LAST_MEAN: lambda m: m[-1].mean(axis=0)}
    for layer in range(layers):
        for head in range(heads):
            views[f"layer {layer}, head {head}"] = lambda m, i=layer, j=head: m[i, j]
    if guided is not None:
        layer, head = int(guided[0]) % layers, int(guided[1]) % heads
        views[GUIDED.format(layer, head)] = lambda m, i=layer, j=head: m[i, j]
    return views


def view_stats(results: Sequence[Any], view: View, silver: Sequence[set[Link]]) -> dict[str, float]:
    """AER (precision, recall) of the view's hard word links against the silver links, and the
    mean entropy of its target pieces' attention rows (the EOS step left out)."""
    links, entropy, uniform, rows = [], 0.0, 0.0, 0
    for r in results:
        record = r.record
        m = np.asarray(view(record.matrix), dtype=np.float64)
        p = m[:-1]  # target pieces x (source pieces + EOS)
        entropy += float(-(p * np.log(np.where(p > 0, p, 1.0))).sum())
        uniform += len(p) * math.log(p.shape[1])
        rows += len(p)
        words = merge_to_words(m, record.tgt_pieces, record.src_pieces)
        links.append(set(hard_alignment(words)))
    scores = alignment_error_rate(links, [(s, s) for s in silver])
    return {
        "aer": scores.aer,
        "precision": scores.precision,
        "recall": scores.recall,
        "entropy": entropy / rows,
        "uniform_entropy": uniform / rows,
    }


def pick_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Transformer's reported views: the last-layer mean and the single head with the lowest
    val AER (test scores are only reported); a guided run leads with its guided head."""
    by_view = {row["view"]: row for row in rows}
    heads = [row for row in rows if row["view"].startswith("layer ")]
    best = dict(min(heads, key=lambda row: row["val"]["aer"]))
    best["view"] = f"best head on val ({best['view']})"
    guided = [row for row in rows if row["view"].startswith("the guided head")]
    if guided:
        return [guided[0], by_view[LAST_MEAN]]
    return [by_view[LAST_MEAN], best]


def training_speed(run: Path) -> dict[str, float]:
    """Updates, seconds inside updates, updates/s and source+target tokens/s of the whole run,
    from the summary its training wrote last."""
    summaries = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "summary"]
    if not summaries:
        raise SystemExit(f"{run}/metrics.jsonl: the training has not finished (no summary row)")
    last = summaries[-1]
    return {
        "updates": last["step"],
        "train_seconds": last["train_seconds"],
        "updates_per_s": last["step"] / last["train_seconds"],
        "src_tgt_tokens_per_s": last["tokens_per_s"],
    }


# ---- outputs ----------------------------------------------------------------------------------


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| attention | view | BLEU | chrF | AER vs eflomal (test) | P / R | mean attention "
        "entropy (nats) | updates/s | updates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        test = r["test"]
        lines.append(
            f"| {r['kind']} | {r['view']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {test['aer']:.3f} "
            f"| {test['precision']:.2f} / {test['recall']:.2f} | {test['entropy']:.2f} "
            f"| {r['updates_per_s']:.2f} | {r['updates']:,} |"
        )
    return "\n".join(lines) + "\n"


def draw(panels: Sequence[dict[str, Any]], path: Path) -> None:
    """All panels side by side, two rows, word attention of one test sentence (reference read
    by forced decoding), darker = more attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(2, cols, figsize=(3.3 * cols, 7.2), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.imshow(panel["matrix"], cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(panel["title"], fontsize=7.5)
        ax.set_xticks(range(len(panel["src"])), panel["src"], rotation=90, fontsize=6.5)
        ax.set_yticks(range(len(panel["tgt"])), panel["tgt"], fontsize=6.5)
        ax.tick_params(length=0)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def write_json(path: Path, value: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(value, f, indent=1)


if __name__ == "__main__":
    main()
