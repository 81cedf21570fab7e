"""One writer per run: while `nmt train` writes a run, a second `train` into it or a `--resume` of
it is refused with the writer's PID; the lock of a killed writer never blocks; of two trainings
started together into one folder, one runs and the other is refused."""

from __future__ import annotations

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


@pytest.fixture()
def long_config(tmp_path: Path) -> Path:
    """Long enough to be still running whatever the test does meanwhile; saves every 5 updates."""
    return tiny_run_yaml(tmp_path / "long.yaml", max_steps=100_000, save_every=5)


def test_a_second_writer_is_refused_with_the_pid_of_the_first_until_it_is_gone(
    long_config: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = start_nmt("train", long_config, "--data", tiny_prepared, "--out", run)
    try:
        wait_for(lambda: (run / "last.pt").is_file() and logged_updates(run) >= 6, first)
        for args in (
            ["train", long_config, "--data", tiny_prepared, "--out", run],
            ["train", "--resume", run],
        ):
            line = assert_refused(nmt(*args), 1, f"{run}: another `nmt train` (PID {first.pid})")
            assert "is writing this run" in line
    finally:
        first.kill()  # SIGKILL: no clean-up of any kind; the lock file stays behind
        first.communicate()
    assert (run / "train.lock").read_text().strip() == str(first.pid)

    # The kernel dropped the dead writer's lock: a resume goes ahead.
    saved = ckpt.load_checkpoint(run / "last.pt")["step"]
    before = {name for name in snapshot(run) if not name.startswith(".")}  # no temp files
    threads = torch.get_num_threads()
    result = nmt("train", "--resume", run, "--set", f"train.max_steps={saved + 2}")
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert ckpt.load_checkpoint(run / "last.pt")["step"] == saved + 2
    assert before - snapshot(run).keys() <= {f"checkpoint_{saved - 10}.pt"}  # pruned


def test_two_trainings_started_together_into_one_folder(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    config = tiny_run_yaml(tmp_path / "tiny.yaml", max_steps=10)
    run = tmp_path / "run"
    procs = [start_nmt("train", config, "--data", tiny_prepared, "--out", run) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    results = [(p.pid, p.returncode, *output) for p, output in zip(procs, outputs, strict=True)]
    assert sorted(code for _, code, _, _ in results) in ([0, 1], [0, 2]), results
    (winner, *_), (_, _, _, err) = sorted(results, key=lambda r: r[1])
    assert "Traceback" not in "".join(out + err for _, _, out, err in results)
    line = err.strip().splitlines()[-1]
    # Refused by the lock while the other one trains, or, when it started after the other ended,
    # because the folder holds a run.
    assert line.startswith(f"error: {run}: ") and (
        f"(PID {winner})" in line or "already exists" in line
    ), line
    assert ckpt.load_checkpoint(run / "last.pt")["step"] == 10
