"""The `sites` scenario of the synthetic corpus: every site (a pipe, its sensor, its surroundings) colours
everything recorded there, so a model must learn the leak rather than the site to score well on a new one.

Each site draws its knobs once from the seed (README, `leak data synth`, has the table and the reasons):

- pipe resonances: 2-4 peaks (150-1500 Hz, Q 3-12, +6..+18 dB) filtering every sound recorded there;
- sensor response: a high-pass corner (10-60 Hz), a low-pass corner (900-1800 Hz) and a spectral tilt
  (-4..+4 dB per octave around 500 Hz), plus a sensitivity (-6..+6 dB) that is in no file name;
- logger gain (0/6/12/18 dB): in the file name's gain_db field and in the level;
- background: flow noise whose slope and extent (corner 15-120 Hz, cut-off 250-1000 Hz: fast flow hisses)
  are the site's, traffic rumble at half the sites, a pump's tone and harmonics at half the sites (its own
  fundamental), a valve's hiss (400-1400 Hz, narrower than a leak's) at half the sites, all at a site level of
  -62..-46 dBFS; the sensor's white self-noise 15-35 dB under it;
- leaks: broadband hiss (a flat ~150-1500 Hz band) at an SNR around the site's centre (-8..+6 dB, each file
  within +-6 dB, clipped to -10..+12 dB; leak over background-and-self-noise power within the band's snr_hz), and
  a site-specific share of the leaks (0.3-1.7x), so a site's sound correlates with its label in training.

`leak_band="high"` moves the leaks' upper corner to 2.5-3.5 kHz and the sensors' low-pass to 2.5-3.8 kHz (an
accelerometer on a small metal pipe): about a third of such a leak's flat band (a tenth of its recorded power on
average) lies above the `short` preset's 2048 Hz Nyquist, where only the `wide` preset hears it. Everything else,
draws included, is as in the default `low` band.

The five class folders stay, so binary and multiclass both work: NORMAL is the site background, QUIET the
background 18-30 dB down, RANDOM background plus transients, MECHANICAL background plus a machine
running loud (the site's pump where it has one), LEAK background plus the hiss (30 % also with transients).
A fifth of NORMAL, RANDOM and MECHANICAL files carry a brief leak-like burst (a consumer drawing water).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from leakhunter.card import STANDARD_CLASSES
from leakhunter.sources import logger_name
from leakhunter.synth import (
    BAND_EDGE_HZ,
    DECOY_BURST_SHARE,
    DECOY_CLASSES,
    GAINS_DB,
    LEAK_INTERRUPTED_SHARE,
    db_to_amplitude,
    harmonic_hum,
    limit_peak,
    night_timestamp,
    pipe_resonance,
    scatter_transients,
    shaped_noise,
    skirt,
    traffic_rumble,
)

SITE_STREAM = 1_000  # seeds [seed, SITE_STREAM, ...] never meet the classes scenario's [seed, class, index]
LEAK_SNR_FLOOR_DB, LEAK_SNR_CEILING_DB = -10.0, 12.0  # a site's centre -8..+6 dB, each file +-6 dB
MAINS_PUMP_HZ = (24.6, 29.5, 49.2, 59.0, 98.4, 118.0)  # induction motors: slip below 25/30/50/60 Hz, 2 poles


@dataclass(frozen=True)
class LeakBand:
    """Where a corpus's leaks and sensors sit in frequency."""
    snr_hz: tuple[float, float]  # SNRs are measured here: where the leak is, not where the rumble is
    leak_corner_hz: tuple[float, float]  # range of the leak's upper corner
    lowpass_hz: tuple[float, float]  # range of the sensor's low-pass corner
    edge_hz: float  # every recording is band-limited by edge_hz + 100 Hz
    min_rate: int  # the lowest sample rate to write: >= 2 (edge_hz + 100) and >= the matching preset's lowest


LEAK_BANDS = {  # low: the `short` preset's 2048 Hz Nyquist holds it all; high: for `wide`, which reads 7891 Hz up
    "low": LeakBand(snr_hz=(150.0, 1500.0), leak_corner_hz=(1100.0, 1700.0), lowpass_hz=(900.0, 1800.0),
                    edge_hz=BAND_EDGE_HZ, min_rate=4000),
    "high": LeakBand(snr_hz=(150.0, 3000.0), leak_corner_hz=(2500.0, 3500.0), lowpass_hz=(2500.0, 3800.0),
                     edge_hz=3800.0, min_rate=8000),
}


