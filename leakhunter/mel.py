"""The mel scale of the front-end, numpy only: the scoring install (no torch) needs it to know which input
sample rates can fill the model's bands."""

from __future__ import annotations

import numpy as np

from leakhunter.card import FrontendConfig

F_SP, MIN_LOG_HZ, LOGSTEP = 200.0 / 3, 1000.0, np.log(6.4) / 27.0


def hz_to_mel(hz):
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= MIN_LOG_HZ, MIN_LOG_HZ / F_SP + np.log(np.maximum(hz, 1e-12) / MIN_LOG_HZ) / LOGSTEP,
                    hz / F_SP)


def mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    min_log_mel = MIN_LOG_HZ / F_SP
    return np.where(mel >= min_log_mel, MIN_LOG_HZ * np.exp(LOGSTEP * (mel - min_log_mel)), F_SP * mel)


def mel_points(cfg: FrontendConfig) -> np.ndarray:
    """The n_mels + 2 frequencies (Hz) of the triangular filters: band k rises from point k, peaks at k + 1 and
    falls to k + 2."""
    return mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))


def lowest_input_rate(cfg: FrontendConfig) -> float:
    """The lowest recording sample rate whose Nyquist frequency reaches the centre of the model's top mel band.
    Below it, upsampling leaves the top bands empty, which they never were in training: a verdict on such a
    recording is noise (measured: a clear leak at 2000 Hz scored P(LEAK) 1e-5, quiet pipes at 3000 Hz 0.99999)."""
    return 2.0 * float(mel_points(cfg)[-2])
