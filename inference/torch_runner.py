"""The torch backend: scores with a .pth checkpoint through the production front-end (float64 DFT),
exactly as training computed its features. This is the reference an export is checked against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from leakhunter.card import ModelCard
from leakhunter.checkpoint import read_model
from leakhunter.devices import autocast_dtype, pick_device
from leakhunter.frontend import FrontEnd
from leakhunter.inference.runner import Runner, check_mel
from leakhunter.models import Scorer
from leakhunter.segments import long_segment_inputs, plan_segments

# CNN inputs per forward pass: bounds memory on long recordings, large enough to keep a GPU busy.
MEL_BATCH = 4096


class TorchRunner(Runner):
    backend = "torch"
    accepts = ("waveform", "mel")

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        card, model = read_model(path)
        super().__init__(card, Path(path))
        self.torch_device = pick_device(device)
        self.device = str(self.torch_device)
        self.scorer = Scorer(model, card).to(self.torch_device).eval()
        self.amp = autocast_dtype(self.torch_device)  # bf16/fp16 on CUDA, full precision on CPU
        self.frontend = FrontEnd(card.frontend, card.segmentation).to(self.torch_device)

    def score_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._score(torch.from_numpy(check_mel(mel, self.card)).to(self.torch_device))

    def _score_span(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            mel = scoring_mels(self.frontend, self.card, torch.from_numpy(samples).to(self.torch_device))
        return self._score(mel)

    def _score(self, mel: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        probs, leak_prob = [], []
        with torch.inference_mode():
            for first in range(0, mel.shape[0], MEL_BATCH):
                with torch.autocast(self.torch_device.type, dtype=self.amp, enabled=self.amp is not None):
                    batch_probs, batch_leak = self.scorer(mel[first: first + MEL_BATCH])
                probs.append(batch_probs.cpu().numpy())
                leak_prob.append(batch_leak.cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.card.class_names)), np.float32), np.zeros(0, np.float32)
        return np.concatenate(probs), np.concatenate(leak_prob)


def scoring_mels(frontend: FrontEnd, card: ModelCard, samples: torch.Tensor) -> torch.Tensor:
    """The CNN inputs [n, 1, n_mels, frames] of one recording's samples [T], as the card's unit says."""
    shorts = frontend.short_segments(samples[None])[0]  # [n_short, n_mels, frames]
    if card.segmentation.unit == "short":
        return shorts[:, None]
    plan = plan_segments(samples.shape[-1], card.segmentation)
    return long_segment_inputs(shorts, plan.long_first_short, plan.shorts_per_long)[:, None]
