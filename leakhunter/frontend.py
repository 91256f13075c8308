"""The one implementation that turns samples into features (DESIGN §3).

Dataset building, training, evaluation, the torch backend and the ONNX export all call `FrontEnd`;
the stored feature is exactly librosa's melspectrogram(center=False) + power_to_db(ref=1, amin=1e-10,
top_db=None). `reference_log_mel` is a float64 numpy version of the same maths, for tests only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from leakhunter.card import FrontendConfig, SegmentationConfig
from leakhunter.mel import mel_points
from leakhunter.segments import frame_stride, plan_segments

AMIN = 1e-10
DFT_PATHS = ("fft", "matmul")
ROLLOFF = 0.85
FLATNESS_FLOOR = 1e-10  # flatness floors each bin 100 dB under the segment's loudest
SILENT_POWER = 1e-30  # a bin power under any real audio and over float32's smallest normal: silence
# Engineered per-input features (fusion's `features` branch): octave band powers up to fmax, then
# spectral shape from the same STFT, then waveform statistics of the short segment.
N_BANDS = 7
FEATURE_NAMES = tuple(f"band{i}_db" for i in range(N_BANDS)) + (
    "centroid_hz", "flatness", "rolloff_hz", "rms_db", "crest_db", "kurtosis", "zcr",
)
# 2: roll-off interpolated between bins, flatness floored relative to the loudest bin, kurtosis right
# below -100 dBFS, zero crossings as negative products of neighbours (exact zeros end none).
FEATURE_VERSION = 2


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft // 2 + 1], equal to librosa.filters.mel.

    Written out (30 lines) so the scoring path needs neither librosa nor numba; a test pins it to librosa.
    """
    fft_hz = np.linspace(0, cfg.sample_rate / 2, 1 + cfg.n_fft // 2)
    mel_hz = mel_points(cfg)
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def hann_window(cfg: FrontendConfig) -> np.ndarray:
    """Periodic Hann of win_length, zero-padded to n_fft at the centre (librosa's get_window + pad_center)."""
    n = np.arange(cfg.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    return np.pad(window, (left, cfg.n_fft - cfg.win_length - left))


def folded_dft(cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """The real DFT of an n_fft frame folded at its middle, as two float64 matrices (cosines, sines).

    cos(2πkn/N) = cos(2πk(N-n)/N) and sin(2πkn/N) = -sin(2πk(N-n)/N), so with y the windowed frame the
    real parts are even @ cosines [N//2 + 1, bins] and the imaginary parts odd @ sines [(N-1)//2, bins],
    where even = (y[0], y[n] + y[N-n] for n = 1..(N-1)//2, and y[N/2] when N is even) and
    odd = y[n] - y[N-n]: half the multiply-adds of the full [N, 2 * bins] DFT matrix.
    """
    n_fft, bins = cfg.n_fft, cfg.n_fft // 2 + 1
    phase = 2 * np.pi * np.arange(n_fft // 2 + 1)[:, None] * np.arange(bins)[None, :] / n_fft
    return np.cos(phase), -np.sin(phase[1: (n_fft - 1) // 2 + 1])


def frame_signal(waveform: torch.Tensor, n_fft: int, stride: int) -> torch.Tensor:
    """Frames [B, frames, n_fft] of [B, T] waveforms at hop `stride` (no centre padding), made of reshapes,
    slices and one concat, which export to ONNX exactly and for any dtype (unfold exports as a Gather)."""
    step = math.gcd(n_fft, stride)
    n_frames = 1 + (waveform.shape[-1] - n_fft) // stride
    hop, parts = stride // step, n_fft // step
    blocks = waveform[:, : (n_frames - 1) * stride + n_fft].reshape(waveform.shape[0], -1, step)
    return torch.cat([blocks[:, i: i + (n_frames - 1) * hop + 1: hop] for i in range(parts)], dim=-1)


class FrontEnd(nn.Module):
    """STFT → power → mel → dB as a module: batched, on any device, exportable, with frozen buffers.

    `dft` picks how the STFT is computed: "fft" (torch.stft, the default everywhere) or "matmul"
    (framing by reshapes and slices, then the folded real DFT as two MatMuls, for ONNX export); both
    give the same feature, and both run the DFT and |.|² in float64 (see _matmul_power).
    """

    def __init__(self, frontend: FrontendConfig, segmentation: SegmentationConfig | None = None,
                 dft: str = "fft"):
        super().__init__()
        if dft not in DFT_PATHS:
            raise ValueError(f"dft must be one of {', '.join(DFT_PATHS)}, got {dft!r}")
        self.cfg = frontend
        self.segmentation = segmentation
        self.dft = dft
        # The DFT runs in float64: in float32 its rounding error (relative to the frame's loudest bin)
        # reaches 2e-3 dB in the quiet bins of real hydrophone audio with 90 dB of dynamic range.
        # `.float()` on the module turns these buffers, and so the DFT, to float32 (for experiments only:
        # the exported graph keeps them float64).
        self.register_buffer("window", torch.from_numpy(hann_window(frontend)), persistent=False)
        if dft == "matmul":
            cosines, sines = folded_dft(frontend)
            self.register_buffer("dft_cos", torch.from_numpy(cosines), persistent=False)
            self.register_buffer("dft_sin", torch.from_numpy(sines), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank(frontend)), persistent=False)
        fft_hz = np.linspace(0, frontend.sample_rate / 2, 1 + frontend.n_fft // 2)
        self.register_buffer("fft_hz", torch.from_numpy(fft_hz).float(), persistent=False)
        edges = frontend.fmax / 2.0 ** np.arange(N_BANDS, -1, -1)
        edges[0] = 0.0
        bands = (fft_hz[None, :] >= edges[:-1, None]) & (fft_hz[None, :] < edges[1:, None])
        bands[-1, -1] = True  # the Nyquist bin belongs to the top band
        self.register_buffer("band_masks", torch.from_numpy(bands.astype(np.float32)), persistent=False)

    # Frames are made in blocks of this many (per batch row) so the float64 DFT's temporaries stay in
    # cache: 3x faster than one pass over a 10-minute file. None makes one pass (for graph export).
    block_frames: int | None = 1024

    def power_frames(self, waveform: torch.Tensor, stride: int) -> torch.Tensor:
        """|STFT|² of [B, T] waveforms at hop `stride`, no centre padding: [B, n_fft//2+1, frames]."""
        if self.dft == "matmul":
            return self._matmul_power(waveform, stride)
        spec = torch.stft(waveform.to(self.window.dtype), n_fft=self.cfg.n_fft, hop_length=stride,
                          window=self.window, center=False, return_complex=True)
        power = spec.real.square()
        return power.add_(spec.imag.square()).float()

    def _matmul_power(self, waveform: torch.Tensor, stride: int) -> torch.Tensor:
        """power_frames for ONNX export, in the buffers' dtype (float64 unless the module was cast).

        Why float64 in the graph: the float32 DFT, as a Conv1d in onnxruntime (or torch), missed the
        float64 training features by up to 6.7e-3 dB (2.8e-3 in torch) in mel bins ~90 dB below the
        frame's loudest, on 15 of 40 synthetic files. The error is float32 accumulation over the frame,
        relative to the loud (low-frequency) content: splitting the kernels hi/lo in float32 (2x the cost)
        only reached 6.1e-3 dB, and subtracting the frame mean (adding it back on bins 0-1) made it worse
        (5.8e-3 in torch). In float64 the graph is within 1.5e-5 dB of the production front-end (the
        float32 mel and dB steps, as there), for 1.04-1.3x the whole graph's time; the fold halves the
        float64 multiply-adds (the full [N, 2 * bins] float64 MatMul took twice as long).
        """
        n_fft, dtype = self.cfg.n_fft, self.dft_cos.dtype
        frames = frame_signal(waveform.to(dtype), n_fft, stride) * self.window.to(dtype)  # [B, frames, n_fft]
        pairs = (n_fft - 1) // 2
        head, tail = frames[..., 1: pairs + 1], frames[..., n_fft - pairs:].flip(-1)  # y[n], y[N - n]
        even = [frames[..., :1], head + tail] + ([frames[..., n_fft // 2: n_fft // 2 + 1]] if n_fft % 2 == 0 else [])
        real = torch.matmul(torch.cat(even, dim=-1), self.dft_cos)  # [B, frames, bins]
        imag = torch.matmul(head - tail, self.dft_sin)
        return (real.square() + imag.square()).float().transpose(1, 2)

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """Power frames [..., bins, frames] → dB mel [..., n_mels, frames] (ref 1.0, amin 1e-10, no top_db)."""
        mel = torch.matmul(self.mel_basis, power)
        return 10.0 * torch.log10(torch.clamp(mel, min=AMIN))

    def frames(self, waveform: torch.Tensor, stride: int, keep_power: bool = False):
        """Log-mel frames [B, n_mels, frames] of [B, T] waveforms at hop `stride` (and the power frames)."""
        n_frames = 1 + (waveform.shape[-1] - self.cfg.n_fft) // stride
        if n_frames < 1:
            raise ValueError(f"{waveform.shape[-1]} samples is shorter than one STFT frame ({self.cfg.n_fft})")
        block = n_frames if self.block_frames is None else max(16, self.block_frames // max(1, waveform.shape[0]))
        mels, powers = [], []
        for first in range(0, n_frames, block):
            last = min(n_frames, first + block)
            power = self.power_frames(waveform[..., first * stride: (last - 1) * stride + self.cfg.n_fft], stride)
            mels.append(self.log_mel(power))
            if keep_power:
                powers.append(power)
        mel = mels[0] if len(mels) == 1 else torch.cat(mels, dim=-1)
        if not keep_power:
            return mel
        return mel, powers[0] if len(powers) == 1 else torch.cat(powers, dim=-1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel of [B, T] waveforms at hop_length: librosa's melspectrogram + power_to_db."""
        return self.frames(waveform, self.cfg.hop_length)

    def short_segments(self, waveform: torch.Tensor, with_features: bool = False):
        """Every distinct short segment of [B, T] waveforms, each STFT frame computed once.

        Returns mel [B, n_short, n_mels, frames_per_short] and, if asked, features
        [B, n_short, len(FEATURE_NAMES)]. Zero-pads the tail when segmentation.tail is "pad".
        """
        seg = self.segmentation
        if seg is None:
            raise ValueError("FrontEnd was built without a segmentation; pass one to segment audio")
        plan = plan_segments(waveform.shape[-1], seg)
        if plan.n_short == 0:
            raise ValueError(f"{waveform.shape[-1]} samples is shorter than one long segment ({seg.long_samples})")
        if plan.pad:
            waveform = nn.functional.pad(waveform, (0, plan.pad))
        waveform = waveform[..., : plan.samples_used]
        stride = frame_stride(self.cfg, seg)
        frames, step = seg.frames_per_short(self.cfg), seg.short_hop // stride
        result = self.frames(waveform, stride, keep_power=with_features)
        mel = result[0] if with_features else result
        mel = mel.unfold(-1, frames, step).permute(0, 2, 1, 3)  # [B, n_short, n_mels, frames]
        if not with_features:
            return mel
        power = result[1].unfold(-1, frames, step).mean(dim=-1).transpose(1, 2)  # [B, n_short, bins]
        samples = waveform.unfold(-1, seg.short_samples, seg.short_hop)  # [B, n_short, short_samples]
        return mel, self._features(power, samples)

    def _features(self, power: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Per short segment: band powers, centroid, flatness, roll-off (power [B, S, bins]), then
        RMS, crest factor, excess kurtosis and zero-crossing rate of the samples [B, S, n].

        Each is a continuous function of the input made of ops that export to ONNX (no indexing by a
        computed bin, no sign bits), so an exported graph recomputes them within float rounding.
        """
        total = power.sum(-1).clamp(min=AMIN)
        band_db = 10.0 * torch.log10(torch.matmul(power, self.band_masks.T).clamp(min=AMIN))
        centroid = (power * self.fft_hz).sum(-1) / total
        flatness = spectral_flatness(power)
        bin_hz = self.cfg.sample_rate / 2 / (self.cfg.n_fft // 2)  # fft_hz's step
        rolloff = spectral_rolloff(power, total, bin_hz)
        centred = samples - samples.mean(-1, keepdim=True)
        squared = centred.square()
        variance = squared.mean(-1).clamp(min=1e-20)  # RMS floored at 1e-10 (-200 dBFS)
        rms = variance.sqrt()
        rms_db = 20.0 * torch.log10(rms)
        crest_db = 20.0 * torch.log10(centred.abs().amax(-1).clamp(min=1e-10) / rms)
        # m4 / variance², dividing twice: a 1e-20 floor on variance² pulled segments under -100 dBFS towards -3
        kurtosis = squared.square().mean(-1) / variance / variance - 3.0
        # a product with an exact zero, +0.0 or -0.0, is no crossing (torch.signbit tells the zeros apart, and
        # its export, Less(x, 0), does not); products underflow to zero only for samples under ~1e-19
        zcr = (samples[..., 1:] * samples[..., :-1] < 0).float().mean(-1)
        scalars = torch.stack([centroid, flatness, rolloff, rms_db, crest_db, kurtosis, zcr], dim=-1)
        return torch.cat([band_db, scalars], dim=-1)


def spectral_flatness(power: torch.Tensor) -> torch.Tensor:
    """Geometric over arithmetic mean of power [..., bins], each bin floored FLATNESS_FLOOR under the loudest:
    relative, so a gain or float noise in near-empty bins leaves it alone."""
    floored = power.clamp(min=SILENT_POWER)  # exact silence: every bin 1.0 relative, flatness exactly 1
    relative = (floored / floored.amax(-1, keepdim=True)).clamp(min=FLATNESS_FLOOR)
    return torch.exp(torch.log(relative).mean(-1)) / relative.mean(-1)


def spectral_rolloff(power: torch.Tensor, total: torch.Tensor, bin_hz: float) -> torch.Tensor:
    """The frequency where the cumulative power [..., bins], linear between bin centres, reaches ROLLOFF of
    `total`: each gap between bins adds the fraction of it lying below that level (1 below, 0 above), so
    the result moves smoothly with the input instead of jumping a whole bin."""
    target = ROLLOFF * total.unsqueeze(-1)
    below = torch.cumsum(power, -1)[..., :-1]  # cumulative power up to each gap's lower bin
    rise = power[..., 1:].clamp(min=SILENT_POWER)  # an empty bin is crossed at once
    return ((target - below) / rise).clamp(0.0, 1.0).sum(-1) * bin_hz


def reference_log_mel(y: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """The same feature in float64 numpy with explicit framing, for tests: [n_mels, frames]."""
    y = np.asarray(y, dtype=np.float64)
    n_frames = 1 + (len(y) - cfg.n_fft) // cfg.hop_length
    starts = np.arange(n_frames) * cfg.hop_length
    frames = y[starts[:, None] + np.arange(cfg.n_fft)[None, :]] * hann_window(cfg)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    mel = mel_filterbank(cfg).astype(np.float64) @ power.T
    return 10.0 * np.log10(np.maximum(mel, AMIN))
