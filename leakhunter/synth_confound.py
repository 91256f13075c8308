"""The `gain-confound` scenario of the synthetic corpus: a leak is louder at the pipe, but the recorder's gain
shifts every file's level by more, so only audio and gain together (level minus gain) tell LEAK from NORMAL.

- both classes: flow noise under a hiss with its own resonance, at a random balance, from the same
  distributions for LEAK and NORMAL, so the spectrum's shape says nothing about the label;
- true level (the file's RMS before gain, relative to REFERENCE_DBFS): LEAK ~ N(0, 1) dB, NORMAL ~ N(-8, 1) dB;
- recorder gain: a whole number of dB, uniform in -12..+12, in the file name's gain_db field and the manifest's
  gain_db column; file `index` of each class gets the same gain, so gain alone carries no label on any corpus.

Measured level = true level + gain: a threshold on it or on gain alone barely beats a coin; on level − gain
it separates the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from leakhunter.card import STANDARD_CLASSES
from leakhunter.sources import logger_name
from leakhunter.synth import band_limit, db_to_amplitude, flow_noise, leak_hiss, limit_peak, night_timestamp

CONFOUND_CLASSES = ("LEAK", "NORMAL")
CONFOUND_STREAM = 2_000  # seeds [seed, CONFOUND_STREAM, ...] never meet the other scenarios' streams
GAIN_RANGE_DB = (-12, 12)  # 24 dB of gain against 8 dB between the classes: level alone is ~2/3 right
TRUE_LEVEL_DB = {"LEAK": 0.0, "NORMAL": -8.0}  # 8 spreads apart: level − gain leaves room for noisy estimates
TRUE_LEVEL_SPREAD_DB = 1.0  # one standard deviation, draws clipped at 3 (a bound on the loudest file)
REFERENCE_DBFS = -34.0  # loudest leak (+3 dB, +12 dB gain) -19 dBFS RMS: 18 dB of crest below 0.95
HISS_OVER_FLOW_DB = (-10.0, 10.0)  # the balance of the two sounds, the same range for both classes
RECORDINGS_PER_SENSOR = 4  # per class: a sensor holds 4 LEAK and 4 NORMAL files, so grouped splits keep both


def confound_gain_db(index: int, seed: int) -> int:
    """The recorder gain of file `index` of either class: a function of (seed, index) only."""
    low, high = GAIN_RANGE_DB
    return int(np.random.default_rng([seed, CONFOUND_STREAM, 0, index]).integers(low, high + 1))


def pipe_sound(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Flow noise plus a resonant hiss at a random balance, band-limited, at unit RMS."""
    sound = flow_noise(n, sample_rate, rng) + leak_hiss(n, sample_rate, rng) * db_to_amplitude(
        rng.uniform(*HISS_OVER_FLOW_DB))
    sound = band_limit(sound, sample_rate)
    return sound / max(float(np.sqrt(np.mean(sound**2))), 1e-12)


def true_level_db(label: str, rng: np.random.Generator) -> float:
    """The file's level at the pipe relative to REFERENCE_DBFS: the one thing the label changes."""
    return TRUE_LEVEL_DB[label] + TRUE_LEVEL_SPREAD_DB * float(np.clip(rng.standard_normal(), -3.0, 3.0))


def write_confound_recording(root: Path, label: str, index: int, duration_s: float, sample_rate: int,
                             seed: int) -> tuple[Path, tuple[str, str]]:
    """Synthesise and write one file of the gain-confound scenario; returns its path and (group, gain_db)."""
    class_no = CONFOUND_CLASSES.index(label)
    rng = np.random.default_rng([seed, CONFOUND_STREAM, 1 + STANDARD_CLASSES.index(label), index])
    gain_db = confound_gain_db(index, seed)
    sensor_id = f"S{index // RECORDINGS_PER_SENSOR:03d}"
    recording_no = index * len(CONFOUND_CLASSES) + class_no
    path = root / label / logger_name(sensor_id, recording_no, night_timestamp(rng), gain_db)
    level_db = REFERENCE_DBFS + true_level_db(label, rng) + gain_db
    signal = pipe_sound(max(1, round(duration_s * sample_rate)), sample_rate, rng) * db_to_amplitude(level_db)
    sf.write(path, limit_peak(signal).astype(np.float32), sample_rate, subtype="PCM_16")
    return path, (sensor_id, str(gain_db))
