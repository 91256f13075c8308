"""Build the HDF5 dataset file (DESIGN §5) from a class-folder tree or a manifest CSV.

Flat, index-linked arrays: files → long segments → distinct short segments, with the mel and
engineered features computed by the one front-end. Bad files are skipped and listed, never fatal.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch

import leakhunter
from leakhunter.audio import AudioError, load_audio, read_many
from leakhunter.card import STANDARD_CLASSES, FrontendConfig, SegmentationConfig, preset
from leakhunter.fingerprint import file_sha256
from leakhunter.frontend import FEATURE_NAMES, FrontEnd
from leakhunter.segments import plan_segments
from leakhunter.training.splits import SPLITS, assign_splits

FORMAT_VERSION = 1
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}
# sensor_id~recording_id~timestamp~gain_db: the logger naming convention; the sensor is the group.
LOGGER_NAME = re.compile(r"^(?P<sensor_id>[^~]+)~(?P<recording_id>[^~]+)~(?P<timestamp>[^~]+)~(?P<gain_db>[^~]+)$")
MEL_CHUNK_ROWS = 65536


class DatasetError(ValueError):
    """A source or dataset that cannot be built or used; the message names the file and the reason."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    label: str
    group: str
    split: str | None = None  # forced by the manifest
    meta: dict[str, str] = field(default_factory=dict)


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


