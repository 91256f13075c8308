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
    from leakhunter.synth import synth_corpus

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
    from leakhunter.synth import synth_corpus
    from leakhunter.training.dataset import build_dataset

    root = tmp_path_factory.mktemp("training")
    corpus = synth_corpus(root / "corpus", files_per_class=16, duration_s=4.0, seed=11)
    return build_dataset(corpus.root, root / "data.h5", val=0.2, test=0.25, seed=0).output


def quick_config(data, out, **changes):
    """A training config small enough for a unit test (a few seconds on 2 cores)."""
    from leakhunter.training.config import make_config

    values = {"data": str(data), "out": str(out), "epochs": 4, "batch_size": 256, "patience": 15, "seed": 0}
    return make_config(values | changes)


@pytest.fixture(scope="session")
def make_checkpoint():
    """make_checkpoint(mode, preset_name, path) writes a best.pth as training does ({"card", "model"}, atomic):
    the card of that mode and preset, a randomly initialised LeakCNN (seed 0) with a per-bin normaliser
    that is not the identity. Returns the path."""
    import torch

    from leakhunter.card import BINARY_CLASSES, STANDARD_CLASSES, ModelCard, preset
    from leakhunter.checkpoint import save_atomic
    from leakhunter.models import build_model

    def make(mode: str, preset_name: str, path) -> Path:
        frontend, segmentation = preset(preset_name)
        classes = BINARY_CLASSES if mode == "binary" else STANDARD_CLASSES
        card = ModelCard.for_mode(mode, classes, frontend=frontend, segmentation=segmentation)
        torch.manual_seed(0)
        model = build_model(card)
        with torch.no_grad():
            model.normalise.mean.copy_(torch.linspace(-30.0, -70.0, frontend.n_mels))
            model.normalise.std.copy_(torch.linspace(8.0, 14.0, frontend.n_mels))
        save_atomic({"card": card.to_json(), "model": model.state_dict()}, path)
        return Path(path)

    return make


@pytest.fixture(scope="session")
def binary_export(make_checkpoint, tmp_path_factory):
    """A binary `short`-preset checkpoint and its default export (waveform input, fp32): (best.pth, report).
    Shared and read-only: tests that change the file work on a copy."""
    from leakhunter.export import export_model

    checkpoint = make_checkpoint("binary", "short", tmp_path_factory.mktemp("binary") / "best.pth")
    return checkpoint, export_model(checkpoint)


@pytest.fixture(scope="session")
def trained_model(training_dataset, tmp_path_factory):
    """A multiclass model trained for 4 epochs on the training dataset: its best.pth."""
    from leakhunter.training.trainer import train

    run = tmp_path_factory.mktemp("trained") / "run"
    return train(quick_config(training_dataset, run, mode="multiclass"), log=lambda text: None).run_dir / "best.pth"


@pytest.fixture(scope="session")
def onnx_model(trained_model):
    """The trained model exported to ONNX (waveform input, fp32, parity-checked)."""
    from leakhunter.export import export_model

    return export_model(trained_model).output


class Interrupt(Exception):
    """What `stop_after` raises: a run stopped right after an epoch's files were written, as a kill would."""


def stop_after(epoch_to_stop: int):
    """A Trainer._write_epoch that writes epoch `epoch_to_stop`'s row and checkpoints, then raises Interrupt
    (patch it in with monkeypatch.setattr(Trainer, "_write_epoch", stop_after(N)))."""
    from leakhunter.training.trainer import Trainer

    original = Trainer._write_epoch

    def write_then_stop(self, epoch, row, improved):
        original(self, epoch, row, improved)
        if epoch == epoch_to_stop:
            raise Interrupt

    return write_then_stop


def final_weights(run_dir):
    """The state_dict of a run's checkpoints/last.pth."""
    from leakhunter.checkpoint import load_checkpoint

    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.pth")["model"]


def waveform_session(module, segmentation, output: str):
    """`module` (waveforms [B, T] → one output) exported as export/convert.py exports a model (dynamo, opset 18,
    dynamic batch and samples, exporter chatter silenced) and loaded in onnxruntime on CPU."""
    import logging
    import warnings

    import onnxruntime
    import torch

    example = torch.randn(2, segmentation.long_samples + 3 * segmentation.long_hop + 1)
    dynamic = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=segmentation.long_samples)},)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=18,
                                        input_names=["waveform"], output_names=[output], dynamic_shapes=dynamic,
                                        verbose=False)
    finally:
        exporter_log.setLevel(level)
    return onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def reference_run(small_dataset, tmp_path_factory):
    """A tiny binary reference model (`--reference sensor`, 2 epochs) on the small dataset: (best.pth, its export)."""
    from leakhunter.export import export_model
    from leakhunter.training.trainer import train

    root = tmp_path_factory.mktemp("reference")
    config = quick_config(small_dataset.output, root / "run", mode="binary", reference="sensor", epochs=2,
                          channels="4,8,8", hidden=16)
    checkpoint = train(config, log=lambda text: None).run_dir / "best.pth"
    return checkpoint, export_model(checkpoint)


@pytest.fixture(scope="session")
def reference_table(reference_run, small_corpus, tmp_path_factory):
    """`leak reference build` over the small corpus for the reference model: the table's path."""
    from typer.testing import CliRunner

    from leakhunter.cli import app

    path = tmp_path_factory.mktemp("table") / "refs.json"
    result = CliRunner().invoke(app, ["reference", "build", str(small_corpus.root), "--model",
                                      str(reference_run[1].output), "-o", str(path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return path
