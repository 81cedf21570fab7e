"""Learning curves from a run's metrics.jsonl: validation score and loss against updates and
against time, one line per run, so that a reader sees where training stops paying off.

Time is wall-clock minutes since the run began (`wall_seconds`, validation and saving included,
summed over resumes) when the rows carry it; rows of older runs only carry `train_seconds` (time
inside updates), and the axis then says so. A validation row takes the time of the training rows
around its update, interpolated linearly, unless it carries its own wall clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nmt.checkpoint import METRICS_FILE
from nmt.errors import DataError
from nmt.io import atomic_open, check_file, read_jsonl


@dataclass
class Curves:
    """One run's series. `train_*` per logged training row, `valid_*` per validation."""

    name: str
    clock: str  # "wall_seconds" or "train_seconds"
    train_steps: list[int] = field(default_factory=list)
    train_minutes: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    valid_steps: list[int] = field(default_factory=list)
    valid_minutes: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    valid_score: list[float] = field(default_factory=list)


def read_curves(run: Path, metric: str, wall: bool = True) -> Curves:
    """The series of `run` (a run folder or its metrics.jsonl); `metric` is the validation score
    to follow (bleu, chrf, loss, ...); `wall=False` keeps to `train_seconds` even when the rows
    have their wall clock (so that runs drawn together share one clock). A file without training
    rows, or without `metric` in its validation rows, is an error that names the file."""
    path, rows = _read_rows(run)
    return _build(path, rows, metric, wall)


def read_all(runs: Sequence[Path], metric: str) -> list[Curves]:
    """`read_curves` of every run, on one clock: wall-clock minutes if every run has them."""
    loaded = [_read_rows(run) for run in runs]
    wall = all(_has_wall(rows) for _, rows in loaded)
    return [_build(path, rows, metric, wall) for path, rows in loaded]


def _read_rows(run: Path) -> tuple[Path, list[dict]]:
    """The metrics file of `run` and its records."""
    path = run / METRICS_FILE if run.is_dir() else run
    check_file(path, DataError, "file not found (a run folder holds metrics.jsonl)")
    try:
        rows = read_jsonl(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a metrics file ({exc})") from None
    return path, [r for r in rows if isinstance(r, dict)]


def _of_kind(rows: Sequence[dict], kind: str) -> list[dict]:
    return [r for r in rows if r.get("kind") == kind]


def _has_wall(rows: Sequence[dict]) -> bool:
    return all("wall_seconds" in r for r in _of_kind(rows, "train"))


def _build(path: Path, rows: Sequence[dict], metric: str, wall: bool) -> Curves:
    train, valid = _of_kind(rows, "train"), _of_kind(rows, "valid")
    if not train:
        raise DataError(f"{path}: no training rows yet")
    clock = "wall_seconds" if wall and _has_wall(rows) else "train_seconds"
    name = path.parent.name if path.name == METRICS_FILE else path.stem
    curves = Curves(name, clock)
    try:
        for r in _last_of_each_step(train):
            curves.train_steps.append(int(r["step"]))
            curves.train_minutes.append(float(r[clock]) / 60)
            curves.train_loss.append(float(r["loss"]))
        valid = _last_of_each_step(valid)
        for r in valid:
            if metric not in r:
                raise DataError(
                    f"{path}: validation rows have no {metric!r}; pick another --metric"
                )
            curves.valid_steps.append(int(r["step"]))
            curves.valid_loss.append(float(r["loss"]))
            curves.valid_score.append(float(r[metric]))
        timed = clock == "wall_seconds" and all(clock in r for r in valid)
        curves.valid_minutes = (
            [float(r[clock]) / 60 for r in valid]
            if timed
            else minutes_at(curves.valid_steps, curves.train_steps, curves.train_minutes)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: a row lacks a number it should have ({exc})") from None
    return curves


def _last_of_each_step(rows: Sequence[dict]) -> list[dict]:
    """Rows by step, the last of equal steps kept (a resumed run logs its resumed steps again),
    in step order."""
    by_step = {int(r.get("step", 0)): r for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def minutes_at(
    steps: Sequence[int], known_steps: Sequence[int], known: Sequence[float]
) -> list[float]:
    """Time at each of `steps`, interpolated between the (step, minutes) points known, from 0 at
    step 0; beyond the last known step, at the run's average rate up to it."""
    xs = np.array([0, *known_steps], dtype=np.float64)
    ys = np.array([0.0, *known], dtype=np.float64)
    out = np.interp(np.asarray(steps, dtype=np.float64), xs, ys)
    if len(xs) > 1 and xs[-1] > 0:
        rate = ys[-1] / xs[-1]
        beyond = np.asarray(steps, dtype=np.float64) > xs[-1]
        out[beyond] = np.asarray(steps, dtype=np.float64)[beyond] * rate
    return out.tolist()


def plot_curves(runs: Sequence[Curves], out: Path, metric: str) -> Path:
    """A 2 x 2 PNG: validation `metric` and loss (training and validation), against time and
    against updates; one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    wall = all(c.clock == "wall_seconds" for c in runs)
    time_label = "wall-clock minutes" if wall else "minutes inside updates (validation excluded)"
    for n, c in enumerate(runs):
        colour = f"C{n % 10}"
        for col, (train_x, valid_x) in enumerate(
            ((c.train_minutes, c.valid_minutes), (c.train_steps, c.valid_steps))
        ):
            axes[0, col].plot(valid_x, c.valid_score, "o-", color=colour, ms=3, label=c.name)
            axes[1, col].plot(train_x, c.train_loss, "-", color=colour, lw=1, alpha=0.6,
                              label=f"{c.name} train")  # fmt: skip
            axes[1, col].plot(valid_x, c.valid_loss, "o--", color=colour, ms=3,
                              label=f"{c.name} valid")  # fmt: skip
    axes[0, 0].set_ylabel(f"validation {metric}")
    axes[1, 0].set_ylabel("loss (label-smoothed)")
    axes[1, 0].set_xlabel(time_label)
    axes[1, 1].set_xlabel("updates")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=7)
    axes[1, 1].legend(fontsize=6, ncol=2 if len(runs) > 3 else 1)
    fig.tight_layout()
    with atomic_open(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)
    return out


__all__ = ["Curves", "minutes_at", "plot_curves", "read_all", "read_curves"]
