"""Device choice for torch code: `auto` takes CUDA when present; asking for CUDA without it falls back
to CPU with one warning, never a crash; mixed precision is chosen per device.
"""

from __future__ import annotations

import warnings

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name != "auto":
        warnings.warn(f"device {name!r} asked for but CUDA is not available; running on CPU", stacklevel=2)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, else fp16 on CUDA; None (full precision) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
