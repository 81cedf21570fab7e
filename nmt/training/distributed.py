"""Data-parallel helpers: start the process group from torchrun's environment, tiny collectives.

`torchrun --nproc_per_node=N -m nmt.cli train ...` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Every rank trains on its own share of the
batches; only rank 0 writes files and prints. Without those variables everything here is a no-op,
so the single-process path is the same code with `world_size == 1`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nmt.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, checkpoints and the progress bar."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not an integer") from None


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun describes: NCCL on CUDA, gloo on CPU.

    On CUDA each rank takes the GPU numbered by its LOCAL_RANK; call this before any tensor is put
    on a GPU so that `cuda` means this rank's device.
    """
    world_size = env_world_size()
    if world_size == 1:
        return DistContext()
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise ConfigError(
            "WORLD_SIZE > 1 but RANK is missing or not an integer; launch with torchrun"
        ) from None
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum `tensor` over ranks, in place; returns it for chaining."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (validation results, so all ranks take the same decisions)."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]` on every rank (used for the per-rank RNG states)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def check_same_everywhere(ctx: DistContext, **values: Any) -> None:
    """ConfigError on every rank when the processes of a job were given different `values` (the
    prepared data, the config): machines are started one by one, and each reads its own command
    line and files. Compared by digest, in one collective."""
    if not ctx.is_distributed:
        return
    mine = {
        name: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        for name, value in values.items()
    }
    everyone = gather_objects(mine, ctx)
    differing = [name for name in mine if len({digests[name] for digests in everyone}) > 1]
    if differing:
        raise ConfigError(
            f"the processes of this torchrun job differ in {' and '.join(differing)}; start every "
            "machine with the same command, config and --set, and the same prepared data (one "
            "shared folder, or identical copies)"
        )


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another process of the job went away
    (killed, its machine lost): NCCL raises a `DistError`, gloo a RuntimeError naming itself."""
    if not dist.is_available() or not dist.is_initialized():
        return False
    return isinstance(exc, dist.DistError) or "gloo" in str(exc)


def lost_peer_message(exc: BaseException, last: Path) -> str:
    """The one line for a job whose other process went away (torchrun then stops this one too);
    `last` is the run's last.pt, present or not."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    saved = (
        f"its last checkpoint is {last}: start the same torchrun job with "
        f"`train --resume {last.parent}`"
        if last.is_file()
        else "no checkpoint was saved yet: start the job again"
    )
    return f"another process of this torchrun job stopped ({first}); {saved}"


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
