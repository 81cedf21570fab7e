"""What a training run holds: the `Run` that set-up builds and that stays fixed, and the
`TrainState` that changes with every update and is saved as one unit; RNG states; resuming.

Everything a resumed run needs to repeat an unbroken one (step, epoch, position in the epoch,
optimizer, schedule, grad scaler, best score, RNG states of every rank) lives in `TrainState`,
saved inside each checkpoint (awslabs/sockeye's training state, one unit instead of several files).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from nmt import checkpoint as ckpt
from nmt.config import RunConfig
from nmt.errors import CheckpointError
from nmt.io import read_jsonl, write_jsonl
from nmt.training import checkpoint as saving
from nmt.training.distributed import DistContext, barrier, gather_objects
from nmt.training.schedule import LRSchedule

if TYPE_CHECKING:
    from nmt.training.console import MetricsLogger, Progress
    from nmt.training.feeding import Feed
    from nmt.training.validation import ValidSet


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs; saved as one unit.

    Counters are plain values; `optimizer`, `schedule`, `scaler` hold the state_dicts of those
    objects as captured at save time, and `rng` one dict of RNG states per rank.
    """

    step: int = 0  # optimizer updates done
    epoch: int = 0  # epoch the next batch comes from (0-based)
    batches_done: int = 0  # batches of `epoch` this rank has already consumed
    tgt_tokens: int = 0  # real target tokens trained on, all ranks together
    src_tokens: int = 0  # ... and source tokens (throughput is quoted as source + target)
    nan_steps: int = 0  # updates skipped because the loss or the gradients were not finite
    nan_streak: int = 0  # ... of them in a row, up to now
    overflow_steps: int = 0  # fp16 updates the grad scaler skipped (loss finite, grads overflowed)
    best_score: float | None = None  # best validation score so far (valid_metric)
    best_step: int = 0
    bad_validations: int = 0  # validations in a row without improvement (early stopping)
    train_seconds: float = 0.0  # time spent in updates, across resumes
    wall_seconds: float = 0.0  # wall-clock time of the run up to this state, across resumes
    world_size: int = 1
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] = field(default_factory=dict)
    rng: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies every optimizer tensor.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def attempts(self) -> int:
        """Updates tried so far: made, skipped as non-finite, or skipped by the fp16 scaler."""
        return self.step + self.nan_steps + self.overflow_steps


@dataclass
class Run:
    """What set-up builds and the loop and its helpers use; fixed for the run (the objects
    inside, such as the optimizer, change their own state)."""

    cfg: RunConfig
    dist: DistContext
    device: torch.device
    precision: str  # what training computes in: train.precision after its fallbacks
    autocast: Any  # a reusable autocast context (or a no-op for fp32)
    raw_model: nn.Module  # without compile / DDP wrappers: saved and validated
    model: nn.Module  # what the training step calls (TeacherForcing, maybe compiled / DDP)
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    feed: Feed  # this rank's training batches
    meta: dict[str, Any]  # the checkpoint fields that describe the run
    run_dir: Path
    valid: ValidSet | None
    console: Any
    wall_start: float  # time.monotonic() at which this run's wall clock read 0 (before resumes)
    started: float  # time.monotonic() when this process entered the training
    # Set once the run's start is on the console: metrics.jsonl and TensorBoard, the progress bar.
    logger: MetricsLogger = field(init=False)
    progress: Progress = field(init=False)
    # Seconds from `started` to the first update (data opened, batch plan read or built, model
    # built): where start-up time goes, for benchmarks.
    first_update_seconds: float | None = field(default=None, init=False)

    def tick(self, state: TrainState) -> None:
        """Bring the state's wall clock up to now (before it is logged or saved)."""
        state.wall_seconds = time.monotonic() - self.wall_start


# ---- RNG ----------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states of python, numpy, torch and this rank's GPU, as tensors and plain values
    (numpy's array becomes a tensor so the checkpoint stays loadable with weights_only)."""
    legacy: Any = np.random.get_state()  # ("MT19937", uint32 keys, pos, has_gauss, gauss)
    kind, keys, pos, has_gauss, gauss = legacy
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- saving and resuming ------------------------------------------------------------------------


def restore_train_state(
    payload: dict[str, Any],
    dist: DistContext,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    if "train_state" not in payload:
        raise CheckpointError("last.pt holds weights only (no training state); cannot resume")
    state = TrainState.from_dict(payload["train_state"])
    if "wall_seconds" not in payload["train_state"]:  # saved before runs kept their wall clock
        state.wall_seconds = state.train_seconds  # a lower bound
    if state.world_size != dist.world_size:
        raise CheckpointError(
            f"the run was trained with {state.world_size} process(es) and is resumed with "
            f"{dist.world_size}; resume with torchrun --nproc_per_node={state.world_size} so that "
            "the data order and RNG streams continue exactly"
        )
    optimizer.load_state_dict(state.optimizer)
    schedule.load_state_dict(state.schedule)
    if state.scaler:
        scaler.load_state_dict(state.scaler)
    return state


def save_training_checkpoint(run: Run, state: TrainState) -> None:
    """checkpoint_<step>.pt and last.pt with the full training state. Every rank takes part
    (each contributes its RNG state); rank 0 writes."""
    state.optimizer = run.optimizer.state_dict()
    state.schedule = run.schedule.state_dict()
    state.scaler = run.scaler.state_dict() if run.scaler.is_enabled() else {}
    state.rng = gather_objects(rng_state(run.device), run.dist)
    run.tick(state)
    if run.dist.is_main:
        payload = ckpt.training_payload(
            run.meta, state.step, run.raw_model.state_dict(), state.to_dict()
        )
        path = saving.checkpoint_path(run.run_dir, state.step)
        saving.save_checkpoint(path, payload)
        saving.copy_atomic(path, run.run_dir / ckpt.LAST)
        saving.prune_checkpoints(run.run_dir, run.cfg.train.keep_last)
    barrier(run.dist)


def drop_metrics_after(path: Path, step: int) -> None:
    """On resume, forget what the interrupted run logged after its last checkpoint. A record torn
    by a kill at the end is dropped too; any other damage stops the resume, leaving the file."""
    if not path.is_file():
        return
    try:
        rows = read_jsonl(path)
    except ValueError as exc:  # not JSON or not UTF-8, before the last line
        raise CheckpointError(
            f"{path}: damaged ({str(exc)[:120]}); repair it or move it aside to resume"
        ) from None
    if not all(isinstance(row, dict) for row in rows):
        raise CheckpointError(f"{path}: damaged (a record is not a JSON object); repair it")
    write_jsonl(path, [row for row in rows if row.get("step", 0) <= step])
