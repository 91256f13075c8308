"""Batch scoring (`leak predict`): decode in streamed blocks → the runner scores whole long segments →
P(LEAK) per long segment → the vote of leakhunter.voting, the code training selected the model with.

Every input file gets exactly one row, bad files included; rows are written as they are produced; a
killed run resumes to the same table. No preprocessing option exists: everything comes from the card.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import leakhunter
from leakhunter.audio import AudioError, open_audio
from leakhunter.inference.loader import load_runner
from leakhunter.inference.outputs import RowWriter, columns_for, read_done, resume_key
from leakhunter.inference.pool import WorkerFailure, isolated_map
from leakhunter.inference.runner import long_segment_probs
from leakhunter.segments import plan_segments
from leakhunter.voting import long_segment_means, vote_files

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
CHUNK_SECONDS = 120  # audio scored per runner call for long files: memory stays flat


class PredictError(ValueError):
    """Nothing to score (no inputs, an unreadable manifest): the message says what was looked at."""


def find_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files, folders (searched recursively for audio), glob patterns and manifest CSVs (a `path` column,
    relative to the manifest) → audio paths in a stable order, each once."""
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.suffix.lower() == ".csv" and path.is_file():
            with open(path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                if "path" not in (reader.fieldnames or []):
                    raise PredictError(f"{path}: a manifest needs a 'path' column; has {reader.fieldnames}")
                found += [p if p.is_absolute() else path.parent / p
                          for p in (Path(row["path"].strip()) for row in reader if row["path"].strip())]
        elif any(char in item for char in "*?["):
            found += sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            found.append(path)  # a missing file still gets its row (status "missing")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise PredictError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    return unique


@dataclass
class FileResult:
    row: dict
    timeline: dict | None = None


class FileScorer:
    """One model, scoring one file at a time in streamed chunks of whole long segments."""

    def __init__(self, model: str | Path, device: str = "auto", threshold: float | None = None,
                 vote_fraction: float | None = None, channel: str | int = "mean", timeline: bool = False,
                 block_frames: int = 1 << 16, threads: int | None = None):
        self.card, self.runner = load_runner(model, device, threads)
        self.threshold = self.card.voting.threshold if threshold is None else threshold
        self.vote_fraction = self.card.voting.vote_fraction if vote_fraction is None else vote_fraction
        self.channel, self.timeline, self.block_frames = channel, timeline, block_frames
        self.multiclass = len(self.card.class_names) > 2 or self.card.mode != "binary"
        self.columns = columns_for(self.card.class_names, self.multiclass)
        overridden = [f"{name} {value:g} (card {card_value:g})" for name, value, card_value in
                      (("threshold", self.threshold, self.card.voting.threshold),
                       ("vote_fraction", self.vote_fraction, self.card.voting.vote_fraction)) if value != card_value]
        self.override_note = "overridden: " + ", ".join(overridden) if overridden else ""

    def base_row(self, path: Path) -> dict:
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime
        except OSError:
            size, mtime = "", ""
        return {"file": str(path), "threshold": self.threshold, "vote_fraction": self.vote_fraction,
                "model_sha256": self.runner.sha256, "leakhunter_version": leakhunter.__version__,
                "size_bytes": size, "mtime": f"{mtime:.6f}" if mtime != "" else "", "message": self.override_note}

    def long_probabilities(self, stream) -> tuple[np.ndarray, np.ndarray]:
        """P(LEAK) [L] and class probabilities [L, C] per long segment, scoring whole long segments as
        the blocks arrive; only about CHUNK_SECONDS of audio is held at once."""
        seg, rate = self.card.segmentation, self.card.frontend.sample_rate
        chunk_longs = max(1, CHUNK_SECONDS * rate // seg.long_hop)
        chunk_samples = (chunk_longs - 1) * seg.long_hop + seg.long_samples
        buffered, leak, classes = [], [], []
        held = 0
        for block in stream:
            buffered.append(block)
            held += block.size
            while held >= chunk_samples + seg.long_hop:  # a whole chunk, and the next one has begun
                samples = np.concatenate(buffered)
                self._score(samples[:chunk_samples], leak, classes)
                rest = samples[chunk_longs * seg.long_hop:]
                buffered, held = [rest], rest.size
        samples = np.concatenate(buffered) if buffered else np.zeros(0, np.float32)
        plan = plan_segments(samples.size, seg)
        if plan.n_long:
            self._score(np.pad(samples, (0, plan.pad))[: plan.samples_used], leak, classes)
        if not leak:
            return np.zeros(0), np.zeros((0, len(self.card.class_names)))
        return np.concatenate(leak), np.concatenate(classes)

    def _score(self, samples: np.ndarray, leak: list, classes: list) -> None:
        probs, leak_prob = self.runner.score_waveform(samples)
        leak.append(long_segment_probs(self.card, samples.size, leak_prob))
        if self.card.segmentation.unit == "short":
            plan = plan_segments(samples.size, self.card.segmentation)
            probs = long_segment_means(probs, plan.long_first_short, plan.shorts_per_long)
        classes.append(np.asarray(probs, dtype=np.float64))

    def score(self, path: str | Path) -> FileResult:
        path = Path(path)
        row = self.base_row(path)
        seg, frontend = self.card.segmentation, self.card.frontend
        try:
            with open_audio(path, frontend.sample_rate, self.channel, min_samples=seg.long_samples,
                            block_frames=self.block_frames) as stream:
                long_leak, long_classes = self.long_probabilities(stream)
                info, clipped = stream.info, stream.clipped
        except AudioError as error:
            return FileResult({**row, "status": error.reason, "message": error.detail})
        votes = vote_files(long_leak, np.zeros(len(long_leak), dtype=np.int64), 1, self.threshold, self.vote_fraction)
        mean_classes = long_classes.mean(axis=0)
        leak_idx = self.card.leak_idx
        if self.multiclass:
            top_class = self.card.class_names[int(mean_classes.argmax())]
        else:
            top_class = self.card.class_names[leak_idx if votes.verdict[0] else 1 - leak_idx]
        row.update(status="ok", verdict="LEAK" if votes.verdict[0] else "NOLEAK",
                   leak_score=float(votes.leak_score[0]), mean_leak_prob=float(votes.mean_leak_prob[0]),
                   max_long_prob=float(votes.max_long_prob[0]), n_long=int(len(long_leak)),
                   duration_s=round(info.duration_s, 3), sample_rate_in=info.sample_rate_in,
                   resampled=info.resampled, channels_in=info.channels_in, top_class=top_class,
                   message="; ".join(filter(None, [self.override_note, "clipped" if clipped else ""])))
        if self.multiclass:
            row.update({f"p_{name}": float(p) for name, p in zip(self.card.class_names, mean_classes)})
        timeline = None
        if self.timeline:
            timeline = {"file": str(path), "long_start_s": (np.arange(len(long_leak)) * seg.long_hop
                                                            / frontend.sample_rate).round(4).tolist(),
                        "long_seconds": seg.long_samples / frontend.sample_rate,
                        "leak_prob": np.round(long_leak, 5).tolist(), "threshold": self.threshold}
        return FileResult(row, timeline)


def _setup_worker(model, device, threshold, vote_fraction, channel, timeline, threads):
    return FileScorer(model, device, threshold, vote_fraction, channel, timeline, threads=threads)


def _score_in_worker(scorer: FileScorer, path: Path) -> FileResult:
    return scorer.score(path)


@dataclass
class PredictSummary:
    out: Path | None
    rows: list[dict]
    skipped: int  # already in the output (--resume)
    wall_s: float
    audio_s: float
    statuses: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        """0 all scored, 3 some files failed, 2 nothing could be scored."""
        failed = sum(n for status, n in self.statuses.items() if status != "ok")
        if failed and failed == sum(self.statuses.values()):
            return 2
        return 3 if failed else 0


def predict(inputs: list[str | Path], model: str | Path, out: str | Path | None = None, device: str = "auto",
            threshold: float | None = None, vote_fraction: float | None = None, workers: int = 2,
            file_timeout: float | None = 600.0, resume: bool = False, timeline: bool = False,
            channel: str | int = "mean", on_row: Callable[[dict, int, int], None] | None = None) -> PredictSummary:
    """Score every input file; rows go to `out` (.csv or .jsonl) as they are produced and are returned."""
    paths = find_inputs(inputs)
    scorer = FileScorer(model, device, threshold, vote_fraction, channel, timeline)
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise PredictError("--resume needs --out: it continues an existing output file")
    done_keys: set = set()
    if out is not None and resume and out.exists():
        done, length = read_done(out, scorer.columns)
        os.truncate(out, length)  # drop a half-written last row
        done_keys = {resume_key(row) for row in done}
    todo = [p for p in paths if resume_key(scorer.base_row(p)) not in done_keys]
    writer = RowWriter(out, scorer.columns, append=resume) if out is not None else None
    timelines = _TimelineWriter(out, append=resume) if timeline and out is not None else None
    if out is not None:
        _write_params(out, scorer, model, inputs, device, workers, file_timeout, channel)
    summary = PredictSummary(out=out, rows=[], skipped=len(paths) - len(todo), wall_s=0.0, audio_s=0.0)
    started = time.perf_counter()
    if workers <= 0:
        results = ((path, scorer.score(path)) for path in todo)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        results = isolated_map(todo, _score_in_worker, _setup_worker,
                               (model, device, threshold, vote_fraction, channel, timeline, threads),
                               workers=workers, timeout=file_timeout)
    try:
        for done_count, (path, result) in enumerate(results, start=1):
            if isinstance(result, WorkerFailure):
                result = FileResult({**scorer.base_row(Path(path)), "status": result.reason,
                                     "message": result.detail})
            row = result.row
            if writer is not None:
                writer.write(row)
            if timelines is not None and result.timeline is not None:
                timelines.write(result.timeline)
            summary.rows.append(row)
            summary.statuses[row["status"]] += 1
            if row["status"] == "ok":
                summary.verdicts[row["verdict"]] += 1
                summary.audio_s += float(row["duration_s"])
            if on_row is not None:
                on_row(row, done_count, len(todo))
    finally:
        summary.wall_s = time.perf_counter() - started
        if writer is not None:
            writer.close()
    return summary


def _write_params(out: Path, scorer: FileScorer, model, inputs, device, workers, file_timeout, channel) -> None:
    """The run's parameters beside the output, so a table can always be traced to its model and settings."""
    params = {"model": str(model), "model_sha256": scorer.runner.sha256, "backend": scorer.runner.backend,
              "device": device, "threshold": scorer.threshold, "vote_fraction": scorer.vote_fraction,
              "card_threshold": scorer.card.voting.threshold, "channel": str(channel), "workers": workers,
              "file_timeout": file_timeout, "inputs": [str(i) for i in inputs],
              "leakhunter_version": leakhunter.__version__,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.with_name(out.name + ".params.json").write_text(json.dumps(params, indent=2), encoding="utf-8")


class _TimelineWriter:
    """`--timeline`: per-long-segment P(LEAK) as JSONL beside the output, and a PNG per file."""

    def __init__(self, out: Path, append: bool):
        self.jsonl = out.with_name(out.stem + ".timeline.jsonl")
        self.folder = out.with_name(out.stem + ".timeline")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not append:
            self.jsonl.write_text("", encoding="utf-8")

    def write(self, timeline: dict) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(timeline) + "\n")
        from leakhunter.inference.timeline import plot_timeline

        plot_timeline(timeline, self.folder / (Path(timeline["file"]).stem + ".png"))
