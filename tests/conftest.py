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


@pytest.fixture(scope="session")
def training_dataset(tmp_path_factory):
    """80 synthetic files (16 per class, 4 s) split 55/20/25 %: enough test files for a file-level F1."""
    from leakhunter.training.dataset import build_dataset
    from leakhunter.training.synth import synth_corpus

    root = tmp_path_factory.mktemp("training")
    corpus = synth_corpus(root / "corpus", files_per_class=16, duration_s=4.0, seed=11)
    return build_dataset(corpus.root, root / "data.h5", val=0.2, test=0.25, seed=0).output


def quick_config(data, out, **changes):
    """A training config small enough for a unit test (a few seconds on 2 cores)."""
    from leakhunter.training.config import make_config

    values = {"data": str(data), "out": str(out), "epochs": 4, "batch_size": 256, "patience": 15, "seed": 0}
    return make_config(values | changes)
