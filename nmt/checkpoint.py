"""What a run directory and a checkpoint hold: building a checkpoint's payload, upgrading older
layouts and reading it back. The file operations of training (atomic saves, pruning, averaging)
live in nmt/training/checkpoint.py.

A run directory (`nmt train --out RUN_DIR`):

    config.yaml             the resolved RunConfig (what `--resume` compares against)
    data.json               the prepared directory it was trained on and that directory's hash
    spm.model               the SentencePiece model (joint vocabulary; for an imported Marian
                            model the mapped vocabulary of nmt.data.spm.MappedTokenizer), or
    spm.src.model, spm.tgt.model   one per side
    last.pt                 the newest checkpoint, with the full training state (--resume reads it)
    best.pt                 the weights with the best validation score (what translate reads)
    checkpoint_<step>.pt    the `train.keep_last` most recent periodic checkpoints (`nmt average`)
    metrics.jsonl           every logged value, one JSON object per line
    import.json, .nmt-output.json   (`nmt import` only) where the model came from; the marker
                            that lets a later import replace the folder

A checkpoint is a dict of tensors and plain Python values only, so `torch.load(weights_only=True)`
reads it and no pickled code ever runs:

    format_version  int      bumped on every layout change; `_UPGRADES` migrates older ones
    nmt_version     str
    config          dict     RunConfig.to_dict()
    vocab           dict     src/tgt vocabulary sizes, shared_vocab, languages
    spm             dict     {"src": {"file", "sha256"}, "tgt": {...}}: tokenizer files beside it
    data            dict     {"path", "hash"} of the prepared data
    cleaning        dict     PrepareConfig of that data (NFKC, lowercasing, ...): text to translate
                             is cleaned with it, never with whatever the prepared folder holds now
    step            int      optimizer updates done (0 for a model made by `nmt import`)
    imported        dict     (`nmt import` only) {"source", "weights"}: where the model came from
    model           dict     the model's state_dict
    train_state     dict     (last.pt and checkpoint_<step>.pt only) TrainState.to_dict()
    averaged_steps  list     (averaged.pt only) the updates of the checkpoints averaged

Every file is written to a temp file in the same folder, fsynced and renamed into place, so a kill
at any moment leaves the previous good checkpoint.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nmt import __version__
from nmt.config import PrepareConfig, RunConfig, from_dict, load_yaml, to_dict
from nmt.data.spm import Tokenizer
from nmt.data.store import prepared_folder_around
from nmt.errors import CheckpointError, NmtError
from nmt.io import OUTPUT_MARKER, Input, Output, check_file, check_outputs, read_json, sha256_file
from nmt.models import build_model

if TYPE_CHECKING:
    from nmt.data.store import PreparedData

FORMAT_VERSION = 1

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
DATA_KEYS = ("path", "hash")  # what data.json must hold: the prepared folder and its data hash
METRICS_FILE = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
AVERAGED = "averaged.pt"
JOINT_SPM = "spm.model"
SRC_SPM = "spm.src.model"
TGT_SPM = "spm.tgt.model"
LOCK_FILE = "train.lock"  # held by the `nmt train` that writes the run (training/run_folder.py)
IMPORT_FILE = "import.json"  # where an imported run came from (nmt/pretrained.py)
PERIODIC_FILES = "checkpoint_*.pt"
_PERIODIC = re.compile(r"^checkpoint_(\d+)\.pt$")
SPM_MISSING = (
    "SentencePiece model missing; a checkpoint needs the tokenizer file(s) of its run directory "
    "beside it"
)

# format_version -> function turning a payload of that version into one of version + 1.
# A future layout change adds an entry here (and a tiny old checkpoint under tests/data/).
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


# ---- building a payload ------------------------------------------------------------------------


def run_metadata(cfg: RunConfig, data: PreparedData, spm: dict[str, Any]) -> dict[str, Any]:
    """The part of every checkpoint of a run that describes the run rather than its weights."""
    return {
        "format_version": FORMAT_VERSION,
        "nmt_version": __version__,
        "config": to_dict(cfg),
        "vocab": {
            "src_vocab_size": data.src_vocab_size,
            "tgt_vocab_size": data.tgt_vocab_size,
            "shared_vocab": data.shared_vocab,
            "src_lang": data.src_lang,
            "tgt_lang": data.tgt_lang,
        },
        "spm": spm,
        "data": {"path": str(Path(data.path).resolve()), "hash": data.hash},
        "cleaning": data.manifest["config"],
    }


def spm_entry(folder: Path, shared_vocab: bool) -> dict[str, dict[str, str]]:
    """The `spm` entry of a checkpoint: the tokenizer file(s) in `folder` and their sha256."""
    names = spm_file_names(shared_vocab)
    return {
        side: {"file": names[side], "sha256": sha256_file(folder / names[side])}
        for side in ("src", "tgt")
    }


def weights_payload(
    meta: dict[str, Any], step: int, model: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """A checkpoint with the weights only (best.pt): what translate reads, not what resume needs."""
    return {**meta, "step": step, "model": model}


def training_payload(
    meta: dict[str, Any], step: int, model: dict[str, torch.Tensor], train_state: dict[str, Any]
) -> dict[str, Any]:
    """A checkpoint a run can resume from (last.pt, checkpoint_<step>.pt)."""
    return {**meta, "step": step, "model": model, "train_state": train_state}


def averaged_payload(
    newest: dict[str, Any], model: dict[str, torch.Tensor], steps: list[int]
) -> dict[str, Any]:
    """The checkpoint `nmt average` writes: the newest averaged checkpoint's metadata, the mean
    weights and the steps averaged; no training state."""
    payload = {key: value for key, value in newest.items() if key != "train_state"}
    payload["model"] = model
    payload["averaged_steps"] = steps
    return payload


def imported_payload(
    cfg: RunConfig,
    vocab: dict[str, Any],
    spm: dict[str, Any],
    cleaning: PrepareConfig,
    model: dict[str, torch.Tensor],
    imported: dict[str, str],
) -> dict[str, Any]:
    """The best.pt that `nmt import` writes: a weights checkpoint at step 0 that also says where
    the model came from (`imported`: source and weights file)."""
    return {
        "format_version": FORMAT_VERSION,
        "nmt_version": __version__,
        "config": to_dict(cfg),
        "vocab": vocab,
        "spm": spm,
        "cleaning": to_dict(cleaning),
        "step": 0,
        "model": model,
        "imported": imported,
    }


# ---- reading ------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with `weights_only=True` and upgrade it to FORMAT_VERSION.

    Raises CheckpointError when the file is missing, unreadable, not an nmt checkpoint, or from a
    newer format than this version of nmt understands.
    """
    path = Path(path)
    check_file(path, CheckpointError, "checkpoint not found")
    payload = read_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path}: not an nmt checkpoint (no format_version / model inside)")
    return upgrade_payload(payload, path)


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """`load_checkpoint` of a checkpoint a run is rebuilt from (to translate, resume or fine-tune),
    with its fields checked (`check_run_payload`)."""
    payload = load_checkpoint(path)
    check_run_payload(payload, path)
    return payload


