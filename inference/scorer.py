"""One recording, two halves: RecordingDecoder turns a file into pieces of whole long segments (it runs in the
isolated worker processes), and RecordingScorer turns the per-long-segment probabilities of those pieces into
the file's row (the vote of leakhunter.voting, the top class, the timeline). Every engine that scores files
(`leak predict`, a service, a cluster) uses these two and nothing else. Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import leakhunter
from leakhunter.audio import AudioError, open_audio, parse_channel_policy, silent_mix_note
from leakhunter.card import MODES, FrontendConfig, ModelCard, SegmentationConfig
from leakhunter.errors import InputError
from leakhunter.inference.outputs import columns_for
from leakhunter.mel import lowest_input_rate
from leakhunter.operating import deployed_threshold
from leakhunter.segments import cut_pieces
from leakhunter.voting import top_class, vote_files


@dataclass(frozen=True)
class Piece:
    """Samples of `n_long` whole long segments of one recording (its tail already padded or dropped)."""

    index: int  # position among the recording's pieces
    samples: np.ndarray  # float32 [(n_long - 1) * long_hop + long_samples]
    n_long: int


def file_stamp(path: str | Path) -> dict:
    """A row's size_bytes and mtime, which --resume compares with the file's now (empty when it cannot be
    stat'ed). Engines take it before a recording is read, so a file rewritten meanwhile is scored again."""
    try:
        stat = Path(path).stat()
    except OSError:
        return {"size_bytes": "", "mtime": ""}
    return {"size_bytes": stat.st_size, "mtime": f"{stat.st_mtime:.6f}"}


@dataclass(frozen=True)
class Decoded:
    """What decoding a whole recording found out, sent after its last piece."""

    n_pieces: int
    duration_s: float
    sample_rate_in: int
    resampled: bool
    channels_in: int
    clipped: bool
    silent_channels: tuple[int, ...] = ()  # of a "mean" mix: dead channels that lowered it


class RecordingDecoder:
    """Decode (open_audio: every check kept), resample, mix by the channel policy and cut into pieces of at most
    `piece_longs` long segments, emitted as they are ready: memory stays flat for any recording length."""

    def __init__(self, frontend: FrontendConfig, segmentation: SegmentationConfig, channel: str | int,
                 piece_longs: int, block_frames: int = 1 << 16):
        self.frontend, self.segmentation = frontend, segmentation
        self.channel, self.piece_longs, self.block_frames = channel, max(1, piece_longs), block_frames
        self.min_rate_in = lowest_input_rate(frontend)

    def decode(self, path: str | Path, emit: Callable[[Piece], None]) -> Decoded:
        """Emit the pieces of one recording and return what was decoded; AudioError for a bad file."""
        seg, index = self.segmentation, 0
        with open_audio(path, self.frontend.sample_rate, self.channel, min_samples=seg.long_samples,
                        block_frames=self.block_frames, min_rate_in=self.min_rate_in) as stream:
            for index, (samples, n_long) in enumerate(cut_pieces(stream, seg, self.piece_longs), start=1):
                emit(Piece(index - 1, samples, n_long))
            info = stream.info
            return Decoded(n_pieces=index, duration_s=round(info.duration_s, 3), sample_rate_in=info.sample_rate_in,
                           resampled=info.resampled, channels_in=info.channels_in, clipped=stream.clipped,
                           silent_channels=tuple(stream.silent_channels))


@dataclass(frozen=True)
class DecodeTask:
    path: Path


@dataclass(frozen=True)
class PlotTask:
    timeline: dict
    png: Path


class DecodingWorker:
    """A worker process's state: its decoder, and a timeline plotter made on the first PlotTask."""

    def __init__(self, decoder: RecordingDecoder):
        self.decoder = decoder
        self.plotter = None


def setup_decoder(decoder: RecordingDecoder) -> DecodingWorker:
    """A decoding worker yields the CPU to the model's threads (a lower priority): on a box with few cores the
    model is the bottleneck, and one of its parallel threads waiting for a core stalls all of them."""
    try:
        os.nice(10)
    except OSError:  # not allowed here: decoding runs at the normal priority
        pass
    return DecodingWorker(decoder)


def decode_in_worker(worker: DecodingWorker, task, emit):
    """In a worker: decode a recording (pieces are emitted as they are ready), or draw a timeline PNG."""
    if isinstance(task, PlotTask):
        if worker.plotter is None:
            from leakhunter.inference.timeline import TimelinePlotter

            worker.plotter = TimelinePlotter()
        worker.plotter.draw(task.timeline, task.png)
        return None
    try:
        return worker.decoder.decode(task.path, emit)
    except AudioError as error:  # a property of the file: its row says why
        return error


def channel_policy(card: ModelCard, channel: str | int | None) -> str:
    """The channel policy to decode with: the card's (as the training data was mixed) unless overridden."""
    return card.channel_policy if channel is None else str(parse_channel_policy(channel))


@dataclass
class FileResult:
    row: dict
    timeline: dict | None = None
    plot: PlotTask | None = None  # a timeline PNG still to draw (by a worker)
    long_leak_prob: np.ndarray | None = None  # P(LEAK) per long segment, exact (`leak eval` re-votes with it)


def dead_channels_note(decoded: Decoded) -> str:
    """What a row says when silent channels were averaged in, and what to do about it."""
    note = silent_mix_note(decoded.silent_channels, decoded.channels_in)
    return f"{note}; score one with --channel N" if note else ""


def check_options(threshold: float | None = None, vote_fraction: float | None = None, workers: int | None = None,
                  file_timeout: float | None = None) -> None:
    """Scoring options that cannot mean anything (given ones only): refused naming the option, rather than a run
    that calls every file NOLEAK (a threshold of 1.5) or times every file out (a negative timeout)."""
    for name, value, ok, rule in (("--threshold", threshold, lambda v: 0 <= v <= 1, "in [0, 1]"),
                                  ("--vote-fraction", vote_fraction, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("--workers", workers, lambda v: v >= 0 and int(v) == v, "an integer >= 0"),
                                  ("--file-timeout", file_timeout, lambda v: v > 0, "above 0 seconds")):
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise InputError(f"{name} {value:g} must be {rule}")


class RecordingScorer:
    """The row of one recording from its long segments' probabilities: verdict, scores, top class, class
    probabilities, and (with `timeline`) P(LEAK) per long segment. Overrides of the card are said in `message`;
    `sensitivity` names the card's operating point whose threshold is used (the `sensitivity` column says it)."""

    def __init__(self, card: ModelCard, model_sha256: str, threshold: float | None = None,
                 vote_fraction: float | None = None, channel: str | int | None = None, timeline: bool = False,
                 sensitivity: str | None = None):
        check_options(threshold=threshold, vote_fraction=vote_fraction)
        self.card, self.model_sha256, self.timeline = card, model_sha256, timeline
        self.threshold = deployed_threshold(card, threshold, sensitivity)
        self.sensitivity = sensitivity
        self.vote_fraction = card.voting.vote_fraction if vote_fraction is None else vote_fraction
        self.channel = channel_policy(card, channel)
        self.multiclass = MODES[card.mode].fixed_classes is None  # p_<class> columns
        self.meta = bool(card.meta_columns)  # meta_source, meta_missing columns
        self.columns = columns_for(card.class_names, self.multiclass, self.meta, card.reference is not None)
        overridden = [f"{name} {value:g} (card {card_value:g})" for name, value, card_value in
                      (("threshold", self.threshold, card.voting.threshold),
                       ("vote_fraction", self.vote_fraction, card.voting.vote_fraction)) if value != card_value]
        chosen = ""
        if sensitivity is not None:  # said even when the point's threshold is the card's own
            chosen = f"sensitivity {sensitivity}: threshold {self.threshold:g} (card {card.voting.threshold:g})"
            overridden = [note for note in overridden if not note.startswith("threshold ")]
        if self.channel != card.channel_policy:
            overridden.append(f"channel {self.channel} (card {card.channel_policy})")
        self.override_note = "; ".join(filter(None, [chosen, "overridden: " + ", ".join(overridden) if overridden
                                                     else ""]))

    def base_row(self, path: str | Path) -> dict:
        return {"file": str(path), "threshold": self.threshold, "vote_fraction": self.vote_fraction,
                "sensitivity": self.sensitivity or "", "model_sha256": self.model_sha256, "leakhunter_version": leakhunter.__version__,
                **file_stamp(path), "message": self.override_note}

    def failed(self, path: str | Path, reason: str, detail: str) -> FileResult:
        return FileResult({**self.base_row(path), "status": reason, "message": detail})

    def result(self, path: str | Path, decoded: Decoded, long_leak: np.ndarray, long_classes: np.ndarray) -> FileResult:
        """The row from P(LEAK) [L] and class probabilities [L, C] per long segment."""
        row = self.base_row(path)
        votes = vote_files(long_leak, np.zeros(len(long_leak), dtype=np.int64), 1, self.threshold, self.vote_fraction)
        mean_classes = long_classes.mean(axis=0)
        top = top_class(self.card.mode, mean_classes[None], votes.verdict, self.card.leak_idx)[0]
        row.update(status="ok", verdict="LEAK" if votes.verdict[0] else "NOLEAK",
                   leak_score=float(votes.leak_score[0]), mean_leak_prob=float(votes.mean_leak_prob[0]),
                   max_long_prob=float(votes.max_long_prob[0]), n_long=int(len(long_leak)),
                   duration_s=decoded.duration_s, sample_rate_in=decoded.sample_rate_in,
                   resampled=decoded.resampled, channels_in=decoded.channels_in,
                   top_class=self.card.class_names[int(top)],
                   message="; ".join(filter(None, [self.override_note, "clipped" if decoded.clipped else "",
                                                   dead_channels_note(decoded)])))
        if self.multiclass:
            row.update({f"p_{name}": float(p) for name, p in zip(self.card.class_names, mean_classes)})
        timeline = None
        if self.timeline:
            seg, rate = self.card.segmentation, self.card.frontend.sample_rate
            timeline = {"file": str(path), "long_start_s": (np.arange(len(long_leak)) * seg.long_hop / rate)
                        .round(4).tolist(), "long_seconds": seg.long_samples / rate,
                        "leak_prob": np.round(long_leak, 5).tolist(), "threshold": self.threshold}
        return FileResult(row, timeline, long_leak_prob=long_leak)