@dataclass(frozen=True)
class Site:
    """One site's knobs; every recording made there passes through `transfer` and carries its background."""
    name: str
    gain_db: int  # logger gain: in the file name and the level
    sensitivity_db: float  # sensor sensitivity and coupling: in the level only
    resonance_hz: tuple[float, ...]
    resonance_q: tuple[float, ...]
    resonance_db: tuple[float, ...]
    highpass_hz: float
    lowpass_hz: float
    tilt_db_per_octave: float
    background_db: float  # recorded level of the normal background, dBFS before gain and sensitivity
    flow_corner_hz: float
    flow_cutoff_hz: float
    traffic_db: float | None  # rumble relative to the flow; None: no road nearby
    pump_hz: float | None  # the site's pump fundamental; None: no pump
    pump_db: float  # its usual level relative to the flow
    hiss_db: float | None  # a valve's or a service pipe's hiss relative to the flow; None: none
    hiss_hz: float  # its centre
    hiss_q: float  # its breadth (a leak's hiss is broader and flatter)
    self_noise_db: float  # sensor self-noise, dBFS before gain
    leak_snr_db: float  # centre of the site's leak SNRs (the leak's distance and size)
    leak_weight: float  # relative share of the corpus's leaks recorded here
    leak_band: str = "low"  # a key of LEAK_BANDS: where the corpus's leaks and sensors sit

    @property
    def band(self) -> LeakBand:
        return LEAK_BANDS[self.leak_band]

    def transfer(self, freqs: np.ndarray) -> np.ndarray:
        """Magnitude response of pipe and sensor at freqs (Hz), band-limited like the corpus (by 1.8 kHz, or
        3.9 kHz in the high band)."""
        octaves = np.clip(np.log2(np.maximum(freqs, 1.0) / 500.0), -5.0, 2.0)
        tilt = db_to_amplitude(1.0) ** (self.tilt_db_per_octave * octaves)
        band = skirt(freqs, 0.5 * self.highpass_hz, self.highpass_hz) * skirt(
            freqs, 1.25 * self.lowpass_hz, self.lowpass_hz)
        pipe = np.ones_like(freqs, dtype=np.float64)
        for centre, q, peak_db in zip(self.resonance_hz, self.resonance_q, self.resonance_db):
            pipe += (db_to_amplitude(peak_db) - 1.0) * pipe_resonance(freqs, centre, q)
        return tilt * band * pipe * skirt(freqs, self.band.edge_hz + 100, self.band.edge_hz)


def make_site(index: int, seed: int, leak_band: str = "low") -> Site:
    """The knobs of site `index`, a function of (seed, index) only: adding sites keeps the earlier ones, and the
    high band draws the same numbers (only the sensor's low-pass range differs)."""
    rng = np.random.default_rng([seed, SITE_STREAM, index])
    peaks, background_db = int(rng.integers(2, 5)), float(rng.uniform(-62, -46))
    return Site(
        name=f"SITE{index:03d}", gain_db=int(rng.choice(GAINS_DB)), sensitivity_db=float(rng.uniform(-6, 6)),
        resonance_hz=tuple(np.exp(rng.uniform(np.log(150), np.log(1500), peaks)).round(1).tolist()),
        resonance_q=tuple(rng.uniform(3, 12, peaks).round(2).tolist()),
        resonance_db=tuple(rng.uniform(6, 18, peaks).round(1).tolist()),
        highpass_hz=float(rng.uniform(10, 60)), lowpass_hz=float(rng.uniform(*LEAK_BANDS[leak_band].lowpass_hz)),
        tilt_db_per_octave=float(rng.uniform(-4, 4)), background_db=background_db,
        flow_corner_hz=float(np.exp(rng.uniform(np.log(15), np.log(120)))),
        flow_cutoff_hz=float(rng.uniform(250, 1000)),
        traffic_db=float(rng.uniform(-10, 0)) if rng.random() < 0.5 else None,
        pump_hz=float(rng.choice(MAINS_PUMP_HZ) * rng.uniform(0.99, 1.01)) if rng.random() < 0.5 else None,
        pump_db=float(rng.uniform(-15, 0)),
        hiss_db=float(rng.uniform(-20, -5)) if rng.random() < 0.5 else None,
        hiss_hz=float(rng.uniform(400, 1400)), hiss_q=float(rng.uniform(1.0, 2.5)),
        self_noise_db=background_db - float(rng.uniform(15, 35)),
        leak_snr_db=float(rng.uniform(-8, 6)), leak_weight=float(rng.uniform(0.3, 1.7)), leak_band=leak_band,
    )


