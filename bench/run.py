"""`make bench`: training, decoding and prepare throughput (and MFU on a GPU), as JSON and a table.

    python -m bench.run                        # everything this machine can run
    python -m bench.run --only decode --checkpoint checkpoints/RUN/averaged.pt
    python -m bench.run --only prepare --prepare-sizes 1000000,5000000
    python -m bench.run --only scale            # 200k, 2M, 10M pairs: prepare, training start

Results go to bench/results/bench-TIMESTAMP.json with the machine, the torch version and the
settings. Run it on an otherwise idle machine: every figure is a median, but two processes sharing
two cores still halve each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import workloads
from bench.common import ROOT, machine, print_table, write_results

RECIPE_CHECKPOINT = ROOT / "checkpoints" / "multi30k-transformer-de-en" / "averaged.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default="padding,train,decode,prepare,mfu", help="comma-separated"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--updates", type=int, default=100, help="training updates per family")
    parser.add_argument("--repeats", type=int, default=3, help="decoding repeats per search")
    parser.add_argument("--batch-tokens", type=int, default=2000, help="decoding batch size")
    parser.add_argument("--checkpoint", type=Path, help="model to decode with (default: recipe's)")
    parser.add_argument("--prepare-sizes", default="200000,1000000", help="synthetic corpus pairs")
    parser.add_argument(
        "--scale-sizes", default="200000,2000000,10000000", help="pairs for --only scale"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scale workload's data")
    return parser.parse_args()


def main() -> None:
    import torch

    args = parse_args()
    only = set(args.only.split(","))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: list[dict[str, Any]] = []
    if only & {"padding", "train", "decode"}:
        print("data:", flush=True)
        data, test_src, _ = workloads.prepared_corpus()
    if "padding" in only:
        rows += workloads.padding(data)
    if "train" in only:
        for arch in ("transformer", "rnn"):
            print(f"train {arch}: {args.updates} updates", flush=True)
            rows.append(workloads.train_speed(data, arch, args.updates, device))
    if "decode" in only:
        checkpoint = args.checkpoint or RECIPE_CHECKPOINT
        if not checkpoint.is_file():
            checkpoint = workloads.SCRATCH / "train-transformer"
            print(
                f"decode: {RECIPE_CHECKPOINT} not found; using the short training run {checkpoint}"
            )
        print(f"decode {test_src} with {checkpoint}", flush=True)
        rows += workloads.decode_speed(
            checkpoint, test_src, device, args.repeats, args.batch_tokens
        )
    if "prepare" in only:
        for pairs in (int(n) for n in args.prepare_sizes.split(",")):
            print(f"prepare: {pairs:,} synthetic pairs", flush=True)
            rows.append(workloads.prepare_speed(pairs))
    if "scale" in only:
        for pairs in (int(n) for n in args.scale_sizes.split(",")):
            print(f"scale: {pairs:,} synthetic pairs, prepare and two trainings", flush=True)
            rows += workloads.scale(pairs, args.updates, args.keep)
    if "mfu" in only and torch.cuda.is_available():
        print("mfu: Transformer-base, bf16", flush=True)
        rows.append(workloads.transformer_base_mfu())
    elif "mfu" in only:
        print("mfu: skipped (no CUDA device)")
    path = write_results("bench", {"machine": machine(), "settings": vars(args), "rows": rows})
    report(rows)
    print(f"\nwritten: {path.relative_to(ROOT)}")


def report(rows: list[dict[str, Any]]) -> None:
    tables = {
        "padding": ["batching", "batch_tokens", "batches_per_epoch", "padding_percent"],
        "train": [
            "arch",
            "device",
            "updates",
            "tokens_per_s",
            "updates_per_s",
            "peak_rss_mib",
            "gpu_peak_mib",
        ],
        "decode": [
            "search",
            "device",
            "sentences",
            "sentences_per_s",
            "tgt_tokens_per_s",
            "output_sha256",
        ],
        "prepare": ["pairs", "wall_s", "pairs_per_s", "peak_rss_mib", "output_mib"],
        "scale": [
            "pairs",
            "stage",
            "wall_s",
            "first_update_s",
            "in_process_first_update_s",
            "plan_build_s",
            "peak_rss_mib",
        ],
        "mfu": [
            "model",
            "tokens_per_step",
            "step_ms",
            "achieved_tflops",
            "peak_bf16_matmul_tflops",
            "mfu_percent",
            "gpu_peak_mib",
        ],
    }
    for name, columns in tables.items():
        selected = [r for r in rows if r["bench"] == name]
        if selected:
            print(f"\n{name}")
            print_table(selected, columns)


if __name__ == "__main__":
    main()
