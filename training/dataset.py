"""Build the HDF5 dataset file (DESIGN §5) from a class-folder tree or a manifest CSV.

Flat, index-linked arrays: files → long segments → distinct short segments, with the mel and
engineered features computed by the one front-end. Bad files are skipped and listed, up to
max_skipped_fraction of the source (more than that is a broken source, not a few bad files). Only the
per-file facts are kept while building, never the samples, so memory stays flat in corpus size.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import torch

import leakhunter
from leakhunter.audio import AudioError, open_audio, parse_channel_policy, read_many, silent_mix_note
from leakhunter.card import PRESETS, STANDARD_CLASSES, FrontendConfig, SegmentationConfig, preset
from leakhunter.errors import DatasetError
from leakhunter.files import atomic_path
from leakhunter.fingerprint import file_sha256
from leakhunter.frontend import FEATURE_NAMES, FEATURE_VERSION, FrontEnd
from leakhunter.mel import lowest_input_rate
from leakhunter.segments import SegmentPlan, cut_pieces, plan_segments
from leakhunter.sources import (
    HDF5_SUFFIXES,
    SourceFile,
    check_output_name,
    find_sources,
    leak_like_labels_warning,
    lone_groups_warning,
    printable,
)
from leakhunter.training.splits import SPLITS, assign_splits

FORMAT_VERSION = 1
MEL_CHUNK_ROWS = 65536
BUILD_PIECE_LONGS = 256  # long segments featurised at a time (a minute or two of audio)
MAX_SKIPPED_FRACTION = 0.05


@dataclass
class BuildReport:
    output: Path
    class_names: tuple[str, ...]
    n_files: int
    n_long: int
    n_short: int
    hours: float
    skipped: list[AudioError]
    files_per_split: dict[str, int]
    dead_channels: list[tuple[Path, int, int]] = field(default_factory=list)  # (path, mask, channels) of files
    # whose "mean" mix averaged in a channel silent throughout
    lone_groups: str | None = None  # sources.lone_groups_warning: most files their own group
    leak_like: str | None = None  # sources.leak_like_labels_warning: a label that reads as a leak but is not LEAK
    preset: str = ""  # the preset it was built with
    empty_splits: str | None = None  # empty_splits_warning: a split asked for that got no file

    def warnings(self) -> list[str]:
        """What the build says about data it kept (a label, the groups, the splits, dead channels), one line
        each."""
        dead = dead_channel_warning(self.dead_channels) if self.dead_channels else None
        return [warning for warning in (self.leak_like, self.lone_groups, self.empty_splits, dead) if warning]

    def skipped_by_reason(self) -> dict[str, int]:
        return skipped_counts(self.skipped)

    def skipped_summary(self) -> str:
        """E.g. 'skipped 7 files: 3 truncated, 2 silent, 2 not_audio' (most frequent reason first)."""
        return _skipped_summary(self.skipped)


@dataclass(frozen=True)
class _FileFacts:
    """What the file table needs of one decoded file: a few numbers, never its samples (where its segments start
    in the dataset follows from the counts of the files before it)."""
    long_count: int
    short_count: int
    duration_s: float
    sample_rate_in: int
    channels_in: int
    clipped: bool
    silent_channels: int  # the channels silent throughout that a "mean" mix averaged in (silent_channel_mask)
    sha256: str


def starts(counts: list[int]) -> np.ndarray:
    """Where each file's rows start in a table of all files' rows, in order."""
    ends = np.cumsum(np.asarray(counts, np.int64))
    return ends - np.asarray(counts, np.int64)


def silent_channel_mask(channels: tuple[int, ...]) -> int:
    """Channels as the bits of `/files/silent_channels` (channel i is bit i; the first 63 channels)."""
    return sum(1 << channel for channel in channels if channel < 63)


def dead_channel_warning(files: list[tuple[str, int, int]]) -> str:
    """What `leak data build` and `leak data check` say of files (path, silent channel mask, channels) whose "mean"
    mix averaged in a channel silent throughout: kept (the recording is real), but the network would learn those
    pipes quieter than they are."""
    path, mask, channels_in = files[0]
    note = silent_mix_note([i for i in range(min(channels_in, 63)) if mask >> i & 1], channels_in)
    return (f"{len(files)} file(s) averaged in a channel silent throughout, e.g. {printable(str(path))} ({note}); "
            f"build them with --channel N, a live one")


def skipped_counts(skipped: list[AudioError]) -> dict[str, int]:
    """Skipped files per reason, most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for error in skipped:
        counts[error.reason] = counts.get(error.reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _skipped_summary(skipped: list[AudioError]) -> str:
    counts = skipped_counts(skipped)
    reasons = ", ".join(f"{n} {reason}" for reason, n in counts.items())
    if "low_rate" in counts:  # which preset would read them
        reasons += " (the presets read " + ", ".join(
            f"{name} {math.ceil(lowest_input_rate(frontend))} Hz" for name, (frontend, _) in PRESETS.items()) + " and up)"
    return f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''}: {reasons}"


