"""Interrupted training keeps its progress: SIGINT and SIGTERM finish the current update, save
last.pt, say how to continue and exit 130 / 143; `--resume` then reaches bitwise the weights of an
unbroken run. A start that fails before any checkpoint leaves nothing that blocks a retry."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from reliability_support import (
    assert_refused,
    logged_updates,
    nmt,
    snapshot,
    start_nmt,
    tiny_run_yaml,
    wait_for,
)

from nmt import checkpoint as ckpt
from nmt.training import signals
from nmt.training.signals import StopSignals

STEPS = 60  # validation at 20, 40, 60; no periodic save before the end


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stop_config")
    return tiny_run_yaml(folder / "tiny.yaml", max_steps=STEPS, valid_every=20)


@pytest.fixture(scope="module")
def unbroken(config: Path, tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("unbroken") / "run"
    threads = torch.get_num_threads()
    result = nmt("train", config, "--data", tiny_prepared, "--out", run)
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_update_and_resume_equals_the_unbroken_run(
    signum: int, config: Path, tiny_prepared: Path, unbroken: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = start_nmt("train", config, "--data", tiny_prepared, "--out", run)
    # Past the first validation, so the saved state holds a best score too; nothing saved yet.
    wait_for(lambda: logged_updates(run) >= 22, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (out, err)
    assert "Traceback" not in out + err
    step = ckpt.load_checkpoint(run / "last.pt")["step"]
    assert 22 <= step < STEPS
    assert err.strip().splitlines()[-1] == (
        f"stopped at update {step}; continue with: nmt train --resume {run}"
    )

    threads = torch.get_num_threads()
    result = nmt("train", "--resume", run)
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert f"resuming at update {step}" in result.output
    a = ckpt.load_checkpoint(unbroken / "last.pt")
    b = ckpt.load_checkpoint(run / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in ("step", "epoch", "batches_done", "tgt_tokens", "best_score", "schedule"):
        assert a["train_state"][key] == b["train_state"][key], key
    for key, moments in a["train_state"]["optimizer"]["state"].items():
        theirs = b["train_state"]["optimizer"]["state"][key]
        assert all(torch.equal(moments[k], theirs[k]) for k in moments)


def test_a_second_signal_stops_at_once_and_handlers_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        # raise_signal delivers to this thread (os.kill may pick another thread of the process,
        # whose handler can run after the next line); the Python handler runs at the next bytecode.
        signal.raise_signal(signal.SIGINT)  # sets the flag only
        assert stop.signum == signal.SIGINT and stop.name == "SIGINT"
        signal.raise_signal(signal.SIGTERM)  # at once after: a launcher passing it on
        assert stop.signum == signal.SIGINT
        monkeypatch.setattr(signals, "SAME_REQUEST_SECONDS", 0.0)  # as if a second went by
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_start_that_fails_before_any_checkpoint_leaves_no_run_folder(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    # A learning rate this large turns the loss non-finite at once; one such update stops the run.
    bad = tiny_run_yaml(tmp_path / "bad.yaml", lr=1e30, warmup_steps=1, max_nan_steps=1)
    run = tmp_path / "runs" / "first"
    before = snapshot(tmp_path)
    threads = torch.get_num_threads()
    assert_refused(nmt("train", bad, "--data", tiny_prepared, "--out", run), 1, "non-finite")
    assert not run.parent.exists() and snapshot(tmp_path) == before
    # An empty folder the user made stays, empty.
    run.mkdir(parents=True)
    assert_refused(nmt("train", bad, "--data", tiny_prepared, "--out", run), 1, "non-finite")
    assert run.is_dir() and not any(run.iterdir())
    good = tiny_run_yaml(tmp_path / "good.yaml")
    result = nmt("train", good, "--data", tiny_prepared, "--out", run)
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
