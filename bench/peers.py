"""`make bench-peers`: nmt, JoeyNMT 2.3 and OpenNMT-py 3.5.1 side by side on Multi30k de-en, and
CTranslate2 as the decoding bar.

    python -m bench.peers                          # 20 minutes of training each, then decoding
    python -m bench.peers --toolkits nmt,nmt-bf16 --minutes 5
    python -m bench.peers --toolkits nmt,nmt-bf16-decode,ctranslate2-int8 --minutes 4
    python -m bench.peers --reuse                  # report finished toolkits' saved results

Every toolkit trains the same Transformer (3+3 layers, d_model 256, 4 heads, FFN 1024, dropout
0.1, label smoothing 0.1, tied embeddings, ~3,900 non-pad source+target tokens per update (the
`tokens_per_update` column), inverse-sqrt schedule with 300 warmup updates to a peak learning
rate of 1e-3) on the same SentencePiece pieces (our joint 8k model, fed to the peers as
pre-tokenized text) for the same wall-clock budget, one toolkit after the other. Each then
translates test_2016_flickr (1,000 sentences) with beam 5 and greedily, about 128 sentences per
batch, best of `--repeats`; BLEU and chrF are scored by sacrebleu on detokenized output for all
of them alike.

Our entries: `nmt` trains and decodes in float32 like the peers, `nmt-bf16` in bfloat16 (autocast
training, bf16 decoding), `nmt-int8` and `nmt-bf16-decode` decode the `nmt` entry's float32
weights in int8 (dynamic quantization) and in bf16. `ctranslate2` and `ctranslate2-int8` decode
the same float32 weights, exported with `nmt export`, with CTranslate2 in float32 and in int8: the
inference-engine bar for decoding speed. The table compares our fastest entry with CTranslate2's
fastest twice: over all our entries, and over those that decode the same weights as CTranslate2
(`nmt-bf16` decodes its own, whose outputs differ in length and so in time). Each entry records
the precision it actually trained and decoded in, and the table says where that is not its
name's (a CPU without native bf16, an engine's fallback). The peers live
in their own virtualenvs under /tmp and are never dependencies of this project; their configs
are in bench/peers/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import workloads
from bench.common import (
    NMT,
    ROOT,
    check,
    machine,
    machine_line,
    print_table,
    run_child,
    write_results,
)

WORK = Path("/tmp/nmt-peers")
DATA = WORK / "data"
TEST_SRC = workloads.MULTI30K / "test_2016_flickr.de.gz"
TEST_REF = workloads.MULTI30K / "test_2016_flickr.en.gz"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# Sentences per decoding batch for the peers; ours batches by tokens: 2,048 padded source tokens
# hold about 128 Multi30k sentences (16 pieces on average). 128 rather than 64: nmt beam 5 went
# from 330 to 374 sent/s, CTranslate2 int8 stayed at 467 (bench/NOTES.md lever 28).
BATCH_SENTENCES = 128
NMT_BATCH_TOKENS = 2048
# The shared recipe, as our overrides of configs/multi30k/transformer.yaml (the peers' configs in
# bench/peers/ spell out the same). Validation and periodic saves are off: the budget is wall
# clock, and every toolkit spends it on training.
NMT_SETTINGS = [
    "model.transformer.dropout=0.1",
    "train.warmup_steps=300",
    "train.lr=1e-3",
    "train.valid_every=100000000",
    "train.save_every=100000000",
    "train.log_every=50",
    "train.device=cpu",
]
# Our entries that train: entry -> (training overrides, decode precision). `nmt` forces float32:
# the recipe itself says train.precision=auto.
NMT_VARIANTS = {
    "nmt": (["train.precision=fp32"], "fp32"),
    "nmt-bf16": (["train.precision=bf16"], "bf16"),
}
# Entries that decode the `nmt` entry's float32 weights and train nothing: entry -> precision.
NMT_DECODERS = {"nmt-int8": "int8", "nmt-bf16-decode": "bf16"}
# Inference engines on the same weights (exported with `nmt export`): entry -> compute type. They
# count as rivals for decoding speed only.
ENGINES = {"ctranslate2": "float32", "ctranslate2-int8": "int8"}
OURS = {*NMT_VARIANTS, *NMT_DECODERS}
# The precision each entry's name promises (training, decoding); a peer trains in float32
# (bench/peers/*.yaml) and decodes in its training precision.
PROMISED = {
    "nmt": ("fp32", "fp32"),
    "nmt-bf16": ("bf16", "bf16"),
    "nmt-int8": (None, "int8"),
    "nmt-bf16-decode": (None, "bf16"),
    "ctranslate2": (None, "float32"),
    "ctranslate2-int8": (None, "int8"),
}
DEFAULT_TOOLKITS = (
    "nmt,nmt-bf16,nmt-int8,nmt-bf16-decode,joeynmt,opennmt,ctranslate2,ctranslate2-int8"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toolkits", default=DEFAULT_TOOLKITS, help="comma-separated")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget each")
    parser.add_argument("--repeats", type=int, default=2, help="decoding runs; the best counts")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished toolkits' results (and a finished nmt training run)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not (workloads.MULTI30K / "train.de.gz").is_file():
        raise SystemExit(f"bench-peers needs Multi30k in {workloads.MULTI30K}")
    prepared, _, _ = workloads.prepared_corpus()
    write_pieces(prepared / "spm.model")
    references = read_text(TEST_REF)
    results = []
    for name in args.toolkits.split(","):
        saved = WORK / name / "result.json"
        if args.reuse and saved.is_file():
            print(f"{name}: reusing {saved}")
            results.append(json.loads(saved.read_text()))
            continue
        if name in NMT_VARIANTS:
            print(f"{name}: {args.minutes:g} minutes of training, then decoding", flush=True)
            result = {"toolkit": name, **run_nmt(name, args.minutes, args.repeats, args.reuse)}
        elif name in NMT_DECODERS:
            print(f"{name}: decoding the nmt entry's weights in {NMT_DECODERS[name]}", flush=True)
            result = {"toolkit": name, **run_nmt_decoder(name, args.repeats)}
        elif name in ENGINES:
            print(f"{name}: decoding the nmt entry's weights in {ENGINES[name]}", flush=True)
            result = {"toolkit": name, **run_ctranslate2(name, args.repeats)}
        else:
            print(f"{name}: {args.minutes:g} minutes of training, then decoding", flush=True)
            result = {"toolkit": name, **run_peer(name, args.minutes, args.repeats)}
        result["precision_note"] = precision_note(result)
        result.update(scores(result.pop("beam5_pieces_or_text"), references, prepared))
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
    payload = {"machine": machine(), "settings": vars(args), "results": results}
    payload["ratios"] = ratios(results)
    payload["decoding_vs_engine"] = engine_ratios(results)
    path = write_results("peers", payload)
    report(payload)
    print(f"\nwritten: {path.relative_to(ROOT)}")


# ---- shared data ---------------------------------------------------------------------------------


def read_text(path: Path) -> list[str]:
    from nmt.metrics import read_lines

    return read_lines(path)


def write_pieces(spm_model: Path) -> None:
    """DATA/{train,valid,test}.{de,en}: the raw Multi30k lines as space-separated pieces of our
    SentencePiece model, plus that model and its vocabulary (one piece per line, in id order)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    DATA.mkdir(parents=True, exist_ok=True)
    for split, stem in SPLITS.items():
        for lang in ("de", "en"):
            out = DATA / f"{split}.{lang}"
            if out.is_file():
                continue
            lines = read_text(workloads.MULTI30K / f"{stem}.{lang}.gz")
            pieces = sp.encode(lines, out_type=str)
            tmp = out.with_suffix(".tmp")
            tmp.write_text("".join(" ".join(p) + "\n" for p in pieces), encoding="utf-8")
            tmp.replace(out)
    (DATA / "spm.model").write_bytes(spm_model.read_bytes())
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (DATA / "vocab.txt").write_text("".join(p + "\n" for p in vocab), encoding="utf-8")


