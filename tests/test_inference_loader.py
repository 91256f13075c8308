"""One loader for .pth and .onnx: (card, runner), the card checked against the graph or weights first,
and an ONNX path that runs where torch cannot even be imported."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
from typer.testing import CliRunner

from leakhunter.card import CardError
from leakhunter.checkpoint import CheckpointError
from leakhunter.cli import app
from leakhunter.inference import ModelLoadError, describe_model, load_runner, long_segment_probs
from leakhunter.segments import plan_segments
from leakhunter.synth import synth_recording

runner = CliRunner()


@pytest.fixture(scope="module")
def recording():
    """Nine seconds of a synthetic leak at 4096 Hz: 71 long and 143 short segments of the `short` preset."""
    return synth_recording("LEAK", 9.0, 4096, np.random.default_rng(1))


def with_metadata(source, target, **changes):
    """A copy of an exported model with some metadata_props replaced (JSON text values)."""
    model = onnx.load(source)
    values = {entry.key: entry.value for entry in model.metadata_props} | changes
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, target)
    return target


def test_pth_and_onnx_load_the_same_card_and_score_alike(binary_export, recording):
    checkpoint, report = binary_export
    torch_card, torch_runner = load_runner(checkpoint, device="cpu")
    onnx_card, onnx_runner = load_runner(report.output)
    assert torch_card == onnx_card and (torch_runner.backend, onnx_runner.backend) == ("torch", "onnxruntime")
    assert onnx_runner.sha256 == report.sha256 == hashlib.sha256(open(report.output, "rb").read()).hexdigest()
    assert torch_runner.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    (torch_probs, torch_leak), (probs, leak) = torch_runner.score_waveform(recording), onnx_runner.score_waveform(recording)
    plan = plan_segments(recording.size, torch_card.segmentation)
    assert probs.shape == torch_probs.shape == (plan.n_short, 2) and leak.dtype == np.float32
    assert np.abs(leak - torch_leak).max() <= 1e-4
    long_probs = long_segment_probs(onnx_card, recording.size, leak)
    assert long_probs.shape == (plan.n_long,)
    assert long_probs[0] == pytest.approx(leak[:3].mean(), abs=1e-6)  # a long segment averages its 3 shorts


def test_score_mel_where_the_artefact_takes_mels(binary_export, recording):
    checkpoint, report = binary_export
    _, torch_runner = load_runner(checkpoint)
    import torch

    from leakhunter.inference.torch_runner import scoring_mels

    mels = scoring_mels(torch_runner.frontend, torch_runner.card, torch.from_numpy(recording)).numpy()
    np.testing.assert_allclose(torch_runner.score_mel(mels)[1], torch_runner.score_waveform(recording)[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"expected mel inputs \[batch, 1, 32, 1\]"):
        torch_runner.score_mel(mels[:, 0])
    _, onnx_runner = load_runner(report.output)
    assert onnx_runner.accepts == ("waveform",)
    with pytest.raises(ValueError, match="takes waveform input, not mel spectrograms"):
        onnx_runner.score_mel(mels)


def test_long_recordings_are_scored_in_chunks_exactly_as_in_one_pass(binary_export, recording, monkeypatch):
    checkpoint, report = binary_export
    _, onnx_runner = load_runner(report.output)
    _, torch_runner = load_runner(checkpoint)
    whole = [r.score_waveform(recording) for r in (onnx_runner, torch_runner)]
    monkeypatch.setattr("leakhunter.inference.runner.CHUNK_FRAMES", 30)  # 15 long segments a chunk: 5 chunks
    for (probs, leak), r in zip(whole, (onnx_runner, torch_runner)):
        chunked_probs, chunked_leak = r.score_waveform(recording)
        assert chunked_leak.shape == leak.shape
        np.testing.assert_allclose(chunked_leak, leak, atol=1e-6)
        np.testing.assert_allclose(chunked_probs, probs, atol=1e-6)
    with pytest.raises(ValueError, match="shorter than one long segment"):
        onnx_runner.score_waveform(recording[:1000])


@pytest.mark.parametrize(("change", "expected"), [
    (lambda card: card | {"leak_idx": 0}, "leak_idx: 0 but class_names.index('LEAK') is 1"),
    (lambda card: card | {"schema_version": 99}, "schema_version: 99 is not supported"),
    (lambda card: card | {"mode": "multiclass", "leak_prob": "mean_softmax_aux", "class_names": ["LEAK", "NORMAL", "QUIET"],
                          "leak_idx": 0}, "class_names: card lists 3 classes"),
])
def test_tampered_cards_are_refused_naming_the_file_and_the_field(binary_export, tmp_path, change, expected):
    _, report = binary_export
    card = json.loads(onnx.load(report.output).metadata_props[0].value)
    tampered = change(card)
    flat = {"class_names": json.dumps(tampered["class_names"]), "leak_idx": json.dumps(tampered["leak_idx"]),
            "mode": json.dumps(tampered["mode"])}
    path = with_metadata(report.output, tmp_path / "tampered.onnx", **{"leakhunter.card": json.dumps(tampered)}, **flat)
    with pytest.raises(CardError, match="tampered.onnx") as refused:
        load_runner(path)
    assert expected in str(refused.value)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and expected in " ".join(result.output.split())


def test_flat_metadata_that_contradicts_the_card_is_refused(binary_export, tmp_path):
    _, report = binary_export
    path = with_metadata(report.output, tmp_path / "flat.onnx", leak_idx="0", mode='"multiclass"')
    with pytest.raises(CardError, match="flat.onnx") as refused:
        load_runner(path)
    assert "leak_idx: metadata says 0 but the card says 1" in str(refused.value)
    assert "mode: metadata says 'multiclass' but the card says 'binary'" in str(refused.value)


def test_empty_truncated_cardless_and_foreign_files_are_refused_with_the_file_named(binary_export, tmp_path):
    checkpoint, report = binary_export
    data = open(report.output, "rb").read()
    cases = {"empty.onnx": (b"", "empty.onnx: empty file (0 bytes)"),
             "truncated.onnx": (data[: len(data) // 2], "truncated.onnx: truncated or not an ONNX model"),
             "text.onnx": (b"this is not a model\n" * 10, "text.onnx: truncated or not an ONNX model")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError, match="^" + re.escape(f"{tmp_path}/{message}")):
            load_runner(tmp_path / name)
        result = runner.invoke(app, ["info", str(tmp_path / name)])
        assert result.exit_code == 1 and message in " ".join(result.output.split())
    cardless = onnx.load(report.output)
    del cardless.metadata_props[:]
    onnx.save(cardless, tmp_path / "cardless.onnx")
    with pytest.raises(ModelLoadError, match="cardless.onnx: carries no model card"):
        load_runner(tmp_path / "cardless.onnx")
    with pytest.raises(ModelLoadError, match=r"model.h5: not a model file; expected one of \.onnx, \.pth"):
        load_runner(tmp_path / "model.h5")
    (tmp_path / "half.pth").write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="half.pth: truncated"):
        load_runner(tmp_path / "half.pth")


def test_the_onnx_path_runs_where_torch_cannot_be_imported(binary_export, tmp_path):
    _, report = binary_export
    script = f"""
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import numpy as np
from leakhunter.inference import describe_model, load_runner
card, runner = load_runner({report.output!r})
probs, leak_prob = runner.score_waveform(np.zeros(4096 * 3, dtype=np.float32) + 0.01 * np.sin(np.arange(4096 * 3)))
print(runner.backend, probs.shape[0], describe_model({report.output!r})["file"]["opset"], card.class_names[card.leak_idx])
try:
    import torch
