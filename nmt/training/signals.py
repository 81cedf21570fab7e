"""Ctrl-C (SIGINT) and SIGTERM stop a training run cleanly: the update under way finishes, last.pt
is saved, and the process exits 128 + the signal number (130, 143); `--resume` continues it.

The handler only sets a flag, which the loop reads once per update (all-reduced with the update's
token count under torchrun, so every rank stops after the same update). A second signal, a second
or more after the first, stops at once: SIGINT raises KeyboardInterrupt, SIGTERM exits with 143.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A repeat this soon after the first signal is the same request, not a second one: torchrun passes
# the SIGINT of a Ctrl-C on to its workers, which the terminal has already sent them.
SAME_REQUEST_SECONDS = 1.0


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM set `signum` instead of ending the process.

    Signal handlers can only be set from the main thread; elsewhere (a test runner's worker thread)
    this does nothing and signals keep their usual effect, as does a signal the process ignores.
    The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum = 0  # the first stop signal received, 0 while none
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                # A signal the process was started to ignore (`nohup`, `cmd &` in a script) stays
                # ignored.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def reason(self) -> str:
        """Why the run stopped, for its summary: this process's signal, or (under torchrun) one
        that another process of the job received."""
        if self.signum:
            return f"stopped by {self.name}"
        return "stopped by a signal to another process of the job"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum and time.monotonic() - self._first_at < SAME_REQUEST_SECONDS:
            return
        if self.signum:
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        self._first_at = time.monotonic()
        # A raw write: a buffered print could be the very call this signal interrupted.
        note = (
            f"\n{signal.Signals(signum).name}: finishing the current update and saving "
            "(send it again to stop at once, unsaved)\n"
        )
        os.write(2, note.encode())
