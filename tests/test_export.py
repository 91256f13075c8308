"""`leak export`: one self-contained .onnx that carries its card and scores like torch, or nothing at all."""

import dataclasses
import hashlib
import json

import librosa
import numpy as np
import onnx
import onnxruntime
import pytest
import soundfile
import soxr
import torch
from typer.testing import CliRunner

from leakhunter.card import ModelCard, preset
from leakhunter.cli import app
from leakhunter.export import ExportError, export_model
from leakhunter.export.graph import FoldedLeakCNN, WaveformScorer, scorer_for_export
from leakhunter.export.parity import compare, golden_recordings, reference_scores
from leakhunter.frontend import FrontEnd
from leakhunter.inference import load_runner
from leakhunter.models import Scorer
from leakhunter.segments import long_segment_inputs, plan_segments

runner = CliRunner()


@pytest.fixture(scope="module")
def multiclass_long(make_checkpoint, tmp_path_factory):
    return make_checkpoint("multiclass", "long", tmp_path_factory.mktemp("multiclass") / "best.pth")


def librosa_log_mel(y, cfg):
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         win_length=cfg.win_length, window="hann", n_mels=cfg.n_mels,
                                         fmin=cfg.fmin, fmax=cfg.fmax, power=2.0, center=False)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def test_dft_by_matmul_matches_librosa_and_the_production_front_end(real_data_dir):
    """The export's STFT (framing by slices, the folded real DFT as two float64 MatMuls) is the same feature
    as torch.stft in float64: 1e-4 dB of librosa on real hydrophone audio with 90 dB of dynamic range, and
    4e-6 dB (a float32 step of the dB value) of the production path, also for odd sizes and hops."""
    cfg, segmentation = preset("short")
    rng = np.random.default_rng(5)
    cases = {"white": 0.1 * rng.standard_normal(4096 * 6).astype(np.float32)}
    for path in sorted(real_data_dir.glob("*.wav"))[:2]:
        y, rate = soundfile.read(path, dtype="float32")
        cases[path.stem] = soxr.resample(y, rate, cfg.sample_rate).astype(np.float32)
    matmul, production = FrontEnd(cfg, segmentation, dft="matmul"), FrontEnd(cfg, segmentation)
    for name, y in cases.items():
        ours = matmul(torch.from_numpy(y)[None])[0].numpy()
        assert np.abs(ours - librosa_log_mel(y, cfg)).max() <= 1e-4, name
        assert np.abs(ours - production(torch.from_numpy(y)[None])[0].numpy()).max() <= 1e-5, name
    for n_fft, win_length, hop_length in ((511, 511, 100), (500, 400, 96)):
        odd = dataclasses.replace(cfg, n_fft=n_fft, win_length=win_length, hop_length=hop_length)
        y = torch.from_numpy(cases["white"])[None]
        ours, theirs = FrontEnd(odd, dft="matmul")(y), FrontEnd(odd)(y)
        assert ours.shape == theirs.shape and (ours - theirs).abs().max() <= 1e-5, (n_fft, win_length, hop_length)
    with pytest.raises(ValueError, match="dft must be one of"):
        FrontEnd(cfg, segmentation, dft="fftw")


