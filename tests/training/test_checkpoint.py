"""Checkpoints: atomic writes (also under kill -9), weights_only loading, clear errors, inference
loading with tokenizer checks, averaging and the format-upgrade hook."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_config
from training_support import weights

from nmt import checkpoint as ckpt
from nmt.errors import CheckpointError
from nmt.io import sha256_file
from nmt.training import checkpoint as saving
from nmt.training.loop import train


@pytest.fixture(scope="module")
def tiny_run(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 8-update run with checkpoints at updates 4, 6 and 8 (keep_last 3)."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_config(), tiny_prepared, run_dir)
    return run_dir


def test_run_directory_layout(tiny_run: Path) -> None:
    names = {p.name for p in tiny_run.iterdir()}
    expected = {"config.yaml", "data.json", "spm.model", "last.pt", "best.pt", "metrics.jsonl"}
    assert expected <= names
    assert [step for step, _ in ckpt.list_checkpoints(tiny_run)] == [4, 6, 8]
    assert not [n for n in names if n.endswith(".tmp")]
    payload = ckpt.load_checkpoint(tiny_run / "last.pt")
    assert payload["format_version"] == ckpt.FORMAT_VERSION
    assert payload["step"] == 8 and payload["train_state"]["step"] == 8
    assert payload["config"]["train"]["max_steps"] == 8
    assert payload["spm"]["src"]["sha256"] == sha256_file(tiny_run / "spm.model")
    assert "train_state" not in ckpt.load_checkpoint(tiny_run / "best.pt")  # weights only


def test_checkpoints_hold_only_tensors_and_plain_values(tiny_run: Path) -> None:
    allowed = (torch.Tensor, int, float, str, bool, type(None))

    def walk(value: object, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str | int), where
                walk(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            assert isinstance(value, allowed), f"{where}: {type(value).__name__}"

    # torch.load(weights_only=True) is what load_checkpoint uses; this spells out why it can.
    walk(torch.load(tiny_run / "last.pt", weights_only=True), "last.pt")


def test_load_for_inference_rebuilds_the_trained_model(tiny_run: Path) -> None:
    model, cfg, src_tok, tgt_tok = ckpt.load_for_inference(tiny_run)
    assert cfg == tiny_config()
    assert not model.training
    best = weights(tiny_run / "best.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[name])
    assert src_tok.sha256 == tgt_tok.sha256  # joint vocabulary
    # A .pt path works as well as the run directory.
    model_last, *_ = ckpt.load_for_inference(tiny_run / "last.pt")
    assert torch.equal(
        next(iter(model_last.state_dict().values())),
        next(iter(weights(tiny_run / "last.pt").values())),
    )


def _copy_run(run: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("best.pt", "spm.model", "config.yaml"):
        (dst / name).write_bytes((run / name).read_bytes())
    return dst


def test_inference_errors_name_the_problem(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.load_for_inference(tmp_path / "nope.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        ckpt.load_for_inference(empty)

    missing_spm = _copy_run(tiny_run, tmp_path / "missing_spm")
    (missing_spm / "spm.model").unlink()
    with pytest.raises(CheckpointError, match="SentencePiece model missing"):
        ckpt.load_for_inference(missing_spm)

    changed = _copy_run(tiny_run, tmp_path / "changed_spm")
    with open(changed / "spm.model", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match="changed since training"):
        ckpt.load_for_inference(changed)

    truncated = _copy_run(tiny_run, tmp_path / "truncated")
    data = (truncated / "best.pt").read_bytes()
    (truncated / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load_for_inference(truncated)


def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_refused(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(tiny_run, tmp_path / "run")
    payload = ckpt.load_checkpoint(run / "best.pt")
    payload["config"]["model"]["transformer"]["ffn_dim"] = 48
    saving.save_checkpoint(run / "best.pt", payload)
    with pytest.raises(CheckpointError, match=r"do not fit .*\(64, 32\) vs \(48, 32\)"):
        ckpt.load_for_inference(run)
    payload["config"]["model"]["transformer"]["no_such_field"] = 1
    saving.save_checkpoint(run / "best.pt", payload)
    with pytest.raises(CheckpointError, match="unknown config key"):
        ckpt.load_for_inference(run)


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "hook": os.getcwd}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path)


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot pickle this")

    path = tmp_path / "last.pt"
    saving.save_checkpoint(path, {"format_version": 1, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        saving.save_checkpoint(
            path, {"format_version": 1, "model": {"w": torch.zeros(10**6)}, "x": Unpicklable()}
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


WRITER = """
import sys, torch
from nmt.training.checkpoint import save_checkpoint
base = torch.arange(10_000_000, dtype=torch.float32)  # 40 MB per checkpoint
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"format_version": 1, "model": {"w": base + i}, "i": i})
    print(i, flush=True)