def check_run_payload(payload: dict[str, Any], path: str | Path) -> None:
    """CheckpointError "PATH: not an nmt checkpoint (...)" when a field that rebuilding the run
    reads is not what nmt writes there, so that a damaged or foreign file is refused in one line
    before anything uses it."""
    problem = _run_payload_problem(payload)
    if problem:
        raise CheckpointError(f"{path}: not an nmt checkpoint ({problem})")


def _run_payload_problem(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        return "'model' is not a mapping of names to tensors"
    if not isinstance(payload.get("config"), dict):
        return "'config' is not a mapping"
    vocab = payload.get("vocab")
    sizes = ("src_vocab_size", "tgt_vocab_size")
    if not isinstance(vocab, dict) or not all(
        type(vocab.get(key)) is int and vocab[key] > 0 for key in sizes
    ):
        return "'vocab' lacks positive src_vocab_size / tgt_vocab_size"
    spm = payload.get("spm")
    for side in ("src", "tgt"):
        entry = spm.get(side) if isinstance(spm, dict) else None
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name:
            return f"'spm' names no {side} tokenizer file in the run folder"
        assert isinstance(entry, dict)  # a name was found in it
        if not isinstance(entry.get("sha256"), str):
            return f"'spm' has no sha256 of the {side} tokenizer"
    return ""


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)` onto the CPU: tensors and plain values only, so no
    pickled code runs. CheckpointError "PATH: not a readable WHAT (why)" when it fails."""
    try:
        with warnings.catch_warnings():  # e.g. on the pickle protocol of a file refused below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated zip, a pickle with code in it, a non-torch file ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not zipfile.is_zipfile(path) and not _starts_like_pickle(path):
            # torch.save writes a zip archive (once, a bare pickle); anything else (text, random
            # bytes) fails deep inside the unpickler with a message that says nothing.
            first_line = "not a file written by torch.save"
        elif "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            # torch's text suggests loading with weights_only=False, which could run code.
            first_line = "it holds Python objects other than tensors and plain values"
        elif not zipfile.is_zipfile(path):
            first_line = "not a file written by torch.save"
        raise CheckpointError(f"{path}: not a readable {what} ({first_line})") from None


def _starts_like_pickle(path: Path) -> bool:
    """Whether the file begins as a pickle of protocol 2 or later does (the PROTO opcode)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(1) == b"\x80"
    except OSError:
        return False


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


def spm_file_names(shared_vocab: bool) -> dict[str, str]:
    """File names of the tokenizer model(s) inside a run directory, by side."""
    if shared_vocab:
        return {"src": JOINT_SPM, "tgt": JOINT_SPM}
    return {"src": SRC_SPM, "tgt": TGT_SPM}


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The periodic checkpoints of a run, oldest first, as (step, path)."""
    found = []
    for path in Path(run_dir).glob("checkpoint_*.pt"):
        match = _PERIODIC.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def run_inputs(path: str | Path, skip: tuple[str, ...] = ()) -> list[Input]:
    """The files of the run folder that holds `path` (a run folder, or a checkpoint in one) that
    nmt reads now or may read later, present or not (best.pt appears after the first validation,
    checkpoint_<step>.pt for any step), plus every .pt file there: what no output of a command
    that reads the run may replace. `skip` leaves names out (`nmt average` writes averaged.pt)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    names = [BEST, LAST, AVERAGED, JOINT_SPM, SRC_SPM, TGT_SPM, CONFIG_FILE, DATA_FILE,
             METRICS_FILE, LOCK_FILE, IMPORT_FILE, OUTPUT_MARKER]  # fmt: skip
    files = [folder / name for name in names] + sorted(folder.glob("*.pt"))
    if not path.is_dir():
        files.insert(0, path)
    what = f"a file of the run folder {folder}"
    unique = {str(file): file for file in files if file.name not in skip}
    periodic = Input(folder, f"the periodic checkpoints of the run folder {folder}",
                     pattern=PERIODIC_FILES)  # fmt: skip
    return [Input(file, what) for file in unique.values()] + [periodic]


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds a run: its config.yaml beside data.json or a checkpoint."""
    return (folder / CONFIG_FILE).is_file() and any(
        (folder / name).is_file() for name in (DATA_FILE, LAST, BEST)
    )


def guard_outputs(
    outputs: list[Output],
    inputs: list[Input],
    refused: type[Exception],
    skip: tuple[str, ...] = (),
) -> None:
    """`nmt.io.check_outputs` with, besides the command's own `inputs`, the files of any run
    folder an output file would be written into (`run_inputs`, less `skip`), the marker of any
    other folder an nmt command wrote (`OUTPUT_MARKER`) and any prepared data folder around it:
    nmt reads those later, whichever command writes now."""
    guarded = list(inputs)
    for out in outputs:
        folder = out.path if out.kind == "files" else out.path.parent  # where it writes
        if out.kind != "folder" and is_run_folder(folder):
            guarded += run_inputs(folder, skip)
        elif out.kind != "folder" and (folder / OUTPUT_MARKER).is_file():
            guarded.append(Input(folder / OUTPUT_MARKER, f"the record of the nmt output {folder}"))
        prepared = prepared_folder_around(folder)
        if prepared is not None:
            guarded.append(Input(prepared, "a prepared data folder", tree=True))
    check_outputs(outputs, guarded, refused)


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
    try:
        info = read_json(path)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path}: damaged ({str(exc)[:100]})") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in DATA_KEYS):
        raise CheckpointError(
            f"{path}: damaged (needs the keys {', '.join(DATA_KEYS)} with text values); pass "
            "--data PREPARED_DIR, and restore it from a backup to keep the record"
        )
    return info


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
        check_file(path, CheckpointError, SPM_MISSING)
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise CheckpointError(
                f"{path}: SentencePiece model changed since training (sha256 {actual[:12]}..., "
                f"checkpoint expects {entry['sha256'][:12]}...); restore the run's own file"
            )
        loaded[side] = Tokenizer.load(path, side)
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
    RuntimeError wall of text (or `check_finite`'s)."""
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
    check_finite(state, path)
    model.load_state_dict(state)


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """CheckpointError naming the first tensor of `state` that holds NaN or infinity: such a
    model scores hypotheses NaN, and nothing it translates means anything."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: {name} holds NaN or infinite values; the model is damaged"
            )


@dataclass
class LoadedRun:
    """A trained model ready to translate, with everything its checkpoint records about how text
    was prepared for it: the tokenizers and the cleaning settings (NFKC, lowercasing, ...)."""

    model: nn.Module  # in eval mode, on the requested device
    config: RunConfig
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    cleaning: PrepareConfig
    checkpoint: Path  # the .pt file that was read
    vocab: dict[str, Any]  # vocabulary sizes, shared_vocab, src_lang, tgt_lang


def load_run(
    path: str | Path,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> LoadedRun:
    """Rebuild a trained model from a run directory (its best.pt, else last.pt) or a .pt file.

    Raises CheckpointError for a missing or corrupt checkpoint, missing or changed SentencePiece
    files, or a config / weights that this version of nmt cannot build.
    """
    ckpt = resolve_checkpoint(path)
    payload = load_run_checkpoint(ckpt)
    cfg = config_from_payload(payload, ckpt)
    src_tok, tgt_tok = load_tokenizers(payload, ckpt.parent)
    model = build_model_from_payload(payload, cfg, ckpt)
    model.to(device).eval()
    cleaning = read_cleaning(payload, ckpt, log)
    return LoadedRun(model, cfg, src_tok, tgt_tok, cleaning, ckpt, dict(payload["vocab"]))


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunConfig, Tokenizer, Tokenizer]:
    """`load_run` as the tuple `(model, RunConfig, src Tokenizer, tgt Tokenizer)`."""
    run = load_run(path, device)
    return run.model, run.config, run.src_tok, run.tgt_tok


def read_cleaning(
    payload: dict[str, Any], ckpt: Path, log: Callable[[str], None] | None = None
) -> PrepareConfig:
    """The cleaning settings the training data got, as stored in the checkpoint at training time,
    so that text to translate is normalised the same way whatever happens to the prepared folder.

    Checkpoints written before these settings were stored fall back to the prepared folder named
    in the run's data.json, then to the defaults, with a note."""
    stored = payload.get("cleaning")
    if isinstance(stored, dict):
        try:
            return from_dict(PrepareConfig, stored)
        except NmtError as exc:
            raise CheckpointError(f"{ckpt}: stored cleaning settings are invalid: {exc}") from None
    note = log or (lambda message: None)
    try:
        info = read_json(ckpt.parent / DATA_FILE)
        manifest = read_json(Path(info["path"]) / "manifest.json")
        cleaning = from_dict(PrepareConfig, manifest["config"])
        note(f"note: {ckpt} predates stored cleaning settings; using those of {info['path']}")
        return cleaning
    except (OSError, ValueError, KeyError, TypeError, NmtError):
        note(
            f"note: {ckpt} records no cleaning settings and its prepared data was not found; "
            "input is normalised with the defaults (NFKC, whitespace; no lowercasing)"
        )
        return PrepareConfig()
