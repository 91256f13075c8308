"""Decode one recording into float32 samples at the model's rate, or say exactly why it cannot be.

Every bad file (missing, half-written, text renamed .wav, NaN, silent ...) becomes an AudioError with a reason code.
open_audio streams a recording of any length block by block; load_audio joins those blocks, so the two share every
check and give the same samples.
"""

from __future__ import annotations

import errno
import math
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

from leakhunter.errors import InputError, LeakhunterError

REASONS: tuple[str, ...] = ("missing", "empty", "header_only", "truncated", "not_audio", "format_mismatch",
                            "decode_error",
                            "non_finite", "silent", "too_short", "bad_channel", "changed", "low_rate")

CHANNEL_WORDS = ("first", "mean")
SILENCE_PEAK_TO_PEAK = 2.0 ** -24   # below one step of 24-bit PCM
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.001
TEXT_SNIFF_BYTES = 512
AUDIO_MAGICS = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3", b"caff", b".snd", b"wvpk")
WAV_UNKNOWN_SIZE = 0xFFFFFFFF       # streaming writers that never go back to patch the header
WAV_COMPANDED = {6: "A-law", 7: "µ-law"}  # WAVE format tags of 8-bit companded samples
WAV_EXTENSIBLE = 0xFFFE
# What libsndfile must find inside a file of each name (SoundFile.format).
EXPECTED_FORMATS = {".wav": ("WAV", "WAVEX", "RF64", "W64"), ".flac": ("FLAC",), ".ogg": ("OGG",),
                    ".mp3": ("MP3", "MPEG")}

T = TypeVar("T")
R = TypeVar("R")


class DecodeBugError(LeakhunterError, RuntimeError):
    """An exception that is not a decoding failure (a KeyError, a MemoryError ...) while decoding one file.

    It stops a batch instead of becoming a skip reason: a bug must not silently shrink a dataset."""

    def __init__(self, path: str | os.PathLike, error: BaseException):
        self.path = str(path)
        super().__init__(f"{self.path}: unexpected {type(error).__name__}: {error} while decoding; this is a bug, "
                         f"not a bad file")


class AudioError(LeakhunterError):
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
    silent_channels: tuple[int, ...] = ()  # of a "mean" mix: channels silent throughout that lowered it


def silent_mix_note(silent: tuple[int, ...] | list[int], channels_in: int) -> str:
    """How far a "mean" mix that averaged in channels silent throughout sits under its live channels:
    20·log10(all / live) dB (6.0 for a dead one of a pair, 3.5 for one of three), which a model reads as a
    quieter pipe; "" when none was."""
    if not silent:
        return ""
    live = channels_in - len(silent)
    return (f"channel{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} of {channels_in} silent: "
            f"the mean is {20 * math.log10(channels_in / live):.1f} dB under the live channel{'s' if live > 1 else ''}")


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
    raise InputError(f"channel policy {text!r} is not one of 'first', 'mean' or a channel index 0, 1, 2 ...")


@dataclass(frozen=True)
class AudioInfo:
    """What the header says, known before any sample is decoded."""

    path: str
    sample_rate: int         # the rate asked for (the model's)
    sample_rate_in: int
    channels_in: int
    frames_in: int           # declared by the header
    duration_s: float        # frames_in / sample_rate_in
    channel_policy: str      # "first", "mean" or the index as str
    resampled: bool