"""


def test_kill_9_while_writing_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        done = int(proc.stdout.readline())  # a first checkpoint is complete ...
        done = int(proc.stdout.readline())  # ... and a second; the third is being written
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    payload = ckpt.load_checkpoint(path)
    assert payload["i"] in (done, done + 1)  # the last complete one, never a torn one
    assert torch.equal(payload["model"]["w"], torch.arange(10_000_000.0) + payload["i"])
    # What a resumed run, a later process, cleans up: the writer's temp files, and nothing else.
    leftovers = list(tmp_path.glob(".last.pt.*.tmp"))
    users = [tmp_path / ".notes.txt.abcd1234.tmp", tmp_path / "scratch.tmp"]
    for path in [*leftovers, *users]:
        path.touch()
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    assert sorted(saving.remove_stale_temp_files(tmp_path)) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt", *(p.name for p in users)]
    )


def test_average_is_the_elementwise_mean(tmp_path: Path) -> None:
    paths = []
    for i, value in enumerate([1.0, 2.0, 6.0]):
        state = {"w": torch.full((2, 2), value), "steps": torch.tensor(i)}
        paths.append(tmp_path / f"checkpoint_{i}.pt")
        saving.save_checkpoint(paths[-1], {"format_version": 1, "model": state})
    avg = saving.average_checkpoints(paths)
    assert torch.equal(avg["w"], torch.full((2, 2), 3.0))
    assert avg["steps"] == 2  # integer buffers come from the newest checkpoint
    saving.save_checkpoint(
        tmp_path / "odd.pt", {"format_version": 1, "model": {"v": torch.ones(1)}}
    )
    with pytest.raises(CheckpointError, match="different parameters"):
        saving.average_checkpoints([paths[0], tmp_path / "odd.pt"])


def test_average_run_writes_a_loadable_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    out, steps = saving.average_run(tiny_run, 2, tmp_path / "avg" / "averaged.pt")
    assert steps == [6, 8]
    model, *_ = ckpt.load_for_inference(out)  # the tokenizer was copied beside it
    six, eight = weights(tiny_run / "checkpoint_6.pt"), weights(tiny_run / "checkpoint_8.pt")
    for name, tensor in model.state_dict().items():
        expected = ((six[name].double() + eight[name].double()) / 2).to(tensor.dtype)
        assert torch.equal(tensor, expected), name


def test_format_upgrade_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A pretend format 0 that called the weights "params": the hook renames them on load.
    def upgrade_0(payload: dict) -> dict:
        payload["model"] = payload.pop("params")
        return payload

    monkeypatch.setitem(ckpt._UPGRADES, 0, upgrade_0)
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0, "params": {"w": torch.ones(2)}, "model": None}, path)
    payload = ckpt.load_checkpoint(path)
    assert payload["format_version"] == ckpt.FORMAT_VERSION
    assert torch.equal(payload["model"]["w"], torch.ones(2))
    torch.save({"format_version": ckpt.FORMAT_VERSION + 1, "model": {}}, path)
    with pytest.raises(CheckpointError, match="newer"):
        ckpt.load_checkpoint(path)


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (2, 10, 4, 8):
        saving.checkpoint_path(tmp_path, step).write_bytes(b"x")
    saving.prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [8, 10]
