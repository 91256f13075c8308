"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture
def real_data_dir() -> Path:
    """Five real 8 kHz hydrophone recordings (Aghashahi et al.) with labels.csv, from ../shared beside the
    checkout or $LEAKHUNTER_REAL_DATA; skips when absent."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "aghashahi-h1"
    folder = Path(os.environ.get("LEAKHUNTER_REAL_DATA", default))
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"real recordings not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A synthetic corpus of 8 recordings per class, 4 s at 8 kHz (shared, read-only)."""
    from leakhunter.training.synth import synth_corpus

    return synth_corpus(tmp_path_factory.mktemp("corpus"), files_per_class=8, duration_s=4.0, seed=3)


@pytest.fixture(scope="session")
def small_dataset(small_corpus, tmp_path_factory):
    """The small corpus built into data.h5 with the short preset (shared, read-only)."""
    from leakhunter.training.dataset import build_dataset

    output = tmp_path_factory.mktemp("dataset") / "data.h5"
    return build_dataset(small_corpus.root, output, workers=2)
