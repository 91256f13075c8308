"""Two-stage windowing: where the long and short segments of a recording lie (DESIGN §3).

Overlapping long segments share short segments, so each distinct short segment (and each distinct
STFT frame) is computed once per file and long segments refer to contiguous runs of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from leakhunter.card import FrontendConfig, SegmentationConfig


@dataclass(frozen=True)
class SegmentPlan:
    """The segments of one recording of `n_samples` samples (before tail padding)."""

    n_samples: int
    n_long: int
    n_short: int
    shorts_per_long: int
    long_first_short: np.ndarray  # [n_long] index of each long segment's first short segment
    samples_used: int  # samples the short segments span, after zero padding (tail="pad")

    @property
    def pad(self) -> int:
        return max(0, self.samples_used - self.n_samples)


def plan_segments(n_samples: int, segmentation: SegmentationConfig) -> SegmentPlan:
    """Long segments every long_hop samples; a partial last one is dropped or zero-padded by `tail`."""
    seg = segmentation
    if n_samples < seg.long_samples:
        n_long = 0
    elif seg.tail == "pad":
        n_long = 1 + -(-(n_samples - seg.long_samples) // seg.long_hop)
    else:
        n_long = 1 + (n_samples - seg.long_samples) // seg.long_hop
    shorts_per_hop = seg.long_hop // seg.short_hop
    shorts_per_long = seg.shorts_per_long()
    n_short = (n_long - 1) * shorts_per_hop + shorts_per_long if n_long else 0
    samples_used = (n_short - 1) * seg.short_hop + seg.short_samples if n_short else 0
    return SegmentPlan(
        n_samples=n_samples,
        n_long=n_long,
        n_short=n_short,
        shorts_per_long=shorts_per_long,
        long_first_short=np.arange(n_long, dtype=np.int64) * shorts_per_hop,
        samples_used=samples_used,
    )


def frame_stride(frontend: FrontendConfig, segmentation: SegmentationConfig) -> int:
    """The hop at which the STFT is computed so every frame a short segment needs is made once.

    A short segment of one frame needs frames only every short_hop samples; longer ones need
    every hop_length (short_hop is a multiple of it).
    """
    if segmentation.frames_per_short(frontend) == 1:
        return segmentation.short_hop
    return frontend.hop_length


def long_segment_inputs(short_mels, long_first_short, shorts_per_long: int):
    """Stack each long segment's short-segment mels over time: [L, n_mels, shorts_per_long * frames].

    Works on numpy arrays and torch tensors alike (the `long` unit's CNN input).
    """
    index = long_first_short[:, None] + np.arange(shorts_per_long)[None, :]
    if not isinstance(short_mels, np.ndarray):
        import torch

        index = torch.from_numpy(index).to(short_mels.device)
    gathered = short_mels[index]  # [L, shorts_per_long, n_mels, frames]
    n_long, _, n_mels, frames = gathered.shape
    return gathered.swapaxes(1, 2).reshape(n_long, n_mels, shorts_per_long * frames)



def cut_pieces(blocks: Iterable[np.ndarray], segmentation: SegmentationConfig, piece_longs: int
               ) -> Iterator[tuple[np.ndarray, int]]:
    """(samples, n_long) of consecutive runs of at most piece_longs + 1 whole long segments of a stream of blocks,
    each yielded as soon as it is ready, so a recording of any length is segmented in bounded memory. A run starts
    piece_longs long hops after the one before (the samples of overlapping long segments are in both); the last
    is cut as plan_segments cuts the rest of the recording (its tail padded or dropped), so the runs together hold
    exactly the recording's long segments."""
    seg = segmentation
    piece_samples = (piece_longs - 1) * seg.long_hop + seg.long_samples
    buffered, held = [], 0
    for block in blocks:
        buffered.append(block)
        held += block.size
        while held >= piece_samples + seg.long_hop:  # a whole piece, and the next one has begun
            samples = np.concatenate(buffered)
            yield samples[:piece_samples], piece_longs
            rest = samples[piece_longs * seg.long_hop:]
            buffered, held = [rest], rest.size
    samples = np.concatenate(buffered) if buffered else np.zeros(0, np.float32)
    plan = plan_segments(samples.size, seg)
    if plan.n_long:
        span = (plan.n_long - 1) * seg.long_hop + seg.long_samples
        yield np.ascontiguousarray(np.pad(samples, (0, max(0, span - samples.size)))[:span]), plan.n_long
