"""CTranslate2 decoding a model that `nmt export` wrote: timing and outputs as JSON.

    python -m bench.ctranslate2_decode MODEL_DIR SRC_FILE OUT_JSON [--beam 5] [--repeats 2]
        [--compute-type float32] [--batch 64] [--threads 2] [--device cpu]

Run as a child of `bench.peers` (its own process: CTranslate2 brings its own OpenMP runtime).
Like our timings, the seconds cover the search only: model loading and SentencePiece are left
out. Sentences go `--batch` at a time (CTranslate2 sorts them by length first, as we do).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compute-type", default="float32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()

    import ctranslate2
    import sentencepiece as spm

    from nmt.metrics import read_lines

    source = spm.SentencePieceProcessor(model_file=str(args.model / "source.spm"))
    target = spm.SentencePieceProcessor(model_file=str(args.model / "target.spm"))
    pieces = source.encode(read_lines(args.src), out_type=str)
    translator = ctranslate2.Translator(
        str(args.model),
        device=args.device,
        compute_type=args.compute_type,
        inter_threads=1,
        intra_threads=args.threads,
    )
    options = {"beam_size": args.beam, "max_batch_size": args.batch, "batch_type": "examples"}
    translator.translate_batch(pieces[: args.batch], **options)  # warm-up
    seconds, hypotheses = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = translator.translate_batch(pieces, **options)
        seconds.append(time.perf_counter() - start)
        hypotheses = [r.hypotheses[0] for r in results]
    record = {
        "seconds": seconds,
        "tgt_tokens": sum(len(h) for h in hypotheses),
        "outputs": [target.decode(h) for h in hypotheses],
        "compute_type": translator.compute_type,  # what CTranslate2 runs, after its fallbacks
        "device": args.device,
        "version": ctranslate2.__version__,
    }
    args.out.write_text(json.dumps(record) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
