"""Training on a CUDA GPU: mixed precision (bf16 autocast, fp16 with the grad scaler), fused
AdamW, a GPU checkpoint used on a CPU-only machine, and exact resume after kill -9."""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from gpu_support import (
    DEVICES,
    ROOT,
    gpu_config,
    gpu_yaml,
    rows,
    source_lines,
    translate,
    translate_without_cuda,
)
from process_support import kill_when_it_says
from torch import nn
from typer.testing import CliRunner

from nmt import checkpoint as ckpt
from nmt.cli import app
from nmt.config import TrainConfig
from nmt.training.device import precision_note, resolve_precision
from nmt.training.loop import train
from nmt.training.schedule import build_optimizer

PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}


@pytest.mark.parametrize("device", DEVICES)
def test_precisions_give_finite_losses_close_to_float32(
    device: str, tiny_prepared: Path, tmp_path: Path
) -> None:
    # The same seed, weights and batches: only the arithmetic differs. The first update's loss is
    # taken before any step, so it differs by rounding alone; later ones by a few steps of it.
    losses, overflows = {}, {}
    for precision in PRECISIONS[device]:
        run = tmp_path / precision
        cfg = gpu_config(device, f"train.precision={precision}", "train.max_steps=4")
        summary = train(cfg, tiny_prepared, run)
        assert summary["step"] == 4 and summary["nan_steps"] == 0, summary
        losses[precision] = [r["loss"] for r in rows(run, "train")]
        overflows[precision] = summary["overflow_steps"]
        assert len(losses[precision]) == 4 and all(map(math.isfinite, losses[precision]))
        scaler = ckpt.load_checkpoint(run / "last.pt")["train_state"]["scaler"]
        # Only fp16 uses (and saves) the grad scaler; its scale is a power of two.
        assert bool(scaler) == (precision == "fp16")
        if scaler:
            assert math.log2(scaler["scale"]).is_integer()
    for precision, values in losses.items():
        message = f"{precision}: {values} vs fp32 {losses['fp32']}, overflows {overflows}"
        assert values[0] == pytest.approx(losses["fp32"][0], rel=0.01), message
        assert values == pytest.approx(losses["fp32"], rel=0.05), message


def test_auto_precision_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch) -> None:
    # Runs anywhere: torch's answer for a pre-Ampere GPU (bf16 only if emulation counts), then
    # for an Ampere or newer one.
    cuda = torch.device("cuda")
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert resolve_precision("auto", cuda) == "fp32"
    assert resolve_precision("bf16", cuda) == "fp32"  # and training says so (precision_note)
    assert "this GPU has no native bf16" in (precision_note("bf16", "fp32", cuda) or "")
    assert resolve_precision("fp16", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) == resolve_precision("bf16", cuda) == "bf16"


@pytest.mark.parametrize("device", DEVICES)
def test_adamw_on_the_device_matches_plain_adamw_on_the_cpu(device: str) -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    model = copy.deepcopy(reference).to(device)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg, torch.device(device))
    assert optimizer.defaults.get("fused")  # torch's fused kernel, on the CPU too
    matrices = [p for p in reference.parameters() if p.dim() >= 2]
    vectors = [p for p in reference.parameters() if p.dim() < 2]
    plain = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.98), eps=1e-8, foreach=False,
    )  # fmt: skip
    for _ in range(3):
        x = torch.randn(8, 6)
        for net, opt, where in ((model, optimizer, device), (reference, plain, "cpu")):
            opt.zero_grad(set_to_none=True)
            net(x.to(where)).square().sum().backward()
            opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.detach().cpu(), theirs.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_trained_on_the_device_translates_on_a_cpu_only_machine(
    device: str, tiny_prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(gpu_config(device, "train.max_steps=4"), tiny_prepared, run)
    src = source_lines(tiny_prepared)
    on_cpu = translate_without_cuda(run, src, tmp_path / "cpu.txt", "--beam", "2")
    on_device = translate(run, src, tmp_path / "device.txt", device, "--beam", "2")
    assert len(on_cpu) == len(on_device) == len(src.read_text().splitlines()) == 40
    # Weights read back on the CPU are the ones trained (saved from the device).
    for name, tensor in ckpt.load_checkpoint(run / "last.pt")["model"].items():
        assert tensor.device.type == "cpu" and torch.isfinite(tensor).all(), name


# The run to kill: train() with Tensor.backward wrapped so that the backward of update `n` (one
# micro-batch an update; validation runs none) blocks after announcing itself, holding updates
# the last checkpoint has not seen. It leans on no name inside the training loop.
KILLED_RUN = """
import sys, time
import torch
from nmt.config import RunConfig, load_config
from nmt.training.loop import train
real_backward, calls = torch.Tensor.backward, [0]
def backward_that_stalls(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[4]):
        print("stalled in update", calls[0], file=sys.stderr, flush=True)
        while True:
            time.sleep(1)
    return real_backward(self, *args, **kwargs)
torch.Tensor.backward = backward_that_stalls
train(load_config(RunConfig, sys.argv[1]), sys.argv[2], sys.argv[3])
"""


def kill_in_update(config: Path, data: Path, run: Path, update: int) -> None:
    """Run KILLED_RUN until it stalls in `update`, then kill -9 it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-c", KILLED_RUN, str(config), str(data), str(run), str(update)]
    kill_when_it_says(argv, "stalled", timeout=240, env=env)


@pytest.mark.parametrize("device", DEVICES)
def test_resume_after_kill_9_on_the_device_equals_the_uninterrupted_run(
    device: str, tiny_prepared: Path, tmp_path: Path
) -> None:
    # 12 updates of ~9 batches an epoch: the kill falls inside epoch 0 and the resumed run
    # crosses into epoch 1. Dropout is on, so the device's RNG state must come back too.
    overrides = ("train.max_steps=12", "train.batch_tokens=800", "train.save_every=4")
    straight = tmp_path / "straight"
    train(gpu_config(device, *overrides), tiny_prepared, straight)

    killed = tmp_path / "killed"
    config = gpu_yaml(tmp_path / "tiny.yaml", device, *overrides)
    kill_in_update(config, tiny_prepared, killed, 7)
    assert ckpt.load_checkpoint(killed / "last.pt")["step"] == 4

    result = CliRunner().invoke(app, ["train", "--resume", str(killed)])
    assert result.exit_code == 0, result.output
    assert "resuming at update 4" in result.output

    a = ckpt.load_checkpoint(straight / "last.pt")
    b = ckpt.load_checkpoint(killed / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key in ("step", "epoch", "batches_done", "tgt_tokens", "schedule"):
        assert a["train_state"][key] == b["train_state"][key], key
    assert a["train_state"]["epoch"] == 1
    assert [(r["step"], r["loss"]) for r in rows(straight, "train")] == [
        (r["step"], r["loss"]) for r in rows(killed, "train")
    ]
