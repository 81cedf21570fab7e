"""The training loop: `train()` reads top to bottom, in the shape of nanoGPT's `train.py`.

One call sets everything up (`set_up`); then each update sets the learning rate, takes
`update_freq` token-budget batches (per rank), runs forward under autocast and backward with the
loss normalised by the target tokens of the *whole* update (every micro-batch on every rank),
clips, steps and logs; validates and checkpoints on schedule; and stops on `max_steps`,
`max_epochs`, `max_minutes`, early stopping, SIGINT / SIGTERM (after saving; see
nmt/training/signals.py), or too many non-finite losses in a row.

The concerns around the loop have their own modules: the run and its saved state, RNG and resume
(state.py), data feeding (feeding.py), validation (validation.py), console and metrics
(console.py), device and precision (device.py). On CPU with `train.deterministic` a run killed at
any moment and resumed from `last.pt` reaches bitwise the same parameters as a run never
interrupted.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt import checkpoint as ckpt
from nmt.config import RunConfig, TrainConfig, dump_yaml, to_dict
from nmt.data.batching import Batch
from nmt.data.store import PreparedData, load_prepared
from nmt.errors import Stopped, TrainingError
from nmt.io import append_jsonl, write_json, write_text
from nmt.models import build_model, check_model_fits
from nmt.models.row_buckets import bucket_linear_rows
from nmt.training import checkpoint as saving
from nmt.training import finetune
from nmt.training.console import (
    MetricsLogger,
    Progress,
    UpdateSums,
    Window,
    announce,
    finetune_note,
    length_note,
    make_console,
    make_summary,
    plan_note,
    print_summary,
)
from nmt.training.device import (
    make_autocast,
    no_sync_unless,
    precision_note,
    set_up_compute,
    wrap_for_training,
)
from nmt.training.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    check_same_everywhere,
    lost_peer,
    lost_peer_message,
    shutdown,
)
from nmt.training.feeding import load_feed, to_device
from nmt.training.loss import training_loss
from nmt.training.run_folder import RunFolder
from nmt.training.schedule import LRSchedule, build_optimizer, set_lr
from nmt.training.signals import StopSignals
from nmt.training.state import (
    Run,
    TrainState,
    drop_metrics_after,
    restore_train_state,
    save_training_checkpoint,
    seed_everything,
    set_rng_state,
)
from nmt.training.validation import load_valid_set, valid_metric_name, validate_or_save


def train(
    cfg: RunConfig, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False
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
        try:
            return _train(cfg, data_dir, folder, stop, resume)
        except RuntimeError as exc:
            if not lost_peer(exc):
                raise
            raise TrainingError(lost_peer_message(exc, folder.path / ckpt.LAST)) from None


def _train(
    cfg: RunConfig, data_dir: str | Path, folder: RunFolder, stop: StopSignals, resume: bool
) -> dict[str, Any]:
    run, state = set_up(cfg, data_dir, folder, resume)
    tc = cfg.train
    window = Window(guided=run.feed.links is not None)  # sums since the last log line
    last_valid_step = last_save_step = state.step if resume else -1
    stop_reason = ""
    stopped = False  # by SIGINT / SIGTERM on some rank
    run.model.train()
    try:
        while True:
            stop_reason = limit_reached(state, tc)
            if stop_reason:
                break
            update_start = time.monotonic()
            # The budget is the run's, across resumes, as max_steps counts every update.
            minutes = (update_start - run.wall_start) / 60
            out_of_time = tc.max_minutes > 0 and minutes >= tc.max_minutes

            # This rank's micro-batches of the next update. The data position is committed only
            # after the update, so a checkpoint never points into the middle of one.
            batches, next_position = run.feed.next_update(state, tc.update_freq)
            # One collective per update: the target tokens of all ranks (for the loss
            # normalisation), whether any rank's clock has run out (clocks differ) and whether any
            # rank got SIGINT / SIGTERM (so that all stop after the same update).
            update_tokens, ranks_late, ranks_stopping = agree(run, batches, out_of_time, stop)
            if ranks_stopping > 0:
                stopped = True
                stop_reason = stop.reason
                break
            if ranks_late > 0:
                stop_reason = f"train.max_minutes={tc.max_minutes:g} ran out ({minutes:.1f} used)"
                break

            # Learning rate for this update, from the schedule (warmup, decay, plateau cuts).
            lr = run.schedule.lr_at(state.step + 1)
            set_lr(run.optimizer, lr)
            sums = forward_backward(run, batches, update_tokens)

            # Clip (after unscaling fp16 gradients), then step unless something is not finite.
            grad_norm = clip_gradients(run)
            state.batches_done, state.epoch = next_position
            if not is_finite(run, sums.loss, grad_norm):
                skip_update(run, state, lr, last_save_step)
                continue
            if not step_optimizer(run):
                state.overflow_steps += 1  # fp16 overflow: the scaler skipped the step
                continue
            seconds = time.monotonic() - update_start
            count_update(state, sums, seconds)
            if run.first_update_seconds is None:  # start-up cost of this process, for benchmarks
                run.first_update_seconds = time.monotonic() - run.started
            window.add(sums, seconds, grad_norm)
            run.progress.update(
                state.step, sums.loss / max(1.0, sums.tgt_tokens), lr, window, run.wall_start, tc
            )

            # Log, validate and checkpoint on schedule.
            if state.step % tc.log_every == 0:
                run.tick(state)
                row = window.row(state, lr)
                run.logger.log(row)
                run.progress.log_line(row)
                window = Window(guided=window.guided)
            if state.step % tc.valid_every == 0:
                validate_or_save(run, state)
                last_valid_step = state.step
            if state.step % tc.save_every == 0:
                save_training_checkpoint(run, state)
                last_save_step = state.step

        # The end: save, validate, save again (unless just done).
        save_and_validate(run, state, last_save_step, last_valid_step, stopped)
    finally:
        run.progress.stop()
        run.logger.close()
    return finish(run, state, stop_reason, stop if stopped else None)


# ---- set-up -------------------------------------------------------------------------------------


def set_up(
    cfg: RunConfig, data_dir: str | Path, folder: RunFolder, resume: bool
) -> tuple[Run, TrainState]:
    """Everything the loop needs, in the order that keeps a resumed run bitwise on course: the
    device, the data, the model, optimizer and schedule (with the saved state on resume), the
    run directory, validation data, the wrapped model, the RNG streams and the console."""
    tc = cfg.train
    start_time = time.monotonic()
    dist, device, precision = set_up_compute(cfg)
    console = make_console(dist)
    data = load_prepared(data_dir)
    check_same_everywhere(dist, **{"prepared data": data.hash, "settings": to_dict(cfg)})
    feed, guided = load_feed(data, cfg, dist, console.print)
    payload = ckpt.load_run_checkpoint(folder.path / ckpt.LAST) if resume else None

    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    check_model_fits(cfg.model, data.src_vocab_size, data.tgt_vocab_size, device)
    model = build_model(cfg.model, data.src_vocab_size, data.tgt_vocab_size, data.shared_vocab)
    if payload is not None:
        ckpt.load_model_state(model, payload["model"], folder.path / ckpt.LAST)
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

    meta = claim_run_dir(folder, cfg, data, payload, dist)
    _, tgt_tok = ckpt.load_tokenizers(meta, folder.path)
    valid = load_valid_set(data, tc.valid_max_sentences, tgt_tok, cfg.model.max_positions)
    wrapped = wrap_for_training(model, cfg, dist, device, guided)
    # RNG: each rank its own dropout stream; a resumed run takes back the saved ones.
    if payload is not None:
        set_rng_state(state.rng[dist.rank], device)
    else:
        seed_everything(tc.seed + 1000 * dist.rank)
    feed.start(state.epoch)  # the plan is ready (built if need be) before the first update

    run = Run(cfg, dist, device, precision, make_autocast(device, precision), model, wrapped,
              optimizer, schedule, scaler, feed, meta, folder.path, valid, console,
              start_time - state.wall_seconds, start_time)  # fmt: skip
    truncated = valid.truncated if valid else 0
    notes = [precision_note(tc.precision, precision, device),
             plan_note(feed.plan), length_note(cfg, feed.plan.too_long, truncated),
             finetune_note(tc, frozen)]  # fmt: skip
    announce(run, state, resume, [note for note in notes if note])
    run.logger = MetricsLogger(folder.path, dist.is_main)
    run.progress = Progress(dist.is_main, tc.max_steps, state.step, console)
    if tc.init and payload is None:  # the first metrics line says where the weights came from
        run.logger.log({"kind": "init", "step": 0, "init": tc.init,
                        "init_sha256": tc.init_sha256, "freeze": list(tc.freeze)})  # fmt: skip
    return run, state


def claim_run_dir(
    folder: RunFolder,
    cfg: RunConfig,
    data: PreparedData,
    payload: dict[str, Any] | None,
    dist: DistContext,
) -> dict[str, Any]:
    """Rank 0 locks and writes the run directory (everyone waits until it exists), only now that
    the model and optimizer are built: a bad setting found before leaves no folder. Returns the
    checkpoint metadata, with the tokenizer copies checked against the hashes recorded at the
    start."""
    folder.claim(dist.is_main)
    run_dir = folder.path
    if dist.is_main:
        if payload is not None:
            saving.remove_stale_temp_files(run_dir)
            drop_metrics_after(run_dir / ckpt.METRICS_FILE, payload["step"])
        else:
            start_run_dir(run_dir, data)
        write_text(run_dir / ckpt.CONFIG_FILE, dump_yaml(cfg))
    barrier(dist)
    spm = payload["spm"] if payload else ckpt.spm_entry(run_dir, data.shared_vocab)
    return ckpt.run_metadata(cfg, data, spm)


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


def model_width(cfg: RunConfig) -> int:
    """d_model of the noam schedule: the Transformer's width, or the RNN's hidden size."""
    if cfg.model.arch == "transformer":
        return cfg.model.transformer.d_model
    return cfg.model.rnn.hidden_size


# ---- one update ---------------------------------------------------------------------------------


def limit_reached(state: TrainState, tc: TrainConfig) -> str:
    """Why the run stops before its next update (max_steps, max_epochs, patience), or ""."""
    if state.step >= tc.max_steps:
        return f"reached train.max_steps={tc.max_steps}"
    if tc.max_epochs and state.epoch >= tc.max_epochs:
        return f"reached train.max_epochs={tc.max_epochs}"
    if tc.patience and state.bad_validations >= tc.patience:
        return f"early stopping: {tc.patience} validations without improvement"
    return ""


def agree(
    run: Run, batches: list[Batch], out_of_time: bool, stop: StopSignals
) -> tuple[float, float, float]:
    """Sums over the ranks of the update's target tokens, of the ranks out of time and of the
    ranks stopping; counted on the CPU, so no device sync."""
    tokens = sum(b.num_tgt_tokens for b in batches)
    local = torch.tensor([tokens, out_of_time, stop.signum], dtype=torch.float64, device=run.device)
    update_tokens, out, stopping = all_reduce_sum(local, run.dist).tolist()
    return update_tokens, out, stopping


def forward_backward(run: Run, batches: list[Batch], update_tokens: float) -> UpdateSums:
    """Forward and backward over the micro-batches of one update; the sums of all ranks.

    DDP averages gradients over ranks, so each loss is scaled by world_size / (target tokens of
    the whole update): the result is the gradient of the per-token loss over everything, however
    it was split."""
    loss_scale = run.dist.world_size / max(1.0, update_tokens)
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # loss, nll, alignment loss
    for i, batch in enumerate(batches):
        batch = to_device(batch, run.device)
        # Gradients are all-reduced only after the last micro-batch of the update.
        with no_sync_unless(i == len(batches) - 1, run.dist, run.model):
            with run.autocast:
                logits, attention = run.model(batch.src_ids, batch.src_mask, batch.tgt_in_ids)
            loss, nll, align = training_loss(logits, batch, run.cfg.train, attention)
            run.scaler.scale(loss * loss_scale).backward()
        sums[0] += loss.detach()
        sums[1] += nll
        if align is not None:
            sums[2] += align
    counts = [sum(b.num_tgt_tokens for b in batches), sum(b.num_src_tokens for b in batches)]
    totals = torch.cat([sums, sums.new_tensor(counts)])
    loss_sum, nll_sum, align_sum, tgt_tokens, src_tokens = all_reduce_sum(totals, run.dist).tolist()
    return UpdateSums(loss_sum, nll_sum, align_sum, tgt_tokens, src_tokens)


def clip_gradients(run: Run) -> float:
    """Unscale fp16 gradients and clip their norm to train.clip_norm (0: no clipping); returns
    the norm before clipping."""
    run.scaler.unscale_(run.optimizer)
    tc = run.cfg.train
    max_norm = tc.clip_norm if tc.clip_norm > 0 else float("inf")
    return float(nn.utils.clip_grad_norm_(run.raw_model.parameters(), max_norm))


def is_finite(run: Run, loss: float, grad_norm: float) -> bool:
    """Whether the update may step: a finite loss and finite gradients (with fp16 the grad
    scaler checks the gradients itself and skips the step on an overflow)."""
    return math.isfinite(loss) and (run.scaler.is_enabled() or math.isfinite(grad_norm))


def skip_update(run: Run, state: TrainState, lr: float, last_save_step: int) -> None:
    """An update whose loss or gradients are not finite is dropped; too many in a row stop the
    run with TrainingError."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.update()  # a non-finite loss also lowers an fp16 loss scale
    state.nan_steps += 1
    state.nan_streak += 1
    run.logger.log({"kind": "nan", "step": state.step, "attempt": state.attempts, "lr": lr})
    run.progress.note(
        f"update {state.step + 1}: non-finite loss or gradients, update skipped "
        f"({state.nan_streak} in a row, {state.nan_steps} in all)"
    )
    if state.nan_streak >= run.cfg.train.max_nan_steps:
        raise TrainingError(nan_stop_message(state, run.run_dir, last_save_step))


