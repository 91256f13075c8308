"""What every backend shares: a Runner scores one decoded recording per scoring input, in chunks of
whole long segments so memory stays flat on hour-long files, with the same segments as training.

Torch-free: the onnxruntime backend runs on a box without torch.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from leakhunter.card import ModelCard, input_shape
from leakhunter.errors import InputError
from leakhunter.fingerprint import file_sha256
from leakhunter.segments import frame_stride, plan_segments
from leakhunter.voting import per_long_segment

# A chunk is about this many STFT frames of audio (4 minutes with any preset: a 256-sample stride at 4096 Hz, 512 at
# 8192 Hz).
CHUNK_FRAMES = 4096


class Runner(ABC):
    """Scores recordings with one model. Subclasses say how a span of whole long segments is scored.

    `score_waveform(samples)` → (probs [n_inputs, C], leak_prob [n_inputs]), one row per scoring input
    (each distinct short segment for unit "short", each long segment for unit "long"), in order;
    `score_mel(mel [B, 1, n_mels, frames])` → the same for ready-made CNN inputs, where the artefact
    takes them (`accepts` lists "waveform" and/or "mel").
    """

    backend: str  # "torch" or "onnxruntime"
    device: str
    accepts: tuple[str, ...]

    def __init__(self, card: ModelCard, path: Path, data: bytes | None = None):
        self.card = card
        self.path = path
        self.sha256 = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)

    def score_waveform(self, samples: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per scoring input of one mono recording at the card's sample rate (float32 [T]); `context` is the
        recording's row for the graph's per-recording input (card.recording_input): a fusion model's encoded
        meta (None: unknown) or a reference model's sensor reference (required)."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected one mono recording [samples], got shape {samples.shape}")
        seg = self.card.segmentation
        plan = plan_segments(samples.size, seg)
        if plan.n_long == 0:
            raise ValueError(f"{samples.size} samples is shorter than one long segment ({seg.long_samples} samples "
                             f"at {self.card.frontend.sample_rate} Hz)")
        # The segments' span: zero-padded by the tail rule, or cut where the last long segment ends.
        span = np.pad(samples, (0, plan.pad))[: plan.samples_used]
        shorts_per_hop = seg.long_hop // seg.short_hop
        # Chunks start at long segments; overlapping short segments are scored by both neighbours and
        # kept from the first. Long segments that leave short segments between them: one pass.
        longs_per_chunk = max(1, CHUNK_FRAMES * frame_stride(self.card.frontend, seg) // seg.long_hop)
        if plan.shorts_per_long < shorts_per_hop:
            longs_per_chunk = plan.n_long
        probs, leak_prob = [], []
        for first in range(0, plan.n_long, longs_per_chunk):
            n_long = min(longs_per_chunk, plan.n_long - first)
            start = first * seg.long_hop
            chunk_probs, chunk_leak = self._score_span(np.ascontiguousarray(
                span[start: start + (n_long - 1) * seg.long_hop + seg.long_samples]), context)
            if seg.unit == "short" and first + n_long < plan.n_long:
                chunk_probs, chunk_leak = chunk_probs[: n_long * shorts_per_hop], chunk_leak[: n_long * shorts_per_hop]
            probs.append(chunk_probs)
            leak_prob.append(chunk_leak)
        return np.concatenate(probs), np.concatenate(leak_prob)

    def score_rows(self, rows: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of equal length [b, T], each exactly whole long segments (no tail) → per scoring input of each
        row: (probs [b, n, C], leak_prob [b, n]). The batched engine's one call per batch; backends that take
        a batch at once override it. `context` [b, width]: each row's per-recording input (a row holds one
        recording then)."""
        scored = [self._score_span(np.ascontiguousarray(row, dtype=np.float32), None if context is None else context[i])
                  for i, row in enumerate(rows)]
        return np.stack([probs for probs, _ in scored]), np.stack([leak for _, leak in scored])

    def score_mel(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError(f"{self.path} takes {' or '.join(self.accepts)} input, not mel spectrograms; "
                         f"export it with `leak export --input mel` to score mels")

    @abstractmethod
    def _score_span(self, samples: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the samples of exactly n whole long segments (no tail), with the recording's context row."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.device!r})"


def long_segment_probs(card: ModelCard, n_samples: int, values: np.ndarray) -> np.ndarray:
    """Per long segment of a recording of n_samples, from score_waveform's per-input values (P(LEAK) [N] or
    class probabilities [N, C]): leakhunter.voting.per_long_segment with this recording's segment plan."""
    plan = plan_segments(n_samples, card.segmentation)
    return per_long_segment(values, card.segmentation.unit, plan.long_first_short, plan.shorts_per_long)


def check_context(card: ModelCard, context: np.ndarray | None, rows: int) -> np.ndarray:
    """The per-recording input [rows, width] of a model that takes one: a fusion model's meta may be missing
    (every field unknown), a reference model's sensor reference may not (its inputs would mean nothing)."""
    name, width = card.recording_input
    if context is None:
        if name == "reference":
            raise InputError("a reference model judges a recording against its sensor's reference; none was given "
                             "(score it with --reference TABLE)")
        return np.full((rows, width), np.nan, np.float32)
    return np.asarray(context, np.float32).reshape(rows, width)


def check_mel(mel: np.ndarray, card: ModelCard) -> np.ndarray:
    """float32 [B, 1, n_mels, frames] of this card's input shape, or a ValueError saying what was given."""
    mel = np.asarray(mel, dtype=np.float32)
    expected = input_shape(card.frontend, card.segmentation)
    if mel.ndim != 4 or tuple(mel.shape[1:]) != expected:
        raise ValueError(f"expected mel inputs [batch, {', '.join(map(str, expected))}], got shape {mel.shape}")
    return mel

