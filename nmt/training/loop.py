"""The training loop: `train()` reads top to bottom, in the shape of nanoGPT's `train.py`.

Each update: set the learning rate, take `update_freq` token-budget batches (per rank), run forward
under autocast and backward with the loss normalised by the target tokens of the *whole* update
(every micro-batch on every rank), clip, step, log; validate and checkpoint on schedule; stop on
`max_steps`, `max_epochs`, `max_minutes`, early stopping, SIGINT / SIGTERM (after saving; see
nmt/training/signals.py), or too many non-finite losses in a row.

Everything a resumed run needs to repeat an unbroken one (step, epoch, position in the epoch,
optimizer, schedule, grad scaler, best score, RNG states of every rank) lives in one `TrainState`,
saved as one unit inside each checkpoint. On CPU with `train.deterministic` a run killed at any
moment and resumed from `last.pt` reaches bitwise the same parameters as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmt import __version__
from nmt import checkpoint as ckpt
from nmt.config import RunConfig, dump_yaml, to_dict
from nmt.data.batching import Batch, TokenBatchSampler, collate
from nmt.data.spm import Tokenizer
from nmt.data.store import ALIGN_COLUMN, PreparedData, load_prepared, split_lengths
from nmt.errors import CheckpointError, ConfigError, DataError, NmtError, Stopped
from nmt.io import append_jsonl, read_jsonl, write_json, write_jsonl, write_text
from nmt.models import build_model, check_model_fits, count_parameters
from nmt.models.row_buckets import bucket_linear_rows
from nmt.training import checkpoint as saving
from nmt.training import finetune
from nmt.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    shutdown,
)
from nmt.training.loss import check_alignments, label_smoothed_nll, training_loss
from nmt.training.run_folder import RunFolder
from nmt.training.schedule import LRSchedule, build_optimizer, set_lr
from nmt.training.signals import StopSignals


class TrainingError(NmtError):
    """The run cannot go on (e.g. the loss keeps being NaN); the last good checkpoint is kept."""


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


@dataclass(frozen=True)
class TrainDebug:
    """Fault injection for tests; the CLI never sets these."""

    # Update attempts (1-based, counting skipped ones) whose loss is replaced by NaN.
    nonfinite_at: frozenset[int] = frozenset()
    # Block forever in the middle of update `stall_at` (after its first backward), so that a test
    # can `kill -9` a run that holds unsaved progress. 0: never.
    stall_at: int = 0


def train(
    cfg: RunConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    debug: TrainDebug | None = None,
) -> dict[str, Any]:
    """Train `cfg.model` on the prepared data in `data_dir`, writing the run directory `run_dir`.

    With `resume`, continue the run in `run_dir` from its last.pt (the caller has checked that
    `cfg` differs from the stored config only in resume-safe fields). Under torchrun every rank
    calls this; only rank 0 writes. Returns the final summary (also printed and logged).
    Raises TrainingError when too many updates in a row have a non-finite loss.

    Rank 0 locks the run directory for the whole run (CheckpointError naming the holder's PID when
    another process has it). A fresh run creates it only once the model and optimizer are built,
    and a fresh run that fails before saving any checkpoint removes what it wrote. SIGINT and
    SIGTERM stop after the current update with last.pt saved: `Stopped` (exit 130 / 143).
    """
    with StopSignals() as stop, RunFolder(Path(run_dir), resume) as folder:
        return _train(cfg, data_dir, folder, stop, resume, debug or TrainDebug())


def _train(
    cfg: RunConfig,
    data_dir: str | Path,
    folder: RunFolder,
    stop: StopSignals,
    resume: bool,
    debug: TrainDebug,
) -> dict[str, Any]:
    tc = cfg.train
    run_dir = folder.path
    start_time = time.monotonic()

    # -- where and how to compute --------------------------------------------------------------
    device_type = resolve_device_type(tc.device)
    dist = init_distributed(device_type)
    device = torch.device("cuda", dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    precision = resolve_precision(tc.precision, device)
    configure_torch(cfg, device)
    console = make_console(dist)

    # -- data ------------------------------------------------------------------------------------
    data = load_prepared(data_dir)
    train_split, too_long = keep_trainable(data.split("train"), cfg.model.max_positions)
    train_src = IdColumn(train_split, "src_ids")
    train_tgt = IdColumn(train_split, "tgt_ids")
    guided = check_alignments(train_split, tc, data_dir)  # train.guided_alignment: stored links
    train_align = IdColumn(train_split, ALIGN_COLUMN) if guided else None
    sampler = TokenBatchSampler(
        train_src.lengths(),
        train_tgt.lengths(),
        tc.batch_tokens,
        shuffle=True,
        seed=tc.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )

    payload = ckpt.load_checkpoint(run_dir / ckpt.LAST) if resume else None

    # -- model, optimizer, schedule, scaler --------------------------------------------------------
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    check_model_fits(cfg.model, data.src_vocab_size, data.tgt_vocab_size, device)
    model = build_model(cfg.model, data.src_vocab_size, data.tgt_vocab_size, data.shared_vocab)
    if payload is not None:
        ckpt.load_model_state(model, payload["model"], run_dir / ckpt.LAST)
    elif tc.init:
        finetune.load_init_weights(model, tc)  # fine-tuning: the weights only, all else fresh
    frozen = finetune.freeze(model, tc.freeze)  # before the optimizer, which skips frozen ones
    model.to(device)
    if device.type == "cpu" and precision == "bf16":
        bucket_linear_rows(model)  # oneDNN builds each bf16 matmul shape once (row_buckets.py)
    optimizer = build_optimizer(model, tc, device)
    schedule = LRSchedule(tc, model_width(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    state = TrainState(world_size=dist.world_size)
    if payload is not None:
        state = restore_train_state(payload, dist, optimizer, schedule, scaler)

    # -- run directory: rank 0 locks and writes it; everyone waits until it exists ---------------
    # Only now, with the model and optimizer built: a bad setting found above leaves no folder.
    folder.claim(dist.is_main)
    if dist.is_main:
        if payload is not None:
            saving.remove_stale_temp_files(run_dir)
            drop_metrics_after(run_dir / ckpt.METRICS_FILE, payload["step"])
        else:
            start_run_dir(run_dir, data)
        write_text(run_dir / ckpt.CONFIG_FILE, dump_yaml(cfg))
    barrier(dist)
    # The tokenizer copies in the run directory, checked against the hashes recorded at the start.
    spm_entry = payload["spm"] if payload else read_spm_entry(run_dir, data.shared_vocab)
    meta = checkpoint_metadata(cfg, data, spm_entry)
    _, tgt_tok = ckpt.load_tokenizers(meta, run_dir)
    valid = load_valid_set(data, tc.valid_max_sentences, tgt_tok, cfg.model.max_positions)

    raw_model = model  # what checkpoints and validation use (no compile / DDP wrappers)
    if tc.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if dist.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # -- RNG: each rank its own dropout stream; a resumed run takes back the saved ones ------------
    if payload is not None:
        set_rng_state(state.rng[dist.rank], device)
    else:
        seed_everything(tc.seed + 1000 * dist.rank)

    if dist.is_main:
        console.print(
            f"nmt {__version__}: {cfg.model.arch} with {count_parameters(raw_model):,} parameters "
            f"on {device} ({precision}, {torch.get_num_threads()} threads"
            f"{', compiled' if tc.compile else ''}), world size {dist.world_size}; "
            f"{len(train_src):,} training pairs, {len(valid) if valid else 0:,} validation pairs"
            + (f"; resuming at update {state.step}" if resume else "")
        )
        note = precision_note(tc.precision, precision, device)
        if note:
            console.print(note)
        if too_long or (valid and valid.truncated):
            console.print(length_note(cfg, too_long, valid))
        if tc.init:
            console.print(
                f"fine-tuning from {tc.init} (sha256 {tc.init_sha256[:12]}...)"
                + (f"; frozen: {', '.join(tc.freeze)} ({frozen:,} parameters)" if tc.freeze else "")
            )
    run = Run(
        cfg=cfg,
        dist=dist,
        device=device,
        precision=precision,
        autocast=make_autocast(device, precision),
        raw_model=raw_model,
        meta=meta,
        run_dir=run_dir,
        valid=valid,
        logger=MetricsLogger(run_dir, dist.is_main),
        progress=Progress(dist.is_main, tc.max_steps, state.step, console),
        wall_start=start_time - state.wall_seconds,
    )
    if tc.init and payload is None:  # the first metrics line says where the weights came from
        run.logger.log({"kind": "init", "step": 0, "init": tc.init,
                        "init_sha256": tc.init_sha256, "freeze": list(tc.freeze)})  # fmt: skip

    # -- the loop ----------------------------------------------------------------------------------
    epoch_batches: dict[int, list[list[int]]] = {}
    window = Window()  # sums since the last log line
    last_valid_step = last_save_step = state.step if resume else -1
    stop_reason = ""
    stopped = False  # by SIGINT / SIGTERM on some rank
    attempts = state.step + state.nan_steps + state.overflow_steps
    model.train()
    try:
        while True:
            if state.step >= tc.max_steps:
                stop_reason = f"reached train.max_steps={tc.max_steps}"
            elif tc.max_epochs and state.epoch >= tc.max_epochs:
                stop_reason = f"reached train.max_epochs={tc.max_epochs}"
            elif tc.patience and state.bad_validations >= tc.patience:
                stop_reason = f"early stopping: {tc.patience} validations without improvement"
            if stop_reason:
                break
            update_start = time.monotonic()
            # The budget is the run's, across resumes, as max_steps counts every update.
            out_of_time = (
                tc.max_minutes > 0 and update_start - run.wall_start >= tc.max_minutes * 60
            )

            # This rank's micro-batches of the next update. The data position is committed only
            # after the update, so a checkpoint never points into the middle of one.
            update, next_position = take_batches(sampler, epoch_batches, state, tc.update_freq)
            batches = [make_batch(train_src, train_tgt, indices, train_align) for indices in update]
            tgt_counts = [b.num_tgt_tokens for b in batches]  # counted on the CPU: no device sync
            src_counts = [b.num_src_tokens for b in batches]
            # One collective per update: the target tokens of all ranks (for the loss
            # normalisation), whether any rank's clock has run out (clocks differ) and whether any
            # rank got SIGINT / SIGTERM (so that all stop after the same update).
            local = torch.tensor(
                [sum(tgt_counts), out_of_time, stop.signum], dtype=torch.float64, device=device
            )
            update_tokens, ranks_out_of_time, ranks_stopping = all_reduce_sum(local, dist).tolist()
            if ranks_stopping > 0:
                stopped = True
                stop_reason = f"stopped by {stop.name}" if stop.signum else "stopped by a signal"
                break
            if ranks_out_of_time > 0:
                stop_reason = f"train.max_minutes={tc.max_minutes:g} ran out"
                break

            # Learning rate for this update, from the schedule (warmup, decay, plateau cuts).
            lr = schedule.lr_at(state.step + 1)
            set_lr(optimizer, lr)
            attempts += 1

            # Forward/backward over the micro-batches. DDP averages gradients over ranks, so each
            # loss is scaled by world_size / (target tokens of the whole update): the result is
            # the gradient of the per-token loss over everything, however it was split.
            loss_scale = dist.world_size / max(1.0, update_tokens)
            sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, nll
            for i, batch in enumerate(batches):
                batch = to_device(batch, device)
                # Gradients are all-reduced only after the last micro-batch of the update.
                is_last = i == len(batches) - 1
                sync = NO_OP if is_last or not dist.is_distributed else ddp_no_sync(model)
                with sync:
                    with run.autocast:
                        out = model(batch.src_ids, batch.src_mask, batch.tgt_in_ids, guided)
                    loss, nll = training_loss(out, batch, tc)
                    if attempts in debug.nonfinite_at:
                        loss = loss * float("nan")
                    scaler.scale(loss * loss_scale).backward()
                sums[0] += loss.detach()
                sums[1] += nll
                if attempts == debug.stall_at:
                    stall(attempts)
            totals = torch.cat([sums, sums.new_tensor([sum(tgt_counts), sum(src_counts)])])
            loss_sum, nll_sum, tgt_tokens, src_tokens = all_reduce_sum(totals, dist).tolist()

            # Clip (after unscaling fp16 gradients), then step unless something is not finite.
            scaler.unscale_(optimizer)
            max_norm = tc.clip_norm if tc.clip_norm > 0 else float("inf")
            grad_norm = float(nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm))
            finite = math.isfinite(loss_sum) and (scaler.is_enabled() or math.isfinite(grad_norm))
            state.batches_done, state.epoch = next_position
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                scaler.update()  # a non-finite loss also lowers an fp16 loss scale
                state.nan_steps += 1
                state.nan_streak += 1
                run.logger.log({"kind": "nan", "step": state.step, "attempt": attempts, "lr": lr})
                run.progress.note(
                    f"update {state.step + 1}: non-finite loss or gradients, update skipped "
                    f"({state.nan_streak} in a row, {state.nan_steps} in all)"
                )
                if state.nan_streak >= tc.max_nan_steps:
                    raise TrainingError(nan_stop_message(state, run_dir, last_save_step))
                continue
            scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scaler.is_enabled() and scaler.get_scale() < scale_before:
                state.overflow_steps += 1  # fp16 overflow: the scaler skipped the step
                continue
            state.step += 1
            state.nan_streak = 0
            state.tgt_tokens += int(tgt_tokens)
            state.src_tokens += int(src_tokens)
            seconds = time.monotonic() - update_start
            state.train_seconds += seconds
            window.add(loss_sum, nll_sum, tgt_tokens, src_tokens, seconds, grad_norm)
            run.progress.update(
                state.step, loss_sum / max(1.0, tgt_tokens), lr, window, run.wall_start, tc
            )

            # Log, validate and checkpoint on schedule.
            if state.step % tc.log_every == 0:
                run.tick(state)
                row = window.row(state, lr)
                run.logger.log(row)
                run.progress.log_line(row)
                window = Window()
            if state.step % tc.valid_every == 0:
                validate_or_save(run, state, schedule, optimizer, scaler)
                last_valid_step = state.step
            if state.step % tc.save_every == 0:
                save_training_checkpoint(run, state, optimizer, schedule, scaler)
                last_save_step = state.step

        # -- the end: save, validate, save again (unless just done) -------------------------------
        # Saving first means a failure in the final validation (a decoding bug, memory running
        # out) cannot lose the training since the last periodic save; the second save records
        # the validation's outcome (best score, patience) in last.pt.
        if last_save_step != state.step:
            save_training_checkpoint(run, state, optimizer, schedule, scaler)
            last_save_step = state.step
        # A stopped run skips it: the user asked to stop, and a resume repeats the unbroken run.
        if state.step > 0 and last_valid_step != state.step and not stopped:
            validate_or_save(run, state, schedule, optimizer, scaler)
            save_training_checkpoint(run, state, optimizer, schedule, scaler)
    finally:
        run.progress.stop()
        run.logger.close()

    run.tick(state)
    summary = make_summary(state, stop_reason, run)
    if dist.is_main:
        append_jsonl(run_dir / ckpt.METRICS_FILE, summary)
        print_summary(console, summary)
    shutdown(dist)
    if stopped:
        # Every rank got the stop through the all-reduce; each exits with a signal's code.
        signum = stop.signum or signal.SIGTERM
        raise Stopped(
            f"stopped at update {state.step}; continue with: nmt train --resume {run_dir}", signum
        )
    return summary


NO_OP = contextlib.nullcontext()


def ddp_no_sync(model: nn.Module) -> Any:
    """DDP's context that skips the gradient all-reduce (for all but the last micro-batch)."""
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    return model.no_sync()


