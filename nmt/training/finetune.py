"""Fine-tuning: a new run whose weights start from another run's checkpoint (`nmt train --init`).

Only the weights come over. The optimizer, the learning-rate schedule, the step counters, the
early-stopping state and the RNG start fresh, as in OpenNMT-py's `-train_from` with
`-reset_optim all` or fairseq's `--restore-file` with its `--reset-*` flags. The checks here run
before any compute is spent: the model section must describe the same architecture as the init
checkpoint (regularisation may differ) and the prepared data must use the very same SentencePiece
model(s), since a token id means nothing under another vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from nmt import checkpoint as ckpt
from nmt.config import ModelConfig, TrainConfig, architecture_conflicts, to_dict
from nmt.data.store import PreparedData
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.io import sha256_file

# Top-level modules of both architectures by part. A tensor reached under several names (tied
# embeddings) belongs to "embeddings" when any of its names does.
PART_OF_MODULE = {
    "src_embed": "embeddings",
    "tgt_embed": "embeddings",
    "learned_positions": "embeddings",
    "encoder_layers": "encoder",
    "encoder_norm": "encoder",
    "encoder": "encoder",
    "decoder_layers": "decoder",
    "decoder_norm": "decoder",
    "decoder": "decoder",
    "bridge": "decoder",
    "attention": "decoder",
    "readout": "decoder",
    "readout_proj": "decoder",
    "output": "decoder",
}


def resolve_init(path: str | Path) -> tuple[Path, str]:
    """The checkpoint file `--init` names, and a note on why that file: a run directory means its
    averaged.pt when present, else best.pt (else last.pt)."""
    path = Path(path)
    if path.is_file():
        return path, "the checkpoint file given"
    if path.is_dir():
        for name, why in ((ckpt.AVERAGED, "present"), (ckpt.BEST, "no averaged.pt"),
                          (ckpt.LAST, "no averaged.pt or best.pt")):  # fmt: skip
            if (path / name).is_file():
                return path / name, f"{name} of run directory {path} ({why})"
        raise CheckpointError(f"{path}: no averaged.pt, best.pt or last.pt; is it a run directory?")
    raise CheckpointError(f"--init {path}: no such checkpoint or run directory")


def check_architecture(stored: ModelConfig, requested: ModelConfig, init: Path) -> None:
    """ConfigError listing the model fields that differ from the init checkpoint's."""
    conflicts = architecture_conflicts(stored, requested)
    if conflicts:
        old, new = to_dict(stored), to_dict(requested)
        changes = "; ".join(
            f"{name}: {_dotted(old, name)!r} in the checkpoint, {_dotted(new, name)!r} requested"
            for name in conflicts
        )
        raise ConfigError(
            f"--init {init}: the model section differs from the checkpoint's: {changes}. Leave "
            "the model section out of CONFIG to take the checkpoint's (dropout may differ)"
        )


def _dotted(tree: dict[str, Any], name: str) -> Any:
    for part in name.split(".")[1:]:  # drop the "model." prefix
        tree = tree.get(part) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree


def check_vocabulary(payload: dict[str, Any], data: PreparedData, init: Path) -> None:
    """DataError unless `data` was prepared with the init checkpoint's SentencePiece model(s)
    (same sha256 on both sides, joint or not)."""
    tokenizers = data.manifest["tokenizers"]
    same = all(
        tokenizers[side]["sha256"] == payload["spm"][side]["sha256"] for side in ("src", "tgt")
    ) and data.shared_vocab == bool(payload["vocab"]["shared_vocab"])
    if same:
        return
    folder = init.parent
    if payload["vocab"]["shared_vocab"]:
        how = f"--set spm_model={folder / ckpt.JOINT_SPM}"
    else:
        how = (
            f"--set joint_vocab=false --set spm_model={folder / ckpt.SRC_SPM} "
            f"--set spm_tgt_model={folder / ckpt.TGT_SPM}"
        )
    raise DataError(
        f"{data.path}: prepared with another SentencePiece model than {init} (sha256 "
        f"{tokenizers['tgt']['sha256'][:12]}..., checkpoint {payload['spm']['tgt']['sha256'][:12]}"
        f"...); prepare the new data with the init model's: nmt prepare ... {how}"
    )


def load_init_weights(model: nn.Module, cfg: TrainConfig) -> None:
    """Copy the weights of `cfg.init` into `model`, after checking the file is the one recorded
    (sha256) when the run was configured."""
    path = Path(cfg.init)
    if not path.is_file():
        raise CheckpointError(f"train.init {path}: checkpoint not found")
    actual = sha256_file(path)
    if cfg.init_sha256 and actual != cfg.init_sha256:
        raise CheckpointError(
            f"train.init {path}: file changed since the run was configured (sha256 "
            f"{actual[:12]}..., expected {cfg.init_sha256[:12]}...)"
        )
    ckpt.load_model_state(model, ckpt.load_run_checkpoint(path)["model"], path)


def freeze(model: nn.Module, parts: tuple[str, ...] | list[str]) -> int:
    """Set requires_grad False on the parameters of `parts` (see TrainConfig.freeze); the
    optimizer then leaves them out. Returns how many parameters (elements) are frozen."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.split(".")[0])
        params[id(param)] = param
    frozen = 0
    for key, param in params.items():
        owners = {PART_OF_MODULE[module] for module in names[key]}
        part = "embeddings" if "embeddings" in owners else owners.pop()
        if part in parts:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
