"""What `leak info` shows: a model file's card and, for ONNX, its inputs, outputs, opset, size and sha256.

Describing validates: an invalid card, or one that contradicts the graph or the weights, raises.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from leakhunter.card import ModelCard
from leakhunter.inference.loader import CHECKPOINT_SUFFIXES, ONNX_SUFFIXES
from leakhunter.inference.onnx_card import ModelLoadError, read_onnx


def describe_model(path: str | Path) -> dict:
    """The card's fields (JSON-able, as in model_meta.json) plus "file": what the file itself is.

    "file" holds path, format ("onnx" | "checkpoint" | "card"), size_bytes, sha256; for ONNX also input
    ("waveform" | "mel"), precision, inputs, outputs, opset and producer; for a checkpoint parameters and
    contents (its top-level keys). Works on .onnx, .pth/.pt and card .json files; raises the same
    errors as load_runner (every one a ValueError naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    data = path.read_bytes()
    facts = {"path": str(path), "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        model = read_onnx(path)
        card = model.card
        facts |= {"format": "onnx", "input": model.input, "precision": model.precision,
                  "inputs": model.tensor_shapes("inputs"), "outputs": model.tensor_shapes("outputs"),
                  "opset": model.opset,
                  "producer": model.facts.producer}
    elif suffix in CHECKPOINT_SUFFIXES:
        from leakhunter.checkpoint import card_of, load_checkpoint  # imports torch
        from leakhunter.models import load_model, parameter_count

        payload = load_checkpoint(path)
        card = card_of(payload, path)
        facts |= {"format": "checkpoint", "contents": sorted(payload),
                  "parameters": parameter_count(load_model(card, payload["model"], source=str(path)))}
    elif suffix == ".json":
        card = ModelCard.load(path)
        facts |= {"format": "card"}
    else:
        raise ModelLoadError(f"{path}: not a model file; expected .onnx, .pth or a card .json")
    return card.to_dict() | {"file": facts}