@dataclass
class Run:
    """What stays fixed during a run and the helpers below need."""

    cfg: RunConfig
    dist: DistContext
    device: torch.device
    precision: str  # what training computes in: train.precision after its fallbacks
    autocast: Any  # a reusable autocast context (or a no-op for fp32)
    raw_model: nn.Module  # without compile / DDP wrappers: saved and validated
    meta: dict[str, Any]  # the checkpoint fields that describe the run
    run_dir: Path
    valid: ValidSet | None
    logger: MetricsLogger
    progress: Progress
    wall_start: float  # time.monotonic() at which this run's wall clock read 0 (before resumes)

    def tick(self, state: TrainState) -> None:
        """Bring the state's wall clock up to now (before it is logged or saved)."""
        state.wall_seconds = time.monotonic() - self.wall_start


def stall(attempt: int) -> None:
    """TrainDebug.stall_at: announce, then wait to be killed."""
    print(f"debug: stalled in update attempt {attempt}", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


def nan_stop_message(state: TrainState, run_dir: Path, last_save_step: int) -> str:
    kept = (
        f"the last good checkpoint is {run_dir / ckpt.LAST} (update {last_save_step})"
        if last_save_step > 0
        else "no checkpoint had been saved yet"
    )
    return (
        f"{state.nan_streak} updates in a row (train.max_nan_steps) had a non-finite loss, the "
        f"last at update {state.step + 1}; stopping, {kept}. Try a lower train.lr, a longer "
        "train.warmup_steps, train.clip_norm > 0 or fp32"
    )


def make_summary(state: TrainState, stop_reason: str, run: Run) -> dict[str, Any]:
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
        "valid_metric": valid_metric_name(run.cfg),
        "precision": run.precision,
        "run_dir": str(run.run_dir),
        # Peak memory of this process's tensors on the GPU (None on the CPU), for benchmarks.
        "gpu_peak_mib": (
            round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1)
            if run.device.type == "cuda"
            else None
        ),
    }