def class_order(labels) -> tuple[str, ...]:
    """The documented class order: the standard five first (as many as present), then others A→Z."""
    present = set(labels)
    if "LEAK" not in present:
        raise DatasetError(f"no LEAK files among the labels {sorted(present)}: leakhunter needs a LEAK class")
    return tuple(c for c in STANDARD_CLASSES if c in present) + tuple(sorted(present - set(STANDARD_CLASSES)))


def build_dataset(source, output, preset_name: str = "short", val: float = 0.15, test: float = 0.15,
                  workers: int = 2, seed: int = 0, channel: str | int = "mean",
                  progress: Callable[[int, int], None] | None = None,
                  max_skipped_fraction: float = MAX_SKIPPED_FRACTION, group_column: str | None = None) -> BuildReport:
    """Decode every file (in `workers` threads), segment and featurise it, split, write `output` atomically.

    More than `max_skipped_fraction` of the files skipped fails the build (the old `output` is kept).
    `group_column`: the manifest column that names each file's group (site, sensor) instead of `group`."""
    if not 0 <= max_skipped_fraction <= 1:
        raise DatasetError(f"max_skipped_fraction must be in [0, 1], got {max_skipped_fraction!r}")
    frontend_cfg, segmentation = preset(preset_name)
    output = Path(output)
    check_output_name(output, "a dataset", HDF5_SUFFIXES, f"-o {output}")  # not over its manifest or a recording
    sources = find_sources(source, group_column)
    class_names = class_order(s.label for s in sources)
    with atomic_path(output) as temporary, h5py.File(temporary, "w") as h5:  # an old output survives a failure
        report = _write(h5, sources, class_names, frontend_cfg, segmentation, val, test, workers, seed,
                        channel, progress, max_skipped_fraction)
        h5.attrs.update({"source": str(Path(source).resolve()), "preset": preset_name,
                         "channel_policy": str(parse_channel_policy(channel)), "split_seed": seed,
                         "split_fractions": json.dumps({"val": val, "test": test}), "group_column": (group_column or "").strip()})
    report.output, report.preset = output, preset_name
    report.leak_like = leak_like_labels_warning(dict(Counter(s.label for s in sources)))
    sizes = Counter(s.group for s in sources)
    by_file = all(s.group_from == "file" for s in sources if sizes[s.group] == 1)
    report.lone_groups = lone_groups_warning([s.group for s in sources], [s.meta for s in sources],
                                             "no group or sensor_id column, no logger name" if by_file else "")
    return report