@pytest.mark.parametrize("preset_name", ["short", "long", "wide"])
def test_folded_network_and_waveform_graph_equal_the_torch_path_at_every_length(preset_name, make_checkpoint,
                                                                                 tmp_path):
    """The exact rewrites (3x1 convolutions, pool folded into the Linear) and the in-graph segmentation
    give torch's scores, with plan_segments' number of inputs, for any length and both tail rules."""
    checkpoint = make_checkpoint("multiclass", preset_name, tmp_path / "best.pth")
    _, reference = load_runner(checkpoint, device="cpu")
    model, card = reference.scorer.model, reference.card
    mel = torch.randn(64, *reference.scorer.input_shape) * 10 - 50
    folded = FoldedLeakCNN(model, reference.scorer.input_shape)
    for ours, theirs in zip(folded(mel), model(mel)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    for tail in ("drop", "pad"):
        card = dataclasses.replace(card, segmentation=dataclasses.replace(card.segmentation, tail=tail))
        graph, torch_path = WaveformScorer(scorer_for_export(model, card), card), Scorer(model, card)
        frontend = FrontEnd(card.frontend, card.segmentation)
        seg = card.segmentation
        for n_samples in (seg.long_samples, seg.long_samples + 1, seg.long_samples + seg.long_hop - 1, 4096 * 3 + 777):
            waveform = torch.randn(2, n_samples) * 0.1
            plan = plan_segments(n_samples, seg)
            with torch.no_grad():
                shorts = frontend.short_segments(waveform)
                if seg.unit == "short":
                    inputs = shorts.reshape(-1, 1, *shorts.shape[-2:])
                else:
                    inputs = torch.cat([long_segment_inputs(s, plan.long_first_short, plan.shorts_per_long) for s in shorts])
                    inputs = inputs[:, None]
                expected_probs, expected_leak = torch_path(inputs)
                probs, leak = graph(waveform)
            assert leak.shape[0] == 2 * (plan.n_short if seg.unit == "short" else plan.n_long), (tail, n_samples)
            torch.testing.assert_close(leak, expected_leak, rtol=0, atol=1e-5)
            torch.testing.assert_close(probs, expected_probs, rtol=0, atol=1e-5)


def test_binary_export_is_one_file_carrying_the_card_and_passes_parity(binary_export):
    checkpoint, report = binary_export
    output = checkpoint.with_suffix(".onnx")
    assert report.output == str(output) and report.passed and report.precision == "fp32"
    (fp32,) = report.parity
    assert fp32.max_abs_leak_prob <= 1e-4 and not fp32.verdict_flips
    assert report.golden["synthetic"] == 10 and report.golden["noise"] == 3
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.onnx", "best.parity.json", "best.pth"]
    saved = json.loads(checkpoint.with_suffix(".parity.json").read_text())
    assert saved["passed"] and saved["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert saved["parity"][0]["max_abs_leak_prob"] == fp32.max_abs_leak_prob

    # what a tool that is not leakhunter sees: plain onnx and onnxruntime
    model = onnx.load(output, load_external_data=False)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata["class_names"]) == ["NOLEAK", "LEAK"]
    assert json.loads(metadata["leak_idx"]) == 1 and json.loads(metadata["mode"]) == "binary"
    assert json.loads(metadata["leakhunter.input"]) == "waveform"
    card = ModelCard.from_json(metadata["leakhunter.card"])
    assert card == load_runner(checkpoint)[0]
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (waveform,) = session.get_inputs()
    assert waveform.name == "waveform" and waveform.shape == ["batch", "samples"]
    recording = np.random.default_rng(0).standard_normal(4096 * 5).astype(np.float32) * 0.1
    probs, leak_prob = session.run(None, {"waveform": np.stack([recording, recording[::-1].copy()])})
    n_short = plan_segments(recording.size, card.segmentation).n_short
    assert probs.shape == (2 * n_short, 2) and leak_prob.shape == (2 * n_short,)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(leak_prob, probs[:, card.leak_idx], atol=1e-7)


def test_multiclass_long_export_checks_fp32_then_keeps_int8(multiclass_long):
    report = export_model(multiclass_long, int8=True)
    assert report.output.endswith("best.int8.onnx") and [r.precision for r in report.parity] == ["fp32", "int8"]
    fp32, int8 = report.parity
    assert fp32.max_abs_leak_prob <= 1e-4 and fp32.tolerance == 1e-4 and not fp32.verdict_flips
    assert 1e-6 < int8.max_abs_leak_prob < 1e-2 and int8.tolerance is None and not int8.verdict_flips
    assert report.size_bytes < 0.8 * multiclass_long.stat().st_size
    card, onnx_runner = load_runner(report.output)
    assert card.segmentation.unit == "long" and onnx_runner.backend == "onnxruntime"
    recording = golden_recordings(card)[0].samples
    _, torch_runner = load_runner(multiclass_long)
    (probs, leak), (_, torch_leak) = onnx_runner.score_waveform(recording), torch_runner.score_waveform(recording)
    assert probs.shape == (plan_segments(recording.size, card.segmentation).n_long, 5)
    assert 0 < np.abs(leak - torch_leak).max() <= int8.max_abs_leak_prob


def test_a_graph_that_drifts_from_torch_is_refused_and_nothing_is_written(binary_export, tmp_path, monkeypatch):
    """An exported graph whose LEAK bias is off by 0.01 (a broken rewrite, say) fails parity by that much."""
    checkpoint, report = binary_export
    drifted = onnx.load(report.output)
    bias = next(init for init in drifted.graph.initializer if tuple(init.dims) == (2,))
    values = onnx.numpy_helper.to_array(bias) + np.array([0.0, 0.01], dtype=np.float32)
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    monkeypatch.setattr("leakhunter.export.pipeline.to_onnx", lambda *args: (drifted, []))
    target = tmp_path / "leak.onnx"
    target.write_bytes(b"the previous export")
    with pytest.raises(ExportError, match=r"nothing written to .*leak.onnx: fp32: max \|Δ leak_prob\| 0.0025 exceeds "
                                          r"0.0001 \(25x the tolerance\)") as refused:
        export_model(checkpoint, target)
    assert refused.value.report.parity[0].max_abs_leak_prob == pytest.approx(0.0025, rel=0.01)
    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["leak.onnx"]  # no report, no temporaries


def test_a_verdict_flip_fails_parity_and_names_the_recordings(binary_export):
    checkpoint, report = binary_export
    card, torch_runner = load_runner(checkpoint)
    recordings = golden_recordings(card)[:4]

    class Shifted:  # an "export" whose P(LEAK) is 0.3 higher than torch's
        def score_waveform(self, samples, meta=None):
            probs, leak = torch_runner.score_waveform(samples, meta)
            return probs, np.clip(leak + 0.3, 0, 1)

    result = compare(reference_scores(torch_runner, recordings), Shifted(), recordings, card, "int8", None)
    flipped = [f.name for f in result.files if f.verdict_torch != f.verdict_exported]
    assert flipped and result.verdict_flips == flipped and not result.passed
    assert f"flips on {len(flipped)} of 4 golden recordings: {flipped[0]}" in result.failure()
    assert result.max_abs_leak_prob == pytest.approx(0.3, abs=1e-6)


def test_leak_export_cli_writes_an_fp16_mel_input_model_and_leak_info_describes_it(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("multiclass", "short", tmp_path / "best.pth")
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "mel.onnx"), "--input", "mel", "--fp16"])
    assert result.exit_code == 0, result.output
    assert "fp16" in result.output and "pass" in result.output and "mel.parity.json" in result.output
    (fp16,) = json.loads((tmp_path / "mel.parity.json").read_text())["parity"]
    assert fp16["precision"] == "fp16" and 0 < fp16["max_abs_leak_prob"] < 1e-2 and not fp16["verdict_flips"]
    result = runner.invoke(app, ["info", str(tmp_path / "mel.onnx"), "--json"])
    described = json.loads(result.output)
    facts = described.pop("file")
    assert facts["input"] == "mel" and facts["precision"] == "fp16" and facts["opset"] == 18
    assert facts["inputs"] == [{"name": "mel", "dtype": "float32", "shape": ["batch", 1, 32, 1]}]
    assert facts["outputs"][0]["shape"] == ["batch", 5]
    assert ModelCard.from_dict(described).class_names[0] == "LEAK"  # the rest is the card itself
    result = runner.invoke(app, ["info", str(tmp_path / "mel.onnx")])
    assert result.exit_code == 0 and "sha256" in result.output and "mean_softmax_aux" in result.output
    assert "preset short; reads recordings of 3885 Hz and up" in result.output
    _, onnx_runner = load_runner(tmp_path / "mel.onnx")
    assert onnx_runner.accepts == ("waveform", "mel")


