"""The torch backend: scores with a .pth checkpoint through the production front-end (float64 DFT),
exactly as training computed its features. This is the reference an export is checked against.

On CUDA (DESIGN §8, README "GPU"): the front-end keeps its float64 DFT (float32 misses the 1e-3 dB
contract, measured by `leakhunter.export.parity.frontend_precision`), scoring runs with TF32 off and the
cuDNN autotuner off (`full_float32`), and autocast (bf16, else fp16) wraps the network only, never the
front-end, its parity with fp32 checked by `leakhunter.export.parity.amp_parity`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from leakhunter.card import ModelCard
from leakhunter.checkpoint import read_model
from leakhunter.devices import autocast_dtype, pick_device
from leakhunter.frontend import FrontEnd
from leakhunter.fusion import recording_inputs
from leakhunter.inference.runner import Runner, check_context, check_mel
from leakhunter.models import ModelInputs, Scorer
from leakhunter.segments import long_segment_inputs, plan_segments

# CNN inputs per forward pass: bounds memory on long recordings, large enough to keep a GPU busy.
MEL_BATCH = 4096
AMP_AUTO = "auto"


class TorchRunner(Runner):
    backend = "torch"
    accepts = ("waveform", "mel")

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 amp: str | torch.dtype | None = AMP_AUTO):
        """amp: "auto" (bf16, else fp16, on CUDA; none on CPU), None (full precision everywhere) or a dtype
        to autocast the network to on any device (torch.bfloat16 on CPU: how tests reach the AMP path)."""
        if threads:
            torch.set_num_threads(threads)
        card, model = read_model(path)
        super().__init__(card, Path(path))
        self.torch_device = pick_device(device)  # `cuda` without CUDA is a DeviceError, never a silent CPU run
        self.device = str(self.torch_device)
        self.scorer = Scorer(model, card).to(self.torch_device).eval()
        self.amp = autocast_dtype(self.torch_device) if amp == AMP_AUTO else amp
        self.frontend = FrontEnd(card.frontend, card.segmentation).to(self.torch_device)  # float64 DFT
        self.n_meta = len(card.meta_columns)

    def score_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with full_float32():
            return self._score(torch.from_numpy(check_mel(mel, self.card)).to(self.torch_device))

    def _score_span(self, samples: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        with full_float32():
            with torch.inference_mode():  # the front-end runs outside autocast: AMP never touches the DFT or dB
                samples = torch.from_numpy(samples).to(self.torch_device)
                if self.card.branches:
                    inputs = recording_inputs(self.frontend, samples, self.n_meta, context)
                else:
                    reference = (None if self.card.reference is None else
                                 torch.from_numpy(check_context(self.card, context, 1)[0]).to(self.torch_device))
                    inputs = scoring_mels(self.frontend, self.card, samples, reference)
            return self._score(inputs)

    def _score(self, inputs: torch.Tensor | ModelInputs) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the model's inputs: a mel tensor, or a fusion model's ModelInputs."""
        inputs = inputs if isinstance(inputs, ModelInputs) else ModelInputs(inputs)
        probs, leak_prob = [], []
        with torch.inference_mode():
            for first in range(0, inputs.mel.shape[0], MEL_BATCH):
                batch = [None if x is None else x[first: first + MEL_BATCH] for x in inputs]
                with torch.autocast(self.torch_device.type, dtype=self.amp, enabled=self.amp is not None):
                    batch_probs, batch_leak = self.scorer(*batch)
                probs.append(batch_probs.float().cpu().numpy())
                leak_prob.append(batch_leak.float().cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.card.class_names)), np.float32), np.zeros(0, np.float32)
        return np.concatenate(probs), np.concatenate(leak_prob)


@contextmanager
def full_float32():
    """Scoring's float32 maths in full float32 on CUDA, restored afterwards (the flags are process-wide).

    TF32 (10-bit mantissa) off for cuBLAS matmuls and cuDNN convolutions: the front-end's mel projection is a
    float32 matmul, where rounding its inputs to TF32 alone costs 3.3e-3 dB on the golden set (emulated on
    CPU) against the 1e-3 dB contract (and the fp32 network would no longer be the one parity checked).
    cudnn.benchmark off: the span length changes with every file, and autotuning re-runs per new shape. Torch's current TF32 switch
    (`fp32_precision = "ieee"`) is used where it exists; the legacy `allow_tf32 = False` otherwise (the two
    must not be mixed: reading the legacy flag after the new one was set raises).
    """
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    new_api = conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision")
    benchmark = torch.backends.cudnn.benchmark
    if new_api:
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    else:  # torch < 2.9
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        if new_api:
            matmul.fp32_precision, conv.fp32_precision = saved
        else:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def scoring_mels(frontend: FrontEnd, card: ModelCard, samples: torch.Tensor,
                 reference: torch.Tensor | None = None) -> torch.Tensor:
    """The CNN inputs [n, 1, n_mels, frames] of one recording's samples [T], as the card's unit says; a
    reference model's minus its sensor's reference [n_mels] (leakhunter/reference.py)."""
    shorts = frontend.short_segments(samples[None])[0]  # [n_short, n_mels, frames]
    if reference is not None:
        shorts = shorts - reference.to(shorts.dtype)[None, :, None]
    if card.segmentation.unit == "short":
        return shorts[:, None]
    plan = plan_segments(samples.shape[-1], card.segmentation)
    return long_segment_inputs(shorts, plan.long_first_short, plan.shorts_per_long)[:, None]
