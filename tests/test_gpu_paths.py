"""The GPU paths, every branch exercised on a CPU-only machine: strict `cuda` vs quiet `auto` (torch and
onnxruntime), the CUDA execution provider's options, TF32 and the cuDNN autotuner off while scoring, AMP on
the network only (bf16 autocast on CPU stands in for CUDA's), AMP parity with fp32 on the golden set, the
front-end's float32-vs-float64 measurement behind the GPU default, and benchmarks/gpu_check.sh end to end.
What needs a real GPU (the provider starting, cuDNN/cuBLAS numbers, timings) is benchmarks/gpu_check.sh's."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from leakhunter.errors import DeviceError
from leakhunter.inference.onnx_card import read_onnx
from leakhunter.inference.onnx_runner import CPU, CUDA, OnnxRunner, cuda_provider_options, providers
from leakhunter.inference.torch_runner import TorchRunner, full_float32

ROOT = Path(__file__).resolve().parents[1]
CHOSEN = {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0", "arena_extend_strategy": "kSameAsRequested",
          "do_copy_in_default_stream": "1"}


@pytest.fixture
def no_torch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def torch_cuda(monkeypatch):
    """torch believing it has one CUDA device (only device names are made; nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def ort_has_cuda(monkeypatch):
    """onnxruntime listing a CUDA provider it cannot start (onnxruntime-gpu on a machine without a GPU)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])


# --- strict cuda, quiet auto -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_pick_device_refuses_cuda_without_it_and_names_the_way_out(no_torch_cuda, device):
    from leakhunter.devices import pick_device

    with pytest.raises(DeviceError, match=rf"device '{device}' asked for, but CUDA is not available .*"
                                          r"use --device auto to fall back to CPU"):
        pick_device(device)


def test_pick_device_auto_takes_cpu_quietly_without_cuda_and_cuda_with_it(no_torch_cuda, monkeypatch):
    from leakhunter.devices import pick_device

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick_device("auto").type == "cpu" and pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert str(pick_device("auto")) == "cuda" and str(pick_device("cuda:1")) == "cuda:1"
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match=r"device cuda:2 asked for, but this machine has 2 CUDA device"):
        pick_device("cuda:2")


def test_the_cuda_provider_options_are_the_chosen_ones():
    assert cuda_provider_options() == CHOSEN
    assert cuda_provider_options(1) == CHOSEN | {"device_id": "1"}
    assert all(isinstance(value, str) for value in cuda_provider_options(0).values())  # onnxruntime's own type


def test_providers_for_every_request(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    assert providers("cpu") == [CPU] and providers("auto") == [CPU]
    with pytest.raises(DeviceError, match=r"no CUDA execution provider \(it has CPUExecutionProvider\): install "
                                          r"onnxruntime-gpu .*--device auto"):
        providers("cuda:0")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert providers("cpu") == [CPU]
    assert providers("auto") == [(CUDA, CHOSEN), CPU] == providers("cuda")
    assert providers("cuda:1") == [(CUDA, CHOSEN | {"device_id": "1"}), CPU]


def test_an_onnx_cuda_provider_that_does_not_start_is_a_device_error_under_cuda_and_cpu_under_auto(
        binary_export, ort_has_cuda):
    _, report = binary_export
    model = read_onnx(report.output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own "not in available provider names"
        with pytest.raises(DeviceError, match=r"device 'cuda' asked for, but onnxruntime .* could not start its "
                                              r"CUDA execution provider .*--device auto"):
            OnnxRunner(model, "cuda")
        runner = OnnxRunner(model, "auto")
    assert runner.device == "cpu" and runner.session.get_providers() == [CPU]


def test_an_onnx_session_on_cuda_gets_the_chosen_options_and_says_cuda(binary_export, ort_has_cuda, monkeypatch):
    real_session = onnxruntime.InferenceSession
    asked = []

    class StartsCuda:
        """A session that reports CUDA first (as one with a working CUDA provider does) and runs on CPU."""

        def __init__(self, data, options, providers):
            asked.append(providers)
            self.session = real_session(data, options, providers=[CPU])

        def get_providers(self):
            return [CUDA, CPU]

        def run(self, *args):
            return self.session.run(*args)

    monkeypatch.setattr(onnxruntime, "InferenceSession", StartsCuda)
    _, report = binary_export
    runner = OnnxRunner(read_onnx(report.output), "cuda:0")
    assert runner.device == "cuda" and asked == [[(CUDA, CHOSEN | {"device_id": "0"}), CPU]]
    probs, leak_prob = runner.score_waveform(np.zeros(4096 * 2, dtype=np.float32) + 0.01)
    assert probs.shape[0] == leak_prob.shape[0] > 0


def test_leak_train_refuses_cuda_without_it_before_touching_the_run_folder(small_dataset, tmp_path, no_torch_cuda):
    from conftest import quick_config

    from leakhunter.training.trainer import train

    with pytest.raises(DeviceError, match="CUDA is not available.*--device auto"):
        train(quick_config(small_dataset.output, tmp_path / "run", device="cuda"), log=lambda text: None)
    assert not (tmp_path / "run").exists()


def test_leak_train_cli_exits_2_on_cuda_without_it(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from leakhunter.cli import app

    if torch.cuda.is_available():
        pytest.skip("torch has CUDA here")
    result = CliRunner().invoke(app, ["train", "--data", str(small_dataset.output), "--out", str(tmp_path / "run"),
                                      "--mode", "binary", "--epochs", "1", "--device", "cuda"])
    assert result.exit_code == 2 and "use --device auto to fall back to CPU" in result.output, result.output


# --- full float32 while scoring, AMP on the network only ------------------------------------------------------

def test_full_float32_turns_tf32_and_the_autotuner_off_and_restores_them():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = "tf32", "tf32", True
        with pytest.raises(RuntimeError, match="inside"):
            with full_float32():
                assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
                assert torch.backends.cudnn.benchmark is False
                raise RuntimeError("inside")
        assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == ("tf32", "tf32", True)
    finally:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = before


def test_amp_wraps_the_network_only_never_the_front_end(binary_export):
    checkpoint, _ = binary_export
    runner = TorchRunner(checkpoint, "cpu", amp=torch.bfloat16)
    assert TorchRunner(checkpoint, "cpu").amp is None  # scoring on CPU: full precision unless asked
    seen = {}
    short_segments = runner.frontend.short_segments

    def front_end(*args, **kwargs):
        seen["front-end"] = (torch.is_autocast_enabled("cpu"), torch.backends.cuda.matmul.fp32_precision,
                             torch.backends.cudnn.conv.fp32_precision)
        return short_segments(*args, **kwargs)

    runner.frontend.short_segments = front_end
    def network(module, inputs):
        seen["network"] = (torch.is_autocast_enabled("cpu"), inputs[0].dtype)

    runner.scorer.register_forward_pre_hook(network)
    probs, leak_prob = runner.score_waveform(np.random.default_rng(0).standard_normal(4096 * 3).astype(np.float32))
    assert seen["front-end"] == (False, "ieee", "ieee")
    assert seen["network"] == (True, torch.float32)  # autocast casts inside the network, from float32 mels
    assert probs.dtype == leak_prob.dtype == np.float32


def test_amp_parity_runs_the_golden_set_and_reports(binary_export):
    from leakhunter.export.parity import amp_parity

    checkpoint, _ = binary_export
    result = amp_parity(checkpoint, "cpu")
    assert result.precision == "amp-bfloat16 on cpu" and result.tolerance is None
    assert result.n_files == 13 and result.n_inputs > 0
    assert 0 < result.max_abs_leak_prob < 0.05, result.to_dict()
    assert result.passed and result.verdict_flips == [], result.failure()


@pytest.mark.slow
def test_amp_gives_no_verdict_flips_on_the_trained_model(trained_model):
    from leakhunter.export.parity import amp_parity

    result = amp_parity(trained_model, "cpu", amp_dtype=torch.bfloat16)
    assert result.passed, result.failure()
    assert len({f.verdict_torch for f in result.files}) == 2  # the golden set has verdicts of both kinds


# --- the front-end's precision: why the GPU keeps the float64 DFT ----------------------------------------------

def test_front_end_precision_measures_float32_against_float64():
    from leakhunter.card import BINARY_CLASSES, ModelCard, preset
    from leakhunter.export.parity import FRONTEND_CONTRACT_DB, frontend_precision, golden_recordings

    frontend, segmentation = preset("short")
    card = ModelCard.for_mode("binary", BINARY_CLASSES, frontend=frontend, segmentation=segmentation)
    recordings = golden_recordings(card)  # synthetic and noise only: independent of the real data at hand
    exported = frontend_precision(card, recordings, "float64", dft="matmul")  # the DFT the ONNX graph runs
    assert exported.passed and exported.n_files == 13 and exported.max_abs_db <= 1e-4, exported.to_dict()
    single = frontend_precision(card, recordings, "float32")
    assert single.variant == "float32 fft on cpu" and set(single.max_abs_db_by_source) == {"synthetic", "noise"}
    # The decision in README "GPU": a float32 DFT misses the contract (2.6e-3 dB on synthetic recordings,
    # 6.2e-3 dB on the real ones), so the torch runner keeps float64 on the GPU. Revisit it if this fails.
    assert not single.passed and single.max_abs_db > FRONTEND_CONTRACT_DB, single.to_dict()
    assert single.max_abs_db_by_source["noise"] < FRONTEND_CONTRACT_DB  # the loss is in quiet bins of tonal audio


# --- the GPU check, run here without a GPU ---------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(trained_model, onnx_model, training_dataset, tmp_path):
    assert Path(onnx_model) == trained_model.with_suffix(".onnx")  # where the check looks for it
    env = os.environ | {"GPU_CHECK_ALLOW_CPU": "1", "GPU_CHECK_FILES": "6", "GPU_CHECK_WORKDIR": str(tmp_path),
                        "PYTHON": sys.executable, "GPU_CHECK_MODEL": str(trained_model),
                        "GPU_CHECK_DATA": str(training_dataset)}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for expected in ("== environment", "torch.cuda.is_available(): False", "onnxruntime",
                     f"model: GPU_CHECK_MODEL={trained_model}", "== parity",
                     "torch AMP vs fp32, cpu", "no CUDA: skipped", "== throughput", "x real time", "GPU CHECK: PASSED"):
        assert expected in out, out
