"""Two tiny trained models (a Transformer and an RNN) and one real `nmt serve` over both, shared by
the server and page tests of the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="nmt serve needs starlette (pip install 'nmt[serve]')")
pytest.importorskip("uvicorn", reason="nmt serve needs uvicorn (pip install 'nmt[serve]')")

from serve_support import Server  # noqa: E402
from tiny import train_run, trained  # noqa: E402

# Limits the server under test runs with; the tests check them.
MAX_SENTENCES = 8
MAX_CHARS = 400


@pytest.fixture(scope="session")
def served_runs(tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The runs served, named by their folders: tiny-transformer (the default; 400 updates, so
    that it writes several words for the page tests to hover over) and tiny-rnn (120 updates)."""
    root = tmp_path_factory.mktemp("served")
    return [
        train_run(trained(400, "transformer"), tiny_prepared, root / "tiny-transformer"),
        train_run(trained(120, "rnn"), tiny_prepared, root / "tiny-rnn"),
    ]


@pytest.fixture(scope="session")
def server(served_runs: list[Path]) -> Iterator[Server]:
    """`nmt serve` over both runs on a free loopback port. A long batching wait (50 ms) makes
    concurrent requests share a decoding call reliably."""
    args = ["--max-sentences", str(MAX_SENTENCES), "--max-chars", str(MAX_CHARS),
            "--max-wait-ms", "50"]  # fmt: skip
    running = Server(served_runs, args).start()
    yield running
    running.stop()