except ImportError:
    print("no torch")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnxruntime", "47", "18", "LEAK", "no", "torch"]


def test_asking_for_cuda_without_it_is_refused_and_auto_runs_on_cpu_quietly(binary_export):
    from leakhunter.errors import DeviceError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    _, report = binary_export
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"device '{device}' asked for, but onnxruntime .* has no CUDA "
                                              r"execution provider .*onnxruntime-gpu.*--device auto"):
            load_runner(report.output, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, onnx_runner = load_runner(report.output, device="auto")
        onnx_runner.score_waveform(np.zeros(4096 * 2, dtype=np.float32))
    assert onnx_runner.device == "cpu" and not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    with pytest.raises(ValueError, match="device 'gpu' is not one of auto, cpu, cuda"):
        load_runner(report.output, device="gpu")


def test_the_torch_runner_refuses_cuda_without_it_and_auto_runs_on_cpu_quietly(binary_export):
    import torch

    from leakhunter.errors import DeviceError

    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here")
    checkpoint, _ = binary_export
    with pytest.raises(DeviceError, match=r"device 'cuda' asked for, but CUDA is not available .*--device auto"):
        load_runner(checkpoint, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, torch_runner = load_runner(checkpoint, device="auto")
        torch_runner.score_waveform(np.zeros(4096 * 2, dtype=np.float32))
    assert torch_runner.device == "cpu" and not caught


def test_leak_info_describes_onnx_pth_and_card_json(binary_export, tmp_path):
    checkpoint, report = binary_export
    result = runner.invoke(app, ["info", report.output])
    assert result.exit_code == 0
    for fact in ("NOLEAK", "waveform float32 ['batch', 'samples']", "opset", report.sha256):
        assert fact in result.output

    described = json.loads(runner.invoke(app, ["info", report.output, "--json"]).output)
    assert described == describe_model(report.output)
    facts = described.pop("file")
    assert facts["size_bytes"] == report.size_bytes and facts["sha256"] == report.sha256
    assert facts["precision"] == "fp32" and [o["name"] for o in facts["outputs"]] == ["probs", "leak_prob"]
    assert described["class_names"] == ["NOLEAK", "LEAK"] and described["leak_idx"] == 1
    checkpoint_facts = describe_model(checkpoint)["file"]
    assert checkpoint_facts["format"] == "checkpoint" and checkpoint_facts["parameters"] > 100_000
    assert checkpoint_facts["contents"] == ["card", "model"]
    (tmp_path / "model_meta.json").write_text(json.dumps(described))
    card_only = describe_model(tmp_path / "model_meta.json")
    assert card_only.pop("file")["format"] == "card" and card_only == described
    shutil.copy(report.output, tmp_path / "renamed.bin")
    result = runner.invoke(app, ["info", str(tmp_path / "renamed.bin")])
    assert result.exit_code == 1 and "renamed.bin: not a model file" in result.output


def test_leak_info_summarises_what_a_person_reads_and_json_keeps_it_whole(trained_model):
    """The human view was the card's JSON row by row: a wall of normaliser statistics and the whole training
    record. The normaliser, the training record and the operating points are summarised; --json is unchanged."""
    result = runner.invoke(app, ["info", str(trained_model)])
    shown = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "per mel bin: 32 means and standard deviations (--json shows them)" in shown and '"mean": [' not in shown
    assert "validation file F1" in shown and "test file F1" in shown and "settings: epochs 4" in shown
    described = json.loads(runner.invoke(app, ["info", str(trained_model), "--json"]).output)
    assert len(described["normalisation"]["mean"]) == 32 and "config" in described["training"]
