"""Shared helpers of the benchmarks: child processes with their own peak memory, medians, results.

Every benchmark that needs a clean peak-memory figure runs its workload as a child process and reads
that child's own resource usage (`os.wait4`), so one workload's allocations never inflate another's.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NMT: list[str | Path] = [sys.executable, ROOT / "cli.py"]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peak_rss_mib: float  # the child's own maximum resident set (its waited-for children included)
    stdout: str
    first_s: float | None = None  # when `run_child`'s `first` condition first held, from the start


# A process forked from a large parent starts with the parent's peak resident set as its own
# (Linux keeps ru_maxrss across fork and exec), so the benchmark process, which holds torch and
# more, would inflate every child's figure. This small launcher forks the workload from itself
# and writes the workload's own peak (KiB) to the file named by its first argument.
_LAUNCHER = """
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(
    argv: Sequence[str | Path],
    log: Path | None = None,
    first: Callable[[], bool] | None = None,
) -> ChildRun:
    """Run `argv` to completion, its output going to `log` (or kept); measure its peak RSS and,
    with `first` (polled every 0.1 s while it runs), the seconds until that condition held."""
    env = {**os.environ, **OFFLINE}
    print("  $", shlex.join(str(a) for a in argv), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kib"
        out_file = log or Path(tmp) / "output"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        launcher = [sys.executable, "-c", _LAUNCHER, str(peak_file), *(str(a) for a in argv)]
        start = time.perf_counter()
        first_s = None
        with open(out_file, "w") as sink:
            proc = subprocess.Popen(launcher, cwd=ROOT, env=env, stdout=sink, stderr=sink)
            while proc.poll() is None:
                if first is not None and first_s is None and first():
                    first_s = time.perf_counter() - start
                time.sleep(0.1)
        wall = time.perf_counter() - start
        out = out_file.read_text()
        peak_kib = int(peak_file.read_text()) if peak_file.exists() else 0
    return ChildRun(proc.returncode, wall, peak_kib / 1024, out, first_s)


def check(run: ChildRun, what: str) -> None:
    if run.returncode != 0:
        sys.exit(f"benchmark step failed ({what}), exit {run.returncode}:\n{run.stdout[-3000:]}")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# The CPU features that decide our speed: bf16 matmuls (AVX512-BF16, AMX), int8 dot products
# (VNNI, AMX); /proc/cpuinfo's names.
CPU_FLAGS = (
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_vnni",
    "avx_vnni",
    "avx512f",
)


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and which of CPU_FLAGS it has, from /proc/cpuinfo (Linux)."""
    model, flags = "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return model, [f for f in CPU_FLAGS if f in flags]


def machine() -> dict[str, Any]:
    import torch

    model, flags = cpu_info()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpu_flags": flags,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (from /proc/cpuinfo; "" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_line(info: dict[str, Any]) -> str:
    """One line for a table's head: CPU model, its bf16/int8 features, threads (and the GPU)."""
    flags = " ".join(info.get("cpu_flags") or []) or "none of " + ", ".join(CPU_FLAGS)
    line = f"CPU: {info.get('cpu_model')} ({info.get('cpu_count')} cores; {flags}); "
    line += f"torch {info.get('torch')}, {info.get('threads')} threads"
    return line + (f"; GPU: {info['gpu']}" if info.get("gpu") else "")


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/NAME-YYYYmmdd-HHMMSS.json (timestamped: results of earlier runs stay)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")  # paths as strings
    tmp.replace(path)
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain-text table; numbers get thousands separators, missing cells a dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
