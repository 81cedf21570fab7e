"""What training shows and records: the console (start lines, a live progress bar or plain log
lines, the summary) and metrics.jsonl with TensorBoard events beside it. Rank 0 only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import __version__
from nmt import checkpoint as ckpt
from nmt.config import RunConfig, TrainConfig
from nmt.data.plan import BatchPlan
from nmt.io import append_jsonl
from nmt.models import count_parameters
from nmt.training.distributed import DistContext
from nmt.training.state import Run, TrainState


@dataclass
class Window:
    """Sums over the updates since the last log line. `align` (the guided-alignment loss before
    its weight) is logged only by runs that train with guided alignment."""

    guided: bool = False
    loss: float = 0.0
    nll: float = 0.0
    align: float = 0.0
    tgt_tokens: float = 0.0
    src_tokens: float = 0.0
    seconds: float = 0.0
    grad_norm: float = 0.0
    updates: int = 0

    def add(self, sums: UpdateSums, seconds: float, grad_norm: float) -> None:
        self.loss += sums.loss
        self.nll += sums.nll
        self.align += sums.align
        self.tgt_tokens += sums.tgt_tokens
        self.src_tokens += sums.src_tokens
        self.seconds += seconds
        self.grad_norm += grad_norm
        self.updates += 1

    def row(self, state: TrainState, lr: float) -> dict[str, Any]:
        tokens, seconds = max(self.tgt_tokens, 1.0), max(self.seconds, 1e-9)
        row: dict[str, Any] = {
            "kind": "train",
            "step": state.step,
            "epoch": state.epoch,
            "loss": self.loss / tokens,
            "nll": self.nll / tokens,
        }
        if self.guided:
            row["align_loss"] = self.align / tokens
        return row | {
            "ppl": math.exp(min(self.nll / tokens, 100.0)),
            "lr": lr,
            "grad_norm": self.grad_norm / max(self.updates, 1),
            "tgt_tokens_per_s": self.tgt_tokens / seconds,
            "tokens_per_s": (self.tgt_tokens + self.src_tokens) / seconds,
            "updates_per_min": 60 * self.updates / seconds,
            "train_seconds": state.train_seconds,
            "wall_seconds": state.wall_seconds,
        }


@dataclass(frozen=True)
class UpdateSums:
    """One update's sums over all micro-batches and ranks: the objective, the plain NLL, the
    guided-alignment loss before its weight (0 without), and the real tokens."""

    loss: float
    nll: float
    align: float
    tgt_tokens: float
    src_tokens: float


class MetricsLogger:
    """metrics.jsonl (every value) and TensorBoard events when tensorboard is installed; rank 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / ckpt.METRICS_FILE
        self.enabled = enabled
        self.tensorboard: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: nmt[tensorboard]

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def make_console(dist: DistContext) -> Any:
    from rich.console import Console

    return Console(quiet=not dist.is_main, highlight=False, soft_wrap=True)


class Progress:
    """What rank 0 shows while training: a live rich progress bar (updates, loss, target
    tokens/s, learning rate, ETA) on a terminal; on a file or pipe, plain log lines instead, so
    that a redirected log holds no bar."""

    def __init__(self, enabled: bool, total: int, done: int, console: Any) -> None:
        from rich import progress as rp

        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.console = console
        self.bar = rp.Progress(
            rp.TextColumn("[bold]train"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("loss {task.fields[loss]}"),
            rp.TextColumn("{task.fields[speed]} tok/s"),
            rp.TextColumn("lr {task.fields[lr]}"),
            rp.TextColumn("ETA {task.fields[eta]}"),
            console=console,
            disable=not self.live,
        )
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss="-", speed="-", lr="-", eta="-"
        )
        self.start_step, self.start_time = done, time.monotonic()
        self.bar.start()

    def update(
        self, step: int, loss: float, lr: float, window: Window, run_start: float, tc: TrainConfig
    ) -> None:
        if not self.live:
            return
        elapsed = time.monotonic() - self.start_time
        per_update = elapsed / max(step - self.start_step, 1)
        eta = (tc.max_steps - step) * per_update
        if tc.max_minutes > 0:
            eta = min(eta, tc.max_minutes * 60 - (time.monotonic() - run_start))
        speed = window.tgt_tokens / max(window.seconds, 1e-9)
        self.bar.update(
            self.task,
            completed=step,
            loss=f"{loss:.3f}",
            speed=f"{speed:,.0f}",
            lr=f"{lr:.2e}",
            eta=time.strftime("%H:%M:%S", time.gmtime(max(eta, 0))),
        )

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def log_line(self, row: dict[str, Any]) -> None:
        """A train log line, printed only when no live bar is shown (output to a file or pipe)."""
        if self.enabled and not self.live:
            align = f", align {row['align_loss']:.3f}" if "align_loss" in row else ""
            self.console.print(
                f"update {row['step']}: loss {row['loss']:.3f}{align}, ppl {row['ppl']:.1f}, "
                f"lr {row['lr']:.2e}, |g| {row['grad_norm']:.2f}, {row['tgt_tokens_per_s']:,.0f} "
                f"tgt tok/s, {row['updates_per_min']:.1f} updates/min"
            )

    def stop(self) -> None:
        self.bar.stop()


