"""Decoding on a CUDA GPU: float32 greedy search gives the CPU's tokens, and bf16 decoding runs
and mostly agrees with float32."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_support import CUDA, DEVICES, source_lines, translate


@pytest.mark.parametrize("device", [CUDA])
def test_float32_greedy_search_on_the_gpu_gives_the_cpu_tokens(
    device: str, tiny_transformer_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    src = source_lines(tiny_prepared)
    on_cpu = translate(tiny_transformer_run, src, tmp_path / "cpu.txt", "cpu", "--beam", "1")
    on_gpu = translate(tiny_transformer_run, src, tmp_path / "gpu.txt", device, "--beam", "1")
    assert len(on_cpu) == 40 and any(on_cpu)
    assert on_gpu == on_cpu


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_decoding_runs_and_mostly_agrees_with_float32(
    device: str, tiny_transformer_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    src = source_lines(tiny_prepared)
    fp32 = translate(tiny_transformer_run, src, tmp_path / "fp32.txt", device, "--beam", "3")
    bf16 = translate(
        tiny_transformer_run, src, tmp_path / "bf16.txt", device, "--beam", "3",
        "--set", "decode.precision=bf16",
    )  # fmt: skip
    assert len(bf16) == len(fp32) == 40
    # bf16 keeps 8 bits of mantissa: near-ties may flip, a broken path would change most lines.
    same = sum(a == b for a, b in zip(bf16, fp32, strict=True))
    assert same >= 30, list(zip(bf16, fp32, strict=True))
