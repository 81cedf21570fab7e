"""Two peer toolkits for `make bench-peers`: install, train for a wall-clock budget, decode.

JoeyNMT 2.3.0 and OpenNMT-py 3.5.1 each live in their own virtual environment (never project
dependencies), train the shape of bench/peers/{joeynmt,onmt}.yaml on the driver's DATA directory
(SentencePiece pieces separated by spaces, plus the joint vocabulary) and return hypotheses as
piece strings, one per input line, for the driver to detokenize and score.

How the figures come about:

* updates: JoeyNMT saves on SIGINT, so it is the step of the checkpoint it writes when stopped.
  OpenNMT-py saves nothing when stopped: it saves every 25 updates and the figure is the step of
  the newest complete checkpoint, the one decoded (up to 24 later updates are not counted).
* tokens_per_s: source + target non-pad tokens per second, the mean over the toolkit's logging
  windows (every 10 updates) after the first, which carries the start-up. OpenNMT-py logs
  "SRC/TGT tok/s" per window and the two are summed. JoeyNMT logs target tokens only ("Tokens
  per Sec", target pieces + </s>), so its figure is scaled by the training corpus's
  (source + target) / target ratio, counting the </s> JoeyNMT appends on both sides.
* tokens_per_update: source + target non-pad tokens per update, the mean of OpenNMT-py's
  "bsz: SRC/TGT/SENTENCES" over its logging windows; JoeyNMT does not log it (None).
* peak_rss_mib: the training process's own peak resident set, from `bench.common.run_child`
  (wait4 on `timeout`, whose reaped child is the training process).
* decode seconds: JoeyNMT's own "Generation took X[sec]" (its prediction loop, model loading
  excluded); OpenNMT-py's -report_time "Average translation time (ms)" times the sentences
  (its translation loop; the 0.1 s resolution of its total would be too coarse).

    python -m bench.peer_toolkits --minutes 1.5 --limit 100   # smoke test of both peers
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from bench.common import ChildRun, run_child

TEMPLATES = Path(__file__).resolve().parent / "peers"
# Under torch >= 2.6 torch.load defaults to weights_only, which OpenNMT-py's checkpoints (they
# hold its argparse options) fail; these checkpoints are our own, so full loading is safe.
FULL_LOAD = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
# The local-disk CPU build of torch: an unpinned torch would download a CUDA build (GBs).
TORCH = "torch==2.13.0"


@dataclass
class PeerTrainResult:
    updates: int  # optimizer updates done within the budget (see the module docstring)
    tokens_per_s: float  # source + target non-pad tokens per second of training
    peak_rss_mib: float  # peak resident memory of the training process
    # Source + target non-pad tokens per update, where the toolkit logs them (None: it does not)
    tokens_per_update: float | None
    checkpoint: Path  # weights to decode with


@dataclass
class PeerDecodeResult:
    hypotheses: list[str]  # piece strings, one per input line, in input order
    seconds: float  # the toolkit's own figure for translating the test set, loading excluded


@dataclass(frozen=True)
class Peer:
    install: Callable[[Path], None]
    train: Callable[[Path, Path, Path, float], PeerTrainResult]
    decode: Callable[..., PeerDecodeResult]


# ---- shared helpers ------------------------------------------------------------------------------


def _importable(venv: Path, code: str) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    probe = subprocess.run([python, "-c", code], capture_output=True, env=_env(FULL_LOAD))
    return probe.returncode == 0


def _pip(venv: Path, args: Sequence[str], log: Path) -> None:
    """`pip install -q ARGS` in `venv`, its (noisy) output appended to `log`."""
    with open(log, "a") as sink:
        argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args]
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        done = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"pip install {' '.join(args)} failed; see {log}")


def _install(venv: Path, steps: Sequence[Sequence[str]], check: str) -> None:
    """Create `venv` and run the pip `steps` in order, unless `check` already imports there."""
    if _importable(venv, check):
        return
    print(f"  installing into {venv} (a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    for step in steps:
        _pip(venv, step, venv / "install.log")
    if not _importable(venv, check):
        sys.exit(f"{venv}: installed, but `{check}` still fails; see {venv / 'install.log'}")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _config(template: str, **values: str) -> dict[str, Any]:
    """bench/peers/TEMPLATE with its $NAMES filled in, parsed."""
    text = Template((TEMPLATES / template).read_text()).substitute(values)
    return yaml.safe_load(text)


def _write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def _timed(argv: Sequence[str | Path], minutes: float, sig: str, log: Path) -> ChildRun:
    """Run `argv` for `minutes` of wall clock, then send it `sig` (SIGKILL 2 minutes later).

    `timeout` keeps run_child's peak-RSS measurement: run_child waits for `timeout`, whose
    resource usage includes the training process it reaps."""
    seconds = max(1, round(minutes * 60))
    wrapped = ["timeout", f"--signal={sig}", "--kill-after=120", f"{seconds}s", *argv]
    run = run_child(wrapped, log=log)
    # 124: stopped by the budget (the usual end); 137: it ignored the signal and was killed.
    if run.returncode not in (124, 128 + signal.SIGKILL):
        sys.exit(f"training ended before its budget, exit {run.returncode}:\n{run.stdout[-3000:]}")
    return run


def _after_first_mean(values: list[float]) -> float:
    """Mean of the logged windows, the first (start-up) left out when there are others."""
    kept = values[1:] if len(values) > 1 else values
    return sum(kept) / len(kept) if kept else float("nan")


def _lines(path: Path) -> list[str]:
    # split("\n"), not splitlines(): pieces may hold characters splitlines() breaks at.
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _decode_run(
    argv: Sequence[str | Path], stdin: Path | None, extra: dict[str, str]
) -> tuple[str, str]:
    """Run a decoder to completion: (stdout, stdout + stderr); exits on failure."""
    with open(stdin or os.devnull, "rb") as source:
        done = subprocess.run(argv, stdin=source, capture_output=True, env=_env(extra))
    out, err = done.stdout.decode("utf-8"), done.stderr.decode("utf-8", "replace")
    if done.returncode != 0:
        sys.exit(f"decoding failed, exit {done.returncode}:\n{(out + err)[-3000:]}")
    return out, out + err


def _check_aligned(hypotheses: list[str], source: Path) -> list[str]:
    expected = len(_lines(source))
    if len(hypotheses) != expected:
        sys.exit(f"{len(hypotheses)} hypotheses for {expected} input lines of {source}")
    return hypotheses


# ---- JoeyNMT 2.3 ---------------------------------------------------------------------------------


def joey_install(venv: Path) -> None:
    # importlib_metadata is imported but not declared; sentencepiece 0.2.1 dropped SetVocabulary.
    steps = [[TORCH], ["joeynmt==2.3.0", "importlib_metadata", "sentencepiece==0.2.0"]]
    check = "import joeynmt.training, sentencepiece as s; assert s.__version__ == '0.2.0'"
    _install(venv, steps, check)


def joey_train(venv: Path, data: Path, workdir: Path, minutes: float) -> PeerTrainResult:
    config = _config("joeynmt.yaml", DATA=str(data.resolve()), WORKDIR=str(workdir.resolve()))
    path = _write_yaml(workdir / "joeynmt-train.yaml", config)
    argv: list[str | Path] = [
        venv / "bin" / "python",
        "-m",
        "joeynmt",
        "train",
        path,
        "--skip-test",
    ]
    # SIGINT: JoeyNMT catches the KeyboardInterrupt and saves the current weights.
    run = _timed(argv, minutes, "INT", workdir / "train.log")
    model_dir = Path(config["model_dir"])
    latest = model_dir / "latest.ckpt"  # a link to STEPS.ckpt, the save on interrupt
    if not latest.exists():
        sys.exit(f"JoeyNMT saved no checkpoint in {model_dir}:\n{run.stdout[-3000:]}")
    checkpoint = latest.resolve()
    target_rates = [float(r) for r in re.findall(r"Tokens per Sec:\s+([\d.]+)", run.stdout)]
    return PeerTrainResult(
        updates=int(checkpoint.stem),
        tokens_per_s=_after_first_mean(target_rates) * _joey_both_sides_ratio(data),
        peak_rss_mib=run.peak_rss_mib,
        tokens_per_update=None,
        checkpoint=checkpoint,
    )


def _joey_both_sides_ratio(data: Path) -> float:
    """(source + target) / target tokens of the training corpus as JoeyNMT counts them: pieces
    plus the </s> it appends to each side (its logged rate is the target side only)."""
    pieces = {}
    for side in ("de", "en"):
        lines = _lines(data / f"train.{side}")
        pieces[side] = sum(len(line.split()) for line in lines) + len(lines)
    return (pieces["de"] + pieces["en"]) / pieces["en"]


def joey_decode(
    venv: Path, checkpoint: Path, data: Path, workdir: Path, beam: int, batch_sentences: int = 64
) -> PeerDecodeResult:
    config = yaml.safe_load((checkpoint.parent / "config.yaml").read_text())
    out_dir = workdir / "joeynmt-decode"
    out_dir.mkdir(parents=True, exist_ok=True)
    config["model_dir"] = str(out_dir.resolve())  # its translate.log goes there
    config["testing"].update(
        load_model=str(checkpoint.resolve()),
        beam_size=beam,
        batch_size=batch_sentences,
        batch_type="sentence",
    )
    path = _write_yaml(out_dir / f"beam{beam}.yaml", config)
    source = data / "test.de"
    # `translate -o FILE` crashes in 2.3, so the hypotheses come from its standard output.
    argv: list[str | Path] = [venv / "bin" / "python", "-m", "joeynmt", "translate", path]
    stdout, everything = _decode_run(argv, source, FULL_LOAD)
    took = re.findall(r"Generation took ([\d.]+)\[sec\]", everything)
    if not took:
        sys.exit(f"JoeyNMT reported no generation time:\n{everything[-3000:]}")
    hypotheses = _check_aligned(stdout.split("\n")[:-1], source)
    return PeerDecodeResult(hypotheses, float(took[-1]))


# ---- OpenNMT-py 3.5.1 ----------------------------------------------------------------------------

# OpenNMT-py puts its own <unk> <blank> <s> </s> first; the SentencePiece control symbols never
# occur in the text, so they leave the vocabulary and its size stays that of the spm model.
_ONMT_DROPPED = {"<pad>", "<unk>", "<s>", "</s>", "<blank>"}
_ONMT_DEPS = [
    "configargparse",
    "pyonmttok",
    "ctranslate2",
    "pyyaml",
    "sacrebleu",
    "sentencepiece",
    "six",
    "tensorboard",
    "flask",
    "waitress",
    "rapidfuzz",
    "pyahocorasick",
    "fasttext-wheel",
    "spacy",
]


def onmt_install(venv: Path) -> None:
    # --no-deps: OpenNMT-py 3.5.1 declares torch<2.3, but runs on the pinned torch.
    steps = [[TORCH], ["--no-deps", "OpenNMT-py==3.5.1"], _ONMT_DEPS]
    _install(venv, steps, "import onmt.bin.train, onmt.bin.translate, pyonmttok")


def _onmt_vocab(data: Path, workdir: Path) -> Path:
    pieces = [p for p in _lines(data / "vocab.txt") if p not in _ONMT_DROPPED]
    path = workdir / "onmt-vocab.txt"
    path.write_text("".join(p + "\n" for p in pieces), encoding="utf-8")
    return path


def onmt_train(venv: Path, data: Path, workdir: Path, minutes: float) -> PeerTrainResult:
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)  # the newest checkpoint must be this run's
    values = {"DATA": str(data.resolve()), "WORKDIR": str(workdir.resolve())}
    values["VOCAB"] = str(_onmt_vocab(data, workdir).resolve())
    values["PAIRS"] = str(len(_lines(data / "train.de")))
    config = _config("onmt.yaml", **values)
    path = _write_yaml(workdir / "onmt-train.yaml", config)
    # SIGTERM: OpenNMT-py would not save on any signal, so it may as well end at once.
    run = _timed([venv / "bin" / "onmt_train", "-config", path], minutes, "TERM", workdir / "log")
    step, checkpoint = _onmt_newest_checkpoint(model_dir)
    tokens_per_s, tokens_per_update = onmt_log_figures(run.stdout)
    return PeerTrainResult(
        updates=step,
        tokens_per_s=tokens_per_s,
        peak_rss_mib=run.peak_rss_mib,
        tokens_per_update=tokens_per_update,
        checkpoint=checkpoint,
    )


def onmt_log_figures(log: str) -> tuple[float, float | None]:
    """Source+target tokens/s (windows after the first) and non-pad tokens per update (all
    windows) from OpenNMT-py's training log, whose window lines say "bsz: SRC/TGT/SENTENCES;
    SRC/TGT tok/s"."""
    rates = re.findall(r"([\d.]+)/\s*([\d.]+) tok/s", log)
    sizes = re.findall(r"bsz:\s*(\d+)/(\d+)/(\d+)", log)
    per_update = statistics.mean(int(s) + int(t) for s, t, _ in sizes) if sizes else None
    return _after_first_mean([float(src) + float(tgt) for src, tgt in rates]), per_update


