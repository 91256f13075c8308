"""A deterministic synthetic corpus of pipe sounds (five classes, or two in gain-confound; WAV files plus a manifest).
It lets the demo, the tests and the benchmarks run anywhere without real recordings."""

from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from leakhunter.card import STANDARD_CLASSES
from leakhunter.errors import InputError
from leakhunter.sources import logger_name

GAINS_DB = (0, 6, 12, 18)
PEAK_CEILING = 0.95
EVENT_PEAK_CAP_DB = -20.0  # loudest transient before gain: +18 dB still leaves it under the ceiling
BAND_EDGE_HZ = 1700.0  # content ends by 1.8 kHz: the model runs at 4096 Hz (Nyquist 2048 Hz)
LEAK_INTERRUPTED_SHARE = 0.3
DECOY_BURST_SHARE = 0.2
DECOY_CLASSES = ("NORMAL", "RANDOM", "MECHANICAL")  # a QUIET file with a hiss in it is not quiet
SENSORS_PER_BLOCK, RECORDINGS_PER_BLOCK = 4, 16  # about one sensor per four recordings
SCENARIOS = ("classes", "sites", "gain-confound")  # sites: leakhunter.synth_sites; gain-confound: synth_confound


@dataclass(frozen=True)
class SynthCorpus:
    """What synth_corpus wrote: the folder, its manifest, the files in manifest order, files per class, the
    scenario and (sites scenario) the site names."""
    root: Path
    manifest: Path
    files: tuple[Path, ...]
    counts: dict[str, int]
    scenario: str = "classes"
    sites: tuple[str, ...] = ()


def db_to_amplitude(db: float) -> float:
    return 10.0 ** (db / 20.0)


def skirt(freqs: np.ndarray, zero_hz: float, one_hz: float) -> np.ndarray:
    """A raised-cosine filter edge: 0 at zero_hz, 1 at one_hz and beyond (a high-pass edge when
    zero_hz < one_hz, a low-pass edge when zero_hz > one_hz)."""
    return np.sin(0.5 * np.pi * np.clip((freqs - zero_hz) / (one_hz - zero_hz), 0.0, 1.0)) ** 2


def pipe_resonance(freqs: np.ndarray, centre_hz: float, q: float) -> np.ndarray:
    """Magnitude of a second-order resonance (a pipe section ringing), 1 at centre_hz."""
    ratio = np.maximum(freqs, 1e-3) / centre_hz
    return 1.0 / np.sqrt(1.0 + q**2 * (ratio - 1.0 / ratio) ** 2)


