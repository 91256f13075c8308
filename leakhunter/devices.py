"""Device names, parsed once: `auto` takes CUDA when present, else CPU, silently; `cuda` / `cuda:N` is strict:
without CUDA it is a DeviceError (never a silent CPU run), and a GPU index this machine lacks is refused at
once, naming what exists.

Importing this module never imports torch (the ONNX scoring path parses device names too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from leakhunter.errors import DeviceError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceRequest:
    kind: str  # "auto", "cpu" or "cuda"
    index: int | None = None  # only with "cuda"

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(name: str | DeviceRequest) -> DeviceRequest:
    """'auto', 'cpu', 'cuda' or 'cuda:N'; anything else is a DeviceError naming the allowed values."""
    if isinstance(name, DeviceRequest):
        return name
    match = DEVICE_PATTERN.match(str(name).strip().lower())
    if not match or (match[2] is not None and match[1] != "cuda"):
        raise DeviceError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return DeviceRequest(match[1], None if match[2] is None else int(match[2]))


def pick_device(name: str | DeviceRequest = "auto"):
    """The torch.device for a request; `cuda` where torch has no CUDA → DeviceError; `auto` → CUDA or CPU."""
    import torch

    request = parse_device(name)
    if request.kind == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        if request.index is not None and request.index >= torch.cuda.device_count():
            raise DeviceError(f"device {request} asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda" if request.index is None else f"cuda:{request.index}")
    if request.kind == "cuda":
        reason = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"device {str(request)!r} asked for, but CUDA is not available (torch {torch.__version__}: "
                          f"{reason}); use --device auto to fall back to CPU")
    return torch.device("cpu")


def autocast_dtype(device, enabled: bool = True):
    """bf16 on CUDA devices that support it, else fp16 on CUDA; None (full precision) on CPU."""
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def rank_device(name: str | DeviceRequest, local_rank: int, cuda_available: bool, device_count: int) -> str:
    """The device one torchrun process trains on: `cuda:LOCAL_RANK` (each process its own GPU) or `cpu`.

    A pure function (no torch) so every combination is testable without GPUs. `cuda:N` is refused: under
    torchrun every rank would pick the same GPU N; choose GPUs with CUDA_VISIBLE_DEVICES instead. A
    LOCAL_RANK without its own GPU is refused rather than doubled up on one GPU."""
    request = parse_device(name)
    if request.kind == "cpu":
        return "cpu"
    if request.index is not None:
        raise DeviceError(f"device {request} cannot be used under torchrun: each process binds cuda:LOCAL_RANK; "
                          f"use --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    if not cuda_available:
        if request.kind == "cuda":  # as pick_device: never a silent CPU run when CUDA was asked for
            raise DeviceError(f"device {str(request)!r} asked for, but CUDA is not available; use --device auto "
                              f"to fall back to CPU")
        return "cpu"
    if not 0 <= local_rank < device_count:
        raise DeviceError(f"LOCAL_RANK {local_rank} has no GPU of its own: this machine has {device_count} CUDA "
                          f"device(s); start at most {device_count} processes per node (--nproc-per-node)")
    return f"cuda:{local_rank}"


def to_device(tensor, device):
    """A host batch on `device`. On CUDA it is pinned first: `non_blocking` from pageable memory is not
    asynchronous, so the copy would stall the host. On CPU it returns the tensor itself (no copy)."""
    if device.type != "cuda":
        return tensor.to(device)
    if tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
