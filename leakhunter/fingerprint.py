"""The sha256 of a file, read in 1 MiB blocks: how recordings (dataset splits, duplicates) and model files
(the rows' model_sha256) are identified. Torch-free."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
