"""Micro-benchmark (not a test): Transformer `decode_step` time with attention weights returned vs
not, on CPU. Run: `.venv/bin/python -m bench.decode_step [--batch 64] [--steps 30]`.

Decodes `--steps` positions for a batch of random sources with the default TransformerConfig and an
8k vocabulary, `--repeats` times for each setting (alternating), and prints the minimum and median
time per step (the minimum is the least disturbed by other processes). Returning the weights
switches cross-attention to the exact path and stacks the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nmt.config import BOS_ID, ModelConfig
from nmt.models import build_model


def time_decoding(model, src, src_mask, steps: int, need_attention: bool) -> float:
    with torch.inference_mode():
        state = model.encode(src, src_mask)
        prev = torch.full((src.size(0),), BOS_ID)
        start = time.perf_counter()
        for _ in range(steps):
            log_probs, state, _ = model.decode_step(prev, state, need_attention=need_attention)
            prev = log_probs.argmax(-1)
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 8000, 8000, True).eval()
    src = torch.randint(4, 8000, (args.batch, args.src_len))
    lengths = torch.randint(args.src_len // 2, args.src_len + 1, (args.batch,))
    src_mask = torch.arange(args.src_len)[None, :] < lengths[:, None]
    src = src.masked_fill(~src_mask, 0)
    times: dict[bool, list[float]] = {False: [], True: []}
    time_decoding(model, src, src_mask, 3, True)  # warm-up
    time_decoding(model, src, src_mask, 3, False)
    for _ in range(args.repeats):
        for need in (False, True):
            times[need].append(time_decoding(model, src, src_mask, args.steps, need))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"src_len {args.src_len}, {args.steps} steps, {args.repeats} repeats"
    )
    for stat in (min, statistics.median):
        off, on = stat(times[False]), stat(times[True])
        print(
            f"{stat.__name__:>6}: need_attention=False {off * 1e3:.3f} ms/step, "
            f"True {on * 1e3:.3f} ms/step (on/off {on / off:.3f})"
        )


if __name__ == "__main__":
    main()
