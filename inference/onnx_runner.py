"""The onnxruntime backend: scores with an exported .onnx file, without torch when the graph takes
waveforms (the default export), so a scoring box needs only onnxruntime, numpy and soundfile.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NotImplemented

from leakhunter.inference.onnx_card import ModelLoadError, OnnxModel
from leakhunter.inference.runner import Runner, check_mel

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
        try:
            self.session = onnxruntime.InferenceSession(model.data, options, providers=providers(device))
        except (Fail, InvalidGraph, InvalidProtobuf, NotImplemented) as error:
            raise ModelLoadError(f"{model.path}: onnxruntime {onnxruntime.__version__} cannot run it "
                                 f"({str(error).splitlines()[0][:300]})") from None
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        if device.startswith("cuda") and self.device == "cpu":
            warnings.warn(f"device {device!r} asked for but onnxruntime could not start CUDA "
                          f"(is onnxruntime-gpu installed?); running {model.path} on CPU", RuntimeWarning, stacklevel=2)
        self._frontend = None

    def score_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.input != "mel":
            return super().score_mel(mel)
        mel = check_mel(mel, self.card)
        outputs = [self.session.run(None, {"mel": mel[first: first + MEL_BATCH]})
                   for first in range(0, mel.shape[0], MEL_BATCH)]
        if not outputs:
            return np.zeros((0, len(self.card.class_names)), np.float32), np.zeros(0, np.float32)
        return np.concatenate([probs for probs, _ in outputs]), np.concatenate([leak for _, leak in outputs])

    def _score_span(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.input == "waveform":
            probs, leak_prob = self.session.run(None, {"waveform": samples[None]})
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


def providers(device: str) -> list:
    """onnxruntime providers for auto|cpu|cuda|cuda:N: CUDA first when asked (or auto) and installed."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if device == "cpu" or CUDA not in onnxruntime.get_available_providers():
        return [CPU]
    options = {"device_id": int(device[5:])} if device.startswith("cuda:") else {}
    return [(CUDA, options), CPU]
