"""Training tests run seeded, and leave torch's global switches as they found them (train() sets
threads and deterministic algorithms from the config)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
