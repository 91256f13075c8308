"""One loader for every model file: `load_runner("best.pth" | "leak.onnx")` → (card, runner).

The card is validated, and checked against the weights or the graph, before anything is scored.
Importing this module, and loading and running an .onnx file, does not import torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from leakhunter.card import ModelCard
from leakhunter.fingerprint import file_sha256
from leakhunter.inference.onnx_card import ModelLoadError, read_onnx
from leakhunter.inference.runner import Runner

ONNX_SUFFIXES = (".onnx",)
CHECKPOINT_SUFFIXES = (".pth", ".pt")


def load_runner(path: str | Path, device: str = "auto", threads: int | None = None) -> tuple[ModelCard, Runner]:
    """The card and a Runner for a .pth checkpoint (torch) or an exported .onnx file (onnxruntime).

    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; asking for CUDA where there is none
    is a leakhunter.errors.DeviceError. Every other refusal is a ValueError naming the file: ModelLoadError (missing,
    empty, truncated, not a model), leakhunter.card.CardError (invalid card, or a card that contradicts
    the graph or the weights) or leakhunter.checkpoint.CheckpointError. `threads` caps the CPU threads the
    backend uses (worker processes share the cores); None leaves the backend's default.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from leakhunter.inference.onnx_runner import OnnxRunner

        runner = OnnxRunner(read_onnx(path), device, threads)
    elif suffix in CHECKPOINT_SUFFIXES:
        from leakhunter.inference.torch_runner import TorchRunner  # imports torch

        runner = TorchRunner(path, device, threads)
    else:
        raise ModelLoadError(f"{path}: not a model file; expected one of "
                             f"{', '.join(ONNX_SUFFIXES + CHECKPOINT_SUFFIXES)}")
    return runner.card, runner


def read_card(path: str | Path) -> tuple[ModelCard, str, str]:
    """(card, sha256, backend) of a model file without building a session or a network: what a parent
    process that leaves the scoring to workers needs. Validates the card as load_runner does."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        model = read_onnx(path)
        return model.card, hashlib.sha256(model.data).hexdigest(), "onnxruntime"
    if suffix in CHECKPOINT_SUFFIXES:
        from leakhunter.checkpoint import card_of, load_checkpoint  # imports torch

        return card_of(load_checkpoint(path), path), file_sha256(path), "torch"
    raise ModelLoadError(f"{path}: not a model file; expected one of {', '.join(ONNX_SUFFIXES + CHECKPOINT_SUFFIXES)}")