def make_sites(count: int, seed: int, leak_band: str = "low") -> tuple[Site, ...]:
    return tuple(make_site(index, seed, leak_band) for index in range(count))


def filtered(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    """signal through a zero-phase magnitude response given on np.fft.rfftfreq(signal.size)."""
    return np.fft.irfft(np.fft.rfft(signal) * response, signal.size)


def leak_band_power(signal: np.ndarray, sample_rate: int, band: LeakBand = LEAK_BANDS["low"]) -> float:
    """Mean power of signal within the band's snr_hz (Parseval on its spectrum)."""
    freqs = np.fft.rfftfreq(signal.size, 1.0 / sample_rate)
    in_band = (freqs >= band.snr_hz[0]) & (freqs <= band.snr_hz[1])
    return max(2.0 * float((np.abs(np.fft.rfft(signal)[in_band]) ** 2).sum()) / signal.size**2, 1e-30)


def at_snr(hiss: np.ndarray, sample_rate: int, reference_power: float, snr_db: float,
           band: LeakBand = LEAK_BANDS["low"]) -> np.ndarray:
    """hiss scaled so that its leak-band power is snr_db above reference_power."""
    return hiss * np.sqrt(reference_power * 10 ** (snr_db / 10) / leak_band_power(hiss, sample_rate, band))


def rms(signal: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(signal**2))), 1e-12)


def leak_jet_shape(rng: np.random.Generator, band: LeakBand):
    """The leak's own spectrum: flat hiss between a ~150-250 Hz and the band's upper corner (1.1-1.7 kHz low,
    2.5-3.5 kHz high) with a broad orifice bump; the site's resonances and sensor then colour it."""
    low_hz, high_hz = rng.uniform(150, 250), rng.uniform(*band.leak_corner_hz)
    bump_hz, bump_q = rng.uniform(400, 900), rng.uniform(0.7, 1.5)
    return lambda f: skirt(f, low_hz - 80, low_hz) * skirt(f, high_hz + 200, high_hz) * (
        1.0 + 0.5 * pipe_resonance(f, bump_hz, bump_q))


