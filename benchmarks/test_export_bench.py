"""Export speed (DESIGN §10), ratios measured in one run: onnxruntime (CPU) vs torch eager on the same
model at batch 1, 64 and 1024; the waveform-input graph (front-end inside) vs a mel-input graph fed by
the torch front-end; and what int8 buys and costs.

Every onnxruntime session here is the OnnxRunner's (idle workers sleep rather than spin), so the torch
timings taken in the same process are not starved by spinning threads; the two sides of each ratio are
timed in turns, so a change in the machine's load hits both.
"""


import numpy as np
import pytest
import torch
from timing import best_of_interleaved

from leakhunter.card import STANDARD_CLASSES, ModelCard, preset
from leakhunter.checkpoint import save_atomic
from leakhunter.export import export_model
from leakhunter.inference import load_runner
from leakhunter.inference.torch_runner import scoring_mels
from leakhunter.models import build_model
from leakhunter.synth import synth_recording


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A multiclass `short` checkpoint and its exports: waveform fp32 (the default), mel fp32, mel int8."""
    folder = tmp_path_factory.mktemp("export_bench")
    frontend, segmentation = preset("short")
    card = ModelCard.for_mode("multiclass", STANDARD_CLASSES, frontend=frontend, segmentation=segmentation)
    torch.manual_seed(0)
    model = build_model(card)
    with torch.no_grad():
        model.normalise.mean.copy_(torch.linspace(-30.0, -70.0, frontend.n_mels))
        model.normalise.std.copy_(torch.linspace(8.0, 14.0, frontend.n_mels))
    checkpoint = folder / "best.pth"
    save_atomic({"card": card.to_json(), "model": model.state_dict()}, checkpoint)
    paths = {"waveform": export_model(checkpoint).output,
             "mel": export_model(checkpoint, folder / "mel.onnx", input="mel").output,
             "mel-int8": export_model(checkpoint, folder / "mel.int8.onnx", input="mel", int8=True).output}
    runners = {name: load_runner(path, device="cpu")[1] for name, path in paths.items()}
    runners["torch"] = load_runner(checkpoint, device="cpu")[1]
    return runners


@pytest.fixture(scope="module")
def mels(models):
    """1024 CNN inputs from synthetic recordings of every class (the int8 delta needs real-looking input)."""
    torch_runner = models["torch"]
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        parts = [scoring_mels(torch_runner.frontend, torch_runner.card,
                              torch.from_numpy(synth_recording(label, 26.0, 4096, rng))) for label in STANDARD_CLASSES]
    return torch.cat(parts)[:1024].numpy()


@pytest.mark.parametrize("batch", [1, 64, 1024])
def test_onnxruntime_vs_torch_eager(benchmark, report_ratio, models, mels, batch):
    onnx_runner, torch_runner = models["mel"], models["torch"]
    inputs = np.ascontiguousarray(mels[:batch])
    rounds = 200 if batch == 1 else 50 if batch == 64 else 10
    ours = benchmark.pedantic(onnx_runner.score_mel, args=(inputs,), rounds=rounds, warmup_rounds=2)
    np.testing.assert_allclose(ours[1], torch_runner.score_mel(inputs)[1], atol=1e-4)
    onnx_s, torch_s = best_of_interleaved([lambda: onnx_runner.score_mel(inputs),
                                           lambda: torch_runner.score_mel(inputs)], rounds, warmup=True)
    onnx_rate, torch_rate = batch / onnx_s, batch / torch_s
    benchmark.extra_info.update(inputs_per_s=onnx_rate, torch_inputs_per_s=torch_rate)
    report_ratio(f"network, batch {batch}: onnxruntime vs torch eager",
                 f"{onnx_rate:8.0f} vs {torch_rate:8.0f} inputs/s = {onnx_rate / torch_rate:5.2f}x")


@pytest.mark.parametrize("seconds", [4, 60, 600])
def test_waveform_graph_vs_mel_graph_with_torch_frontend(benchmark, report_ratio, models, seconds):
    """Whole recordings end to end: 4 s is 63 scoring inputs, 60 s 959, 600 s 9599 (three chunks)."""
    recording = synth_recording("LEAK", float(seconds), 4096, np.random.default_rng(1))
    waveform_runner, mel_runner, torch_runner = models["waveform"], models["mel"], models["torch"]
    rounds = {4: 30, 60: 5, 600: 3}[seconds]
    ours = benchmark.pedantic(waveform_runner.score_waveform, args=(recording,), rounds=rounds, warmup_rounds=1)
    np.testing.assert_allclose(ours[1], torch_runner.score_waveform(recording)[1], atol=1e-4)
    ours_s, mel_s, torch_s = best_of_interleaved([lambda scorer=scorer: scorer.score_waveform(recording) for scorer in
                                                  (waveform_runner, mel_runner, torch_runner)], rounds, warmup=True)
    n_inputs = ours[1].size
    benchmark.extra_info.update(inputs_per_s=n_inputs / ours_s, realtime=seconds / ours_s)
    report_ratio(f"{seconds} s recording: waveform graph vs mel graph + torch front-end",
                 f"{n_inputs / ours_s:8.0f} vs {n_inputs / mel_s:8.0f} inputs/s = {mel_s / ours_s:5.2f}x "
                 f"({seconds / ours_s:6.0f}x real time; torch alone {n_inputs / torch_s:6.0f} inputs/s)")


@pytest.mark.parametrize("batch", [64, 1024])
def test_int8_speedup_and_delta(benchmark, report_ratio, models, mels, batch):
    int8_runner, fp32_runner = models["mel-int8"], models["mel"]
    inputs = np.ascontiguousarray(mels[:batch])
    rounds = 50 if batch == 64 else 10
    _, int8_leak = benchmark.pedantic(int8_runner.score_mel, args=(inputs,), rounds=rounds, warmup_rounds=2)
    delta = float(np.abs(int8_leak - fp32_runner.score_mel(inputs)[1]).max())
    int8_s, fp32_s = best_of_interleaved([lambda: int8_runner.score_mel(inputs),
                                          lambda: fp32_runner.score_mel(inputs)], rounds, warmup=True)
    speedup = fp32_s / int8_s
    benchmark.extra_info.update(speedup_vs_fp32=speedup, max_abs_leak_prob_delta=delta)
    report_ratio(f"network, batch {batch}: int8 vs fp32 (onnxruntime)",
                 f"{speedup:5.2f}x, max |Δ leak_prob| {delta:.1e}")
