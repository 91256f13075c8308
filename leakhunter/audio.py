"""Decode one recording into float32 samples at the model's rate, or say exactly why it cannot be.

Every bad file (missing, half-written, text renamed .wav, NaN, silent ...) becomes an AudioError with a reason code.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile
import soxr

REASONS: tuple[str, ...] = ("missing", "empty", "header_only", "truncated", "not_audio", "decode_error",
                            "non_finite", "silent", "too_short", "bad_channel")

CHANNEL_WORDS = ("first", "mean")
SILENCE_PEAK_TO_PEAK = 2.0 ** -24   # below one step of 24-bit PCM
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.001
TEXT_SNIFF_BYTES = 512
AUDIO_MAGICS = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3", b"caff", b".snd", b"wvpk")
WAV_UNKNOWN_SIZE = 0xFFFFFFFF       # streaming writers that never go back to patch the header

T = TypeVar("T")
R = TypeVar("R")


class AudioError(Exception):
    """A file that cannot be scored or trained on, with a machine-readable reason."""

    def __init__(self, reason: str, path: str | os.PathLike, detail: str):
        assert reason in REASONS, f"unknown audio error reason {reason!r}; expected one of {REASONS}"
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")

    def __reduce__(self):  # keep the three fields when sent to another process
        return (AudioError, (self.reason, self.path, self.detail))


@dataclass(frozen=True)
class Audio:
    """Decoded samples plus what was done to them, so the output row can say it."""

    samples: np.ndarray      # float32, 1-D, at `sample_rate`, C-contiguous
    sample_rate: int         # the rate asked for (the model's rate)
    sample_rate_in: int      # the file's rate
    channels_in: int
    channel_policy: str      # "first", "mean", or the str of the index used
    resampled: bool          # True when sample_rate_in != sample_rate
    clipped: bool            # flagged, never fatal
    duration_s: float        # duration of the file as decoded (frames_in / sample_rate_in)


def parse_channel_policy(text: str | int) -> str | int:
    """'first', 'mean' or a channel index ('0', '1', 2 ...). Anything else: ValueError with the allowed values."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool) and text >= 0:
        return int(text)
    if isinstance(text, str):
        word = text.strip().lower()
        if word in CHANNEL_WORDS:
            return word
        if word.isascii() and word.isdigit():
            return int(word)
    raise ValueError(f"channel policy {text!r} is not one of 'first', 'mean' or a channel index 0, 1, 2 ...")