def _onmt_newest_checkpoint(model_dir: Path) -> tuple[int, Path]:
    """(step, path) of the newest checkpoint that was written completely: the stop may cut a
    save short, and torch.save's zip archive then fails its CRC or lacks its directory."""
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in model_dir.glob("model_step_*.pt")
            if (m := re.fullmatch(r"model_step_(\d+)\.pt", p.name))
        ),
        reverse=True,
    )
    for step, path in found:
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    return step, path
        except zipfile.BadZipFile:
            continue
    sys.exit(f"OpenNMT-py left no complete checkpoint in {model_dir}: too short a budget?")


def onmt_decode(
    venv: Path, checkpoint: Path, data: Path, workdir: Path, beam: int, batch_sentences: int = 64
) -> PeerDecodeResult:
    source = data / "test.de"
    output = workdir / "onmt-decode" / f"beam{beam}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = [venv / "bin" / "onmt_translate", "-model", checkpoint]
    argv += ["-src", source, "-output", output, "-gpu", "-1", "-seed", "1", "-report_time"]
    argv += ["-beam_size", str(beam), "-batch_size", str(batch_sentences), "-batch_type", "sents"]
    # As nmt and JoeyNMT: GNMT length penalty with alpha 1, outputs up to ~1.5x the source.
    argv += ["-length_penalty", "wu", "-alpha", "1.0", "-max_length_ratio", "1.5"]
    _, everything = _decode_run(argv, None, FULL_LOAD)
    per_sentence = re.findall(r"Average translation time \(ms\): ([\d.]+)", everything)
    if not per_sentence:
        sys.exit(f"OpenNMT-py reported no translation time:\n{everything[-3000:]}")
    hypotheses = _check_aligned(_lines(output), source)
    return PeerDecodeResult(hypotheses, float(per_sentence[-1]) * len(hypotheses) / 1000)