def shaped_noise(n: int, sample_rate: int, rng: np.random.Generator,
                 magnitude: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise with amplitude spectrum magnitude(freqs_hz), no DC, unit RMS.

    The spectrum of white Gaussian noise is drawn directly (what rfft of white noise gives),
    multiplied by the designed response and brought back with irfft."""
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    response = magnitude(freqs)
    response[0] = 0.0  # hydrophones and accelerometers are AC-coupled
    spectrum = rng.standard_normal((freqs.size, 2)).view(np.complex128)[:, 0]
    noise = np.fft.irfft(spectrum * response, n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def band_limit(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Remove everything above ~1.8 kHz (onsets, envelopes and dips spread a little energy upwards)."""
    edge = skirt(np.fft.rfftfreq(signal.size, 1.0 / sample_rate), BAND_EDGE_HZ + 100, BAND_EDGE_HZ)
    return np.fft.irfft(np.fft.rfft(signal) * edge, signal.size)


def flow_noise(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Water flowing in an intact pipe: brown-ish noise (1/f amplitude) mostly under 300 Hz."""
    corner_hz, cutoff_hz = rng.uniform(15, 30), rng.uniform(200, 300)
    return shaped_noise(n, sample_rate, rng, lambda f: skirt(f, 2, 10) * skirt(
        f, 1.5 * cutoff_hz, cutoff_hz) / np.sqrt(1.0 + (f / corner_hz) ** 2))


def leak_hiss(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Turbulent jet noise from a leak orifice: broadband ~100-1500 Hz, coloured by a resonance."""
    low_hz, high_hz = rng.uniform(80, 200), rng.uniform(1000, 1600)
    centre_hz, q, floor = rng.uniform(200, 1000), rng.uniform(2, 8), rng.uniform(0.2, 0.5)
    return shaped_noise(n, sample_rate, rng, lambda f: skirt(f, low_hz - 60, low_hz) * skirt(
        f, high_hz + 150, high_hz) * (floor + pipe_resonance(f, centre_hz, q)))


def traffic_rumble(sample_rate: int, rng: np.random.Generator, max_samples: int) -> np.ndarray:
    """A vehicle passing overhead: rumble under 400 Hz that swells and fades over 1-3 s."""
    n = max(1, min(int(rng.uniform(1, 3) * sample_rate), max_samples))
    cutoff_hz, swell = rng.uniform(250, 400), rng.uniform(1.5, 4)
    rumble = shaped_noise(n, sample_rate, rng, lambda f: skirt(f, 5, 20) * skirt(
        f, cutoff_hz + 60, cutoff_hz) / np.sqrt(1.0 + (f / 80) ** 2))
    return rumble * np.sin(np.pi * np.linspace(0, 1, n)) ** swell


def repeat_sound(sound: np.ndarray, n: int, spacing: int, rng: np.random.Generator) -> np.ndarray:
    """Copies of sound every spacing samples over n samples, each at 60-100 % of full strength."""
    out = np.zeros(n)
    for start in range(0, n, max(1, spacing)):
        segment = out[start:start + sound.size]
        segment += rng.uniform(0.6, 1.0) * sound[:segment.size]
    return out


def footsteps(sample_rate: int, rng: np.random.Generator, max_samples: int) -> np.ndarray:
    """Someone walking over the pipe: thumps at 50-150 Hz every ~0.5 s, each ringing down."""
    step = int(rng.uniform(0.45, 0.6) * sample_rate)
    steps = int(min(rng.integers(3, 9), max(1, max_samples // step)))
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    freq_hz, decay_s = rng.uniform(50, 150), rng.uniform(0.02, 0.05)
    thump = np.sin(2 * np.pi * freq_hz * t) * np.exp(-t / decay_s) * (1 - np.exp(-t / 0.004))
    return repeat_sound(thump, max(1, min(steps * step, max_samples)), step, rng)


def knocks(sample_rate: int, rng: np.random.Generator, max_samples: int) -> np.ndarray:
    """Tapping on a fitting: a few clicks, each ringing at 300-1200 Hz and dying within ~0.1 s."""
    ring_hz, decay_s = rng.uniform(300, 1200), rng.uniform(0.006, 0.02)
    t = np.arange(int(6 * decay_s * sample_rate) + 1) / sample_rate
    click = np.sin(2 * np.pi * ring_hz * t) * np.exp(-t / decay_s)
    spacing, count = int(rng.uniform(0.1, 0.3) * sample_rate), int(rng.integers(1, 5))
    return repeat_sound(click, max(1, min((count - 1) * spacing + click.size, max_samples)), spacing, rng)


TRANSIENTS = (traffic_rumble, footsteps, knocks)


def scatter_transients(n: int, sample_rate: int, rng: np.random.Generator, cover_fraction: float,
                       peak_db_range: tuple[float, float], peak_cap_db: float = EVENT_PEAK_CAP_DB
                       ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """At least one transient (traffic, footsteps, knocks) at random times, covering at most
    cover_fraction of the recording; each peaks in peak_db_range (at most peak_cap_db). Returns the sum
    and its spans."""
    interference, spans = np.zeros(n), []
    budget = max(1, int(cover_fraction * n))
    while budget > 0 and (not spans or rng.random() < 0.6):
        event = TRANSIENTS[rng.integers(len(TRANSIENTS))](sample_rate, rng, budget)
        peak_db = min(rng.uniform(*peak_db_range), peak_cap_db)
        event *= db_to_amplitude(peak_db) / max(float(np.max(np.abs(event))), 1e-12)
        start = int(rng.integers(0, n - event.size + 1))
        interference[start:start + event.size] += event
        spans.append((start, start + event.size))
        budget -= event.size
    return interference, spans


def leak_recording(n: int, sample_rate: int, rng: np.random.Generator,
                   interrupted: bool | None = None) -> np.ndarray:
    """A leak: steady hiss over low flow noise. Interrupted recordings (~30 %, or as asked) carry
    transients over < 40 % of the file, during which the leak persists or dips (pressure drop)."""
    if interrupted is None:
        interrupted = bool(rng.random() < LEAK_INTERRUPTED_SHARE)
    leak_db = rng.uniform(-48, -34)
    leak = leak_hiss(n, sample_rate, rng) * db_to_amplitude(leak_db)
    flow = flow_noise(n, sample_rate, rng) * db_to_amplitude(leak_db - rng.uniform(10, 30))
    if not interrupted:
        return leak + flow
    events, spans = scatter_transients(n, sample_rate, rng, rng.uniform(0.1, 0.38),
                                       (leak_db + 10, leak_db + 26))
    if rng.random() < 0.5:
        depth, ramp = rng.uniform(0.3, 0.7), 0.05 * sample_rate
        for start, stop in spans:
            dip = np.interp(np.arange(n), [start - ramp, start, stop, stop + ramp], [1, depth, depth, 1])
            leak *= dip
    return leak + flow + events


def normal_recording(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """An intact pipe with water flowing: low-frequency flow noise only."""
    return flow_noise(n, sample_rate, rng) * db_to_amplitude(rng.uniform(-62, -48))


def quiet_recording(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """No flow, no leak: the sensor's own white self-noise near -81 dBFS (many LSB, not silence)."""
    return rng.standard_normal(n) * db_to_amplitude(rng.uniform(-83, -79))


def random_recording(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Non-stationary interference over a quiet pipe: transients 36-50 dB above the background."""
    background_db = rng.uniform(-75, -62)
    background = flow_noise(n, sample_rate, rng) * db_to_amplitude(background_db)
    events, _ = scatter_transients(n, sample_rate, rng, rng.uniform(0.1, 0.3),
                                   (background_db + 36, background_db + 50))
    return background + events


def mechanical_recording(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A pump or motor nearby: a mains-locked fundamental (50/60 Hz, or 100/120 Hz from rotation)
    with harmonics up to 1 kHz decaying with order, wandering ~0.1 % in frequency, over flow."""
    f0_hz = float(rng.choice([50.0, 60.0]) * rng.choice([1, 2]))
    hum_db = rng.uniform(-48, -36)
    hum = harmonic_hum(n, sample_rate, f0_hz, db_to_amplitude(hum_db), rng)
    return hum + flow_noise(n, sample_rate, rng) * db_to_amplitude(hum_db - rng.uniform(10, 25))


def harmonic_hum(n: int, sample_rate: int, f0_hz: float, rms: float, rng: np.random.Generator,
                 top_hz: float = 1000.0) -> np.ndarray:
    """A rotating machine: f0_hz and its harmonics up to top_hz, decaying with order, wandering ~0.1 %
    in frequency, scaled to the given RMS."""
    knots = np.linspace(0, n, max(2, int(2 * n / sample_rate)))
    wander = 1 + 0.001 * np.interp(np.arange(n), knots, rng.standard_normal(knots.size))
    rotation = 2 * np.pi * np.cumsum(f0_hz * wander) / sample_rate
    orders = np.arange(1, max(1, int(top_hz // f0_hz)) + 1)
    amplitudes = orders ** -rng.uniform(0.5, 1.5) * rng.lognormal(0, 0.3, orders.size)
    offsets = rng.uniform(0, 2 * np.pi, orders.size)
    coefficients = amplitudes * np.exp(1j * offsets)
    turn, series = np.exp(1j * rotation), np.full(n, coefficients[-1])
    for coefficient in coefficients[-2::-1]:  # Horner: sum of c_k·e^{ik·rotation}, no sin() per order
        series *= turn
        series += coefficient
    hum = (series * turn).imag
    hum *= rms / max(float(np.sqrt(np.mean(hum**2))), 1e-12)
    return hum


def leak_burst(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Leak-like hiss for under a quarter of the recording (a consumer drawing water nearby):
    the case that voting over long segments exists for."""
    m = max(1, int(rng.uniform(0.08, 0.24) * n))
    ramps = np.minimum(1.0, np.minimum(np.arange(m), np.arange(m)[::-1]) / (0.1 * sample_rate))
    burst, start = np.zeros(n), int(rng.integers(0, n - m + 1))
    burst[start:start + m] = leak_hiss(m, sample_rate, rng) * ramps * db_to_amplitude(rng.uniform(-48, -36))
    return burst


CLASS_RECORDINGS = {"LEAK": leak_recording, "NORMAL": normal_recording, "QUIET": quiet_recording,
                    "RANDOM": random_recording, "MECHANICAL": mechanical_recording}


def limit_peak(signal: np.ndarray, ceiling: float = PEAK_CEILING) -> np.ndarray:
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    return signal * (ceiling / peak) if peak > ceiling else signal


def _check_audio_args(duration_s: float, sample_rate: int) -> None:
    if not 0 < duration_s < float("inf"):
        raise InputError(f"duration_s must be a finite number of seconds > 0, got {duration_s!r}")
    if int(sample_rate) != sample_rate or sample_rate < 4000:
        raise InputError(f"sample_rate must be an integer >= 4000 Hz, got {sample_rate!r}")


def synth_recording(label: str, duration_s: float, sample_rate: int,
                    rng: np.random.Generator) -> np.ndarray:
    """float32 mono in [-1, 1] (peak <= 0.95) for one recording of that class, at 0 dB gain."""
    _check_audio_args(duration_s, sample_rate)
    if label not in CLASS_RECORDINGS:
        raise InputError(f"label must be one of {', '.join(STANDARD_CLASSES)}, got {label!r}")
    n = max(1, round(duration_s * sample_rate))
    signal = CLASS_RECORDINGS[label](n, sample_rate, rng)
    if label in DECOY_CLASSES and rng.random() < DECOY_BURST_SHARE:
        signal = signal + leak_burst(n, sample_rate, rng)
    if label != "QUIET":  # QUIET's white self-noise is the one thing allowed above 1.8 kHz
        signal = band_limit(signal, sample_rate)
    return limit_peak(signal).astype(np.float32)


def night_timestamp(rng: np.random.Generator) -> str:
    """A logger slot between 01:00 and 04:45, when demand (and so flow noise) is lowest."""
    day = dt.date(2026, 11, 1) + dt.timedelta(days=int(rng.integers(30)))
    return f"{day:%Y%m%d}T{int(rng.integers(1, 5)):02d}{15 * int(rng.integers(4)):02d}00"


def write_recording(root: Path, label: str, index: int, duration_s: float, sample_rate: int,
                    seed: int) -> tuple[Path, str]:
    """Synthesise and write one file from its own RNG (seed, class index, file index)."""
    class_idx = STANDARD_CLASSES.index(label)
    rng = np.random.default_rng([seed, class_idx, index])
    recording_no = index * len(STANDARD_CLASSES) + class_idx  # unique, independent of the total
    block = recording_no // RECORDINGS_PER_BLOCK  # each block of 16 recordings shares 4 sensors
    sensor_id = f"S{SENSORS_PER_BLOCK * block + int(rng.integers(SENSORS_PER_BLOCK)):03d}"
    gain_db = int(rng.choice(GAINS_DB))
    path = root / label / logger_name(sensor_id, recording_no, night_timestamp(rng), gain_db)
    signal = synth_recording(label, duration_s, sample_rate, rng)
    sf.write(path, limit_peak(signal * np.float32(db_to_amplitude(gain_db))), sample_rate,
             subtype="PCM_16")
    return path, sensor_id


def synth_corpus(out, files_per_class: int = 20, duration_s: float = 10.0, sample_rate: int = 8000,
                 seed: int = 0, progress: Callable[[int, int], None] | None = None, scenario: str = "classes",
                 sites: int | None = None, leak_band: str | None = None) -> SynthCorpus:
    """Write OUT/<CLASS>/<sensor_id>~<recording_id>~<timestamp>~<gain_db>.wav and OUT/manifest.csv.

    scenario "classes" (the default) makes five easy-to-separate classes for plumbing tests; "sites"
    (leakhunter.synth_sites) records them at `sites` sites (default 12) that each colour their sound, the
    sensor id being the site, and adds OUT/sites.csv and the manifest's snr_db column (`leak_band` "high": leaks
    and sensors reaching 2.5-3.8 kHz instead of 1.1-1.8 kHz, at 8 kHz or more); "gain-confound"
    (leakhunter.synth_confound) writes LEAK and NORMAL only, told apart by level minus the recorder gain (the
    manifest's gain_db column), neither by the audio alone nor by the gain alone.
    A file depends only on (seed, class, index): growing files_per_class keeps the earlier files.
    Files it writes are overwritten; anything else in OUT is left alone."""
    if int(files_per_class) != files_per_class or files_per_class < 1:
        raise InputError(f"files_per_class must be an integer >= 1, got {files_per_class!r}")
    _check_audio_args(duration_s, sample_rate)
    if int(seed) != seed or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if scenario not in SCENARIOS:
        raise InputError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if scenario != "sites" and sites is not None:
        raise InputError(f"sites applies to the sites scenario only, got sites={sites!r} with scenario {scenario!r}")
    if scenario != "sites" and leak_band is not None:
        raise InputError(f"leak_band applies to the sites scenario only, got leak_band={leak_band!r} with scenario "
                         f"{scenario!r}")
    if sites is not None and (int(sites) != sites or not 1 <= sites <= 999):
        raise InputError(f"sites must be an integer from 1 to 999, got {sites!r}")
    root = Path(out)
    classes, header, site_table = STANDARD_CLASSES, ("path", "label", "group"), ()
    if scenario == "sites":
        from leakhunter.synth_sites import LEAK_BANDS, make_sites, write_site_recording, write_site_table

        leak_band = "low" if leak_band is None else leak_band
        if leak_band not in LEAK_BANDS:
            raise InputError(f"leak_band must be one of {', '.join(LEAK_BANDS)}, got {leak_band!r}")
        if sample_rate < LEAK_BANDS[leak_band].min_rate:
            raise InputError(f"leak_band {leak_band} reaches {LEAK_BANDS[leak_band].edge_hz + 100:g} Hz: it needs a "
                             f"sample_rate of {LEAK_BANDS[leak_band].min_rate} Hz or more, got {sample_rate!r}")
        site_table = make_sites(12 if sites is None else int(sites), int(seed), leak_band)
        header += ("snr_db",)

        def write(label, index):
            return write_site_recording(root, label, index, duration_s, int(sample_rate), int(seed), site_table)
    elif scenario == "gain-confound":
        from leakhunter.synth_confound import CONFOUND_CLASSES, write_confound_recording

        classes, header = CONFOUND_CLASSES, header + ("gain_db",)

        def write(label, index):
            return write_confound_recording(root, label, index, duration_s, int(sample_rate), int(seed))
    else:
        def write(label, index):
            path, sensor_id = write_recording(root, label, index, duration_s, int(sample_rate), int(seed))
            return path, (sensor_id,)
    jobs = [(label, i) for label in classes for i in range(int(files_per_class))]
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
    files, rows = [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # numpy FFTs drop the GIL
        for (label, _), (path, fields) in zip(jobs, pool.map(lambda job: write(*job), jobs)):
            files.append(path)
            rows.append((f"{label}/{path.name}", label, *fields))
            if progress is not None:
                progress(len(files), len(jobs))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, *rows])
    if site_table:
        write_site_table(site_table, root / "sites.csv")
    return SynthCorpus(root=root, manifest=manifest, files=tuple(files),
                       counts={label: int(files_per_class) for label in classes}, scenario=scenario,
                       sites=tuple(site.name for site in site_table))