def scores(hypotheses: list[str], references: list[str], prepared: Path) -> dict[str, Any]:
    """BLEU/chrF of detokenized beam-5 output; the peers' piece strings are decoded with our
    SentencePiece model, ours are text already."""
    import sentencepiece as spm

    from nmt.metrics import corpus_scores

    sp = spm.SentencePieceProcessor(model_file=str(prepared / "spm.model"))
    texts = [h if "\u2581" not in h else sp.decode(h.split()) for h in hypotheses]
    s = corpus_scores(texts, [references])
    return {"bleu": s["bleu"], "chrf": s["chrf"], "bleu_signature": s["bleu_signature"]}


# ---- our toolkit ---------------------------------------------------------------------------------


def run_nmt(name: str, minutes: float, repeats: int, reuse: bool) -> dict[str, Any]:
    run_dir = WORK / name / "run"
    record = WORK / name / "train.json"
    if reuse and (run_dir / "last.pt").is_file():
        print(f"  reusing the training run {run_dir}")
        trained = json.loads(record.read_text()) if record.is_file() else _summary_of(run_dir)
    else:
        trained = train_nmt(run_dir, minutes, NMT_VARIANTS[name][0])
        record.write_text(json.dumps(trained, indent=2) + "\n")
    return {**trained, **decode_nmt(run_dir / "last.pt", NMT_VARIANTS[name][1], repeats)}


