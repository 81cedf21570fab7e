"""What a run directory and a checkpoint hold; saving, loading, upgrading and averaging them.

A run directory (`nmt train --out RUN_DIR`):

    config.yaml             the resolved RunConfig (what `--resume` compares against)
    data.json               the prepared directory it was trained on and that directory's hash
    spm.model               the SentencePiece model (joint vocabulary), or
    spm.src.model, spm.tgt.model   one per side
    last.pt                 the newest checkpoint, with the full training state (--resume reads it)
    best.pt                 the weights with the best validation score (what translate reads)
    checkpoint_<step>.pt    the `train.keep_last` most recent periodic checkpoints (`nmt average`)
    metrics.jsonl           every logged value, one JSON object per line

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(weights_only=True)`
reads it and no pickled code ever runs:

    format_version  int      bumped on every layout change; `_UPGRADES` migrates older ones
    nmt_version     str
    config          dict     RunConfig.to_dict()
    vocab           dict     src/tgt vocabulary sizes, shared_vocab, languages
    spm             dict     {"src": {"file", "sha256"}, "tgt": {...}}: tokenizer files beside it
    data            dict     {"path", "hash"} of the prepared data
    step            int      optimizer updates done
    model           dict     the model's state_dict
    train_state     dict     (last.pt and checkpoint_<step>.pt only) TrainState.to_dict()

Every file is written to a temp file in the same folder, fsynced and renamed into place, so a kill
at any moment leaves the previous good checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmt import __version__
from nmt.config import RunConfig, from_dict, load_yaml
from nmt.data.spm import Tokenizer
from nmt.errors import CheckpointError, NmtError
from nmt.io import atomic_open, read_json
from nmt.models import build_model

FORMAT_VERSION = 1

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
AVERAGED = "averaged.pt"
JOINT_SPM = "spm.model"
SRC_SPM = "spm.src.model"
TGT_SPM = "spm.tgt.model"
_PERIODIC = re.compile(r"^checkpoint_(\d+)\.pt$")

# format_version -> function turning a payload of that version into one of version + 1.
# A future layout change adds an entry here (and a tiny old checkpoint under tests/data/).
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


# ---- files ---------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_atomic(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that `dst` is either its old content or the complete new one."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` with torch.save to a temp file beside `path`, fsync it and rename it over
    `path`. An exception or a kill part-way leaves the previous `path` untouched."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with `weights_only=True` and upgrade it to FORMAT_VERSION.

    Raises CheckpointError when the file is missing, unreadable, not an nmt checkpoint, or from a
    newer format than this version of nmt understands.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle with code in it, a non-torch file ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path}: not an nmt checkpoint (no format_version / model inside)")
    return upgrade_payload(payload, path)


def upgrade_payload(payload: dict[str, Any], path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """Migrate an older checkpoint layout step by step to FORMAT_VERSION."""
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} is newer than this nmt {__version__} reads "
            f"(format {FORMAT_VERSION}); upgrade nmt"
        )
    while version < FORMAT_VERSION:
        if version not in _UPGRADES:
            raise CheckpointError(f"{path}: no upgrade from checkpoint format {version}")
        payload = _UPGRADES[version](payload)
        version += 1
        payload["format_version"] = version
    return payload


# ---- run directory -------------------------------------------------------------------------------


def spm_file_names(shared_vocab: bool) -> dict[str, str]:
    """File names of the tokenizer model(s) inside a run directory, by side."""
    if shared_vocab:
        return {"src": JOINT_SPM, "tgt": JOINT_SPM}
    return {"src": SRC_SPM, "tgt": TGT_SPM}


def copy_tokenizers(
    run_dir: Path, src_spm: str | Path, tgt_spm: str | Path, shared_vocab: bool
) -> dict[str, dict[str, str]]:
    """Copy the SentencePiece model(s) into `run_dir`; returns the `spm` entry of a checkpoint."""
    names = spm_file_names(shared_vocab)
    entry: dict[str, dict[str, str]] = {}
    for side, source in (("src", src_spm), ("tgt", tgt_spm)):
        target = run_dir / names[side]
        if side == "src" or not shared_vocab:
            copy_atomic(source, target)
        entry[side] = {"file": names[side], "sha256": sha256_file(target)}
    return entry


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint_{step}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The periodic checkpoints of a run, oldest first, as (step, path)."""
    found = []
    for path in Path(run_dir).glob("checkpoint_*.pt"):
        match = _PERIODIC.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the `keep_last` newest periodic checkpoints."""
    found = list_checkpoints(run_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Temp files left by a run killed while writing (`.last.pt.abc123.tmp`); they are never
    complete, so they are removed when the run resumes."""
    stale = [p for p in Path(run_dir).glob(".*.tmp") if p.is_file()]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig stored in a run directory's config.yaml."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    try:
        return from_dict(RunConfig, load_yaml(path))
    except NmtError as exc:
        raise CheckpointError(
            f"{path}: stored config does not fit this nmt version: {exc}"
        ) from None


