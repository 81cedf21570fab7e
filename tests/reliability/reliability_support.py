"""Helpers of the reliability tests: run a real command, check its one-line refusal, and compare
every file under a folder byte for byte before and after."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import RunConfig, dump_yaml, from_dict

# A Transformer of ~25k parameters on one thread: a few ms per update.
TINY_RUN: dict[str, Any] = {
    "model": {
        "arch": "transformer",
        "transformer": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1,
                        "ffn_dim": 64, "dropout": 0.1, "attn_dropout": 0.0},
    },
    "train": {"max_steps": 4, "batch_tokens": 400, "lr": 3e-3, "warmup_steps": 5, "log_every": 1,
              "valid_every": 1000, "save_every": 1000, "keep_last": 3, "valid_metric": "loss",
              "deterministic": True, "num_threads": 1, "device": "cpu", "precision": "fp32"},
}  # fmt: skip


def tiny_run_yaml(path: Path, **train: Any) -> Path:
    """TINY_RUN with some `train` settings changed, written as a config file."""
    tree = {**TINY_RUN, "train": {**TINY_RUN["train"], **train}}
    path.write_text(dump_yaml(from_dict(RunConfig, tree)), encoding="utf-8")
    return path


def tiny_prepare(tmp_path: Path) -> Callable[[], Any]:
    """Write a 15-pair corpus under tmp_path/raw and return a call that runs `nmt prepare` on
    it into tmp_path/prep (the same inputs each time)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for side, text in (("de", "ba ce\nce do\ndo fe\n"), ("en", "CE BA\nDO CE\nFE DO\n")):
        (raw / f"train.{side}").write_text(text * 5, encoding="utf-8")

    def prepare() -> Any:
        return nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", raw / "train",
                   "--valid", raw / "train", "--vocab-size", 40, "--set",
                   "hard_vocab_limit=false", "--out", tmp_path / "prep")  # fmt: skip

    return prepare


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) -> its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def nmt(*args: object, input: str | None = None) -> Any:
    """`nmt ARGS` in this process (Typer's CliRunner); returns the click Result."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def assert_refused(result: Any, code: int, *needles: str) -> str:
    """The command failed with `code` and said why in one `error:` line (no traceback) holding
    every needle; returns that line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def start_nmt(*args: object, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m nmt.cli ARGS` as a child process (stdout and stderr to pipes, text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A test run started in the background of a script ignores SIGINT, and so would the child,
    # which `nmt train` respects; the child gets the default back.
    return subprocess.Popen(
        [sys.executable, "-m", "nmt.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `condition` every 20 ms until it holds; fail if `proc` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ended early with {proc.returncode}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def logged_updates(run_dir: Path) -> int:
    """The newest update logged in RUN_DIR/metrics.jsonl (0 before the first)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        with contextlib.suppress(ValueError):  # a line being written
            steps.append(int(json.loads(line).get("step", 0)))
    return max(steps)