def run_nmt_decoder(name: str, repeats: int) -> dict[str, Any]:
    """The `nmt` entry's weights decoded in another precision (no training of its own)."""
    decoded = decode_nmt(trained_float32(name), NMT_DECODERS[name], repeats)
    return {"updates": None, "tokens_per_s": None, "peak_rss_gib": None, **decoded}


def trained_float32(name: str) -> Path:
    checkpoint = WORK / "nmt" / "run" / "last.pt"
    if not checkpoint.is_file():
        sys.exit(f"{name} decodes the nmt entry's model: run that entry first ({checkpoint})")
    return checkpoint


def decode_nmt(checkpoint: Path, precision: str, repeats: int) -> dict[str, Any]:
    lines = read_text(TEST_SRC)
    decoded, used = {}, set()
    for beam in (5, 1):
        search = workloads.timed_search(
            checkpoint, lines, "cpu", beam, repeats, NMT_BATCH_TOKENS, precision
        )
        decoded[beam] = (len(lines) / min(search["seconds"]), search["outputs"])
        used.add(search["precision"])
    return {
        "decode_precision": "/".join(sorted(used)),
        "beam5_sent_per_s": decoded[5][0],
        "greedy_sent_per_s": decoded[1][0],
        "greedy_sha256": workloads.sha256_of(decoded[1][1]),
        "beam5_pieces_or_text": decoded[5][1],
    }


def train_nmt(run_dir: Path, minutes: float, settings: list[str]) -> dict[str, Any]:
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = [*NMT, "train", ROOT / "configs" / "multi30k" / "transformer.yaml"]
    argv += ["--data", ROOT / "data" / "multi30k-de-en", "--out", run_dir]
    for setting in [*NMT_SETTINGS, *settings, f"train.max_minutes={minutes}"]:
        argv += ["--set", setting]
    child = run_child(argv, log=run_dir.parent / "train.log")
    check(child, "nmt train")
    return {**_summary_of(run_dir), "peak_rss_gib": child.peak_rss_mib / 1024}