def load_audio(path: str | os.PathLike, sample_rate: int, channel: str | int = "mean",
               min_samples: int = 1) -> Audio:
    """Decode, check, mix down by the channel policy, resample with soxr to sample_rate."""
    if sample_rate <= 0 or min_samples < 0:
        raise ValueError(f"sample_rate must be > 0 and min_samples >= 0, got {sample_rate} and {min_samples}")
    policy = parse_channel_policy(channel)
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", path, "no such file" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise AudioError("empty", path, "0 bytes")
    with open(path, "rb") as file:
        head = file.read(TEXT_SNIFF_BYTES)
    if _looks_like_text(head):
        raise AudioError("not_audio", path, f"looks like text, not an audio header; starts with {head[:40]!r}")

    try:
        with soundfile.SoundFile(path) as sound:
            frames_declared, sample_rate_in = sound.frames, sound.samplerate
            decoded = sound.read(dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as error:
        raise AudioError("decode_error", path, str(error) or type(error).__name__) from error
    frames_in, channels_in = decoded.shape

    wav_sizes = _wav_data_sizes(path, head, size)
    if wav_sizes is not None:
        declared, present = wav_sizes
        if 0 < declared != WAV_UNKNOWN_SIZE and present < declared:
            raise AudioError("truncated", path, f"WAV header declares {declared} data bytes but only {present} "
                                                f"are present ({100 * present / declared:.1f} %)")
    elif frames_in < frames_declared:   # FLAC/OGG/MP3: libsndfile knows the length from the header
        raise AudioError("truncated", path, f"header declares {frames_declared} frames but only {frames_in} "
                                            f"decode ({100 * frames_in / frames_declared:.1f} %)")
    if frames_in == 0:
        note = (f"; its WAV data chunk declares 0 bytes yet {wav_sizes[1]} follow (unfinished write?)"
                if wav_sizes is not None and wav_sizes[1] > 0 else "")
        raise AudioError("header_only", path, f"a valid header but 0 audio frames in {size} bytes{note}")

    if isinstance(policy, int) and policy >= channels_in:
        raise AudioError("bad_channel", path, f"channel {policy} asked for, but the file has {channels_in} "
                                              f"channel{'s' if channels_in != 1 else ''} (0..{channels_in - 1})")
    used = decoded if policy == "mean" else decoded[:, [0 if policy == "first" else policy]]

    non_finite = int(np.count_nonzero(~np.isfinite(used)))
    if non_finite:
        raise AudioError("non_finite", path, f"{non_finite} of {used.size} samples are NaN or infinite")
    clipped = bool(np.count_nonzero(np.abs(used) >= CLIP_LEVEL) >= CLIP_FRACTION * used.size)
    mixed = used.mean(axis=1, dtype=np.float64).astype(np.float32) if used.shape[1] > 1 else used[:, 0]

    peak_to_peak = float(np.ptp(mixed))
    if peak_to_peak < SILENCE_PEAK_TO_PEAK:
        raise AudioError("silent", path, f"peak-to-peak amplitude {peak_to_peak:.3g} is below 2**-24 "
                                         f"(peak {float(np.max(np.abs(mixed))):.3g})")

    resampled = sample_rate_in != sample_rate
    if resampled:
        mixed = soxr.resample(np.ascontiguousarray(mixed), sample_rate_in, sample_rate, quality="HQ")
    samples = np.ascontiguousarray(mixed, dtype=np.float32)

    duration_s = frames_in / sample_rate_in
    if samples.size < min_samples:
        raise AudioError("too_short", path, f"{duration_s:.3g} s; need at least {min_samples / sample_rate:.3g} s "
                                            f"({min_samples} samples at {sample_rate} Hz)")
    return Audio(samples=samples, sample_rate=sample_rate, sample_rate_in=sample_rate_in,
                 channels_in=channels_in, channel_policy=str(policy), resampled=resampled,
                 clipped=clipped, duration_s=duration_s)


def read_many(paths: Iterable[T], load: Callable[[T], R], workers: int = 2, read_ahead: int | None = None
              ) -> Iterator[tuple[T, R | AudioError]]:
    """Map `load` over paths in a thread pool, yielding (path, result) in INPUT order.

    At most `read_ahead` (default 2*workers) results are pending, so memory stays bounded on huge folders.
    Errors are yielded, never raised: one broken file must never stop a batch. workers <= 1 runs inline.
    """
    if workers <= 1:
        for path in paths:
            yield path, _load_or_error(load, path)
        return
    read_ahead = max(1, read_ahead if read_ahead is not None else 2 * workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leakhunter-read")
    pending: deque = deque()
    try:
        for path in paths:
            if len(pending) >= read_ahead:
                done_path, future = pending.popleft()
                yield done_path, future.result()
            pending.append((path, pool.submit(_load_or_error, load, path)))
        while pending:
            done_path, future = pending.popleft()
            yield done_path, future.result()
    finally:  # also runs when the consumer stops early: drop the reads nobody will look at
        pool.shutdown(wait=True, cancel_futures=True)


def _load_or_error(load: Callable[[T], R], path: T) -> R | AudioError:
    try:
        return load(path)
    except AudioError as error:
        return error
    except Exception as error:  # noqa: BLE001 - any failure of one file is that file's problem only
        return AudioError("decode_error", str(path), f"{type(error).__name__}: {error}")


def _looks_like_text(head: bytes) -> bool:
    """A CSV, HTML page or log renamed .wav: printable UTF-8 where an audio header should be."""
    if head.startswith(AUDIO_MAGICS) or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason != "unexpected end of data":   # a multi-byte character cut by the sniff window is fine
            return False
        text = head[:error.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    return bool(text) and all(char.isprintable() or char in "\t\n\r\f\v" for char in text)


def _wav_data_sizes(path: Path, head: bytes, size: int) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE file's data chunk, walking the chunk list; None if not found.

    libsndfile silently decodes a half-written WAV as a shorter one, so the header is checked here.
    RF64 and big-endian RIFX are not walked.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    with open(path, "rb") as file:
        offset = 12
        while offset + 8 <= size:
            file.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", file.read(8))
            if chunk_id == b"data":
                return chunk_size, size - offset - 8
            offset += 8 + chunk_size + (chunk_size & 1)
    return None