def site_background(site: Site, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The site's normal sound at the source (unit RMS flow, traffic and pump relative to it)."""
    corner_hz, cutoff_hz = site.flow_corner_hz * rng.uniform(0.9, 1.1), site.flow_cutoff_hz * rng.uniform(0.9, 1.1)
    background = shaped_noise(n, sample_rate, rng, lambda f: skirt(f, 2, 10) * skirt(
        f, 1.5 * cutoff_hz, cutoff_hz) / np.sqrt(1.0 + (f / corner_hz) ** 2))
    if site.traffic_db is not None:  # a road: vehicles pass at random, about one every 3 s
        rumble = np.zeros(n)
        for _ in range(int(rng.poisson(max(1.0, n / sample_rate / 3)))):
            vehicle = traffic_rumble(sample_rate, rng, n)
            start = int(rng.integers(0, n - vehicle.size + 1))
            rumble[start:start + vehicle.size] += vehicle
        background += rumble * db_to_amplitude(site.traffic_db + rng.uniform(-3, 3)) / rms(rumble)
    if site.pump_hz is not None:
        background += harmonic_hum(n, sample_rate, site.pump_hz, db_to_amplitude(site.pump_db), rng)
    if site.hiss_db is not None:
        background += shaped_noise(n, sample_rate, rng, lambda f: pipe_resonance(f, site.hiss_hz, site.hiss_q)) * (
            db_to_amplitude(site.hiss_db + rng.uniform(-2, 2)))
    return background


def site_recording(label: str, site: Site, n: int, sample_rate: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """One recording of a class at a site, as float64 at the sensor (before gain), and the leak's SNR in dB
    (None without a leak). Levels are set on what the sensor records, after the site's transfer; an SNR is the
    leak's power over the background's within the band's snr_hz, so -10 dB is -10 dB where it matters."""
    response = site.transfer(np.fft.rfftfreq(n, 1.0 / sample_rate))
    level_db = site.background_db + rng.uniform(-3, 3)  # demand varies from night to night
    if label == "QUIET":
        level_db -= rng.uniform(18, 30)
    background = filtered(site_background(site, n, sample_rate, rng), response)
    scale = db_to_amplitude(level_db) / rms(background)  # source → recorded, for everything of the source
    background *= scale
    self_noise = rng.standard_normal(n) * db_to_amplitude(site.self_noise_db)
    reference_power = leak_band_power(background + self_noise, sample_rate, site.band)  # what the leak competes with
    extra = np.zeros(n)  # at the source, relative to its unit-RMS flow noise
    if label == "MECHANICAL":  # the site's pump (or a machine brought in) running hard
        f0_hz = site.pump_hz if site.pump_hz is not None else float(rng.choice(MAINS_PUMP_HZ))
        extra += harmonic_hum(n, sample_rate, f0_hz, db_to_amplitude(rng.uniform(3, 15)), rng)
    if label == "RANDOM" or (label == "LEAK" and rng.random() < LEAK_INTERRUPTED_SHARE):
        extra += scatter_transients(n, sample_rate, rng, rng.uniform(0.1, 0.35), (12, 30), peak_cap_db=30)[0]
    recorded = background + filtered(extra, response) * scale if extra.any() else background
    snr_db = None
    if label == "LEAK":
        snr_db = float(np.clip(site.leak_snr_db + rng.uniform(-6, 6), LEAK_SNR_FLOOR_DB, LEAK_SNR_CEILING_DB))
        shape = leak_jet_shape(rng, site.band)
        hiss = shaped_noise(n, sample_rate, rng, lambda f: shape(f) * site.transfer(f))
        recorded = recorded + at_snr(hiss, sample_rate, reference_power, snr_db, site.band)
    elif label in DECOY_CLASSES and rng.random() < DECOY_BURST_SHARE:
        recorded = recorded + leak_burst_at(site, n, sample_rate, rng, reference_power, rng.uniform(0, 10))
    return recorded + self_noise, snr_db


def leak_burst_at(site: Site, n: int, sample_rate: int, rng: np.random.Generator, reference_power: float,
                  snr_db: float) -> np.ndarray:
    """Leak-like hiss over 8-24 % of the recording (a consumer drawing water), snr_db above the background in
    the leak band while it lasts: what file voting is for."""
    m = max(1, int(rng.uniform(0.08, 0.24) * n))
    ramps = np.minimum(1.0, np.minimum(np.arange(m), np.arange(m)[::-1]) / (0.1 * sample_rate))
    shape = leak_jet_shape(rng, site.band)
    hiss = shaped_noise(m, sample_rate, rng, lambda f: shape(f) * site.transfer(f))
    burst, start = np.zeros(n), int(rng.integers(0, n - m + 1))
    burst[start:start + m] = at_snr(hiss, sample_rate, reference_power, snr_db, site.band) * ramps
    return burst


def site_of(label: str, index: int, sites: tuple[Site, ...], seed: int) -> tuple[Site, np.random.Generator]:
    """Where file `index` of a class was recorded (leaks by the sites' leak weights, the rest evenly), and
    the file's own RNG: a function of (seed, class, index) and the sites."""
    rng = np.random.default_rng([seed, SITE_STREAM, STANDARD_CLASSES.index(label) + 1, index])
    weights = np.array([site.leak_weight if label == "LEAK" else 1.0 for site in sites])
    return sites[int(rng.choice(len(sites), p=weights / weights.sum()))], rng


def write_site_recording(root: Path, label: str, index: int, duration_s: float, sample_rate: int, seed: int,
                         sites: tuple[Site, ...]) -> tuple[Path, tuple[str, str]]:
    """Synthesise and write one file of the sites scenario; returns its path and (group, snr_db)."""
    site, rng = site_of(label, index, sites, seed)
    recording_no = index * len(STANDARD_CLASSES) + STANDARD_CLASSES.index(label)
    path = root / label / logger_name(site.name, recording_no, night_timestamp(rng), site.gain_db)
    signal, snr_db = site_recording(label, site, max(1, round(duration_s * sample_rate)), sample_rate, rng)
    signal *= db_to_amplitude(site.gain_db + site.sensitivity_db)
    sf.write(path, limit_peak(signal).astype(np.float32), sample_rate, subtype="PCM_16")
    return path, (site.name, "" if snr_db is None else f"{snr_db:.1f}")


def write_site_table(sites: tuple[Site, ...], path: Path) -> None:
    """OUT/sites.csv: every site's knobs, one row each, for analysing results per site."""
    rows = [asdict(site) for site in sites]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: " ".join(f"{v:g}" for v in value) if isinstance(value, tuple)
                             else ("" if value is None else f"{value:g}" if isinstance(value, float) else value)
                             for key, value in row.items()})
