"""The engineered features (fusion's `features` branch) are smooth, exportable functions of the waveform: an
ONNX graph recomputes them within float rounding, and each measures what its name says at any level."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import waveform_session
from torch import nn

from leakhunter.card import preset
from leakhunter.frontend import FEATURE_NAMES, FEATURE_VERSION, FrontEnd
from leakhunter.training.dataset import feature_version

FRONTEND, SEGMENTATION = preset("short")
RATE = FRONTEND.sample_rate
BIN_HZ = RATE / FRONTEND.n_fft
# |onnx - torch| allowed per feature: (absolute, relative to the torch value)
TOLERANCES = {name: (1e-3, 0.0) for name in FEATURE_NAMES if name.endswith("_db")} | {
    "centroid_hz": (1e-3, 1e-3), "rolloff_hz": (1e-3, 1e-3), "flatness": (1e-5, 0.0),
    "kurtosis": (1e-4, 1e-5), "zcr": (1e-5, 0.0),
}


class Features(nn.Module):
    """Waveforms [B, T] → features [B, n_short, len(FEATURE_NAMES)] through the graph's STFT (dft="matmul")."""

    def __init__(self):
        super().__init__()
        self.frontend = FrontEnd(FRONTEND, SEGMENTATION, dft="matmul")
        self.frontend.block_frames = None  # one pass over the frames, as in an exported graph

    def forward(self, waveform):
        return self.frontend.short_segments(waveform, with_features=True)[1]


def features(waveform: np.ndarray) -> dict[str, np.ndarray]:
    """Each feature of one recording [T] in torch: name → [n_short]."""
    with torch.inference_mode():
        values = Features()(torch.from_numpy(np.asarray(waveform, np.float32))[None])[0].numpy()
    return dict(zip(FEATURE_NAMES, values.T))


@pytest.fixture(scope="module")
def onnx_features():
    """Features exported as export/convert.py exports a model (dynamo, opset 18, dynamic batch and samples),
    run by onnxruntime on CPU: waveforms [B, T] → features."""
    session = waveform_session(Features(), SEGMENTATION, "features")
    return lambda waveforms: session.run(None, {"waveform": waveforms})[0]


