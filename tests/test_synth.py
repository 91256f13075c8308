"""training/synth.py: a deterministic corpus whose five classes sound like what their names say."""

import csv
import re

import numpy as np
import pytest
import soundfile

from leakhunter import synth
from leakhunter.card import STANDARD_CLASSES
from leakhunter.synth import SynthCorpus, leak_recording, synth_corpus, synth_recording

RATE = 8000
NAME = re.compile(r"^(S\d{3})~(R\d{5})~(\d{8}T\d{6})~(0|6|12|18)\.wav$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SynthCorpus:
    """Eight 10 s files per class: enough to average the physics over."""
    folder = tmp_path_factory.mktemp("corpus")
    return synth_corpus(folder, files_per_class=8, duration_s=10.0, sample_rate=RATE)


def recordings_of(corpus: SynthCorpus, label: str) -> list[np.ndarray]:
    return [soundfile.read(path)[0] for path in corpus.files if path.parent.name == label]


def energy_fraction(samples: np.ndarray, low_hz: float, high_hz: float, rate: int = RATE) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    return float(power[(freqs >= low_hz) & (freqs <= high_hz)].sum() / power.sum())


def loudness_swing(samples: np.ndarray, rate: int = RATE) -> float:
    """Max over median of the RMS of 0.25 s frames: ~1 for a steady sound, large for transients."""
    frame = rate // 4
    frames = samples[: samples.size // frame * frame].reshape(-1, frame)
    frame_rms = np.sqrt((frames**2).mean(axis=1))
    return float(frame_rms.max() / np.median(frame_rms))


def corpus_bytes(corpus: SynthCorpus) -> dict[str, bytes]:
    paths = [*corpus.files, corpus.manifest]
    return {path.relative_to(corpus.root).as_posix(): path.read_bytes() for path in paths}


# --- determinism ---------------------------------------------------------------------------------

def test_same_seed_writes_byte_identical_corpora(tmp_path):
    first = synth_corpus(tmp_path / "a", files_per_class=2, duration_s=1.0, seed=3)
    second = synth_corpus(tmp_path / "b", files_per_class=2, duration_s=1.0, seed=3)
    assert corpus_bytes(first) == corpus_bytes(second)


def test_different_seed_gives_different_audio(tmp_path):
    first = synth_corpus(tmp_path / "a", files_per_class=2, duration_s=1.0, seed=3)
    second = synth_corpus(tmp_path / "b", files_per_class=2, duration_s=1.0, seed=4)
    for a, b in zip(first.files, second.files):
        assert not np.array_equal(soundfile.read(a)[0], soundfile.read(b)[0])


def test_a_file_is_unchanged_when_files_per_class_grows(tmp_path):
    small = synth_corpus(tmp_path / "small", files_per_class=2, duration_s=1.0)
    large = synth_corpus(tmp_path / "large", files_per_class=5, duration_s=1.0)
    large_files = corpus_bytes(large)
    for relative, content in corpus_bytes(small).items():
        if relative != "manifest.csv":
            assert large_files[relative] == content, relative


def test_rewriting_overwrites_its_own_files_and_leaves_others(tmp_path):
    stranger = tmp_path / "LEAK" / "field-recording.wav"
    stranger.parent.mkdir()
    stranger.write_bytes(b"not ours")
    first = corpus_bytes(synth_corpus(tmp_path, files_per_class=1, duration_s=0.5))
    again = synth_corpus(tmp_path, files_per_class=1, duration_s=0.5)
    assert corpus_bytes(again) == first
    assert stranger.read_bytes() == b"not ours"
    assert "field-recording.wav" not in again.manifest.read_text()


# --- layout ------------------------------------------------------------------------------------

def test_files_sit_in_class_folders_named_sensor_recording_timestamp_gain(corpus):
    assert sorted(p.name for p in corpus.root.iterdir() if p.is_dir()) == sorted(STANDARD_CLASSES)
    assert len(corpus.files) == 40 and corpus.counts == dict.fromkeys(STANDARD_CLASSES, 8)
    names = [NAME.match(path.name) for path in corpus.files]
    assert all(names), [p.name for p, m in zip(corpus.files, names) if not m]
    assert len({m.group(2) for m in names}) == 40  # recording ids are unique
    for match in names:
        hour = int(match.group(3)[9:11])
        assert 1 <= hour <= 4  # logger slots in the minimum-night-flow hours


def test_manifest_lists_every_file_by_class_then_index_with_its_sensor_as_group(corpus):
    with corpus.manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["path", "label", "group"]
    assert corpus.manifest == corpus.root / "manifest.csv"
    assert [corpus.root / row["path"] for row in rows] == list(corpus.files)
    assert [row["label"] for row in rows] == [label for label in STANDARD_CLASSES for _ in range(8)]
    for row in rows:
        assert not row["path"].startswith("/") and row["path"].split("/")[0] == row["label"]
        assert row["group"] == row["path"].split("/")[1].split("~")[0]


def test_sensors_hold_several_recordings_of_mixed_classes(tmp_path):
    corpus = synth_corpus(tmp_path, files_per_class=10, duration_s=0.5)
    classes_per_sensor: dict[str, set[str]] = {}
    for path in corpus.files:
        classes_per_sensor.setdefault(path.name.split("~")[0], set()).add(path.parent.name)
    assert 4 <= len(classes_per_sensor) <= 25  # a pool of about 50 / 4 sensors
    assert max(len(classes) for classes in classes_per_sensor.values()) >= 2


def test_gain_in_the_name_is_applied_to_the_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "synth_recording", lambda *args: np.full(800, 0.01, np.float32))
    corpus = synth_corpus(tmp_path, files_per_class=4, duration_s=0.1)
    gains = set()
    for path in corpus.files:
        gain_db = int(NAME.match(path.name).group(4))
        gains.add(gain_db)
        level = soundfile.read(path)[0].mean()
        assert level == pytest.approx(0.01 * 10 ** (gain_db / 20), abs=2**-14)  # within 16-bit LSBs
    assert len(gains) >= 3


def test_progress_reports_each_file(tmp_path):
    calls = []
    synth_corpus(tmp_path, files_per_class=2, duration_s=0.2,
                 progress=lambda done, total: calls.append((done, total)))
    assert calls == [(done, 10) for done in range(1, 11)]


# --- physics -----------------------------------------------------------------------------------

def test_leak_puts_more_of_its_energy_in_100_1500_hz_than_normal_and_quiet(corpus):
    band = {label: np.mean([energy_fraction(x, 100, 1500) for x in recordings_of(corpus, label)])
            for label in ("LEAK", "NORMAL", "QUIET")}
    assert band["LEAK"] > 0.8
    assert band["LEAK"] > band["NORMAL"] + 0.4
    assert band["LEAK"] > band["QUIET"] + 0.4


def test_normal_flow_noise_lies_mostly_below_300_hz(corpus):
    assert np.mean([energy_fraction(x, 0, 300) for x in recordings_of(corpus, "NORMAL")]) > 0.7


def test_mechanical_spectrum_peaks_at_a_multiple_of_mains_frequency(corpus):
    for samples in recordings_of(corpus, "MECHANICAL"):
        magnitude = np.abs(np.fft.rfft(samples))
        freqs = np.fft.rfftfreq(samples.size, 1 / RATE)
        magnitude[freqs < 20] = 0  # ignore the flow rumble near DC
        peak_hz = freqs[np.argmax(magnitude)]
        distance = min(abs(peak_hz - round(peak_hz / f0) * f0) for f0 in (50, 60))
        assert distance <= 2, peak_hz


def test_quiet_is_near_silence_but_not_digital_silence(corpus):
    for samples in recordings_of(corpus, "QUIET"):
        assert 20 * np.log10(np.sqrt(np.mean(samples**2))) < -60
        assert samples.max() - samples.min() > 2**-15


def test_random_interference_is_non_stationary(corpus):
    swings = [loudness_swing(x) for x in recordings_of(corpus, "RANDOM")]
    assert min(swings) > 4, swings


def test_an_uninterrupted_leak_is_stationary():
    for seed in range(6):
        leak = leak_recording(10 * RATE, RATE, np.random.default_rng(seed), interrupted=False)
        assert loudness_swing(leak) < 2


def test_about_a_fifth_of_normal_files_carry_a_brief_leak_like_burst():
    """A burst shows as leak-band loudness swinging > 10x; steady flow noise swings ~1.3x."""
    bursts = 0
    for seed in range(80):
        samples = synth_recording("NORMAL", 4.0, RATE, np.random.default_rng([99, seed]))
        leak_band = np.abs(np.fft.rfftfreq(samples.size, 1 / RATE) - 800) <= 700  # 100-1500 Hz
        in_band = np.fft.irfft(np.fft.rfft(samples) * leak_band, samples.size)
        bursts += loudness_swing(in_band) > 10
    assert 0.1 <= bursts / 80 <= 0.32


def test_no_file_clips(corpus):
    for path in corpus.files:
        assert np.abs(soundfile.read(path)[0]).max() < 1.0


def test_every_class_except_quiet_keeps_its_energy_below_1_8_khz():
    for label in ("LEAK", "NORMAL", "RANDOM", "MECHANICAL"):
        for seed in range(4):
            samples = synth_recording(label, 4.0, RATE, np.random.default_rng(seed)).astype(float)
            assert energy_fraction(samples, 1850, RATE / 2) < 1e-6, label


@pytest.mark.parametrize("label", STANDARD_CLASSES)
@pytest.mark.parametrize("duration_s", [0.001, 0.3, 2.5])
def test_a_recording_has_the_asked_length_and_stays_in_range(label, duration_s):
    samples = synth_recording(label, duration_s, 4000, np.random.default_rng(7))
    assert samples.dtype == np.float32 and samples.shape == (max(1, round(duration_s * 4000)),)
    assert np.all(np.isfinite(samples)) and np.abs(samples).max() <= 0.95


# --- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"files_per_class": 0}, "files_per_class"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": -1.0}, "duration_s"),
    ({"sample_rate": 3999}, "sample_rate"),
    ({"seed": -1}, "seed"),
])
def test_synth_corpus_refuses_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        synth_corpus(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written before the check


def test_synth_recording_refuses_an_unknown_class():
    with pytest.raises(ValueError, match="CRACK"):
        synth_recording("CRACK", 1.0, RATE, np.random.default_rng(0))
