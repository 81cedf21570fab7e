"""The measuring stages of scripts/gpu-check.sh: Transformer-base MFU, and beam search of one
trained model by nmt and by CTranslate2 on the same exported weights, each as a JSON file.

    python -m bench.gpu_check mfu OUT.json [--device cuda] [--tiny]
    python -m bench.gpu_check decode CHECKPOINT CT2_DIR SRC REF OUT.json [--device cuda]
        [--beam 4] [--batch 32] [--ct2-compute-type float16] [--lines N]

`--tiny` (a 1+1-layer model, a small matmul peak) and `--device cpu` make a CPU dry run of the
harness; its figures mean nothing. Decoding goes `--batch` sentences at a time, in order of
source length, for both toolkits (CTranslate2 sorts by length itself); the seconds cover the
search only (SentencePiece and model loading left out), one pass, after one warm-up batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.workloads import synchronize, transformer_base_mfu


def measure_mfu(device: str, tiny: bool) -> dict[str, Any]:
    if not tiny:
        return transformer_base_mfu(device=device)
    from nmt.config import TransformerConfig

    shape = TransformerConfig(d_model=64, heads=2, enc_layers=1, dec_layers=1, ffn_dim=128)
    row = transformer_base_mfu(
        batch_tokens=1024, steps=3, device=device, shape=shape, vocab=512, peak_size=256
    )
    return {**row, "model": "tiny 1+1 layers, d64 (dry run)"}


def nmt_beam_search(
    checkpoint: Path, lines: list[str], device: str, precision: str, beam: int, batch: int
) -> dict[str, Any]:
    """nmt's beam search over `lines`, `batch` sentences at a time: seconds and outputs."""
    import torch

    from nmt.checkpoint import load_for_inference
    from nmt.decoding.beam import decode_corpus

    model, cfg, src_tok, tgt_tok = load_for_inference(checkpoint, device)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    # One batch per call: a token budget no batch of `batch` sentences reaches. Finished
    # hypotheses ranked by log-prob / length, CTranslate2's rule (its length_penalty 1).
    decode = dataclasses.replace(
        cfg.decode, beam_size=beam, nbest=1, precision=precision, batch_tokens=10**9,
        length_norm="power", len_penalty=1.0,
    )  # fmt: skip
    src_ids = src_tok.encode_batch(lines)
    order = sorted(range(len(lines)), key=lambda i: len(src_ids[i]))
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    decode_corpus(model, [src_ids[i] for i in batches[-1]], decode, device)  # warm-up
    synchronize(device)
    outputs = [""] * len(lines)
    start = time.perf_counter()
    for indices in batches:
        hyps = decode_corpus(model, [src_ids[i] for i in indices], decode, device)
        for i, nbest in zip(indices, hyps, strict=True):
            outputs[i] = tgt_tok.decode(nbest[0].tokens)
    synchronize(device)
    return {"seconds": time.perf_counter() - start, "outputs": outputs}


def ctranslate2_beam_search(
    ct2_dir: Path, src: Path, device: str, compute_type: str, beam: int, batch: int
) -> dict[str, Any]:
    """bench/ctranslate2_decode.py in a child process (its own OpenMP runtime and CUDA libraries:
    a missing library fails the child, not this process)."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "ct2.json"
        return _run_ctranslate2(ct2_dir, src, device, compute_type, beam, batch, out)


def _run_ctranslate2(
    ct2_dir: Path, src: Path, device: str, compute_type: str, beam: int, batch: int, out: Path
) -> dict[str, Any]:
    threads = str(min(os.cpu_count() or 1, 8))
    argv = [sys.executable, "-m", "bench.ctranslate2_decode", str(ct2_dir), str(src), str(out),
            "--beam", str(beam), "--batch", str(batch), "--repeats", "1", "--device", device,
            "--compute-type", compute_type, "--threads", threads]  # fmt: skip
    child = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if child.returncode != 0:
        tail = (child.stderr or child.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ctranslate2 exited {child.returncode}: {' | '.join(tail)}")
    record = json.loads(out.read_text())
    return {"seconds": record["seconds"][0], "outputs": record["outputs"],
            "version": record["version"]}  # fmt: skip


def compare_decoding(args: argparse.Namespace) -> dict[str, Any]:
    from nmt.metrics import corpus_scores, read_lines

    lines, refs = read_lines(args.src), read_lines(args.ref)
    if args.lines:
        lines, refs = lines[: args.lines], refs[: args.lines]
        args.src = Path(tempfile.mkdtemp()) / "src.txt"
        args.src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = {"beam": args.beam, "batch_sentences": args.batch, "sentences": len(lines),
                "length_norm": "power 1.0 (both)", "checkpoint": str(args.checkpoint),
                "ct2_dir": str(args.ct2_dir)}  # fmt: skip
    runs: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        name = f"nmt {precision}"
        try:
            runs[name] = nmt_beam_search(
                args.checkpoint, lines, args.device, precision, args.beam, args.batch
            )
        except Exception as exc:  # one failing engine must not hide the others' figures
            runs[name] = {"error": f"{type(exc).__name__}: {exc}"}
    name = f"ctranslate2 {args.ct2_compute_type}"
    try:
        runs[name] = ctranslate2_beam_search(
            args.ct2_dir, args.src, args.device, args.ct2_compute_type, args.beam, args.batch
        )
    except Exception as exc:
        runs[name] = {"error": f"{type(exc).__name__}: {exc}"}
    reference = runs["nmt fp32"].get("outputs")
    rows = []
    for name, run in runs.items():
        row: dict[str, Any] = {"engine": name, "device": args.device}
        if "error" in run:
            rows.append({**row, "error": run["error"]})
            continue
        outputs = run["outputs"]
        scores = corpus_scores(outputs, [refs])
        row.update(
            seconds=round(run["seconds"], 3),
            sentences_per_s=round(len(lines) / run["seconds"], 1),
            bleu=round(scores["bleu"], 2),
            same_as_nmt_fp32=(
                round(sum(a == b for a, b in zip(outputs, reference, strict=True)) / len(lines), 3)
                if reference
                else None
            ),
        )
        if "version" in run:
            row["version"] = run["version"]
        rows.append(row)
    return {"settings": settings, "rows": rows}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mfu = sub.add_parser("mfu", help="Transformer-base training MFU")
    mfu.add_argument("out", type=Path)
    mfu.add_argument("--device", default="cuda")
    mfu.add_argument("--tiny", action="store_true", help="a tiny model (CPU dry run)")
    dec = sub.add_parser("decode", help="nmt vs CTranslate2 beam search")
    for name in ("checkpoint", "ct2_dir", "src", "ref", "out"):
        dec.add_argument(name, type=Path)
    dec.add_argument("--device", default="cuda")
    dec.add_argument("--beam", type=int, default=4)
    dec.add_argument("--batch", type=int, default=32, help="sentences per batch")
    dec.add_argument("--ct2-compute-type", default="float16")
    dec.add_argument("--lines", type=int, default=0, help="only the first N sentences (0: all)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.command == "mfu":
        record = measure_mfu(args.device, args.tiny)
    else:
        record = compare_decoding(args)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(json.dumps(record.get("rows", record), indent=1))


if __name__ == "__main__":
    main()
