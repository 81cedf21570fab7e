"""Writing a run's checkpoints: atomic saves, the tokenizer copies, pruning and averaging.

What a run directory and a checkpoint hold, how a payload is built and how it is read is in
nmt/checkpoint.py; this module only moves files.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import (
    AVERAGED,
    averaged_payload,
    list_checkpoints,
    load_checkpoint,
    spm_file_names,
)
from nmt.errors import CheckpointError, ConfigError
from nmt.io import atomic_open, remove_stale_temps_in, sha256_file


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that `dst` is either its old content or the complete new one."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` with torch.save to a temp file beside `path`, fsync it and rename it over
    `path`. An exception or a kill part-way leaves the previous `path` untouched."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def copy_tokenizers(
    run_dir: Path, src_spm: str | Path, tgt_spm: str | Path, shared_vocab: bool
) -> None:
    """Copy the SentencePiece model(s) into `run_dir` (one file for a joint vocabulary)."""
    names = spm_file_names(shared_vocab)
    copy_atomic(src_spm, run_dir / names["src"])
    if not shared_vocab:
        copy_atomic(tgt_spm, run_dir / names["tgt"])


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint_{step}.pt"


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the `keep_last` newest periodic checkpoints."""
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Temp files of checkpoints left by a run killed while writing (`.last.pt.abc123xy.tmp`):
    they are never complete, so a resumed run removes them (nmt.io's rules: only our temp names,
    older than this process, not locked by a live writer)."""
    return remove_stale_temps_in(run_dir, r"(last|best|checkpoint_\d+)\.pt")


def average_checkpoints(paths: list[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the models in `paths` (Vaswani et al. 2017, sec. 6.1, averaged the
    last 5 or 20 checkpoints). Floating tensors are summed in float64 and cast back to their dtype;
    other tensors (integer buffers) are taken from the last checkpoint."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint(path)["model"]
        if reference and set(state) != set(reference):
            raise CheckpointError(f"{path}: holds different parameters from {paths[0]}")
        for name, tensor in state.items():
            if reference and tensor.shape != reference[name].shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, "
                    f"{paths[0]} has {tuple(reference[name].shape)}"
                )
            if tensor.is_floating_point():
                total[name] = total.get(name, 0) + tensor.double()
        reference = state
    return {
        name: (total[name] / len(paths)).to(tensor.dtype) if tensor.is_floating_point() else tensor
        for name, tensor in reference.items()
    }


def check_average_out(out: Path) -> None:
    """Refuse an `nmt average --out` that would replace anything but an earlier average."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give a file name, e.g. {out / AVERAGED}")
    if not out.exists() and not out.is_symlink():
        return
    try:
        earlier = load_checkpoint(out)
    except CheckpointError:
        earlier = {}
    if not (out.is_file() and not out.is_symlink() and "averaged_steps" in earlier):
        raise ConfigError(
            f"{out}: exists and is not a checkpoint written by `nmt average`, so it is not "
            "replaced; choose another --out"
        )


def average_run(run_dir: Path, last: int, out: Path | None = None) -> tuple[Path, list[int]]:
    """Average the `last` newest periodic checkpoints of `run_dir` into `out` (default
    RUN_DIR/averaged.pt), a weights-only checkpoint with the newest one's metadata. When `out`
    lies outside the run directory the tokenizer file(s) are copied beside it, so that
    `load_for_inference(out)` works. An existing `out` is replaced only when it is an earlier
    average; every check runs before anything is written. Returns `(out, averaged steps)`."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    out = out if out is not None else run_dir / AVERAGED
    check_average_out(out)
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"{run_dir}: no checkpoint_<step>.pt files to average (train.keep_last keeps them)"
        )
    chosen = found[-last:]
    steps = [step for step, _ in chosen]
    newest = load_checkpoint(chosen[-1][1])
    payload = averaged_payload(newest, average_checkpoints([path for _, path in chosen]), steps)
    missing = []
    for side in ("src", "tgt"):
        name = payload["spm"][side]["file"]
        target = out.parent / name
        if not target.exists():
            missing.append(name)
        elif sha256_file(target) != payload["spm"][side]["sha256"]:
            raise CheckpointError(
                f"{target}: a different SentencePiece model is already there; write the average "
                "into its own folder (or the run directory)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in missing:
        copy_atomic(run_dir / name, out.parent / name)
    save_checkpoint(out, payload)
    return out, steps