def tone(hz: float, seconds: float = 2.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def noise(seconds: float = 2.0, std: float = 0.1, seed: int = 0) -> np.ndarray:
    return (std * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def band_limited(low_hz: float, high_hz: float, seconds: float = 2.0, seed: int = 1) -> np.ndarray:
    spectrum = np.fft.rfft(noise(seconds, 1.0, seed))
    hz = np.fft.rfftfreq(int(seconds * RATE), 1 / RATE)
    spectrum[(hz < low_hz) | (hz > high_hz)] = 0
    return np.fft.irfft(spectrum, int(seconds * RATE)).astype(np.float32)


def parity_cases(seconds: float) -> dict[str, np.ndarray]:
    """Recordings that stress the features: flat, peaked, band-limited, gated, silent and very quiet."""
    white, sine = noise(seconds), tone(400, seconds)
    gated = np.where(np.abs(sine) < 0.2, np.float32(0), sine)  # runs of exact zeros between the half-waves
    gaps = white.copy()
    gaps[RATE // 2: RATE] = 0.0  # whole short segments of +0.0,
    gaps[RATE + 100: RATE + 900] = -0.0  # of -0.0,
    gaps[RATE + 1000: RATE + 1100: 2] = -0.0  # and single signed zeros between samples
    return {"white": white, "tone": sine, "band_limited": band_limited(300, 700, seconds), "gated_tone": gated,
            "signed_zero_gaps": gaps, "silence": np.zeros_like(white), "quiet_noise": 1e-6 * white,
            "quiet_tone": tone(1000, seconds, 1e-5), "two_tones": tone(100, seconds) + tone(1500, seconds, 0.2)}


@pytest.mark.parametrize("seconds", [2.0, 2.3])
def test_onnx_features_equal_torch_features_within_tolerance(onnx_features, seconds):
    cases = parity_cases(seconds)
    waveforms = np.stack(list(cases.values()))
    with torch.inference_mode():
        expected = Features()(torch.from_numpy(waveforms)).numpy()
    got = onnx_features(waveforms)
    assert got.shape == expected.shape and np.isfinite(expected).all()
    for index, name in enumerate(FEATURE_NAMES):
        absolute, relative = TOLERANCES[name]
        allowed = absolute + relative * np.abs(expected[..., index])
        excess = np.abs(got[..., index] - expected[..., index]) - allowed
        worst = np.unravel_index(excess.argmax(), excess.shape)
        assert excess.max() <= 0, f"{name}: {list(cases)[worst[0]]} segment {worst[1]}"


def clicks(seconds: float = 0.5) -> np.ndarray:
    """A unit click every 512 samples, from sample 128: each short segment (512 at hop 256) holds one
    where its Hann window is 0.5, so each has the same flat power spectrum, 0.25 in every bin."""
    y = np.zeros(int(seconds * RATE), np.float32)
    y[128::512] = 1.0
    return y


def test_rolloff_interpolates_between_bins():
    """85 % of 257 equal bins is 218.45 bins: the cumulative power reaches it 0.45 of the way from bin 217
    to bin 218 (the old step function said bin 218)."""
    np.testing.assert_allclose(features(clicks())["rolloff_hz"], (217 + 0.45) * BIN_HZ, atol=1e-2)


def test_rolloff_moves_smoothly_with_the_input():
    """A growing 1 kHz tone pulls the clicks' 85 % point down by bins, in steps far under a bin."""
    gains = np.linspace(0, 0.02, 201)
    rolloff = np.stack([features(clicks() + gain * tone(1000, 0.5, 1.0))["rolloff_hz"] for gain in gains])
    assert (rolloff[0] - rolloff[-1]).min() > 3 * BIN_HZ
    assert np.abs(np.diff(rolloff, axis=0)).max() < 0.1 * BIN_HZ


def test_a_tiny_perturbation_moves_rolloff_by_a_tiny_fraction_of_a_bin():
    white = noise(8.0)
    nudged = white + 1e-5 * noise(8.0, 0.1, seed=5)
    shift = np.abs(features(nudged)["rolloff_hz"] - features(white)["rolloff_hz"])
    assert shift.max() < 0.01 * BIN_HZ


@pytest.mark.parametrize("make", [lambda: noise(), lambda: tone(400), lambda: band_limited(300, 700)])
def test_flatness_does_not_depend_on_the_level(make):
    """Also relatively: a tone's flatness (2e-8) moved 10 orders of magnitude with its level under an
    absolute floor."""
    flatness = features(make())["flatness"]
    for gain in (1e-3, 1e3):
        scaled = features(gain * make())["flatness"]
        np.testing.assert_allclose(scaled, flatness, atol=1e-4)
        np.testing.assert_allclose(np.log(scaled), np.log(flatness), atol=1e-3)


def test_flatness_is_high_for_white_noise_and_near_zero_for_a_tone():
    """One periodogram of white noise has exponentially distributed bins: geometric/arithmetic mean
    e^-γ = 0.56, not 1."""
    assert 0.45 < features(noise())["flatness"].mean() < 0.7
    assert features(tone(400))["flatness"].max() < 1e-3


def test_zcr_ignores_the_sign_of_exact_zeros():
    gated = np.where(np.abs(tone(400)) < 0.2, np.float32(0), tone(400))
    negative_zeros = np.where(gated == 0, np.float32(-0.0), gated)
    assert np.signbit(negative_zeros).sum() > np.signbit(gated).sum()
    np.testing.assert_array_equal(features(negative_zeros)["zcr"], features(gated)["zcr"])
    assert features(np.zeros(2 * RATE, np.float32))["zcr"].max() == 0


@pytest.mark.parametrize("hz", [50, 400, 1500])
def test_zcr_of_a_sinusoid_is_twice_its_frequency_over_the_rate(hz):
    crossings_per_pair = 2 * hz / RATE
    assert np.abs(features(tone(hz))["zcr"] - crossings_per_pair).max() <= 2 / (SEGMENTATION.short_samples - 1)


def test_shape_features_are_the_same_120_db_quieter():
    """White noise at -20 and at -140 dBFS RMS: only rms_db moves (the old kurtosis read -3 under -100)."""
    loud, quiet = features(noise()), features(1e-6 * noise())
    for name in ("centroid_hz", "rolloff_hz", "crest_db", "kurtosis", "zcr"):
        np.testing.assert_allclose(quiet[name], loud[name], rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(quiet["rms_db"], loud["rms_db"] - 120, atol=1e-3)


def test_silence_has_fixed_finite_features():
    silent = features(np.zeros(2 * RATE, np.float32))
    expected = {"band0_db": -100, "centroid_hz": 0, "flatness": 1, "rolloff_hz": RATE / 2, "rms_db": -200,
                "crest_db": 0, "kurtosis": -3, "zcr": 0}
    for name, value in expected.items():
        np.testing.assert_allclose(silent[name], value, atol=1e-4, err_msg=name)


def test_dataset_records_the_feature_version(small_dataset, tmp_path):
    with h5py.File(small_dataset.output) as h5:
        assert h5.attrs["feature_version"] == FEATURE_VERSION == 2
        assert feature_version(h5) == 2
    old = tmp_path / "old.h5"
    shutil.copy(small_dataset.output, old)
    with h5py.File(old, "a") as h5:
        del h5.attrs["feature_version"]
        assert feature_version(h5) == 1
