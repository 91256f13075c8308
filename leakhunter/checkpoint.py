"""Checkpoint files: written atomically, read without unpickling code, always with a valid card.

best.pth = {"card": card JSON, "model": state_dict}; last.pth adds the training state. Everything
loads with torch.load(weights_only=True), so a malicious pickle is refused, not executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from leakhunter.card import CardError, ModelCard
from leakhunter.errors import LeakhunterError
from leakhunter.files import atomic_path


class CheckpointError(LeakhunterError, ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_atomic(payload: dict, path: str | Path) -> None:
    """torch.save through leakhunter.files.atomic_path: a checkpoint appears whole or not at all."""
    import torch  # here, not at the top: catching CheckpointError must not import torch (the ONNX path)

    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def rewrite_card(path: str | Path, change, meta_json: str | Path | None = None):
    """best.pth with its card replaced by `change(card)` (weights untouched), and the same card written to
    `meta_json` (a run's model_meta.json) when given; returns the new card."""
    from leakhunter.files import write_atomic

    payload = load_checkpoint(path)
    card = change(card_of(payload, path))
    save_atomic({"card": card.to_json(), "model": payload["model"]}, path)
    if meta_json is not None:
        write_atomic(meta_json, card.to_json())
    return card


# What a file handed over as a checkpoint is instead, by its first bytes (torch.load would call it unsafe pickle)
FILE_KINDS = ((b"\x89HDF", "an HDF5 file (a dataset?)"),
              (b"\x08", "an ONNX model, not a .pth checkpoint (leak info describes an .onnx)"),
              (b"RIFF", "a WAV recording"))
TORCH_MAGICS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; a legacy file's pickle protocol byte


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint's dict, or CheckpointError saying why not (missing, empty, truncated, unsafe, foreign)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), probably an interrupted save")
    with open(path, "rb") as handle:
        head = handle.read(8)
    kind = next((name for magic, name in FILE_KINDS if head.startswith(magic)), None)
    if kind is not None:  # another kind of file, which torch.load would call unsafe pickle or garbage
        raise CheckpointError(f"{path}: not a torch checkpoint but {kind}; give the best.pth of a training run")
    if not head.startswith(TORCH_MAGICS):  # text, or anything else torch's legacy reader would unpickle
        raise CheckpointError(f"{path}: not a torch checkpoint (a .pth is a zip archive or a pickle; this starts "
                              f"with {head!r}); give the best.pth of a training run")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors and plain data, which "
                              f"weights_only loading will not execute ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError) as error:
        # torch's unpickler raises a KeyError or IndexError of its own on bytes that are not a pickle
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(payload, dict) or "card" not in payload or "model" not in payload:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a leakhunter checkpoint (expected 'card' and 'model', found {keys})")
    return payload


def card_of(payload: dict, source: str | Path) -> ModelCard:
    card = payload["card"]
    if not isinstance(card, str):
        raise CardError([("card", f"must be stored as JSON text, got {type(card).__name__}")], str(source))
    return ModelCard.from_json(card, source=str(source))


def read_model(path: str | Path, map_location="cpu"):
    """(card, model in eval mode) from a best.pth or last.pth; the card is checked against the weights."""
    from leakhunter.models import load_model

    payload = load_checkpoint(path, map_location)
    card = card_of(payload, path)
    return card, load_model(card, payload["model"], source=str(path))
