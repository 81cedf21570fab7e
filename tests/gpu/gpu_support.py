"""Device parameters, a tiny config and command helpers shared by the GPU tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import tiny_config, tiny_yaml
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import RunConfig
from nmt.io import read_jsonl

ROOT = Path(__file__).resolve().parents[2]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# The `gpu` marker selects a variant for `pytest -m gpu`; the skipif keeps it harmless elsewhere.
ON_CUDA = (pytest.mark.gpu, needs_cuda)
CUDA = pytest.param("cuda", id="cuda", marks=ON_CUDA)
# A test parametrized over DEVICES runs on the CPU in the normal suite and on the GPU under -m gpu.
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]

# tests/tiny.py's FAST config with one log line per update, no validation and no periodic
# checkpoint unless a test asks, on `device`.
RUN_SETTINGS = ("train.log_every=1", "train.valid_every=1000", "train.save_every=1000",
                "train.keep_last=5")  # fmt: skip


def gpu_config(device: str, *overrides: str) -> RunConfig:
    """The tiny config on `device` with `--set`-style overrides."""
    return tiny_config(f"train.device={device}", *RUN_SETTINGS, *overrides)


def gpu_yaml(path: Path, device: str, *overrides: str) -> Path:
    return tiny_yaml(path, f"train.device={device}", *RUN_SETTINGS, *overrides)


def rows(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == kind]


def source_lines(tiny_prepared: Path) -> Path:
    """The 40 source sentences of the tiny corpus's validation split."""
    return tiny_prepared.parent / "valid.de"


def translate(run: Path, src: Path, out: Path, device: str, *options: str) -> list[str]:
    """`nmt translate` in this process; the output lines."""
    args = ["translate", str(run), "-i", str(src), "-o", str(out), "--device", device, *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return out.read_text(encoding="utf-8").splitlines()


def translate_without_cuda(run: Path, src: Path, out: Path, *options: str) -> list[str]:
    """`nmt translate --device cpu` in a child process that sees no GPU, as on a CPU machine."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "nmt.cli", "translate", str(run), "-i", str(src), "-o", str(out),
            "--device", "cpu", *options]  # fmt: skip
    child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    return out.read_text(encoding="utf-8").splitlines()