def step_optimizer(run: Run) -> bool:
    """The optimizer step through the grad scaler; False when an fp16 scaler skipped it."""
    scale_before = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return not (run.scaler.is_enabled() and run.scaler.get_scale() < scale_before)


def count_update(state: TrainState, sums: UpdateSums, seconds: float) -> None:
    state.step += 1
    state.nan_streak = 0
    state.tgt_tokens += int(sums.tgt_tokens)
    state.src_tokens += int(sums.src_tokens)
    state.train_seconds += seconds


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


# ---- the end ------------------------------------------------------------------------------------


def save_and_validate(
    run: Run, state: TrainState, last_save_step: int, last_valid_step: int, stopped: bool
) -> None:
    """Save, validate, save again, each unless just done. Saving first means a failure in the
    final validation (a decoding bug, memory running out) cannot lose the training since the last
    periodic save; the second save records the validation's outcome (best score, patience) in
    last.pt. A stopped run skips the validation: the user asked to stop, and a resume repeats
    the unbroken run."""
    if last_save_step != state.step:
        save_training_checkpoint(run, state)
    if state.step > 0 and last_valid_step != state.step and not stopped:
        validate_or_save(run, state)
        save_training_checkpoint(run, state)


def finish(
    run: Run, state: TrainState, stop_reason: str, stopped: StopSignals | None
) -> dict[str, Any]:
    """The summary (logged and printed by rank 0); `Stopped` when a signal ended the run."""
    run.tick(state)
    summary = make_summary(state, stop_reason, run, valid_metric_name(run.cfg))
    if run.dist.is_main:
        append_jsonl(run.run_dir / ckpt.METRICS_FILE, summary)
        print_summary(run.console, summary)
    shutdown(run.dist)
    if stopped is not None:
        # Every rank got the stop through the all-reduce; each exits with a signal's code.
        signum = stopped.signum or signal.SIGTERM
        raise Stopped(
            f"stopped at update {state.step}; continue with: nmt train --resume {run.run_dir}",
            signum,
        )
    return summary
