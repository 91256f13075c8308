"""Training-time augmentation of raw log-mel inputs: vary on purpose what varies between sites, so the network
cannot tell a site (and memorise its share of leaks) by it. Prediction never augments.

Inputs are the model's [b, 1, n_mels, frames] dB values (10·log10 power) before the network's own per-bin
normalisation. `augment` is a comma list of these names (order irrelevant, "" = none); they are applied in the
order below, as a recording is made: background at the pipe, then the sensor's response, then its gain.

- mix: half the inputs get another NON-LEAK input of the batch added in the power domain, its mean level
  0-12 dB below the target's. A site's background (traffic, pumps, valve hiss, fast flow) is what most separates
  sites; another site's background under a leak is still a leak, under a non-leak still not one, so the labels
  stand and the network must stop reading "this site's background" as the answer. Never a LEAK donor: that would
  make a non-leak input a leak without saying so.
- tilt: a linear slope across the mel bins (end to end uniform in ±12 dB, i.e. ±6 dB at the band edges) plus
  one smooth bump (a Gaussian over 1-3 bins, ±6 dB, anywhere). Sensors and mountings tilt the spectrum by a few
  dB per octave and pipes add resonances of their own; neither is the leak.
- gain: one level shift per input, uniform in ±10 dB, the same in every bin and frame. Sensitivity (±6 dB),
  logger gain (0-18 dB) and distance move a whole recording's level; loudness alone must not decide.
- mask: half the inputs get one band of 1-4 mel bins set to the input's own mean level (SpecAugment's frequency
  mask, at a level the normaliser sees as ordinary), and with frames > 1 half get a run of up to a fifth of the
  frames set the same way. No single band or instant (a pump line, a hiss peak) should carry the decision.

Widths in mel bins (the bump's, the mask's) are for the `short` preset's 32 bands and scale with n_mels (the
`wide` preset's 64: bumps of 2-6 bins, masks up to 8), so each covers the same share of the band on every preset.

Deterministic from (seed, epoch, step) and the rank: each augmentation draws from its own torch.Generator on the
CPU (a few numbers per input, so switching one augmentation on or off leaves the others' draws alone), never from
the global RNG, so a resumed run stays bit-identical; the arithmetic runs on the inputs' device, batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

AUGMENTATIONS = ("mix", "tilt", "gain", "mask")  # the order they are applied in
STRENGTH_MELS = 32  # the number of mel bands the widths in Strengths are given for
DB_PER_NEPER = 10 / math.log(10)  # 10·log10(x) = DB_PER_NEPER · ln(x)


def parse_augment(text: str) -> tuple[str, ...]:
    """The augmentations a comma list names, in the order they are applied; unknown names are refused."""
    names = {name.strip().lower() for name in str(text).split(",") if name.strip()}
    unknown = sorted(names - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"augment {text!r}: unknown augmentation(s) {', '.join(map(repr, unknown))}; "
                         f"use a comma list of {', '.join(AUGMENTATIONS)} (or '' for none)")
    return tuple(name for name in AUGMENTATIONS if name in names)


@dataclass(frozen=True)
class Strengths:
    """How hard each augmentation pushes (the module docstring says why these values)."""

    gain_db: float = 10.0  # ± level shift per input
    tilt_db: float = 12.0  # ± end-to-end slope across the mel bins
    bump_db: float = 6.0  # ± height of the smooth bump
    bump_width_bins: tuple[float, float] = (1.0, 3.0)  # its Gaussian sigma, in mel bins
    mix_below_db: tuple[float, float] = (0.0, 12.0)  # donor's mean level under the target's
    mix_share: float = 0.5  # share of inputs that get a donor
    mask_bins: int = 4  # widest frequency mask
    mask_frames: float = 0.2  # widest time mask, as a share of the frames
    mask_share: float = 0.5  # share of inputs masked (each of frequency and time)


class Augmenter:
    """augmenter(inputs, is_leak, epoch, step) → augmented inputs of the same shape (a new tensor)."""

    def __init__(self, augment: str, seed: int, stream: int = 0, strengths: Strengths = Strengths()):
        self.names = parse_augment(augment)
        self.seed, self.stream, self.strengths = seed, stream, strengths

    def __bool__(self) -> bool:
        return bool(self.names)

    def _generator(self, name: str, epoch: int, step: int) -> torch.Generator:
        entropy = [self.seed, self.stream, epoch, step, AUGMENTATIONS.index(name), 0xA06]
        state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def __call__(self, inputs: torch.Tensor, is_leak: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if not self.names:
            return inputs
        mel = inputs.float()
        for name in self.names:
            mel = getattr(self, f"_{name}")(mel, is_leak, self._generator(name, epoch, step))
        return mel.to(inputs.dtype)

    def _draw(self, generator: torch.Generator, size: int, low: float, high: float, device) -> torch.Tensor:
        """`size` uniform numbers in [low, high) from `generator`, on `device`."""
        return (low + (high - low) * torch.rand(size, generator=generator)).to(device)

    def _gain(self, mel, is_leak, generator):
        shift = self._draw(generator, len(mel), -self.strengths.gain_db, self.strengths.gain_db, mel.device)
        return mel + shift[:, None, None, None]

    def _tilt(self, mel, is_leak, generator):
        s, n_mels, device = self.strengths, mel.shape[2], mel.device
        slope = self._draw(generator, len(mel), -s.tilt_db, s.tilt_db, device)
        bump = self._draw(generator, len(mel), -s.bump_db, s.bump_db, device)
        centre = self._draw(generator, len(mel), 0, n_mels - 1, device)
        width = self._draw(generator, len(mel), *s.bump_width_bins, device) * (n_mels / STRENGTH_MELS)
        bins = torch.arange(n_mels, device=device, dtype=mel.dtype)
        position = bins / max(1, n_mels - 1) - 0.5  # -0.5 at the lowest bin, +0.5 at the highest
        curve = (slope[:, None] * position + bump[:, None] * torch.exp(
            -0.5 * ((bins - centre[:, None]) / width[:, None]) ** 2))
        return mel + curve[:, None, :, None]

    def _mix(self, mel, is_leak, generator):
        s, batch, device = self.strengths, len(mel), mel.device
        pick, below, chosen = (torch.rand(batch, generator=generator) for _ in range(3))
        donors = torch.nonzero(~is_leak.bool().cpu()).flatten()
        if len(donors) == 0:
            return mel
        # a uniform donor among the non-leak rows other than the input itself
        own = torch.full((batch,), -1, dtype=torch.long)
        own[donors] = torch.arange(len(donors))  # each non-leak row's place among the donors
        others = torch.where(own >= 0, len(donors) - 1, len(donors))
        k = (pick * others).long().clamp(max=len(donors) - 1)
        k = torch.where((own >= 0) & (k >= own), k + 1, k)  # skip itself
        mixed = (chosen < s.mix_share) & (others > 0)
        donor = mel[donors[k.clamp(max=len(donors) - 1)].to(device)]
        low, high = s.mix_below_db
        level = mel.mean(dim=(1, 2, 3)) - (low + (high - low) * below).to(device) - donor.mean(dim=(1, 2, 3))
        # 10·log10(10^(x/10) + 10^(y/10)) = x + 10·log10(1 + 10^((y - x)/10)): never below x
        added = DB_PER_NEPER * F.softplus((donor + level[:, None, None, None] - mel) / DB_PER_NEPER)
        return torch.where(mixed.to(device)[:, None, None, None], mel + added, mel)

    def _mask(self, mel, is_leak, generator):
        s, (batch, _, n_mels, frames), device = self.strengths, mel.shape, mel.device
        draws = torch.rand(6, batch, generator=generator).to(device)
        level = mel.mean(dim=(1, 2, 3), keepdim=True).expand_as(mel)
        widest_bins = max(1, round(s.mask_bins * n_mels / STRENGTH_MELS))
        masked = self._band(draws[0], draws[1], draws[2], widest_bins, n_mels, s.mask_share)[:, None, :, None]
        if frames > 1:
            widest = max(1, int(s.mask_frames * frames))
            masked = masked | self._band(draws[3], draws[4], draws[5], widest, frames, s.mask_share)[:, None, None, :]
        return torch.where(masked, level, mel)

    @staticmethod
    def _band(chosen, width_draw, start_draw, widest, size, share) -> torch.Tensor:
        """[b, size] bool: for a `share` of the rows, a run of 1..widest positions at a uniform start."""
        widest = min(widest, size)
        width = 1 + (width_draw * widest).long().clamp(max=widest - 1)
        start = (start_draw * (size - width + 1)).long()
        index = torch.arange(size, device=chosen.device)
        return (chosen < share)[:, None] & (index >= start[:, None]) & (index < (start + width)[:, None])