def read_data_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {DATA_FILE})")
    return read_json(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or for a run directory its best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: no {BEST} or {LAST} in this directory; is it a run directory?"
        )
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    return path


# ---- inference -----------------------------------------------------------------------------------


def config_from_payload(payload: dict[str, Any], path: str | Path) -> RunConfig:
    try:
        return from_dict(RunConfig, payload["config"])
    except NmtError as exc:
        raise CheckpointError(
            f"{path}: the config stored in this checkpoint does not fit nmt {__version__}: {exc}"
        ) from None


def load_tokenizers(payload: dict[str, Any], folder: str | Path) -> tuple[Tokenizer, Tokenizer]:
    """The src and tgt tokenizers recorded in `payload`, read from `folder` after checking that
    each file is the very one the model was trained with (sha256)."""
    folder = Path(folder)
    loaded: dict[str, Tokenizer] = {}
    for side in ("src", "tgt"):
        entry = payload["spm"][side]
        path = folder / entry["file"]
        if not path.is_file():
            raise CheckpointError(
                f"{path}: SentencePiece model missing; a checkpoint needs the tokenizer file(s) of "
                "its run directory beside it"
            )
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CheckpointError(
                f"{path}: SentencePiece model changed since training (sha256 {actual[:12]}..., "
                f"checkpoint expects {entry['sha256'][:12]}...); restore the run's own file"
            )
        loaded[side] = Tokenizer.load(path)
        expected = payload["vocab"][f"{side}_vocab_size"]
        if loaded[side].vocab_size != expected:
            raise CheckpointError(
                f"{path}: vocabulary has {loaded[side].vocab_size} pieces, the model {expected}"
            )
    return loaded["src"], loaded["tgt"]


def build_model_from_payload(
    payload: dict[str, Any], cfg: RunConfig, path: str | Path
) -> nn.Module:
    """The model the checkpoint describes, with its weights loaded (strictly)."""
    vocab = payload["vocab"]
    model = build_model(
        cfg.model, vocab["src_vocab_size"], vocab["tgt_vocab_size"], vocab["shared_vocab"]
    )
    load_model_state(model, payload["model"], path)
    return model


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`model.load_state_dict(state)` with a CheckpointError naming the mismatch instead of a
    RuntimeError wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
            )
        if shapes:
            parts.append(f"shape (checkpoint vs model) {'; '.join(shapes[:3])}")
        raise CheckpointError(
            f"{path}: weights do not fit the model its config describes: {'; '.join(parts)}"
        )
    model.load_state_dict(state)


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunConfig, Tokenizer, Tokenizer]:
    """Rebuild a trained model from a run directory (its best.pt, else last.pt) or a .pt file.

    Returns `(model in eval mode on device, RunConfig, src Tokenizer, tgt Tokenizer)`. Raises
    CheckpointError for a missing or corrupt checkpoint, missing or changed SentencePiece files, or
    a config / weights that this version of nmt cannot build.
    """
    ckpt = resolve_checkpoint(path)
    payload = load_checkpoint(ckpt)
    cfg = config_from_payload(payload, ckpt)
    src_tok, tgt_tok = load_tokenizers(payload, ckpt.parent)
    model = build_model_from_payload(payload, cfg, ckpt)
    model.to(device).eval()
    return model, cfg, src_tok, tgt_tok


# ---- averaging -----------------------------------------------------------------------------------


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


def average_run(run_dir: Path, last: int, out: Path | None = None) -> tuple[Path, list[int]]:
    """Average the `last` newest periodic checkpoints of `run_dir` into `out` (default
    RUN_DIR/averaged.pt), a weights-only checkpoint with the newest one's metadata. When `out`
    lies outside the run directory the tokenizer file(s) are copied beside it, so that
    `load_for_inference(out)` works. Returns `(out, averaged steps)`."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"{run_dir}: no checkpoint_<step>.pt files to average (train.keep_last keeps them)"
        )
    chosen = found[-last:]
    steps = [step for step, _ in chosen]
    newest = load_checkpoint(chosen[-1][1])
    payload = {key: value for key, value in newest.items() if key != "train_state"}
    payload["model"] = average_checkpoints([path for _, path in chosen])
    payload["averaged_steps"] = steps
    out = out if out is not None else run_dir / AVERAGED
    out.parent.mkdir(parents=True, exist_ok=True)
    for side in ("src", "tgt"):
        name = payload["spm"][side]["file"]
        target = out.parent / name
        if not target.exists():
            copy_atomic(run_dir / name, target)
        elif sha256_file(target) != payload["spm"][side]["sha256"]:
            raise CheckpointError(
                f"{target}: a different SentencePiece model is already there; write the average "
                "into its own folder (or the run directory)"
            )
    save_checkpoint(out, payload)
    return out, steps
