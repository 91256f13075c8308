"""The onnxruntime backend: scores with an exported .onnx file, without torch when the graph takes
waveforms (the default export), so a scoring box needs only onnxruntime, numpy and soundfile.

Devices: `cpu`; `cuda` / `cuda:N` run on the CUDA execution provider or raise DeviceError (onnxruntime-gpu
missing, or its CUDA provider failing to start), never silently on CPU; `auto` takes CUDA when it starts,
else CPU. The CUDA provider's options are chosen in `cuda_provider_options` (README "GPU").
"""

from __future__ import annotations

import numpy as np
import onnxruntime
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NotImplemented

from leakhunter.devices import DeviceRequest, parse_device
from leakhunter.errors import DeviceError
from leakhunter.inference.onnx_card import ModelLoadError, OnnxModel
from leakhunter.inference.runner import Runner, check_context, check_mel

MEL_BATCH = 4096
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model: OnnxModel, device: str = "auto", threads: int | None = None):
        super().__init__(model.card, model.path, model.data)
        self.input = model.input
        # A mel-input graph scores waveforms through the torch front-end (imported only then).
        self.accepts = ("waveform", "mel") if model.input == "mel" else ("waveform",)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        # Idle workers sleep instead of spinning: scoring shares the CPU with decoding threads (and with
        # torch for a mel-input graph), which spinning starved (torch at batch 1 ran 70x slower beside it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        request = parse_device(device)
        try:
            self.session = onnxruntime.InferenceSession(model.data, options, providers=providers(request))
        except (Fail, InvalidGraph, InvalidProtobuf, NotImplemented) as error:
            raise ModelLoadError(f"{model.path}: onnxruntime {onnxruntime.__version__} cannot run it "
                                 f"({str(error).splitlines()[0][:300]})") from None
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        if request.kind == "cuda" and self.device != "cuda":
            # onnxruntime drops a CUDA provider that fails to start (no GPU, CUDA/cuDNN libraries missing or
            # of the wrong version, a device_id that does not exist) and carries on with CPU.
            raise DeviceError(f"device {str(request)!r} asked for, but onnxruntime {onnxruntime.__version__} "
                              f"could not start its CUDA execution provider for {model.path} (is there an "
                              f"NVIDIA GPU, and are the CUDA and cuDNN libraries onnxruntime-gpu needs "
                              f"installed?); use --device auto to fall back to CPU")
        self._frontend = None
        self.context_input = model.card.recording_input  # (name, width) of the per-recording input, or None

    def score_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.input != "mel":
            return super().score_mel(mel)
        mel = check_mel(mel, self.card)
        outputs = [self.session.run(None, {"mel": mel[first: first + MEL_BATCH]})
                   for first in range(0, mel.shape[0], MEL_BATCH)]
        if not outputs:
            return np.zeros((0, len(self.card.class_names)), np.float32), np.zeros(0, np.float32)
        return np.concatenate([probs for probs, _ in outputs]), np.concatenate([leak for _, leak in outputs])

    def score_rows(self, rows: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.input != "waveform":
            return super().score_rows(rows)
        probs, leak_prob = self.session.run(None, self._feed(np.ascontiguousarray(rows, dtype=np.float32), context))
        return probs.reshape(len(rows), -1, probs.shape[-1]), leak_prob.reshape(len(rows), -1)

    def _feed(self, rows: np.ndarray, context: np.ndarray | None) -> dict[str, np.ndarray]:
        """The session's inputs: the waveform rows and, for a graph with a per-recording input, each row's
        (a fusion model's meta: NaN unknown, none at all every field unknown; a sensor reference: required)."""
        if self.context_input is None:
            return {"waveform": rows}
        return {"waveform": rows, self.context_input[0]: np.ascontiguousarray(check_context(self.card, context, len(rows)))}

    def _score_span(self, samples: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.input == "waveform":
            probs, leak_prob = self.session.run(None, self._feed(samples[None], context))
            return probs, leak_prob
        return self.score_mel(self._mels(samples))

    def _mels(self, samples: np.ndarray) -> np.ndarray:
        import torch

        from leakhunter.frontend import FrontEnd
        from leakhunter.inference.torch_runner import scoring_mels

        if self._frontend is None:
            self._frontend = FrontEnd(self.card.frontend, self.card.segmentation)
        with torch.inference_mode():
            return scoring_mels(self._frontend, self.card, torch.from_numpy(samples)).numpy()


def cuda_provider_options(device_id: int | None = None) -> dict[str, str]:
    """The CUDA execution provider's options, chosen on purpose (names as onnxruntime >= 1.17 spells them):

    - cudnn_conv_algo_search DEFAULT: cuDNN's implicit-GEMM convolution, no search. EXHAUSTIVE (onnxruntime's
      default) benchmarks every algorithm again for each new input shape, and a waveform graph sees a new
      shape with every file length; HEURISTIC may pick Winograd or FFT algorithms where the shapes allow
      (the network's 3x3 convolutions), whose rounding differs from the direct products parity measured.
    - use_tf32 0 (onnxruntime >= 1.18, the `gpu` extra's floor): full float32 in cuBLAS GEMMs and cuDNN
      convolutions. TF32 keeps a 10-bit mantissa: rounding the mel matmul's inputs to it alone costs 3.3e-3 dB
      on the golden set, over the 1e-3 dB contract, before the DFT's own loss; onnxruntime's default is 1.
    - arena_extend_strategy kSameAsRequested: the arena grows by what a file needs, not to the next power
      of two of it (files of every length would otherwise double the memory held).
    - do_copy_in_default_stream 1: inputs and outputs are copied on the compute stream (onnxruntime's
      default, stated so it stays: 0 can race).
    """
    options = {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0",
               "arena_extend_strategy": "kSameAsRequested", "do_copy_in_default_stream": "1"}
    if device_id is not None:
        options["device_id"] = str(device_id)
    return options


def providers(device: str | DeviceRequest) -> list:
    """onnxruntime providers for auto|cpu|cuda|cuda:N: CUDA (with cuda_provider_options) first when asked
    for or auto, then CPU for the nodes CUDA lacks. `cuda` where onnxruntime has no CUDA provider at all
    (the CPU-only `onnxruntime` package) is a DeviceError; `auto` then gets CPU."""
    request = parse_device(device)
    if request.kind == "cpu":
        return [CPU]
    available = onnxruntime.get_available_providers()
    if CUDA not in available:
        if request.kind == "cuda":
            raise DeviceError(f"device {str(request)!r} asked for, but onnxruntime {onnxruntime.__version__} has "
                              f"no CUDA execution provider (it has {', '.join(available)}): install "
                              f"onnxruntime-gpu instead of onnxruntime (pip install 'leakhunter[gpu]'), or use "
                              f"--device auto to fall back to CPU")
        return [CPU]
    return [(CUDA, cuda_provider_options(request.index)), CPU]
