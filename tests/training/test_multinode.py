"""Training across machines on torchrun, on one host: two launchers ("nodes") of one process each
meet through torchrun's c10d rendezvous on 127.0.0.1 and train over gloo, as

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m nmt.cli train ...

runs on two machines. A rank killed in the middle of an update, then a SIGTERM to one node's
launcher, each followed by `--resume`, must end bitwise equal to an unbroken two-node run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tiny import tiny_yaml
from training_support import assert_bitwise_equal, weights

from nmt import checkpoint as ckpt

WORKER = Path(__file__).with_name("node_worker.py")  # nmt train, with the fault a test asks for
STEPS = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def two_nodes(logs: Path, *args: str | Path, fault: dict[str, str] | None = None) -> list[str]:
    """Start the two launchers of a job, wait for both (4 minutes at most) and return their
    output; each prints only its own worker's lines (one worker per node)."""
    port = _free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", str(port),
        str(WORKER), *(str(a) for a in args),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(fault or {})}
    files = [logs.with_suffix(f".node{n}.log") for n in (0, 1)]
    procs = []
    for file in files:
        with open(file, "w") as sink:
            procs.append(subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT))
    try:
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [file.read_text() for file in files]


def worker_lines(output: str) -> list[str]:
    """The lines nmt wrote, without the launcher's own log and tracebacks."""
    return [
        line for line in output.splitlines() if not line.startswith((" ", "[", "W1", "E1", "I1"))
    ]


def test_two_nodes_resume_bitwise_after_a_killed_rank_and_a_sigterm(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    config = tiny_yaml(
        tmp_path / "tiny.yaml", f"train.max_steps={STEPS}", "train.save_every=3",
        "train.valid_every=4", "model.transformer.dropout=0.1",
    )  # fmt: skip
    unbroken = tmp_path / "unbroken"
    args = ("train", config, "--data", tiny_prepared)
    outputs = two_nodes(tmp_path / "unbroken", *args, "--out", unbroken)
    joined = "\n".join(outputs)
    assert joined.count(f"done: reached train.max_steps={STEPS}") == 1, joined[-3000:]  # rank 0
    assert "world size 2" in joined

    # Rank 1 dies inside update 5: updates 4 and 5 exist only in memory. Rank 0 stops with one
    # line that says how to go on; both launchers fail.
    run = tmp_path / "run"
    outputs = two_nodes(tmp_path / "killed", *args, "--out", run, fault={"NMT_TEST_KILL": "1:5"})
    assert ckpt.load_checkpoint(run / ckpt.LAST)["step"] == 3
    lost = [line for out in outputs for line in worker_lines(out) if "another process" in line]
    assert lost and lost[0].endswith(f"`train --resume {run}`"), "\n".join(outputs)[-3000:]

    # Resumed; in its second update rank 1 sends SIGTERM to its own launcher, as a scheduler
    # stopping that node would. Both ranks stop after the same update, which last.pt holds.
    outputs = two_nodes(tmp_path / "term", "train", "--resume", run, fault={"NMT_TEST_TERM": "1:2"})
    step = ckpt.load_checkpoint(run / ckpt.LAST)["step"]
    assert 5 <= step < STEPS, "\n".join(outputs)[-3000:]
    for out in outputs:
        assert f"stopped at update {step}; continue with: nmt train --resume {run}" in out

    # Resumed to the end: the same weights, bit for bit, as the unbroken job.
    outputs = two_nodes(tmp_path / "end", "train", "--resume", run)
    assert ckpt.load_checkpoint(run / ckpt.LAST)["step"] == STEPS, "\n".join(outputs)[-3000:]
    assert_bitwise_equal(weights(unbroken / ckpt.LAST), weights(run / ckpt.LAST))
