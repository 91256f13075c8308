"""The one front-end equals librosa's melspectrogram + power_to_db, and computes each frame once."""

import librosa
import numpy as np
import pytest
import soundfile
import soxr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from leakhunter.card import FrontendConfig, SegmentationConfig, preset
from leakhunter.frontend import FEATURE_NAMES, FrontEnd, mel_filterbank, reference_log_mel
from leakhunter.segments import frame_stride, long_segment_inputs, plan_segments

TOLERANCE_DB = 1e-3


def librosa_log_mel(y, cfg: FrontendConfig):
    mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                         win_length=cfg.win_length, window="hann", n_mels=cfg.n_mels,
                                         fmin=cfg.fmin, fmax=cfg.fmax, power=2.0, center=False)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def test_filterbank_equals_librosa():
    for cfg in (FrontendConfig(), FrontendConfig(sample_rate=48000, n_fft=2048, win_length=2048, n_mels=64,
                                                 fmin=20.0, fmax=20000.0)):
        ours = mel_filterbank(cfg)
        theirs = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                     fmax=cfg.fmax)
        np.testing.assert_allclose(ours, theirs, atol=1e-7)


def audio_cases(real_data_dir=None, rate=4096):
    rng = np.random.default_rng(7)
    cases = {"white": rng.standard_normal(4096 * 8).astype(np.float32) * 0.1,
             "quiet_sine": (1e-4 * np.sin(2 * np.pi * 300 * np.arange(4096 * 8) / 4096)).astype(np.float32)}
    if real_data_dir is not None:
        for path in sorted(real_data_dir.glob("*.wav"))[:2]:
            y, sr = soundfile.read(path, dtype="float32")
            cases[path.stem] = soxr.resample(y, sr, rate).astype(np.float32)
    return cases


@pytest.mark.parametrize("preset_name", ["short", "long", "wide"])
def test_log_mel_matches_librosa_on_random_audio(preset_name):
    frontend_cfg, segmentation = preset(preset_name)
    frontend = FrontEnd(frontend_cfg, segmentation)
    for name, y in audio_cases().items():
        ours = frontend(torch.from_numpy(y)[None])[0].numpy()
        theirs = librosa_log_mel(y, frontend_cfg)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= TOLERANCE_DB, name


@pytest.mark.parametrize("preset_name", ["short", "wide"])
def test_log_mel_matches_librosa_on_real_hydrophone_audio(real_data_dir, preset_name):
    """90 dB of dynamic range: the float64 DFT is what keeps the quiet bins within tolerance (`wide`: the 8 kHz
    recordings' whole band, up to 4 kHz)."""
    frontend = FrontEnd(*preset(preset_name))
    for name, y in audio_cases(real_data_dir, frontend.cfg.sample_rate).items():
        ours = frontend(torch.from_numpy(y)[None])[0].numpy()
        theirs = librosa_log_mel(y, frontend.cfg)
        assert np.abs(ours - theirs).max() <= TOLERANCE_DB, name
        assert np.abs(ours - reference_log_mel(y, frontend.cfg)).max() <= TOLERANCE_DB, name


@pytest.mark.parametrize("preset_name", ["short", "long", "wide"])
def test_each_short_segment_equals_librosa_on_that_segment(preset_name):
    frontend_cfg, segmentation = preset(preset_name)
    frontend = FrontEnd(frontend_cfg, segmentation)
    y = np.random.default_rng(1).standard_normal(4096 * 3 + 777).astype(np.float32)
    mels = frontend.short_segments(torch.from_numpy(y)[None])[0].numpy()
    plan = plan_segments(len(y), segmentation)
    assert mels.shape == (plan.n_short, frontend_cfg.n_mels, segmentation.frames_per_short(frontend_cfg))
    for i in range(plan.n_short):
        start = i * segmentation.short_hop
        expected = librosa_log_mel(y[start:start + segmentation.short_samples], frontend_cfg)
        assert np.abs(mels[i] - expected).max() <= TOLERANCE_DB


def test_long_unit_stacks_fifteen_short_segments_per_long_segment():
    frontend_cfg, segmentation = preset("long")
    frontend = FrontEnd(frontend_cfg, segmentation)
    y = np.random.default_rng(2).standard_normal(4096 * 4).astype(np.float32)
    shorts = frontend.short_segments(torch.from_numpy(y)[None])[0]
    plan = plan_segments(len(y), segmentation)
    longs = long_segment_inputs(shorts, plan.long_first_short, plan.shorts_per_long)
    assert tuple(longs.shape) == (plan.n_long, 32, 15)
    second = y[segmentation.long_hop: segmentation.long_hop + segmentation.long_samples]
    # column k of long segment 1 is the mel of its k-th short segment
    for k in (0, 7, 14):
        expected = librosa_log_mel(second[k * 256: k * 256 + 512], frontend_cfg)[:, 0]
        assert np.abs(longs[1, :, k].numpy() - expected).max() <= TOLERANCE_DB
    np.testing.assert_array_equal(long_segment_inputs(shorts.numpy(), plan.long_first_short, 15), longs.numpy())