def announce(run: Run, state: TrainState, resume: bool, notes: list[str]) -> None:
    """The start of a run on the console: what trains where, on how much data; then `notes`
    (fallbacks, pairs left out, fine-tuning)."""
    tc = run.cfg.train
    if not run.dist.is_main:
        return
    valid = run.valid
    parameters = count_parameters(run.raw_model, trainable_only=False)  # frozen ones included
    run.console.print(
        f"nmt {__version__}: {run.cfg.model.arch} with {parameters:,} parameters on {run.device} "
        f"({run.precision}, {torch.get_num_threads()} threads"
        f"{', compiled' if tc.compile else ''}), world size {run.dist.world_size}; "
        f"{len(run.feed):,} training pairs, {len(valid) if valid else 0:,} validation pairs"
        + (f"; resuming at update {state.step}" if resume else "")
    )
    for note in notes:
        run.console.print(note)


def plan_note(plan: BatchPlan) -> str | None:
    """The line for a batch plan built by this run (a cached one is read in no time)."""
    if not plan.build_seconds:
        return None
    kept = f" and kept in {plan.folder} for later runs" if plan.writable else ""
    return f"batch plan of {plan.kept:,} pairs built in {plan.build_seconds:.1f} s{kept}"


def length_note(cfg: RunConfig, too_long: int, truncated: int) -> str | None:
    """The start-of-run warning about pairs longer than the model takes; None when none are."""
    limit = f"model.{cfg.model.arch}.max_positions={cfg.model.max_positions}"
    parts = []
    if too_long:
        parts.append(f"{too_long:,} training pairs longer than {limit} left out")
    if truncated:
        parts.append(f"{truncated:,} validation pairs cut to fit it")
    if not parts:
        return None
    return "warning: " + "; ".join(parts) + " (lengths in subwords, with EOS / BOS)"


def finetune_note(tc: TrainConfig, frozen: int) -> str | None:
    """Where a fine-tuning run's weights came from, and what it keeps fixed."""
    if not tc.init:
        return None
    return f"fine-tuning from {tc.init} (sha256 {tc.init_sha256[:12]}...)" + (
        f"; frozen: {', '.join(tc.freeze)} ({frozen:,} parameters)" if tc.freeze else ""
    )


def make_summary(state: TrainState, stop_reason: str, run: Run, metric: str) -> dict[str, Any]:
    seconds = max(state.train_seconds, 1e-9)
    return {
        "kind": "summary",
        "stop_reason": stop_reason,
        "step": state.step,
        "epoch": state.epoch,
        "tgt_tokens": state.tgt_tokens,
        "train_seconds": round(state.train_seconds, 1),
        "wall_seconds": round(state.wall_seconds, 1),
        "tgt_tokens_per_s": round(state.tgt_tokens / seconds, 1),
        "tokens_per_s": round((state.src_tokens + state.tgt_tokens) / seconds, 1),
        "updates_per_min": round(60 * state.step / seconds, 2),
        "nan_steps": state.nan_steps,
        "overflow_steps": state.overflow_steps,
        "best_score": state.best_score,
        "best_step": state.best_step,
        "valid_metric": metric,
        "precision": run.precision,
        "run_dir": str(run.run_dir),
        "first_update_seconds": (
            None if run.first_update_seconds is None else round(run.first_update_seconds, 2)
        ),
        # Peak memory of this process's tensors on the GPU (None on the CPU), for benchmarks.
        "gpu_peak_mib": (
            round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1)
            if run.device.type == "cuda"
            else None
        ),
    }


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    best = summary["best_score"]
    console.print(
        f"done: {summary['stop_reason']}. {summary['step']} updates, epoch {summary['epoch']}, "
        f"{summary['train_seconds']:.0f} s of training, {summary['tgt_tokens_per_s']:,.0f} target "
        f"tokens/s, {summary['updates_per_min']:.1f} updates/min, {summary['nan_steps']} skipped "
        "non-finite updates. "
        + (
            f"Best validation {summary['valid_metric']} {best:.4g} "
            f"at update {summary['best_step']}. "
            if best is not None
            else ""
        )
        + f"Run directory: {summary['run_dir']}"
    )