def _summary_of(run_dir: Path) -> dict[str, Any]:
    """Updates and source+target tokens/s from the run's summary row; peak memory is not in the
    run directory (only `train_nmt` measures it), so it stays unknown here."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = [r for r in rows if r["kind"] == "summary"][-1]
    tokens = summary["tokens_per_s"] * summary["train_seconds"]
    return {"updates": summary["step"], "tokens_per_s": summary["tokens_per_s"],
            "tokens_per_update": tokens / max(1, summary["step"]),
            "train_precision": summary.get("precision"), "peak_rss_gib": None}  # fmt: skip


# ---- the peers -----------------------------------------------------------------------------------


def run_peer(name: str, minutes: float, repeats: int) -> dict[str, Any]:
    from bench.peer_toolkits import PEERS, VENVS

    peer, venv = PEERS[name], VENVS[name]
    workdir = WORK / name
    peer.install(venv)
    trained = peer.train(venv, DATA, workdir, minutes)
    sentences = len(read_text(TEST_SRC))
    decoded = {}
    for beam in (5, 1):
        runs = [
            peer.decode(venv, trained.checkpoint, DATA, workdir, beam, BATCH_SENTENCES)
            for _ in range(repeats)
        ]
        best = min(runs, key=lambda r: r.seconds)
        decoded[beam] = (sentences / best.seconds, best.hypotheses)
    return {
        "updates": trained.updates,
        "tokens_per_s": trained.tokens_per_s,
        "tokens_per_update": trained.tokens_per_update,
        "train_precision": "fp32",  # bench/peers/*.yaml
        "decode_precision": "fp32",
        "peak_rss_gib": trained.peak_rss_mib / 1024,
        "beam5_sent_per_s": decoded[5][0],
        "greedy_sent_per_s": decoded[1][0],
        "beam5_pieces_or_text": decoded[5][1],
    }


def run_ctranslate2(name: str, repeats: int) -> dict[str, Any]:
    """CTranslate2 decoding the `nmt` entry's weights, exported by `nmt export`, in the entry's
    compute type, with the same sentences per batch and threads as ours."""
    checkpoint = trained_float32(name)
    model = WORK / name / "model"
    check(run_child([*NMT, "export", checkpoint, "--out", model]), "nmt export")
    decoded, used = {}, set()
    for beam in (5, 1):
        out = WORK / name / f"beam{beam}.json"
        argv = [sys.executable, "-m", "bench.ctranslate2_decode", model, TEST_SRC, out]
        argv += ["--beam", str(beam), "--repeats", str(repeats), "--batch", str(BATCH_SENTENCES)]
        argv += ["--compute-type", ENGINES[name]]
        check(run_child(argv), "ctranslate2 decoding")
        record = json.loads(out.read_text())
        decoded[beam] = (len(record["outputs"]) / min(record["seconds"]), record["outputs"])
        used.add(record["compute_type"])
    return {
        "updates": None,
        "tokens_per_s": None,
        "peak_rss_gib": None,
        "decode_precision": "/".join(sorted(used)),
        "beam5_sent_per_s": decoded[5][0],
        "greedy_sent_per_s": decoded[1][0],
        "beam5_pieces_or_text": decoded[5][1],
    }


# ---- report --------------------------------------------------------------------------------------

# Figure -> True when more is better.
FIGURES = {
    "updates": True,
    "tokens_per_s": True,
    "peak_rss_gib": False,
    "bleu": True,
    "chrf": True,
    "beam5_sent_per_s": True,
    "greedy_sent_per_s": True,
}
DECODE_FIGURES = {"beam5_sent_per_s", "greedy_sent_per_s"}


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each of our entries over the best PyTorch peer (JoeyNMT, OpenNMT-py) on each figure (for
    memory: the best peer's over ours, so that above 1 means better everywhere)."""
    peers = [r for r in results if r["toolkit"] not in OURS and r["toolkit"] not in ENGINES]
    out: dict[str, dict[str, float]] = {}
    for ours in (r for r in results if r["toolkit"] in OURS):
        out[ours["toolkit"]] = {}
        for figure, more_is_better in FIGURES.items():
            values = [p[figure] for p in peers if p.get(figure) is not None]
            if ours.get(figure) is None or not values:
                continue
            best = max(values) if more_is_better else min(values)
            out[ours["toolkit"]][figure] = (
                ours[figure] / best if more_is_better else best / ours[figure]
            )
    return out


# Our entries that decode the `nmt` entry's float32 weights, as CTranslate2's entries do.
SAME_WEIGHTS = {"nmt", *NMT_DECODERS}


def engine_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per search: our fastest decoding entry over CTranslate2's fastest, each named; once over
    all our entries and once ("... same weights") over those that decode CTranslate2's weights."""
    out: dict[str, dict[str, Any]] = {}
    engines = [r for r in results if r["toolkit"] in ENGINES]
    for label, entries in (("", OURS), (" same weights", SAME_WEIGHTS)):
        for figure in sorted(DECODE_FIGURES):
            ours = [r for r in results if r["toolkit"] in entries and r.get(figure)]
            bars = [r for r in engines if r.get(figure)]
            if not ours or not bars:
                continue
            best = max(ours, key=lambda r: r[figure])
            bar = max(bars, key=lambda r: r[figure])
            out[figure + label] = {"nmt": best["toolkit"], "engine": bar["toolkit"],
                                   "ratio": best[figure] / bar[figure]}  # fmt: skip
    return out


def precision_note(result: dict[str, Any]) -> str | None:
    """Where an entry did not train or decode in the precision its name promises, say so."""
    promised = PROMISED.get(result["toolkit"])
    if promised is None:
        return None
    notes = []
    for what, wanted in zip(("train", "decode"), promised, strict=True):
        got = result.get(f"{what}_precision")
        if wanted is not None and got != wanted:
            notes.append(f"{what}: {got} instead of {wanted}")
    return "; ".join(notes) or None


def report(payload: dict[str, Any]) -> None:
    results, ratio = payload["results"], payload["ratios"]
    rows = [dict(r) for r in results]
    rows += [{"toolkit": f"{name} / best peer", **figures} for name, figures in ratio.items()]
    print()
    print(machine_line(payload["machine"]))
    columns = ["toolkit", "train_precision", "decode_precision", "tokens_per_update", *FIGURES]
    print_table(rows, columns)
    for figure, best in payload["decoding_vs_engine"].items():
        print(f"{figure}: {best['nmt']} / {best['engine']} = {best['ratio']:.2f}x")
    for r in results:
        if r.get("precision_note"):
            print(f"warning: {r['toolkit']} is not in its name's precision: {r['precision_note']}")


if __name__ == "__main__":
    main()