def test_export_refuses_unusable_options_and_files_before_any_work(binary_export, tmp_path):
    checkpoint, _ = binary_export
    for options, message in (({"fp16": True, "int8": True}, "not both"), ({"input": "spectrogram"}, "input must be"),
                             ({"opset": 17}, "opset must be between 18")):
        with pytest.raises(ValueError, match=message):
            export_model(checkpoint, tmp_path / "x.onnx", **options)
    result = runner.invoke(app, ["export", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and "missing.pth: no such file" in result.output
    (tmp_path / "empty.pth").write_bytes(b"")
    result = runner.invoke(app, ["export", str(tmp_path / "empty.pth")])
    assert result.exit_code == 2 and "empty.pth: empty file" in result.output  # bad input: 2; failed parity: 1
    exported = binary_export[1].output  # an .onnx is not a checkpoint: said so, not "holds Python objects"
    result = runner.invoke(app, ["export", str(exported), "-o", str(tmp_path / "again.onnx")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "not a .pth checkpoint" in text and "ONNX" in text, result.output
    (tmp_path / "data.pth").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    result = runner.invoke(app, ["export", str(tmp_path / "data.pth")])
    assert result.exit_code == 2 and "not a torch checkpoint" in " ".join(result.output.split()), result.output
    assert not list(tmp_path.glob("*.onnx"))
