"""`nmt train` (a new run, a resumed one, a fine-tuning run) and `nmt average`: every setting and
folder a user can get wrong is checked here, before any rank of a torchrun job writes a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmt import checkpoint as ckpt
from nmt.checkpoint import guard_outputs
from nmt.config import (
    RunConfig,
    from_dict,
    load_config,
    load_yaml,
    merge,
    parse_overrides,
    replace,
    resume_conflicts,
    to_dict,
)
from nmt.data.store import load_prepared
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.io import Input, Output, sha256_file
from nmt.outputs import log_stderr
from nmt.training import checkpoint as saving
from nmt.training import finetune
from nmt.training.loop import train as run_training
from nmt.training.run_folder import check_unlocked


def train(
    config: Path | None,
    data: Path | None,
    out: Path | None,
    overrides: list[str],
    resume: Path | None = None,
    init: Path | None = None,
) -> dict[str, Any]:
    """`nmt train`: a new run from CONFIG (+ `--set` overrides) on the prepared `data`, written to
    the run directory `out`; or, with `resume`, that run continued from its last.pt. With `init`
    (or `train.init` in CONFIG) the new run's weights start from that run or checkpoint
    (fine-tuning, nmt/training/finetune.py).

    Everything a user can get wrong is checked here, before any rank of a torchrun job writes a
    file: the config, the prepared directory, a run directory that already holds a run, and on
    resume the fields that may not change (listed with their old and new values) and the data hash.
    Returns the summary dict of `nmt.training.loop.train`.
    """
    if resume is not None:
        if init is not None:
            raise ConfigError("--init starts a new run and --resume continues one; give one")
        if config is not None:
            raise ConfigError(
                "--resume continues a run with its stored config; drop CONFIG and change "
                "resume-safe fields with --set (e.g. --set train.max_steps=...)"
            )
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise ConfigError("--resume RUN_DIR writes to RUN_DIR; drop --out")
        return _resume(Path(resume), data, overrides)
    if config is None and init is None:
        raise ConfigError("nmt train needs CONFIG.yaml (or --resume RUN_DIR, or --init RUN)")
    if data is None:
        raise ConfigError("nmt train CONFIG.yaml needs --data PREPARED_DIR (from `nmt prepare`)")
    if config is None and out is None:
        raise ConfigError("nmt train --init without CONFIG needs --out NEW_RUN_DIR")
    if init is None and config is not None:
        cfg = load_config(RunConfig, config, overrides)
        init = Path(cfg.train.init) if cfg.train.init else None  # a fine-tuning run's config
    run_dir = Path(out) if out is not None else Path("checkpoints") / f"{Path(str(config)).stem}"
    inputs = _data_input(data) + ([Input(Path(config), "CONFIG")] if config is not None else [])
    if init is not None:
        inputs += ckpt.run_inputs(init)
    guard_outputs([Output("--out", run_dir, "folder")], inputs, ConfigError)
    if init is not None:
        cfg, init_payload = _finetune_config(config, overrides, Path(init))
    prepared = load_prepared(data)  # a missing or broken prepared directory fails here
    if init is not None:
        finetune.check_vocabulary(init_payload, prepared, Path(cfg.train.init))
    _check_new_run_dir(run_dir)
    return run_training(cfg, data, run_dir)


def _resume(run_dir: Path, data: Path | None, overrides: list[str]) -> dict[str, Any]:
    """`nmt train --resume`: the stored run continued, once the settings that may not change
    mid-run and the prepared data are found unchanged."""
    check_unlocked(run_dir)  # another `nmt train` writing it: refused with its PID
    if not (run_dir / ckpt.LAST).is_file():
        raise CheckpointError(
            f"{run_dir}: nothing to resume (no {ckpt.LAST}); the run saved no checkpoint yet "
            "or this is not a run directory"
        )
    stored = ckpt.read_run_config(run_dir)
    requested = replace(stored, overrides)
    conflicts = resume_conflicts(stored, requested)
    if conflicts:
        old, new = to_dict(stored), to_dict(requested)
        changes = "; ".join(
            f"{name}: {_dotted(old, name)!r} -> {_dotted(new, name)!r}" for name in conflicts
        )
        raise ConfigError(
            f"--resume {run_dir}: these settings differ from the stored run and cannot change "
            f"mid-run: {changes}. Start a new run (with --out) to change them"
        )
    info = ckpt.read_data_info(run_dir)
    data_dir = Path(data) if data is not None else Path(info["path"])
    guard_outputs([Output("--resume", run_dir, "folder")], _data_input(data_dir), ConfigError)
    prepared = load_prepared(data_dir)
    if prepared.hash != info["hash"]:
        raise DataError(
            f"{data_dir}: prepared data differs from the data this run was trained on "
            f"(hash {prepared.hash[:12]}, run {info['hash'][:12]}); resume with the same data"
        )
    return run_training(requested, data_dir, run_dir, resume=True)


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run needs an absent or empty folder; what is there instead is named in the error."""
    if run_dir.is_dir():
        check_unlocked(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        hint = (
            f"continue it with `nmt train --resume {run_dir}`"
            if (run_dir / ckpt.LAST).is_file()
            else "a run killed before its first checkpoint: nothing to resume; remove it to start "
            "again"
            if all((run_dir / name).is_file() for name in (ckpt.CONFIG_FILE, ckpt.DATA_FILE))
            else "it is not empty"
        )
        raise ConfigError(f"{run_dir}: already exists ({hint}); choose another --out")


def _finetune_config(
    config: Path | None, overrides: list[str], init: Path
) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig of a fine-tuning run and the payload of its init checkpoint.

    The model section comes from CONFIG, or from the checkpoint when CONFIG has none; without
    CONFIG everything does (except the checkpoint's own init and freeze). `--set` applies on top,
    and train.init / train.init_sha256 record the checkpoint file. Raises ConfigError when the
    model section describes another architecture than the checkpoint's.
    """
    path, why = finetune.resolve_init(init)
    payload = ckpt.load_run_checkpoint(path)
    stored = ckpt.config_from_payload(payload, path)
    if config is not None:
        base = load_yaml(config)
        base.setdefault("model", to_dict(stored.model))
    else:
        base = to_dict(stored)
        for key in ("init", "init_sha256", "freeze"):
            base["train"].pop(key, None)
    sha = sha256_file(path)
    record = {"train": {"init": str(path.resolve()), "init_sha256": sha}}
    cfg = from_dict(RunConfig, merge(merge(base, parse_overrides(overrides)), record))
    finetune.check_architecture(stored.model, cfg.model, path)
    log_stderr(f"fine-tuning: weights from {why}, sha256 {sha[:12]}...")
    return cfg, payload


def _data_input(data: Path) -> list[Input]:
    """A prepared data folder as an input: read whole, so no output may lie inside it."""
    return [Input(Path(data), "the prepared data folder --data", tree=True)]


def _dotted(tree: dict[str, Any], name: str) -> Any:
    for part in name.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree


def average(run_dir: Path, last: int, out: Path | None) -> tuple[Path, list[int]]:
    """`nmt average`: the mean of the `last` newest periodic checkpoints of `run_dir`, written to
    `out` (default RUN_DIR/averaged.pt) beside the run's tokenizer files. Returns the file and
    the steps averaged."""
    if last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    target = Path(out) if out is not None else Path(run_dir) / ckpt.AVERAGED
    # averaged.pt is the one file of a run that `nmt average` writes (replacing only an average).
    skip = (ckpt.AVERAGED,)
    guard_outputs([Output("--out", target)], ckpt.run_inputs(run_dir, skip), ConfigError, skip)
    return saving.average_run(Path(run_dir), last, Path(out) if out is not None else None)
