"""Behaviour identity across a refactor: train and translate with one version of the code, hash
everything that must not change, and compare two such records.

    python -m bench.identity record OUT [--code ROOT] [--data DIR] [--reference CKPT]
    python -m bench.identity compare OLD/hashes.json NEW/hashes.json

`record` runs the `nmt` of the source tree ROOT (default: this checkout; another version can be
unpacked with `git archive COMMIT | tar -x -C ROOT`) as subprocesses, on the first 2,000 Multi30k
de-en training pairs: five tiny models trained for 50 updates from a fixed seed (a Transformer
with accumulation, a guided-alignment Transformer, RNNs with Bahdanau, Luong-general and hard
attention), then `nmt translate` of 60 test sentences in several modes (beam, greedy, n-best
JSONL with attention, sampling, forced decoding, attention and alignment files, an ensemble) with
the tiny Transformer, the tiny RNN and, with --reference, a trained checkpoint, and a few `nmt
serve` requests. The hashes: sha256 of every output file (of each member for .npz, whose zip
headers carry a timestamp); of the weights and of the training state (optimizer, schedule, RNG;
without the wall-clock fields) of each run's last.pt, tensors hashed with dtype and shape; and of
metrics.jsonl without its timing fields. CPU, float32, one thread, `train.deterministic`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PAIRS, VALID_PAIRS, TEST_LINES = 2000, 100, 60
# Fields of metrics.jsonl rows and of TrainState that measure time, not computation.
TIMING = {"train_seconds", "wall_seconds", "tgt_tokens_per_s", "tokens_per_s", "updates_per_min"}
TIMING |= {"time_ms", "run_dir", "gpu_peak_mib", "first_update_seconds"}
# Left out of the metrics hash: fields that newer versions log and older ones did not (the
# guided-alignment loss on its own, logged since the loop was split by concern).
ADDED = {"align_loss"}

COMMON_TRAIN = [
    "train.max_steps=50", "train.batch_tokens=1200", "train.lr=1e-3", "train.warmup_steps=10",
    "train.log_every=5", "train.valid_every=25", "train.save_every=25", "train.valid_metric=bleu",
    "train.deterministic=true", "train.num_threads=1", "train.device=cpu", "train.seed=3",
    "train.precision=fp32", "train.label_smoothing=0.1", "decode.max_len_a=1.5",
    "decode.max_len_b=5",
]  # fmt: skip
TRANSFORMER = [
    "model.arch=transformer", "model.transformer.d_model=64", "model.transformer.heads=4",
    "model.transformer.enc_layers=2", "model.transformer.dec_layers=2",
    "model.transformer.ffn_dim=128", "model.transformer.dropout=0.1",
    "model.transformer.attn_dropout=0.1", "train.schedule=inverse-sqrt",
]  # fmt: skip
RNN = [
    "model.arch=rnn", "model.rnn.emb_dim=48", "model.rnn.hidden_size=64", "model.rnn.attn_dim=64",
    "model.rnn.dropout=0.1", "train.schedule=plateau",
]  # fmt: skip
RUNS = {
    "tf": TRANSFORMER + ["train.update_freq=2"],
    "tf-guided": TRANSFORMER + ["train.guided_alignment=0.5"],
    "rnn": RNN + ["model.rnn.attention=bahdanau"],
    "rnn-luong": RNN + ["model.rnn.attention=luong-general"],
    "rnn-hard": RNN + ["model.rnn.attention=hard"],
}


def nmt(code: Path, *args: str, stdin: str | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    env |= {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    cmd = [sys.executable, str(code / "cli.py"), *args]
    done = subprocess.run(cmd, env=env, input=stdin, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")


def write_subset(src: Path, dst: Path, lines: int) -> None:
    with gzip.open(src, "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(lines)]
    dst.write_text("".join(head), encoding="utf-8")


def prepare_data(code: Path, multi30k: Path, work: Path) -> Path:
    """The corpus subsets and their prepared folder in `work`, made once: eflomal's alignments
    differ from run to run, so records to be compared must share one prepared folder."""
    raw, out = work / "raw", work / "prepared"
    if out.is_dir():
        return out
    raw.mkdir(parents=True, exist_ok=True)
    for split, name, n in (("train", "train", TRAIN_PAIRS), ("val", "val", VALID_PAIRS)):
        for lang in ("de", "en"):
            write_subset(multi30k / f"{split}.{lang}.gz", raw / f"{name}.{lang}", n)
    for lang in ("de", "en"):
        write_subset(multi30k / f"test_2016_flickr.{lang}.gz", raw / f"test.{lang}", TEST_LINES)
    out = work / "prepared"
    nmt(code, "prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", str(raw / "train"),
        "--valid", str(raw / "val"), "--vocab-size", "600", "--set", "alignments=eflomal",
        "--out", str(out))  # fmt: skip
    return out


def tensor_hash(value: Any, h: Any) -> None:
    """Feed a nested structure of tensors and plain values into the hash, in a fixed order."""
    if isinstance(value, torch.Tensor):
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            if key not in TIMING:
                h.update(f"K{key}".encode())
                tensor_hash(value[key], h)
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            tensor_hash(item, h)
    else:
        h.update(repr(value).encode())


def digest(value: Any) -> str:
    h = hashlib.sha256()
    tensor_hash(value, h)
    return h.hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    if path.suffix == ".npz":  # zip members carry a time stamp: hash what they hold
        with zipfile.ZipFile(path) as z:
            return {f"{path.name}:{m}": hashlib.sha256(z.read(m)).hexdigest() for m in z.namelist()}
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}


def run_hashes(run: Path) -> dict[str, str]:
    payload = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k not in ADDED} for row in rows]
    return {
        "weights": digest(payload["model"]),
        "train_state": digest(payload["train_state"]),
        "best_weights": digest(torch.load(run / "best.pt", weights_only=True)["model"]),
        "metrics": digest(rows),
    }


def train_runs(code: Path, data: Path, work: Path) -> dict[str, Any]:
    out = {}
    for name, sets in RUNS.items():
        run = work / "runs" / name
        config = work / f"{name}.yaml"  # the defaults; every setting that matters is a --set
        config.write_text("train:\n  seed: 3\n", encoding="utf-8")
        args = [a for s in COMMON_TRAIN + sets for a in ("--set", s)]
        nmt(code, "train", str(config), "--data", str(data), "--out", str(run), *args)
        out[name] = run_hashes(run)
        print(f"trained {name}: weights {out[name]['weights'][:16]}", flush=True)
    return out


def translate_modes(code: Path, model: list[str], raw: Path, out: Path, arch: str) -> None:
    """Every output mode of nmt translate for `model` (one checkpoint or an ensemble)."""
    out.mkdir(parents=True, exist_ok=True)
    src, ref = str(raw / "test.de"), str(raw / "test.en")

    def run(*args: str) -> None:
        nmt(code, "translate", *model, "-i", src, "--device", "cpu", *args)

    run("-o", str(out / "beam5.txt"), "--beam", "5")
    run("-o", str(out / "greedy.txt"), "--beam", "1")
    run("-o", str(out / "nbest.txt"), "--beam", "4", "--nbest", "3")
    run("-o", str(out / "nbest.jsonl"), "--nbest", "3", "--output-format", "jsonl", "--attention")
    run("-o", str(out / "greedy.jsonl"), "--beam", "1", "--output-format", "jsonl", "--attention")
    run("-o", str(out / "attn.txt"), "--attention-out", str(out / "attn.npz"),
        "--alignments-out", str(out / "beam5.align"))  # fmt: skip
    run("-o", str(out / "attn2.txt"), "--attention-out", str(out / "attn.jsonl"))
    sample = ["--set", "decode.sample=true", "--set", "decode.seed=7", "--set", "decode.top_k=20"]
    run("-o", str(out / "sample.jsonl"), "--output-format", "jsonl", "--nbest", "2", *sample)
    run("-o", str(out / "sample1.txt"), "--beam", "1", "--set", "decode.sample=true",
        "--set", "decode.seed=11", "--set", "decode.temperature=0.8")  # fmt: skip
    run("-o", str(out / "forced.jsonl"), "--force", ref, "--output-format", "jsonl",
        "--attention", "--alignments-out", str(out / "forced.align"))  # fmt: skip
    run("-o", str(out / "coverage.txt"), "--set", "decode.coverage_penalty=0.2",
        "--set", "decode.length_norm=gnmt")  # fmt: skip
    if arch == "transformer":
        run("-o", str(out / "heads.txt"), "--attention-out", str(out / "heads.jsonl"),
            "--set", "decode.attention_layer=0", "--set", "decode.attention_head=all",
            "--alignments-out", str(out / "heads.align"))  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE_REQUESTS = [
    {"text": ["Ein Hund rennt über die Wiese .", "Zwei Männer spielen Fußball ."]},
    {"text": "Eine Frau liest ein Buch .", "beam": 1, "attention": True},
    {"text": ["Ein Kind isst .", ""], "beam": 4, "nbest": 2, "attention": True},
    {"text": "Ein Mann fährt Fahrrad .", "attention": True, "attention_detail": True},
    {"text": "Ein Mann fährt Fahrrad .", "model": "rnn", "beam": 3},
]


def serve_answers(code: Path, runs: list[Path], out: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(code / "cli.py"), "serve", *map(str, runs), "--port", str(port),
           "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        answers = []
        for body in SERVE_REQUESTS:
            request = urllib.request.Request(
                base + "/translate", json.dumps(body).encode(), {"content-type": "application/json"}
            )
            answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
            answer.pop("time_ms", None)
            answers.append(answer)
        (out / "serve.json").write_text(json.dumps(answers, ensure_ascii=False, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


def record(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    work, shared = out / "work", Path(args.data or out / "data").resolve()
    work.mkdir(parents=True, exist_ok=True)
    code = Path(args.code).resolve()
    data = prepare_data(code, Path(args.multi30k), shared)
    torch.set_num_threads(1)
    hashes: dict[str, Any] = {"train": train_runs(code, data, work)}
    raw, runs = shared / "raw", work / "runs"
    outputs = out / "outputs"
    translate_modes(code, [str(runs / "tf")], raw, outputs / "tf", "transformer")
    translate_modes(code, [str(runs / "tf-guided")], raw, outputs / "tf-guided", "transformer")
    translate_modes(code, [str(runs / "rnn")], raw, outputs / "rnn", "rnn")
    translate_modes(code, [str(runs / "tf"), str(runs / "tf-guided")], raw, outputs / "ens", "tf")
    if args.reference:
        translate_modes(code, [args.reference], raw, outputs / "reference", "transformer")
    serve_answers(code, [runs / "tf", runs / "rnn"], outputs)
    hashes["outputs"] = {
        str(p.relative_to(outputs).parent / k): v
        for p in sorted(outputs.rglob("*"))
        if p.is_file()
        for k, v in file_hashes(p).items()
    }
    (out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"{len(hashes['outputs'])} output hashes, {len(hashes['train'])} runs: {out}/hashes.json")


def compare(args: argparse.Namespace) -> None:
    old, new = (json.loads(Path(p).read_text()) for p in (args.old, args.new))
    differ = 0
    for section in ("train", "outputs"):
        keys = sorted(set(old[section]) | set(new[section]))
        for key in keys:
            a, b = old[section].get(key), new[section].get(key)
            same = a == b
            differ += not same
            print(f"{'same ' if same else 'DIFF '} {section}/{key}")
    print(f"{differ} differences")
    sys.exit(1 if differ else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--code", default=str(ROOT), help="source tree whose nmt runs")
    rec.add_argument("--reference", help="a trained checkpoint (.pt or run folder) to translate")
    rec.add_argument("--data", help="corpus subsets and prepared data, shared by records")
    rec.add_argument("--multi30k", default=str(ROOT.parent / "shared/data/multi30k"))
    cmp = sub.add_parser("compare")
    cmp.add_argument("old")
    cmp.add_argument("new")
    args = parser.parse_args()
    record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    main()