PEERS: dict[str, Peer] = {
    "joeynmt": Peer(joey_install, joey_train, joey_decode),
    "opennmt": Peer(onmt_install, onmt_train, onmt_decode),
}
VENVS = {"joeynmt": Path("/tmp/peer-joeynmt"), "opennmt": Path("/tmp/peer-onmt")}


# ---- smoke test ----------------------------------------------------------------------------------

MULTI30K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "multi30k"


def _limited_data(data: Path, limit: int, into: Path) -> Path:
    """A view of `data` whose test.de holds only its first `limit` lines."""
    into.mkdir(parents=True, exist_ok=True)
    for item in data.iterdir():
        link = into / item.name
        if item.name != "test.de" and not link.exists():
            link.symlink_to(item.resolve())
    (into / "test.de").write_text("".join(f"{s}\n" for s in _lines(data / "test.de")[:limit]))
    return into


def _bleu(hypotheses: list[str], limit: int) -> float:
    import sacrebleu

    with gzip.open(MULTI30K / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        references = f.read().split("\n")[:limit]
    texts = ["".join(h.split()).replace("\u2581", " ").strip() for h in hypotheses]
    return float(sacrebleu.corpus_bleu(texts, [references]).score)


def smoke(name: str, data: Path, work: Path, minutes: float, limit: int) -> None:
    peer, venv = PEERS[name], VENVS[name]
    start = time.perf_counter()
    peer.install(venv)
    print(f"{name}: install/check {time.perf_counter() - start:.0f} s", flush=True)
    trained = peer.train(venv, data, work / name, minutes)
    print(f"{name}: {trained}", flush=True)
    test_data = _limited_data(data, limit, work / f"{name}-data-{limit}")
    for beam in (5, 1):
        decoded = peer.decode(venv, trained.checkpoint, test_data, work / name, beam)
        bleu = _bleu(decoded.hypotheses, limit)
        print(
            f"{name} beam {beam}: {len(decoded.hypotheses)} hypotheses in "
            f"{decoded.seconds:.2f} s, BLEU {bleu:.2f}; first: {decoded.hypotheses[:2]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.5, help="training budget per peer")
    parser.add_argument("--limit", type=int, default=100, help="test sentences to decode")
    parser.add_argument("--data", type=Path, default=Path("/tmp/nmt-peers/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/nmt-peers/smoke"))
    parser.add_argument("--peers", default="joeynmt,opennmt", help="comma-separated")
    args = parser.parse_args()
    for name in args.peers.split(","):  # one after the other: never two trainings at once
        smoke(name, args.data, args.work, args.minutes, args.limit)


if __name__ == "__main__":
    main()