def find_sources(source: str | os.PathLike) -> list[SourceFile]:
    """A manifest CSV (path,label[,group][,split], extra columns kept) or a tree SRC/<CLASS>/**/*.wav."""
    source = Path(source)
    if source.is_file():
        return _read_manifest(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such file or folder")
    files = []
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file():
                files.append(SourceFile(path.resolve(), class_dir.name.upper(), _group_from_name(path)))
    if not files:
        raise DatasetError(f"{source}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under class folders "
                           f"{source}/<CLASS>/")
    return files


def _read_manifest(manifest: Path) -> list[SourceFile]:
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = {"path", "label"} - set(columns)
        if missing:
            raise DatasetError(f"{manifest}: manifest lacks column(s) {', '.join(sorted(missing))}; has {columns}")
        files = []
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip() or not (row.get("label") or "").strip():
                raise DatasetError(f"{manifest}:{line}: empty path or label")
            split = (row.get("split") or "").strip().lower() or None
            if split is not None and split not in SPLITS:
                raise DatasetError(f"{manifest}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            path = Path(row["path"].strip())
            path = (path if path.is_absolute() else manifest.parent / path).resolve()
            group = (row.get("group") or "").strip() or _group_from_name(path)
            meta = {k: v for k, v in row.items() if k not in ("path", "label", "group", "split") and k is not None}
            files.append(SourceFile(path, row["label"].strip().upper(), group, split, meta))
    if not files:
        raise DatasetError(f"{manifest}: manifest has no rows")
    return files


def _group_from_name(path: Path) -> str:
    """The sensor id of a logger-named file, else the file itself (its own group)."""
    match = LOGGER_NAME.match(path.stem)
    return match["sensor_id"] if match else str(path)


def class_order(labels) -> tuple[str, ...]:
    """The documented class order: the standard five first (as many as present), then others A→Z."""
    present = set(labels)
    if "LEAK" not in present:
        raise DatasetError(f"no LEAK files among the labels {sorted(present)}: leakhunter needs a LEAK class")
    return tuple(c for c in STANDARD_CLASSES if c in present) + tuple(sorted(present - set(STANDARD_CLASSES)))


def build_dataset(source, output, preset_name: str = "short", val: float = 0.15, test: float = 0.15,
                  workers: int = 2, seed: int = 0, channel: str | int = "mean",
                  progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Decode every file (in `workers` threads), segment and featurise it, split, write `output` atomically."""
    frontend_cfg, segmentation = preset(preset_name)
    sources = find_sources(source)
    class_names = class_order(s.label for s in sources)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(temporary, "w") as h5:
            report = _write(h5, sources, class_names, frontend_cfg, segmentation, val, test, workers, seed,
                            channel, progress)
            h5.attrs.update({"source": str(Path(source).resolve()), "preset": preset_name,
                             "channel_policy": str(channel), "split_seed": seed,
                             "split_fractions": json.dumps({"val": val, "test": test})})
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    report.output = output
    return report


def _write(h5, sources, class_names, frontend_cfg: FrontendConfig, segmentation: SegmentationConfig,
           val, test, workers, seed, channel, progress) -> BuildReport:
    frontend = FrontEnd(frontend_cfg, segmentation).eval()
    h5.attrs.update({
        "format_version": FORMAT_VERSION,
        "frontend": json.dumps(frontend_cfg.__dict__),
        "segmentation": json.dumps(segmentation.__dict__),
        "class_names": json.dumps(list(class_names)),
        "feature_names": json.dumps(list(FEATURE_NAMES)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "leakhunter_version": leakhunter.__version__,
    })
    frames = segmentation.frames_per_short(frontend_cfg)
    mel = h5.create_dataset("short/mel", (0, frontend_cfg.n_mels, frames), dtype="float16",
                            maxshape=(None, frontend_cfg.n_mels, frames),
                            chunks=(max(1, MEL_CHUNK_ROWS // frames), frontend_cfg.n_mels, frames))
    features = h5.create_dataset("short/features", (0, len(FEATURE_NAMES)), dtype="float32",
                                 maxshape=(None, len(FEATURE_NAMES)), chunks=(16384, len(FEATURE_NAMES)))
    short_file = h5.create_dataset("short/file_index", (0,), dtype="int32", maxshape=(None,), chunks=(65536,))

    def decode(src: SourceFile):
        audio = load_audio(src.path, frontend_cfg.sample_rate, channel, min_samples=segmentation.long_samples)
        return audio, file_sha256(src.path)

    kept, rows, skipped = [], [], []
    n_short = n_long = 0
    long_file, long_short_start = [], []
    for done, (src, result) in enumerate(read_many(sources, decode, workers=workers), start=1):
        if isinstance(result, AudioError):
            skipped.append(result)
        else:
            audio, sha = result
            with torch.inference_mode():
                file_mel, file_features = frontend.short_segments(torch.from_numpy(audio.samples)[None],
                                                                  with_features=True)
            plan = plan_segments(audio.samples.size, segmentation)
            count = plan.n_short
            for dataset, values in ((mel, file_mel[0].numpy().astype(np.float16)),
                                    (features, file_features[0].numpy()),
                                    (short_file, np.full(count, len(kept), np.int32))):
                dataset.resize(n_short + count, axis=0)
                dataset[n_short:] = values
            long_file.append(np.full(plan.n_long, len(kept), np.int32))
            long_short_start.append(n_short + plan.long_first_short)
            rows.append((n_long, plan.n_long, n_short, count, audio, sha))
            kept.append(src)
            n_short += count
            n_long += plan.n_long
        if progress:
            progress(done, len(sources))
    if not kept:
        reasons = ", ".join(sorted({e.reason for e in skipped}))
        raise DatasetError(f"none of the {len(sources)} files could be read ({reasons}); nothing to build")

    labels = np.array([class_names.index(s.label) for s in kept], dtype=np.int16)
    shas = [row[5] for row in rows]
    splits = assign_splits(labels, [s.group for s in kept], shas, [s.split for s in kept],
                           [str(s.path) for s in kept], val=val, test=test, seed=seed)
    text = h5py.string_dtype()
    columns = {
        "path": np.array([str(s.path) for s in kept], dtype=object),
        "label": labels,
        "split": splits,
        "group": np.array([s.group for s in kept], dtype=object),
        "sha256": np.array(shas, dtype="S64"),
        "duration_s": np.array([r[4].duration_s for r in rows], np.float32),
        "sample_rate_in": np.array([r[4].sample_rate_in for r in rows], np.int32),
        "channels_in": np.array([r[4].channels_in for r in rows], np.int16),
        "clipped": np.array([r[4].clipped for r in rows], bool),
        "long_start": np.array([r[0] for r in rows], np.int64),
        "long_count": np.array([r[1] for r in rows], np.int32),
        "short_start": np.array([r[2] for r in rows], np.int64),
        "short_count": np.array([r[3] for r in rows], np.int32),
        "meta": np.array([json.dumps(s.meta, sort_keys=True) for s in kept], dtype=object),
    }
    for name, values in columns.items():
        h5.create_dataset(f"files/{name}", data=values, dtype=text if values.dtype == object else values.dtype)
    h5.create_dataset("long/file_index", data=np.concatenate(long_file))
    h5.create_dataset("long/short_start", data=np.concatenate(long_short_start))
    h5.create_dataset("long/short_count", data=np.full(n_long, segmentation.shorts_per_long(), np.int32))
    for name, values in (("path", [e.path for e in skipped]), ("reason", [e.reason for e in skipped]),
                         ("detail", [e.detail for e in skipped])):
        h5.create_dataset(f"skipped/{name}", data=np.array(values, dtype=object), dtype=text)
    return BuildReport(
        output=Path(), class_names=class_names, n_files=len(kept), n_long=n_long, n_short=n_short,
        hours=float(columns["duration_s"].sum() / 3600), skipped=skipped,
        files_per_split={name: int((splits == code).sum()) for code, name in enumerate(SPLITS)},
    )


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