def _write(h5, sources, class_names, frontend_cfg: FrontendConfig, segmentation: SegmentationConfig,
           val, test, workers, seed, channel, progress, max_skipped_fraction) -> BuildReport:
    frontend = FrontEnd(frontend_cfg, segmentation).eval()
    h5.attrs.update({
        "format_version": FORMAT_VERSION,
        "frontend": json.dumps(frontend_cfg.__dict__),
        "segmentation": json.dumps(segmentation.__dict__),
        "class_names": json.dumps(list(class_names)),
        "feature_names": json.dumps(list(FEATURE_NAMES)),
        "feature_version": FEATURE_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "leakhunter_version": leakhunter.__version__,
    })
    frames = segmentation.frames_per_short(frontend_cfg)
    mel = h5.create_dataset("short/mel", (0, frontend_cfg.n_mels, frames), dtype="float16",
                            maxshape=(None, frontend_cfg.n_mels, frames),
                            chunks=(max(1, MEL_CHUNK_ROWS // frames), frontend_cfg.n_mels, frames))
    features = h5.create_dataset("short/features", (0, len(FEATURE_NAMES)), dtype="float32",
                                 maxshape=(None, len(FEATURE_NAMES)), chunks=(16384, len(FEATURE_NAMES)))
    short_file = h5.create_dataset("short/file_index", (0,), dtype="int32", maxshape=(None,), chunks=(65536,))

    min_rate_in = lowest_input_rate(frontend_cfg)

    shorts_per_hop = segmentation.long_hop // segmentation.short_hop

    def featurise(src: SourceFile) -> tuple[np.ndarray, np.ndarray, SegmentPlan, _FileFacts]:
        """(float16 log-mels, features, segment plan, facts) of one file, decoded and featurised a piece at a time
        (cut_pieces), so memory holds its features, never all its samples: a day-long logger file builds in the
        memory of a few minutes' audio."""
        if printable(str(src.path)) != str(src.path):  # read from the file system with surrogate escapes
            raise AudioError("decode_error", src.path, "its name is not UTF-8 (bytes of another system's encoding, "
                                                       "e.g. Latin-1 from a network share) and the dataset stores "
                                                       "names as UTF-8: rename it")
        mels, features, keep = [], [], 0
        with open_audio(src.path, frontend_cfg.sample_rate, channel, min_samples=segmentation.long_samples,
                        min_rate_in=min_rate_in) as stream, torch.inference_mode():
            for samples, n_long in cut_pieces(stream, segmentation, BUILD_PIECE_LONGS):
                if mels:  # the last short segments of the piece before are this one's first: kept once, here
                    mels[-1], features[-1] = mels[-1][:keep], features[-1][:keep]
                piece_mel, piece_features = frontend.short_segments(torch.from_numpy(samples)[None],
                                                                    with_features=True)
                mels.append(piece_mel[0].numpy().astype(np.float16))
                features.append(piece_features[0].numpy())
                keep = n_long * shorts_per_hop
        plan, file_mel = plan_segments(stream.n_samples, segmentation), np.concatenate(mels)
        if len(file_mel) != plan.n_short:
            raise RuntimeError(f"{len(file_mel)} short segments made in pieces where the recording has "
                               f"{plan.n_short}")
        try:
            sha = file_sha256(src.path)
        except OSError as error:  # removed or unreadable since it was decoded: the file's problem, not a bug
            raise AudioError("decode_error", src.path, f"cannot read: {error}") from error
        info = stream.info
        return file_mel, np.concatenate(features), plan, _FileFacts(
            plan.n_long, plan.n_short, stream.frames_read / info.sample_rate_in, info.sample_rate_in,
            info.channels_in, stream.clipped, silent_channel_mask(tuple(stream.silent_channels)), sha)

    kept: list[SourceFile] = []
    rows: list[_FileFacts] = []
    skipped: list[AudioError] = []
    n_short = n_long = 0
    long_file, long_short_start = [], []
    for done, (src, result) in enumerate(read_many(sources, featurise, workers=workers), start=1):
        if isinstance(result, AudioError):
            skipped.append(result.with_traceback(None))  # a traceback would keep the decoder's frames alive
        else:
            file_mel, file_features, plan, facts = result
            del result
            count = plan.n_short
            for dataset, values in ((mel, file_mel), (features, file_features),
                                    (short_file, np.full(count, len(kept), np.int32))):
                dataset.resize(n_short + count, axis=0)
                dataset[n_short:] = values
            long_file.append(np.full(plan.n_long, len(kept), np.int32))
            long_short_start.append(n_short + plan.long_first_short)
            rows.append(facts)
            kept.append(src)
            n_short += count
            n_long += plan.n_long
            del file_mel, file_features
        if progress:
            progress(done, len(sources))
    if not kept:
        raise DatasetError(f"none of the {len(sources)} files could be used ({_skipped_summary(skipped)}); nothing "
                           f"to build. The first: {skipped[0]}")
    if len(skipped) > max_skipped_fraction * len(sources):
        raise DatasetError(
            f"{_skipped_summary(skipped)} of {len(sources)} ({len(skipped) / len(sources):.1%}), more than "
            f"--max-skipped-fraction {max_skipped_fraction:g} allows; the previous dataset file is kept. Fix the "
            f"source, or raise --max-skipped-fraction to build from the rest. Skipped:\n"
            + "\n".join(f"  {error}" for error in skipped))

    labels = np.array([class_names.index(s.label) for s in kept], dtype=np.int16)
    shas = [row.sha256 for row in rows]
    splits = assign_splits(labels, [s.group for s in kept], shas, [s.split for s in kept],
                           [str(s.path) for s in kept], val=val, test=test, seed=seed)
    text = h5py.string_dtype()
    columns = {
        "path": np.array([str(s.path) for s in kept], dtype=object),
        "label": labels,
        "split": splits,
        "group": np.array([s.group for s in kept], dtype=object),
        "sha256": np.array(shas, dtype="S64"),
        "duration_s": np.array([r.duration_s for r in rows], np.float32),
        "sample_rate_in": np.array([r.sample_rate_in for r in rows], np.int32),
        "channels_in": np.array([r.channels_in for r in rows], np.int16),
        "clipped": np.array([r.clipped for r in rows], bool),
        "silent_channels": np.array([r.silent_channels for r in rows], np.int64),
        "long_start": starts([r.long_count for r in rows]),
        "long_count": np.array([r.long_count for r in rows], np.int32),
        "short_start": starts([r.short_count for r in rows]),
        "short_count": np.array([r.short_count for r in rows], np.int32),
        "meta": np.array([json.dumps(s.meta, sort_keys=True) for s in kept], dtype=object),
    }
    for name, values in columns.items():
        h5.create_dataset(f"files/{name}", data=values, dtype=text if values.dtype == object else values.dtype)
    h5.create_dataset("long/file_index", data=np.concatenate(long_file))
    h5.create_dataset("long/short_start", data=np.concatenate(long_short_start))
    h5.create_dataset("long/short_count", data=np.full(n_long, segmentation.shorts_per_long(), np.int32))
    for name, values in (("path", [printable(e.path) for e in skipped]), ("reason", [e.reason for e in skipped]),
                         ("detail", [e.detail for e in skipped])):
        h5.create_dataset(f"skipped/{name}", data=np.array(values, dtype=object), dtype=text)
    files_per_split = {name: int((splits == code).sum()) for code, name in enumerate(SPLITS)}
    return BuildReport(
        output=Path(), class_names=class_names, n_files=len(kept), n_long=n_long, n_short=n_short,
        hours=float(columns["duration_s"].sum() / 3600), skipped=skipped, files_per_split=files_per_split,
        empty_splits=empty_splits_warning(files_per_split, [s.group for s in kept], [s.split for s in kept],
                                          {"val": val, "test": test}),
        dead_channels=[(s.path, r.silent_channels, r.channels_in) for s, r in zip(kept, rows) if r.silent_channels],
    )


def empty_splits_warning(files_per_split: dict[str, int], groups: list[str], forced: list[str | None],
                         fractions: dict[str, float]) -> str | None:
    """When a split asked for got no file because the files form too few groups (a group's files all go to one
    split): training would stop at H003 on the empty split, far from the cause. `forced`: each file's split from
    the manifest's split column, or None."""
    empty = [name for name, fraction in fractions.items() if fraction > 0 and not files_per_split[name]]
    if not empty:
        return None
    free = sorted({group for group, split in zip(groups, forced) if split is None})
    n_forced = sum(split is not None for split in forced)
    files = (f"the manifest's split column places {n_forced} of the {len(groups)} files and the other "
             f"{len(groups) - n_forced}" if n_forced else f"the {len(groups)} files")
    return (f"split{'s' if len(empty) > 1 else ''} {' and '.join(empty)} got no file: {files} form {len(free)} "
            f"group{'s' if len(free) != 1 else ''} ({', '.join(free[:3])}{', ...' if len(free) > 3 else ''}), and a "
            f"group's files (a site's or sensor's) stay in one split; training stops on an empty split (H003): add "
            f"recordings of more sites or sensors (a site's own recordings cannot say how a model does on another)")


def open_dataset(path: str | Path) -> h5py.File:
    """A dataset file opened for reading, or DatasetError naming it: absent, or not HDF5 (a manifest, a model)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"{path}: not an HDF5 dataset file from leak data build ({error})") from None


def file_metas(h5: h5py.File) -> list[str]:
    """Each file's manifest columns beyond path, label, group and split, as JSON text ("{}" for every file of a
    dataset built before they were kept)."""
    return list(h5["files/meta"].asstr()[:]) if "files/meta" in h5 else ["{}"] * len(h5["files/path"])


def dataset_configs(h5: h5py.File) -> tuple[FrontendConfig, SegmentationConfig, tuple[str, ...]]:
    """The front-end, segmentation and class names a dataset file was built with."""
    try:
        if int(h5.attrs["format_version"]) != FORMAT_VERSION:
            raise DatasetError(f"{h5.filename}: format_version {h5.attrs['format_version']} is not {FORMAT_VERSION}")
        return (FrontendConfig(**json.loads(h5.attrs["frontend"])),
                SegmentationConfig(**json.loads(h5.attrs["segmentation"])),
                tuple(json.loads(h5.attrs["class_names"])))
    except KeyError as missing:
        raise DatasetError(f"{h5.filename}: not a leakhunter dataset (attribute {missing} missing)") from None


def feature_version(h5: h5py.File) -> int:
    """How /short/features was computed (leakhunter.frontend.FEATURE_VERSION); files written before the
    attribute existed hold version 1."""
    return int(h5.attrs.get("feature_version", 1))
