"""Which device a command computes on, and what that device does natively.

`train.device`, `--device` of translate / evaluate / serve and the `Translator` all go through
`resolve_device`: `auto` takes a GPU when one is visible, and asking for CUDA without one is a
user mistake, stopped before any work (STYLE.md section 7).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from nmt.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")

T = TypeVar("T")


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """auto|cpu|cuda -> torch.device. `setting` names where the value came from in the error
    (`--device`, `train.device`)."""
    if name not in DEVICES:
        raise ConfigError(f"{setting} {name!r}: expected auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} cuda: no CUDA GPU is visible; use {setting} auto or cpu")
    return torch.device(name)


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively, rather than emulated and slower than float32: Ampere or
    newer GPUs; CPUs with AVX512-BF16 or AMX (x86) or the BF16 extension (ARM)."""
    if device.type == "cuda":
        # Without `including_emulation=False` torch answers yes on pre-Ampere GPUs too.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if not hasattr(torch.cpu, "get_capabilities"):  # an older torch cannot tell: do as asked
        return True
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16"))


# glibc's mallopt parameters (malloc.h) and the values set by `reuse_freed_memory`.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
HEAP_BLOCK_LIMIT = 1 << 30  # blocks up to this size come from the heap and go back to it
HEAP_TRIM_LIMIT = (2 << 30) - 1  # free memory kept at the top of the heap before it is returned


def reuse_freed_memory() -> bool:
    """Let glibc serve large tensors from memory this process freed, instead of fresh pages.

    By default glibc maps every block above its mmap threshold (adaptive, at most 32 MiB) straight
    from the kernel and unmaps it when freed. A CPU training step frees and allocates its largest
    tensors again every step (a 4,096-token batch's logits, log-probabilities and their gradient:
    2,000 x 8,000 float32, 64 MiB each), so each step took ~60,000 page faults and the kernel
    zeroed every page: 8-17 % of a float32 step on 2 cores (bench/NOTES.md, lever 32). With both
    thresholds raised, freed blocks stay in the heap for the next step, for 10-20 % more peak
    memory (small allocations split freed blocks, so the heap holds some holes). Left as it is
    when the user set glibc's malloc variables, or on another C library. Returns whether the
    settings were applied."""
    if platform.libc_ver()[0] != "glibc" or _user_set_malloc():
        return False
    libc = ctypes.CDLL(None)  # the C library this process already uses
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_LIMIT) == 1  # mallopt: 1 on success
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_LIMIT) == 1
    return mmap_set and trim_set


def _user_set_malloc() -> bool:
    """Whether the environment tunes glibc's malloc itself (its variables or tunables)."""
    variables = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in variables) or "glibc.malloc." in tunables


def on_passing_thread(work: Callable[[], T]) -> T:
    """`work()` run on a thread of its own that ends when it returns: its result returned here,
    its exception raised here.

    For a process whose torch work then runs on one long-lived thread (the server's decoding
    thread). GNU OpenMP, on which torch's CPU operators run, gives every thread that starts a
    parallel operation a team of its own worker threads, kept until that thread ends; while the
    process holds more such threads than there are cores, every team's threads sleep at each
    barrier instead of spinning a moment. Loading the models on the main thread left its team
    alive beside the decoding thread's, and on 2 cores the decoding thread then slept 22,700 to
    30,900 times per 400 sentences and decoded up to 1.4x slower (bench/NOTES.md, lever 33);
    loaded here, the process keeps one team.

    A Ctrl-C meanwhile takes effect once `work` has returned: a process that shuts down while a
    thread of it is inside torch can abort (see nmt/serve/server.py, exit_now)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # raised again on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="nmt-load")
    with _interrupts_held():
        thread.start()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT (Ctrl-C) noted inside the block and delivered again when it ends, to whatever
    handled it before. Only the main thread may change signal handlers; elsewhere (where Python
    raises no KeyboardInterrupt anyway) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if held:
            signal.raise_signal(signal.SIGINT)