def test_short_preset_computes_half_the_frames_of_a_plain_stft():
    """One STFT frame per distinct short segment: stride 256, not the 128 hop, and never per long segment."""
    frontend_cfg, segmentation = preset("short")
    assert frame_stride(frontend_cfg, segmentation) == 256
    calls = []
    frontend = FrontEnd(frontend_cfg, segmentation)
    original = frontend.power_frames
    frontend.power_frames = lambda w, stride: calls.append(1 + (w.shape[-1] - 512) // stride) or original(w, stride)
    frontend.short_segments(torch.zeros(1, 4096 * 10).normal_())
    plan = plan_segments(4096 * 10, segmentation)
    assert sum(calls) == plan.n_short == 159  # 79 long segments × 3 shorts share 159 frames, not 237


def test_batched_equals_one_by_one_and_block_size_does_not_matter():
    frontend = FrontEnd(*preset("short"))
    batch = torch.randn(3, 4096 * 5)
    together = frontend.short_segments(batch)
    for row in range(3):
        torch.testing.assert_close(together[row], frontend.short_segments(batch[row:row + 1])[0], rtol=0, atol=1e-5)
    frontend.block_frames = None
    torch.testing.assert_close(frontend(batch), FrontEnd(*preset("short"))(batch), rtol=0, atol=1e-5)


def test_pad_tail_adds_a_long_segment_for_the_remainder():
    frontend_cfg, drop = preset("short")
    pad = SegmentationConfig(**{**drop.__dict__, "tail": "pad"})
    n = 1024 + 512 + 100
    assert plan_segments(n, drop).n_long == 2
    assert plan_segments(n, pad).n_long == 3 and plan_segments(n, pad).pad == 412
    mels = FrontEnd(frontend_cfg, pad).short_segments(torch.randn(1, n))
    assert mels.shape[1] == plan_segments(n, pad).n_short


@settings(max_examples=60, deadline=None)
@given(n_samples=st.integers(0, 50_000), preset_name=st.sampled_from(["short", "long", "wide"]),
       tail=st.sampled_from(["drop", "pad"]))
def test_segment_plan_covers_the_recording(n_samples, preset_name, tail):
    _, base = preset(preset_name)
    seg = SegmentationConfig(**{**base.__dict__, "tail": tail})
    plan = plan_segments(n_samples, seg)
    if n_samples < seg.long_samples:
        assert plan.n_long == 0
        return
    last_end = (plan.n_long - 1) * seg.long_hop + seg.long_samples
    assert last_end <= plan.samples_used
    if tail == "drop":
        assert last_end <= n_samples < last_end + seg.long_hop
    else:
        assert n_samples <= last_end < n_samples + seg.long_hop
    # every long segment's last short lies inside the distinct shorts, and the last one is used
    assert plan.long_first_short[-1] + plan.shorts_per_long == plan.n_short


def test_engineered_features_measure_what_they_say():
    frontend = FrontEnd(*preset("short"))
    t = np.arange(4096 * 2) / 4096
    sine = torch.from_numpy(0.5 * np.sin(2 * np.pi * 400 * t)).float()[None]
    _, features = frontend.short_segments(sine, with_features=True)
    f = dict(zip(FEATURE_NAMES, features[0].mean(0).numpy()))
    assert abs(f["centroid_hz"] - 400) < 25
    assert abs(f["rms_db"] - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1
    assert abs(f["crest_db"] - 20 * np.log10(np.sqrt(2))) < 0.1
    assert abs(f["kurtosis"] - (-1.5)) < 0.05  # a sine's excess kurtosis
    assert abs(f["zcr"] - 2 * 400 / 4096) < 0.01
    assert f["flatness"] < 0.01
    assert int(features[0, 0, :7].argmax()) == 4  # octaves 0-32-64-128-256-512-1024-2048 Hz: 400 Hz is band 4
    noise = torch.randn(1, 4096 * 2)
    _, noise_features = frontend.short_segments(noise, with_features=True)
    assert noise_features[0, :, FEATURE_NAMES.index("flatness")].mean() > 0.4
    assert abs(noise_features[0, :, FEATURE_NAMES.index("kurtosis")].mean()) < 0.5
