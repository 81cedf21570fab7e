"""Killing a child process at a known point: used by the exact-resume tests (tests/training,
tests/gpu), which kill -9 a training while updates exist only in its memory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading


def kill_when_it_says(
    argv: list[str], word: str, timeout: float, env: dict[str, str] | None = None
) -> None:
    """Run `argv`, `kill -9` it as soon as a line of its stderr holds `word`, and check that it
    died of that signal (a child that ends or hangs instead fails the test; `timeout` seconds at
    most, so a hang never stalls the suite)."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if word in line:
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL and seen and word in seen[-1], "".join(seen[-20:])
