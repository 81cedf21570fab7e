"""Which device a command computes on, and what that device does natively.

`train.device`, `--device` of translate / evaluate / serve and the `Translator` all go through
`resolve_device`: `auto` takes a GPU when one is visible, and asking for CUDA without one is a
user mistake, stopped before any work (STYLE.md section 7).
"""

from __future__ import annotations

import torch

from nmt.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


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