# ---- set-up --------------------------------------------------------------------------------------


def resolve_device_type(name: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; asking for CUDA without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is visible; use auto or cpu")
    return name


def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision: `auto` is bf16 where the device computes bf16 natively (Ampere or
    newer GPUs; CPUs with AMX or AVX512-BF16) and fp32 elsewhere, the faster of the two on every
    such machine measured (bench/NOTES.md, lever 21); `bf16` falls back to fp32 where the device
    has no native bf16 (`precision_note` says so)."""
    native_bf16 = has_native_bf16(device)
    if precision == "auto":
        return "bf16" if native_bf16 else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and not native_bf16:
        return "fp32"
    return precision


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively, rather than emulated and slower than float32: Ampere or
    newer GPUs; CPUs with AVX512-BF16 or AMX (x86) or the BF16 extension (ARM)."""
    if device.type == "cuda":
        # Without `including_emulation=False` torch answers yes on pre-Ampere GPUs too.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if not hasattr(torch.cpu, "get_capabilities"):  # an older torch cannot tell: do as asked
        return True
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16"))


def precision_note(requested: str, resolved: str, device: torch.device) -> str | None:
    """The log line for a bf16 request that fell back to fp32; None when nothing changed."""
    if requested != "bf16" or resolved == "bf16":
        return None
    what = "GPU" if device.type == "cuda" else "CPU"
    return f"warning: train.precision bf16: this {what} has no native bf16, so training in float32"


def configure_torch(cfg: RunConfig, device: torch.device) -> None:
    """Threads, determinism and TF32, all decided by the config."""
    tc = cfg.train
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    if tc.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        # TF32 matmuls: ~10 bits of mantissa are plenty for training and much faster on Ampere+.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def make_autocast(device: torch.device, precision: str) -> Any:
    """A reusable autocast context: bf16/fp16 mixed precision, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_width(cfg: RunConfig) -> int:
    """d_model of the noam schedule: the Transformer's width, or the RNN's hidden size."""
    if cfg.model.arch == "transformer":
        return cfg.model.transformer.d_model
    return cfg.model.rnn.hidden_size


class IdColumn:
    """A split's token-id column as one flat int32 array plus offsets.

    Far more compact than a Python list of lists (which would take gigabytes for WMT-sized
    corpora) and as fast to index: item `i` is a numpy view of sentence `i`'s ids.
    """

    def __init__(self, split: Any, column: str) -> None:
        # The Arrow table of the split as it is seen (respecting any selection), as one chunk.
        array = split.with_format("arrow")[:].column(column).combine_chunks()
        self.offsets = array.offsets.to_numpy()
        self.values = array.values.to_numpy(zero_copy_only=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def make_batch(src: Any, tgt: Any, indices: list[int], links: Any = None) -> Batch:
    """The padded batch of sentences `indices` (on the CPU)."""
    pair_links = None if links is None else [links[i] for i in indices]
    return collate([src[i] for i in indices], [tgt[i] for i in indices], indices, pair_links)


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with the previous micro-batch's kernels.
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


VALID_SPLIT_NAMES = ("valid", "validation", "dev", "val")
# sacrebleu tokenizers for targets written without spaces between words (no extra packages).
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "ko": "char", "th": "char"}


@dataclass
class ValidSet:
    """The validation split, held in memory, and what scoring it needs."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    refs: list[str]  # reference texts, for BLEU
    tgt_tok: Tokenizer  # turns hypotheses back into text
    bleu_tokenize: str | None
    truncated: int = 0  # pairs cut to the model's max_positions

    def __len__(self) -> int:
        return len(self.src_ids)


def keep_trainable(split: Any, max_positions: int) -> tuple[Any, int]:
    """The training pairs whose source + EOS and BOS + target fit into `max_positions`, and how
    many were left out. `nmt prepare` filters by words, not knowing the model; this is the
    subword bound. The lengths come from the Arrow offsets, without reading the ids."""
    src_lens, tgt_lens = split_lengths(split)
    fits = (src_lens < max_positions) & (tgt_lens < max_positions)
    too_long = int(len(fits) - fits.sum())
    if too_long == len(fits):
        raise DataError(
            f"every training pair is longer than the model's {max_positions - 1} subwords "
            f"(model.{{rnn,transformer}}.max_positions = {max_positions}); raise max_positions"
        )
    return (split.select(np.flatnonzero(fits)) if too_long else split), too_long


def length_note(cfg: RunConfig, too_long: int, valid: ValidSet | None) -> str:
    """The start-of-run warning about pairs longer than the model takes."""
    limit = f"model.{cfg.model.arch}.max_positions={cfg.model.max_positions}"
    parts = []
    if too_long:
        parts.append(f"{too_long:,} training pairs longer than {limit} left out")
    if valid is not None and valid.truncated:
        parts.append(f"{valid.truncated:,} validation pairs cut to fit it")
    return "warning: " + "; ".join(parts) + " (lengths in subwords, with EOS / BOS)"


def load_valid_set(
    data: PreparedData, max_sentences: int, tgt_tok: Tokenizer, max_positions: int
) -> ValidSet | None:
    """The validation split (its first `max_sentences` pairs when > 0), or None without one.
    Sides longer than `max_positions` (with EOS / BOS) are cut and counted in `truncated`; the
    BLEU references stay whole."""
    name = next((n for n in VALID_SPLIT_NAMES if n in data.split_names), None)
    if name is None:
        return None
    split = data.split(name)
    if max_sentences:
        split = split.select(range(min(max_sentences, len(split))))
    limit = max_positions - 1
    src_ids, tgt_ids = list(split["src_ids"]), list(split["tgt_ids"])
    truncated = sum(len(s) > limit or len(t) > limit for s, t in zip(src_ids, tgt_ids, strict=True))
    if truncated:
        src_ids = [s[:limit] for s in src_ids]
        tgt_ids = [t[:limit] for t in tgt_ids]
    return ValidSet(
        src_ids=src_ids,
        tgt_ids=tgt_ids,
        refs=list(split["tgt"]),
        tgt_tok=tgt_tok,
        bleu_tokenize=BLEU_TOKENIZE.get(data.tgt_lang.split("-")[0].lower()),
        truncated=truncated,
    )


def start_run_dir(run_dir: Path, data: PreparedData) -> None:
    """Fresh run: the tokenizers copied in, the data reference written (config.yaml follows)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saving.copy_tokenizers(run_dir, data.src_spm_path, data.tgt_spm_path, data.shared_vocab)
    write_json(
        run_dir / ckpt.DATA_FILE,
        {
            "path": str(Path(data.path).resolve()),
            "hash": data.hash,
            "src_lang": data.src_lang,
            "tgt_lang": data.tgt_lang,
        },
    )


def read_spm_entry(run_dir: Path, shared_vocab: bool) -> dict[str, dict[str, str]]:
    names = ckpt.spm_file_names(shared_vocab)
    return {
        side: {"file": names[side], "sha256": ckpt.sha256_file(run_dir / names[side])}
        for side in ("src", "tgt")
    }


def checkpoint_metadata(
    cfg: RunConfig, data: PreparedData, spm_entry: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """The part of every checkpoint that describes the run rather than its weights."""
    return {
        "format_version": ckpt.FORMAT_VERSION,
        "nmt_version": __version__,
        "config": to_dict(cfg),
        "vocab": {
            "src_vocab_size": data.src_vocab_size,
            "tgt_vocab_size": data.tgt_vocab_size,
            "shared_vocab": data.shared_vocab,
            "src_lang": data.src_lang,
            "tgt_lang": data.tgt_lang,
        },
        "spm": spm_entry,
        "data": {"path": str(Path(data.path).resolve()), "hash": data.hash},
        "cleaning": data.manifest["config"],
    }


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


def take_batches(
    sampler: TokenBatchSampler,
    cache: dict[int, list[list[int]]],
    state: TrainState,
    count: int,
) -> tuple[list[list[int]], tuple[int, int]]:
    """The next `count` batches of this rank (crossing into the next epoch when one runs out) and
    the position `(batches_done, epoch)` after them. `state` itself is not changed."""
    epoch, done = state.epoch, state.batches_done
    out: list[list[int]] = []
    while len(out) < count:
        if epoch not in cache:
            cache.clear()  # one epoch's order at a time
            cache[epoch] = sampler.batches(epoch)
            if not cache[epoch]:
                raise DataError("the training split yields no batches; is it empty?")
        batches = cache[epoch]
        if done >= len(batches):
            epoch, done = epoch + 1, 0
            continue
        out.append(batches[done])
        done += 1
    return out, (done, epoch)


# ---- RNG and state -------------------------------------------------------------------------------


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


def save_training_checkpoint(
    run: Run,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    scaler: torch.amp.GradScaler,
) -> None:
    """checkpoint_<step>.pt and last.pt with the full training state. Every rank takes part
    (each contributes its RNG state); rank 0 writes."""
    state.optimizer = optimizer.state_dict()
    state.schedule = schedule.state_dict()
    state.scaler = scaler.state_dict() if scaler.is_enabled() else {}
    state.rng = gather_objects(rng_state(run.device), run.dist)
    run.tick(state)
    if run.dist.is_main:
        payload = {
            **run.meta,
            "step": state.step,
            "model": run.raw_model.state_dict(),
            "train_state": state.to_dict(),
        }
        path = saving.checkpoint_path(run.run_dir, state.step)
        saving.save_checkpoint(path, payload)
        saving.copy_atomic(path, run.run_dir / ckpt.LAST)
        saving.prune_checkpoints(run.run_dir, run.cfg.train.keep_last)
    barrier(run.dist)


# ---- validation ----------------------------------------------------------------------------------


def bleu_available() -> bool:
    """Whether the decoding and metrics modules exist (validation BLEU needs both)."""
    try:
        import nmt.decoding.beam  # noqa: F401
        import nmt.metrics  # noqa: F401
    except ImportError:
        return False
    return True


def valid_metric_name(cfg: RunConfig) -> str:
    """The metric that picks best.pt and drives early stopping and plateau: BLEU (higher is
    better) or the per-token validation NLL (lower is better)."""
    return "bleu" if cfg.train.valid_metric == "bleu" and bleu_available() else "nll"


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss, per-token NLL and perplexity by teacher forcing; with `valid_metric` bleu also BLEU
    and chrF of greedy (valid_beam 1) or beam decoding, scored with sacrebleu."""
    cfg, model, valid = run.cfg, run.raw_model, run.valid
    assert valid is not None
    was_training = model.training
    model.eval()
    sampler = TokenBatchSampler(
        [len(s) for s in valid.src_ids],
        [len(t) for t in valid.tgt_ids],
        cfg.train.batch_tokens,
        shuffle=False,
    )
    loss_sum = nll_sum = 0.0
    tokens = 0
    for indices in sampler.batches(0):
        batch = make_batch(valid.src_ids, valid.tgt_ids, indices)
        tokens += batch.num_tgt_tokens
        batch = to_device(batch, run.device)
        with run.autocast:
            logits = model(batch.src_ids, batch.src_mask, batch.tgt_in_ids)  # (B, T, V)
        loss, nll = label_smoothed_nll(logits, batch.tgt_out_ids, cfg.train.label_smoothing)
        loss_sum += float(loss)
        nll_sum += float(nll)
    tokens = max(tokens, 1)
    scores = {
        "loss": loss_sum / tokens,
        "nll": nll_sum / tokens,
        "ppl": math.exp(min(nll_sum / tokens, 100.0)),
    }
    if valid_metric_name(cfg) == "bleu":
        from nmt.decoding.beam import decode_corpus
        from nmt.metrics import corpus_scores

        decode_cfg = dataclasses.replace(
            cfg.decode, beam_size=cfg.train.valid_beam, nbest=1, sample=False
        )
        with run.autocast:
            hyps = decode_corpus(model, valid.src_ids, decode_cfg, run.device)
        texts = [valid.tgt_tok.decode(nbest[0].tokens) for nbest in hyps]
        result = corpus_scores(texts, [valid.refs], tokenize=valid.bleu_tokenize)
        scores["bleu"] = float(result["bleu"])
        scores["chrf"] = float(result["chrf"])
    model.train(was_training)
    return scores


def validate_or_save(
    run: Run,
    state: TrainState,
    schedule: LRSchedule,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    """`validate_and_track`; should validation itself fail (memory, a decoding bug), the training
    so far is saved to last.pt first and the run stops with one line saying so."""
    try:
        validate_and_track(run, state, schedule)
    except NmtError:
        raise
    except Exception as exc:
        if run.dist.is_distributed:
            raise  # the other ranks wait in a collective: a save needs them all
        save_training_checkpoint(run, state, optimizer, schedule, scaler)
        lines = str(exc).strip().splitlines()
        raise TrainingError(
            f"validation at update {state.step} failed ({type(exc).__name__}: "
            f"{lines[0][:160] if lines else ''}); the training is saved in "
            f"{run.run_dir / ckpt.LAST}: resume with `nmt train --resume {run.run_dir}` (a "
            "smaller train.valid_max_sentences or train.batch_tokens may help)"
        ) from exc


def validate_and_track(run: Run, state: TrainState, schedule: LRSchedule) -> None:
    """Validate once (rank 0), share the scores, and update best score, best.pt, the
    early-stopping count and the plateau schedule identically on every rank."""
    scores = validate(run) if run.dist.is_main and run.valid is not None else None
    scores = broadcast_object(scores, run.dist)
    if scores is None:
        return
    metric = valid_metric_name(run.cfg)
    higher_is_better = metric == "bleu"
    value = scores[metric]
    best = state.best_score
    improved = best is None or (value > best if higher_is_better else value < best)
    if improved:
        state.best_score, state.best_step, state.bad_validations = value, state.step, 0
        if run.dist.is_main:
            # best.pt holds the weights only: translate reads it, resume does not.
            payload = {**run.meta, "step": state.step, "model": run.raw_model.state_dict()}
            saving.save_checkpoint(run.run_dir / ckpt.BEST, payload)
    else:
        state.bad_validations += 1
    lr_cut = schedule.observe(value, higher_is_better)
    run.tick(state)
    row = {"kind": "valid", "step": state.step, **scores, "best": state.best_score,
           "wall_seconds": state.wall_seconds}  # fmt: skip
    run.logger.log(row | {"lr_cut": lr_cut})
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    run.progress.note(
        f"valid @ {state.step}: {shown}"
        + (
            " (best)"
            if improved
            else f" (best {metric} {state.best_score:.4g} @ {state.best_step})"
        )
        + (" - learning rate lowered" if lr_cut else "")
    )


# ---- logging -------------------------------------------------------------------------------------


@dataclass
class Window:
    """Sums over the updates since the last log line."""

    loss: float = 0.0
    nll: float = 0.0
    tgt_tokens: float = 0.0
    src_tokens: float = 0.0
    seconds: float = 0.0
    grad_norm: float = 0.0
    updates: int = 0

    def add(
        self, loss: float, nll: float, tgt: float, src: float, seconds: float, grad_norm: float
    ) -> None:
        self.loss += loss
        self.nll += nll
        self.tgt_tokens += tgt
        self.src_tokens += src
        self.seconds += seconds
        self.grad_norm += grad_norm
        self.updates += 1

    def row(self, state: TrainState, lr: float) -> dict[str, Any]:
        tokens, seconds = max(self.tgt_tokens, 1.0), max(self.seconds, 1e-9)
        return {
            "kind": "train",
            "step": state.step,
            "epoch": state.epoch,
            "loss": self.loss / tokens,
            "nll": self.nll / tokens,
            "ppl": math.exp(min(self.nll / tokens, 100.0)),
            "lr": lr,
            "grad_norm": self.grad_norm / max(self.updates, 1),
            "tgt_tokens_per_s": self.tgt_tokens / seconds,
            "tokens_per_s": (self.tgt_tokens + self.src_tokens) / seconds,
            "updates_per_min": 60 * self.updates / seconds,
            "train_seconds": state.train_seconds,
            "wall_seconds": state.wall_seconds,
        }


class MetricsLogger:
    """metrics.jsonl (every value) and TensorBoard events when tensorboard is installed; rank 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = run_dir / ckpt.METRICS_FILE
        self.enabled = enabled
        self.tensorboard: Any = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional

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
    """A rich progress bar: updates, loss, target tokens/s, learning rate, ETA (rank 0 only)."""

    def __init__(self, enabled: bool, total: int, done: int, console: Any) -> None:
        from rich import progress as rp

        self.enabled = enabled
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
            disable=not enabled,
        )
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss="-", speed="-", lr="-", eta="-"
        )
        self.start_step, self.start_time = done, time.monotonic()
        self.bar.start()

    def update(
        self, step: int, loss: float, lr: float, window: Window, run_start: float, tc: Any
    ) -> None:
        if not self.enabled:
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
        if self.enabled and not self.console.is_terminal:
            self.console.print(
                f"update {row['step']}: loss {row['loss']:.3f}, ppl {row['ppl']:.1f}, "
                f"lr {row['lr']:.2e}, |g| {row['grad_norm']:.2f}, {row['tgt_tokens_per_s']:,.0f} "
                f"tgt tok/s, {row['updates_per_min']:.1f} updates/min"
            )

    def stop(self) -> None:
        self.bar.stop()


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
