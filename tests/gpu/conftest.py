"""GPU tests. Each test's CUDA variant carries the `gpu` marker (`pytest -m gpu`, which
scripts/gpu-check.sh runs) and skips where no CUDA GPU is visible; its CPU variant, where it has
one, runs in the normal suite and shows that the test's own logic works."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace, read when it first runs in the process:
# set it before any test touches the GPU (train() sets it too, but possibly too late).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """train() sets threads, deterministic algorithms and (on a GPU) TF32 for the whole process;
    a later test comparing float32 results across devices must not inherit TF32."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    matmul = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.manual_seed(0)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn_tf32
