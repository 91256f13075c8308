"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def real_data_dir() -> Path:
    """Five real 8 kHz hydrophone recordings (Aghashahi et al.) with labels.csv; skips when not checked out."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "aghashahi-h1"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"real recordings not found at {folder}")
    return folder
