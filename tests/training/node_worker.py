"""One rank of the torchrun jobs in test_multinode.py: `nmt train` (arguments as for `nmt`), with
a fault the test chooses through the environment, wrapped around the real loss function:

    NMT_TEST_KILL=RANK:ATTEMPT   that rank kills itself (SIGKILL) in update attempt ATTEMPT, after
                                 its forward: updates since the last checkpoint die with it
    NMT_TEST_TERM=RANK:ATTEMPT   that rank sends SIGTERM to its node's torchrun launcher, as a
                                 scheduler stopping one node does
"""

from __future__ import annotations

import os
import signal
from typing import Any

from nmt.cli import main
from nmt.training import loop


def _fault(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    if not value:
        return None
    rank, attempt = value.split(":")
    return int(rank), int(attempt)


def _wrap_loss() -> None:
    kill, term = _fault("NMT_TEST_KILL"), _fault("NMT_TEST_TERM")
    rank = int(os.environ["RANK"])
    real_loss = loop.training_loss
    attempts = 0

    def training_loss(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1  # one micro-batch per update in these tests
        result = real_loss(*args, **kwargs)
        if kill == (rank, attempts):
            os.kill(os.getpid(), signal.SIGKILL)
        if term == (rank, attempts):
            os.kill(os.getppid(), signal.SIGTERM)
        return result

    loop.training_loss = training_loss  # type: ignore[assignment]


if __name__ == "__main__":
    _wrap_loss()
    main()