class AudioStream:
    """Float32 1-D blocks at info.sample_rate, mixed by the channel policy and resampled, one file block at a time.

    Errors that need the samples (non_finite mid-file; silent, too_short and a short FLAC/OGG/MP3 decode at the
    end) are raised as AudioError from the iteration. After a full iteration .clipped, .n_samples (output samples)
    and .peak_to_peak are final. Read once; the file is closed when the iteration ends, on close() or on exit.
    """

    def __init__(self, info: AudioInfo, sound: soundfile.SoundFile, policy: str | int, min_samples: int,
                 block_frames: int, stamp: tuple[int, int] | None = None):
        self.info, self._sound, self._policy, self._stamp = info, sound, policy, stamp
        self._min_samples, self._block_frames = min_samples, block_frames
        self._started = False
        self.frames_read = 0     # input frames decoded so far
        self.n_samples = 0       # output samples yielded so far
        self._used_samples = self._clipped_samples = 0
        self._low, self._high = np.inf, -np.inf   # of the mixed signal, before resampling
        self._channel_low = self._channel_high = None  # per channel mixed by "mean", for silent_channels

    @property
    def closed(self) -> bool:
        return self._sound.closed

    @property
    def clipped(self) -> bool:
        """At least CLIP_FRACTION of the used channels' samples at |x| >= CLIP_LEVEL: flagged, never fatal."""
        return self._used_samples > 0 and self._clipped_samples >= CLIP_FRACTION * self._used_samples

    @property
    def silent_channels(self) -> list[int]:
        """Channels of a "mean" mix that were silent throughout while another was not (a dead hydrophone of a
        pair): each one lowers the mix, a dead one of two by 6 dB. Final after a full iteration."""
        if self._channel_low is None:
            return []
        silent = (self._channel_high - self._channel_low) < SILENCE_PEAK_TO_PEAK
        return [int(i) for i in np.flatnonzero(silent)] if not silent.all() else []

    @property
    def peak_to_peak(self) -> float:
        return float(self._high - self._low) if self._used_samples else 0.0

    def close(self) -> None:
        self._sound.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    __del__ = close

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise RuntimeError(f"{self.info.path}: an AudioStream is read once; call open_audio again")
        self._started = True
        return self._blocks()

    def _blocks(self) -> Iterator[np.ndarray]:
        info = self.info
        # ResampleStream output is bit-identical to soxr.resample of the whole signal and does not depend on the
        # block size (measured with soxr 1.1.0, 8/16/44.1/48 kHz -> 4096 Hz, blocks of 1 to 2**20 frames: max
        # abs difference 0, same length), so streamed and in-memory scoring see the same samples.
        resampler = (soxr.ResampleStream(info.sample_rate_in, info.sample_rate, 1, dtype="float32", quality="HQ")
                     if info.resampled else None)
        try:
            while True:
                try:
                    decoded = self._sound.read(self._block_frames, dtype="float32", always_2d=True)
                except (RuntimeError, ValueError, TypeError, OSError, EOFError) as error:
                    raise AudioError("decode_error", info.path, str(error) or type(error).__name__) from error
                if len(decoded) == 0:
                    break
                mixed = self._check_and_mix(decoded)
                self.frames_read += len(decoded)
                yield from self._counted(resampler.resample_chunk(mixed) if resampler else mixed)
            self._check_whole_file()
            if resampler:
                yield from self._counted(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            if self.n_samples < self._min_samples:
                raise AudioError("too_short", info.path, f"{self.frames_read / info.sample_rate_in:.4g} s; need at "
                                 f"least {self._min_samples / info.sample_rate:.4g} s ({self._min_samples} samples "
                                 f"at {info.sample_rate} Hz)")
            if self.peak_to_peak < SILENCE_PEAK_TO_PEAK:  # after too_short: one sample is short, not silent
                peak = max(abs(self._low), abs(self._high)) if self._used_samples else 0.0
                mixed = (f"; that is the mean of its {info.channels_in} channels, which cancel if one is another "
                         f"inverted: score one alone with --channel N" if info.channels_in > 1 and
                         self._policy == "mean" else "")
                raise AudioError("silent", info.path, f"peak-to-peak amplitude {self.peak_to_peak:.3g} is below "
                                                      f"2**-24 (peak {peak:.3g}){mixed}")
        finally:
            self.close()

    def _check_and_mix(self, decoded: np.ndarray) -> np.ndarray:
        """Refuse NaN/inf, count clipping, keep the running extremes; return the block mixed to one channel."""
        policy = self._policy
        used = decoded if policy == "mean" else decoded[:, [0 if policy == "first" else policy]]
        finite = np.isfinite(used)
        if not finite.all():
            rate, non_finite = self.info.sample_rate_in, int(used.size - np.count_nonzero(finite))
            first = self.frames_read + int(np.argmin(finite.all(axis=1)))
            raise AudioError("non_finite", self.info.path, f"{non_finite} of {used.size} samples are NaN or infinite "
                             f"in {self.frames_read / rate:.2f} to {(self.frames_read + len(used)) / rate:.2f} s, "
                             f"the first at {first / rate:.2f} s")
        self._used_samples += used.size
        self._clipped_samples += int(np.count_nonzero(np.abs(used) >= CLIP_LEVEL))
        if used.shape[1] > 1:
            low, high = used.min(axis=0), used.max(axis=0)
            if self._channel_low is None:
                self._channel_low, self._channel_high = low, high
            else:
                self._channel_low = np.minimum(self._channel_low, low)
                self._channel_high = np.maximum(self._channel_high, high)
        mixed = used.mean(axis=1, dtype=np.float64).astype(np.float32) if used.shape[1] > 1 else used[:, 0]
        self._low, self._high = min(self._low, float(mixed.min())), max(self._high, float(mixed.max()))
        return np.ascontiguousarray(mixed)

    def _check_whole_file(self) -> None:
        """What only the end of the file can tell: a short FLAC/OGG/MP3 decode, and a file that was rewritten,
        replaced or removed while it was read (a logger still writing it): what was read may be neither version."""
        info = self.info
        if self.frames_read < info.frames_in:   # libsndfile knows the length from the header
            raise AudioError("truncated", info.path, f"header declares {info.frames_in} frames but only "
                             f"{self.frames_read} decode ({100 * self.frames_read / info.frames_in:.1f} %)")
        now = _stamp(Path(info.path))
        if self._stamp is not None and now != self._stamp:
            raise AudioError("changed", info.path, "removed while it was read" if now is None else
                             f"changed while it was read (size {self._stamp[0]} then {now[0]} bytes, modified "
                             f"again); score it again once it is written")

    def _counted(self, block: np.ndarray) -> Iterator[np.ndarray]:
        if block.size:   # the resampler holds back its first few blocks' output: no empty blocks for the caller
            self.n_samples += block.size
            yield block


def open_audio(path: str | os.PathLike, sample_rate: int, channel: str | int = "mean", min_samples: int = 1,
               block_frames: int = 1 << 16, min_rate_in: float = 0.0) -> AudioStream:
    """Open and check the header (missing, empty, not_audio, decode_error, truncated WAV, header_only, bad_channel,
    low_rate: a file rate under `min_rate_in`, mel.lowest_input_rate for a model), raising AudioError now; nothing
    is decoded until the returned stream is iterated."""
    if sample_rate <= 0 or min_samples < 0 or block_frames <= 0:
        raise ValueError(f"sample_rate and block_frames must be > 0 and min_samples >= 0, got {sample_rate}, "
                         f"{block_frames} and {min_samples}")
    policy = parse_channel_policy(channel)
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", path, _not_a_file(path))
    stamp = _stamp(path)
    if stamp is None:
        raise AudioError("missing", path, "removed while it was opened")
    size = stamp[0]
    if size == 0:
        raise AudioError("empty", path, "0 bytes")
    try:
        with open(path, "rb") as file:
            head = file.read(TEXT_SNIFF_BYTES)
    except OSError as error:  # unreadable (permissions, I/O error): a property of the file, not a bug
        raise AudioError("decode_error", path, f"cannot read: {error}") from error
    if _looks_like_text(head):
        raise AudioError("not_audio", path, f"looks like text, not an audio header; starts with {head[:40]!r}")
    try:
        sound = soundfile.SoundFile(os.fsencode(path))  # bytes: a name that is not UTF-8 (an SMB share) opens too
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as error:
        raise AudioError("decode_error", path, _open_failure(path, error)) from error
    # python-soundfile re-seeks to the current frame after every read, and libsndfile 1.2.2's MP3 decoder does not
    # resume sample-exactly after a seek (blocks after the first came out garbled, up to 0.5 off): read straight on.
    sound._info.seekable = False
    try:
        _check_format(path, sound.format)
        _check_header(path, head, size, sound.frames, sound.channels, policy)
        if sound.samplerate < min_rate_in:  # before any resampling: a header claiming 1 Hz would need gigabytes
            raise AudioError("low_rate", path, f"{sound.samplerate} Hz is too low: the front-end's top mel band is "
                             f"centred at {min_rate_in / 2:.0f} Hz, above the recording's {sound.samplerate / 2:g} Hz "
                             f"limit, so bands it learnt would be empty (it takes {math.ceil(min_rate_in)} Hz or more)")
    except OSError as error:
        sound.close()
        raise AudioError("decode_error", path, f"cannot read: {error}") from error
    except BaseException:
        sound.close()
        raise
    info = AudioInfo(path=str(path), sample_rate=sample_rate, sample_rate_in=sound.samplerate,
                     channels_in=sound.channels, frames_in=sound.frames, duration_s=sound.frames / sound.samplerate,
                     channel_policy=str(policy), resampled=sound.samplerate != sample_rate)
    return AudioStream(info, sound, policy, min_samples, block_frames, stamp)


def _open_failure(path: Path, error: Exception) -> str:
    """libsndfile's reason without its `Error opening b'/the/path': ` (the row names the file, and a bytes repr of
    a server's path is no reader's business); where it claims a regular file is none (its MP3 reader says so of
    bytes it cannot parse), what that means."""
    text = (str(error) or type(error).__name__).replace(f"Error opening {os.fsencode(path)!r}: ", "")
    if "not a regular file" in text:
        return f"cannot decode it as {path.suffix.lstrip('.') or 'audio'} (libsndfile: {text} It is a regular file: " \
               f"its content is what cannot be read)"
    return f"cannot decode it as audio (libsndfile: {text})"


def _not_a_file(path: Path) -> str:
    """Why a path is not a file to read: absent, a symlink that leads nowhere, or a folder or device."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11-3.12 say a loop so; 3.13 raises OSError(ELOOP)
            return "a symlink loop"
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "a symlink loop"
            return f"a symlink to {os.readlink(path)}, which does not exist"
    return "no such file" if not path.exists() else "not a regular file"


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, None when it is gone: compared before and after a file is read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def load_audio(path: str | os.PathLike, sample_rate: int, channel: str | int = "mean",
               min_samples: int = 1, min_rate_in: float = 0.0) -> Audio:
    """The whole recording in memory: the blocks of open_audio joined, so both paths share every check."""
    with open_audio(path, sample_rate, channel, min_samples, min_rate_in=min_rate_in) as stream:
        blocks = list(stream)
    info = stream.info
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return Audio(samples=samples, sample_rate=sample_rate, sample_rate_in=info.sample_rate_in,
                 channels_in=info.channels_in, channel_policy=info.channel_policy, resampled=info.resampled,
                 clipped=stream.clipped, duration_s=stream.frames_read / info.sample_rate_in,
                 silent_channels=tuple(stream.silent_channels))


def _check_format(path: Path, container: str) -> None:
    """A file whose content is not what its name says (an MP3 renamed .wav) is a pipeline mistake: lossy
    codecs reshape the spectrum the model learnt. It is refused, and scores once named for what it is."""
    expected = EXPECTED_FORMATS.get(path.suffix.lower())
    if expected is not None and container not in expected:
        raise AudioError("format_mismatch", path, f"the content is {container} but the name says "
                                                  f"{path.suffix}; rename it to match its content to score it")


def _check_header(path: Path, head: bytes, size: int, frames_in: int, channels_in: int,
                  policy: str | int) -> None:
    """The checks the header alone can answer, so a batch refuses a bad file before decoding any of it."""
    fmt, wav_sizes = _wav_chunks(path, head, size)
    if fmt is not None:
        _check_wav_companding(path, fmt)
    if wav_sizes is not None:
        declared, present = wav_sizes
        if 0 < declared != WAV_UNKNOWN_SIZE and present < declared:
            raise AudioError("truncated", path, f"WAV header declares {declared} data bytes but only {present} "
                                                f"are present ({100 * present / declared:.1f} %)")
    if frames_in == 0:
        note = (f"; its WAV data chunk declares 0 bytes yet {wav_sizes[1]} follow (unfinished write?)"
                if wav_sizes is not None and wav_sizes[1] > 0 else "")
        raise AudioError("header_only", path, f"a valid header but 0 audio frames in {size} bytes{note}")
    if isinstance(policy, int) and policy >= channels_in:
        raise AudioError("bad_channel", path, f"channel {policy} asked for, but the file has {channels_in} "
                                              f"channel{'s' if channels_in != 1 else ''} (0..{channels_in - 1})")


def read_many(paths: Iterable[T], load: Callable[[T], R], workers: int = 2, read_ahead: int | None = None
              ) -> Iterator[tuple[T, R | AudioError]]:
    """Map `load` over paths in a thread pool, yielding (path, result) in INPUT order.

    At most `read_ahead` (default 2*workers) results are pending, so memory stays bounded on huge folders.
    AudioErrors are yielded, never raised: one broken file must never stop a batch. Any other exception is a
    bug, raised as DecodeBugError naming the file (original chained). workers <= 1 runs inline.
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
    """The file's result, or its AudioError (open_audio maps libsndfile/soxr/OS failures to decode_error)."""
    try:
        return load(path)
    except AudioError as error:
        return error
    except LeakhunterError:  # already names what went wrong (e.g. a bad channel policy): not this file's fault
        raise
    except Exception as error:
        raise DecodeBugError(getattr(path, "path", path), error) from error


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


def _wav_chunks(path: Path, head: bytes, size: int) -> tuple[bytes | None, tuple[int, int] | None]:
    """A RIFF/WAVE file's fmt chunk (its first 40 bytes, None if absent) and its data chunk's (declared, present)
    bytes (None if not found), walking the chunk list; (None, None) for any other container.

    libsndfile silently decodes a half-written WAV as a shorter one, and 16-bit samples under a µ-law or A-law
    format tag as companded noise, so the header is checked here. RF64's data size (in its ds64 chunk) is not
    read: its data chunk says 0xFFFFFFFF, as a streaming writer's does. Big-endian RIFX is not walked.
    """
    fmt = None
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return fmt, None
    with open(path, "rb") as file:
        offset = 12
        while offset + 8 <= size:
            file.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", file.read(8))
            if chunk_id == b"data":
                return fmt, (chunk_size, size - offset - 8)
            if chunk_id == b"fmt ":
                fmt = file.read(min(chunk_size, 40))
            offset += 8 + chunk_size + (chunk_size & 1)
    return fmt, None


def _check_wav_companding(path: Path, fmt: bytes) -> None:
    """µ-law and A-law store one byte per sample. A header that says so over wider samples (16-bit PCM relabelled
    by a converter, or firmware writing the wrong tag) decodes without error as noise at twice the length
    (libsndfile reads one byte per sample whatever the header's other fields say), so its bits per sample must be
    8 and its block alignment (bytes per frame) one byte per channel."""
    if len(fmt) < 16:
        return
    tag, channels, _, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAV_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]   # the sub-format GUID starts with the format tag
    if tag in WAV_COMPANDED and channels and (bits != 8 or block_align != channels):
        frame = f"{block_align} byte{'s' if block_align != 1 else ''} per frame of {channels} " \
                f"channel{'s' if channels != 1 else ''}"
        raise AudioError("decode_error", path, f"its WAV header says {WAV_COMPANDED[tag]} (format tag {tag}), one "
                                               f"byte per sample, but {bits} bits per sample and {frame}: the "
                                               f"samples are not {WAV_COMPANDED[tag]} as libsndfile would read "
                                               f"them (PCM under the wrong tag?) and would decode as noise")
