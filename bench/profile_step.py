"""Where a training step's time goes: torch.profiler over a few real Multi30k-sized steps.

    python -m bench.profile_step [--arch transformer|rnn] [--steps 8] [--batch-tokens 4096]

Builds the recipe's model, feeds it random sentence pairs with Multi30k's length profile (about 13
source and 14 target subwords, 8k vocabulary), runs forward, the label-smoothed loss, backward and
the recipe's optimizer step (built as `nmt train` builds it: fused AdamW), and prints the
operators with the most self time. Used to pick what to optimise next (bench/NOTES.md); not part
of `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from bench.common import ROOT
from nmt.config import RunConfig, from_dict, load_yaml
from nmt.models import build_model
from nmt.training.loss import label_smoothed_nll
from nmt.training.schedule import build_optimizer

CONFIGS = {"transformer": "transformer.yaml", "rnn": "rnn-bahdanau.yaml"}


def random_batch(batch_tokens: int, vocab: int, generator: torch.Generator):
    src_len, tgt_len = 13, 15  # tgt_len counts BOS/EOS: 14 subwords + 1
    batch = batch_tokens // (src_len + tgt_len)
    src = torch.randint(4, vocab, (batch, src_len), generator=generator)
    tgt = torch.randint(4, vocab, (batch, tgt_len), generator=generator)
    return src, torch.ones(batch, src_len, dtype=torch.bool), tgt[:, :-1], tgt[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="transformer", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--no-profiler", action="store_true", help="time the steps only")
    args = parser.parse_args()
    cfg = from_dict(RunConfig, load_yaml(ROOT / "configs" / "multi30k" / CONFIGS[args.arch]), "")
    torch.manual_seed(0)
    model = build_model(cfg.model, 8000, 8000, True).train()
    optimizer = build_optimizer(model, cfg.train, torch.device("cpu"))  # as `nmt train` builds it
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(args.batch_tokens, 8000, generator) for _ in range(args.steps + 2)]

    forward = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(src, src_mask, tgt_in, tgt_out) -> None:
        with autocast:
            logits = forward(src, src_mask, tgt_in)
        loss, _ = label_smoothed_nll(logits, tgt_out, 0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(*batch)  # warm-up
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    start = time.perf_counter()
    with contextlib.nullcontext() if args.no_profiler else profiler:
        for batch in batches[2:]:
            step(*batch)
    seconds = (time.perf_counter() - start) / args.steps
    how = "timed alone" if args.no_profiler else "under the profiler"
    print(
        f"{args.arch} {args.precision}: {seconds * 1000:.0f} ms per step {how}, {args.steps} steps"
    )
    if not args.no_profiler:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
