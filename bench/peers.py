"""`make bench-peers`: nmt, JoeyNMT 2.3 and OpenNMT-py 3.5.1 side by side on Multi30k de-en.

    python -m bench.peers                          # 20 minutes of training each, then decoding
    python -m bench.peers --toolkits nmt,nmt-bf16 --minutes 5
    python -m bench.peers --reuse                  # report finished toolkits' saved results

Every toolkit trains the same Transformer (3+3 layers, d_model 256, 4 heads, FFN 1024, dropout
0.1, label smoothing 0.1, tied embeddings, ~4,096-token batches, inverse-sqrt schedule with 300
warmup updates to a peak learning rate of 1e-3) on the same SentencePiece pieces (our joint 8k
model, fed to the peers as pre-tokenized text) for the same wall-clock budget, one toolkit after
the other. Each then translates test_2016_flickr (1,000 sentences) with beam 5 and greedily,
about 64 sentences per batch, best of `--repeats`; BLEU and chrF are scored by sacrebleu on
detokenized output for all of them alike. CTranslate2 then decodes our float32 run's exported
weights: the inference-engine bar for decoding speed. The peers live in their own virtualenvs
under /tmp and are never dependencies of this project; their configs are in bench/peers/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench import workloads
from bench.common import NMT, ROOT, check, machine, print_table, run_child, write_results

WORK = Path("/tmp/nmt-peers")
DATA = WORK / "data"
TEST_SRC = workloads.MULTI30K / "test_2016_flickr.de.gz"
TEST_REF = workloads.MULTI30K / "test_2016_flickr.en.gz"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# Sentences per decoding batch for the peers; ours batches by tokens: 1,024 padded source tokens
# hold about 64 Multi30k sentences (16 pieces on average).
BATCH_SENTENCES = 64
NMT_BATCH_TOKENS = 1024
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
# Our entries: the recipe as is (float32, like the peers), and in bfloat16 (autocast training,
# bf16 decoding), which CPUs with AVX512-BF16 or AMX multiply ~2.5x faster (bench/NOTES.md).
# Entry -> (training overrides, decode precision).
NMT_VARIANTS = {"nmt": ([], "fp32"), "nmt-bf16": (["train.precision=bf16"], "bf16")}
# Inference engines decode our float32 `nmt` run's weights (exported with `nmt export`); they
# count as peers for decoding speed only.
ENGINES = {"ctranslate2"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--toolkits", default="nmt,nmt-bf16,joeynmt,opennmt,ctranslate2", help="comma-separated"
    )
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
        print(f"{name}: {args.minutes:g} minutes of training, then decoding", flush=True)
        if name in NMT_VARIANTS:
            result = {"toolkit": name, **run_nmt(name, args.minutes, args.repeats, args.reuse)}
        elif name in ENGINES:
            result = {"toolkit": name, **run_ctranslate2(args.repeats)}
        else:
            result = {"toolkit": name, **run_peer(name, args.minutes, args.repeats)}
        result.update(scores(result.pop("beam5_pieces_or_text"), references, prepared))
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
    payload = {"machine": machine(), "settings": vars(args), "results": results}
    payload["ratios"] = ratios(results)
    path = write_results("peers", payload)
    report(results, payload["ratios"])
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
    lines = read_text(TEST_SRC)
    decoded = {}
    for beam in (5, 1):
        search = workloads.timed_search(
            run_dir / "last.pt",
            lines,
            "cpu",
            beam,
            repeats,
            NMT_BATCH_TOKENS,
            NMT_VARIANTS[name][1],
        )
        decoded[beam] = (len(lines) / min(search["seconds"]), search["outputs"])
    return {
        **trained,
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
    return {"updates": summary["step"], "tokens_per_s": summary["tokens_per_s"],
            "precision": summary.get("precision"), "peak_rss_gib": None}  # fmt: skip


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
        "peak_rss_gib": trained.peak_rss_mib / 1024,
        "beam5_sent_per_s": decoded[5][0],
        "greedy_sent_per_s": decoded[1][0],
        "beam5_pieces_or_text": decoded[5][1],
    }


def run_ctranslate2(repeats: int) -> dict[str, Any]:
    """CTranslate2 decoding the `nmt` entry's weights, exported by `nmt export`, with the same
    sentences per batch and threads as ours."""
    checkpoint = WORK / "nmt" / "run" / "last.pt"
    if not checkpoint.is_file():
        sys.exit(f"ctranslate2 decodes the nmt entry's model: run it first ({checkpoint})")
    model = WORK / "ctranslate2" / "model"
    check(run_child([*NMT, "export", checkpoint, "--out", model]), "nmt export")
    decoded = {}
    for beam in (5, 1):
        out = WORK / "ctranslate2" / f"beam{beam}.json"
        argv = [sys.executable, "-m", "bench.ctranslate2_decode", model, TEST_SRC, out]
        argv += ["--beam", str(beam), "--repeats", str(repeats), "--batch", str(BATCH_SENTENCES)]
        check(run_child(argv), "ctranslate2 decoding")
        record = json.loads(out.read_text())
        decoded[beam] = (len(record["outputs"]) / min(record["seconds"]), record["outputs"])
    return {
        "updates": None,
        "tokens_per_s": None,
        "peak_rss_gib": None,
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
    """Each of our entries over the best peer on each figure (for memory: the best peer's over
    ours, so that above 1 means better everywhere)."""
    peers = [r for r in results if r["toolkit"] not in NMT_VARIANTS]
    out: dict[str, dict[str, float]] = {}
    for ours in (r for r in results if r["toolkit"] in NMT_VARIANTS):
        out[ours["toolkit"]] = {}
        for figure, more_is_better in FIGURES.items():
            rivals = [p for p in peers if p["toolkit"] not in ENGINES or figure in DECODE_FIGURES]
            values = [p[figure] for p in rivals if p.get(figure) is not None]
            if ours.get(figure) is None or not values:
                continue
            best = max(values) if more_is_better else min(values)
            out[ours["toolkit"]][figure] = (
                ours[figure] / best if more_is_better else best / ours[figure]
            )
    return out


def report(results: list[dict[str, Any]], ratio: dict[str, dict[str, float]]) -> None:
    rows = [dict(r) for r in results]
    rows += [{"toolkit": f"{name} / best peer", **figures} for name, figures in ratio.items()]
    print()
    # `precision`: what our training computed in; nmt-bf16 falls back to float32 on CPUs without
    # native bf16, and the column says so.
    print_table(rows, ["toolkit", "precision", *FIGURES])


if __name__ == "__main__":
    main()
