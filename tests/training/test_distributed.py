"""Data parallelism on CPU: two gloo processes started by torchrun must make the same updates as
one process accumulating two batches, because the loss is normalised by the target tokens of the
whole update on all ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_config, tiny_yaml
from training_support import weights

from nmt.data.batching import TokenBatchSampler
from nmt.data.store import load_prepared
from nmt.errors import CheckpointError
from nmt.io import read_jsonl
from nmt.pipeline import train as train_command
from nmt.training.loop import train


def _even_batch_tokens(prepared: Path) -> int:
    """A batch size whose global batch list is the same for 1 and 2 processes (an even number of
    batches, so the sampler splits none to share them out)."""
    src, tgt = load_prepared(prepared).lengths("train")
    for batch_tokens in range(400, 800, 20):
        one = TokenBatchSampler(src, tgt, batch_tokens, seed=1).global_batches(0)
        two = TokenBatchSampler(src, tgt, batch_tokens, seed=1, world_size=2).global_batches(0)
        if one == two:
            return batch_tokens
    raise AssertionError("no batch size with an even number of batches")


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "nmt.cli", "train", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "world size 2" in done.stdout
    assert done.stdout.count("done: reached train.max_steps") == 1  # only rank 0 prints
    return done


def test_two_gloo_processes_with_a_resume_equal_one_process_with_update_freq_2(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    common = (
        f"train.batch_tokens={_even_batch_tokens(tiny_prepared)}",
        "train.max_steps=4",
        "train.save_every=2",
        "train.valid_every=2",
        "model.transformer.dropout=0.0",  # each rank draws its own dropout masks
    )
    train(tiny_config(*common, "train.update_freq=2"), tiny_prepared, tmp_path / "one")

    # Two processes: 2 updates, then a resumed run (same world size) for the other 2.
    two = tmp_path / "two"
    config = tiny_yaml(tmp_path / "ddp.yaml", *common, "train.max_steps=2")
    _torchrun(str(config), "--data", str(tiny_prepared), "--out", str(two))
    _torchrun("--resume", str(two), "--set", "train.max_steps=4")

    one_w, two_w = weights(tmp_path / "one" / "last.pt"), weights(two / "last.pt")
    for name, tensor in one_w.items():
        torch.testing.assert_close(two_w[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    rows = [
        [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
        for run in (tmp_path / "one", two)
    ]
    assert [step for step, _ in rows[0]] == [step for step, _ in rows[1]] == [2, 4]
    for (_, loss_a), (_, loss_b) in zip(*rows, strict=True):
        assert abs(loss_a - loss_b) < 1e-5

    # Resuming with another number of processes would change the data order: refused.
    with pytest.raises(CheckpointError, match="trained with 2 process"):
        train_command.train(None, None, None, [], resume=two)


# One rank of a two-process gloo group (a file store, no launcher) that runs the start-up check
# with the value given on its command line and prints what it says.
SAME_EVERYWHERE = """
import sys
import torch.distributed as dist
from nmt.errors import ConfigError
from nmt.training.distributed import DistContext, check_same_everywhere
rank, store, value = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
try:
    check_same_everywhere(DistContext(rank, 2, rank), **{"prepared data": value, "settings": 1})
    print("same")
except ConfigError as exc:
    print(exc)
"""


@pytest.mark.parametrize(("values", "said"), [
    (("a", "a"), "same"),
    (("a", "b"), "the processes of this torchrun job differ in prepared data; start every"),
])  # fmt: skip
def test_ranks_started_with_different_data_all_refuse(
    values: tuple[str, str], said: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", SAME_EVERYWHERE, str(rank), str(store), value],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank, value in enumerate(values)
    ]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert all(said in out for out in outputs), outputs
