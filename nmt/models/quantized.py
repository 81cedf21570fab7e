"""int8 decoding on the CPU (`decode.precision=int8`): PyTorch's dynamic quantization of a trained
float32 model.

Every linear layer (and an RNN's GRU / LSTM) gets int8 weights, one scale per output channel,
and quantizes its input per call from the input's own range (dynamic quantization: nothing to
calibrate); products accumulate in int32 and come back as float32, so embeddings, layer norms,
attention softmaxes and log-probs stay float32 and attention is exported as before. This is the
int8 scheme CTranslate2 and Marian use on CPUs, done with torch.ao's kernels: fbgemm, or oneDNN,
which uses AMX int8 tiles where the CPU has them (bench/NOTES.md measures both).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantized_engine() -> str:
    """oneDNN on CPUs with AMX int8 (its kernels use the tiles; 2.7x fbgemm's speed on the 8k
    output layer, bench/NOTES.md), else torch's own choice for x86 and ARM."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if capabilities.get("amx_int8") and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of `model` (left unchanged) for CPU decoding; see the module docstring.

    Sets torch's quantized engine for the process (`quantized_engine`), since the weights are
    packed for the engine that will run them.
    """
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    torch.backends.quantized.engine = quantized_engine()
    spec = {
        nn.Linear: per_channel_dynamic_qconfig,
        nn.GRU: default_dynamic_qconfig,  # one scale per weight matrix: per-channel is for Linear
        nn.LSTM: default_dynamic_qconfig,
    }
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to the torchao package; its eager int8
        # kernels are what runs here, and torch is pinned (pyproject.toml).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)
    return quantized
