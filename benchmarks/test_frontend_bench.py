"""Front-end speed vs librosa on the same audio (DESIGN §10): whole-file log-mel, and the segment features.

`whole`: both compute the same [n_mels, frames] log-mel at hop 128. `segments`: what the product needs,
every short segment's mel; librosa the obvious way (one call per short segment, as a per-window
pipeline does) vs leakhunter computing each distinct frame once.
"""

import timeit

import librosa
import numpy as np
import pytest
import torch

from leakhunter.card import FrontendConfig, SegmentationConfig
from leakhunter.frontend import FrontEnd
from leakhunter.segments import plan_segments


def librosa_log_mel(y, cfg):
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, center=False)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def best_of(function, repeat):
    function()
    return min(timeit.repeat(function, number=1, repeat=repeat))


@pytest.mark.parametrize("sample_rate", [4096, 48000])
@pytest.mark.parametrize("seconds", [60, 600])
def test_whole_file_log_mel_vs_librosa(benchmark, report_ratio, sample_rate, seconds):
    cfg = FrontendConfig(sample_rate=sample_rate, fmax=sample_rate / 2)
    frontend = FrontEnd(cfg)
    y = np.random.default_rng(0).standard_normal(sample_rate * seconds).astype(np.float32)
    waveform = torch.from_numpy(y)[None]
    with torch.inference_mode():
        ours = benchmark.pedantic(frontend, args=(waveform,), rounds=5 if seconds == 60 else 3, warmup_rounds=1)
    theirs_s = best_of(lambda: librosa_log_mel(y, cfg), 5 if seconds == 60 else 3)
    assert np.abs(ours[0].numpy() - librosa_log_mel(y, cfg)).max() < 1e-3
    ratio = theirs_s / benchmark.stats.stats.min
    benchmark.extra_info["speedup_vs_librosa"] = ratio
    report_ratio(f"whole-file log-mel {seconds} s @ {sample_rate} Hz", f"{ratio:5.2f}x librosa")


@pytest.mark.parametrize("seconds", [60, 600])
def test_short_segments_vs_librosa_per_segment(benchmark, report_ratio, seconds):
    cfg, seg = FrontendConfig(), SegmentationConfig()
    frontend = FrontEnd(cfg, seg)
    y = np.random.default_rng(0).standard_normal(cfg.sample_rate * seconds).astype(np.float32)
    plan = plan_segments(len(y), seg)
    starts = np.arange(plan.n_short) * seg.short_hop
    with torch.inference_mode():
        benchmark.pedantic(frontend.short_segments, args=(torch.from_numpy(y)[None],), rounds=5, warmup_rounds=1)
    per_segment = lambda: [librosa_log_mel(y[s:s + seg.short_samples], cfg) for s in starts]  # noqa: E731
    whole_then_pick = lambda: librosa_log_mel(y[: plan.samples_used], cfg)[:, ::2]  # noqa: E731
    naive_s = best_of(per_segment, 1 if seconds == 600 else 2)
    smart_s = best_of(whole_then_pick, 3)
    ours_s = benchmark.stats.stats.min
    benchmark.extra_info.update(speedup_vs_per_segment=naive_s / ours_s, speedup_vs_whole_file=smart_s / ours_s)
    report_ratio(f"short-segment mels {seconds} s @ 4096 Hz",
                 f"{naive_s / ours_s:7.1f}x librosa per segment, {smart_s / ours_s:5.2f}x librosa whole file")
