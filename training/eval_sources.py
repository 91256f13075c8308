"""What `leak eval` evaluates on and how files are scored when not from dataset features: labelled recordings
(a manifest CSV, a class-folder tree, or a dataset split's own audio files), scored by the one scoring engine
`leak predict` uses, and gathered into the per-file votes the report is made of.

Manifests and folders are read by leakhunter.sources.find_sources, as `leak data build` reads them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakhunter.card import MODES, ModelCard
from leakhunter.errors import InputError
from leakhunter.reference import ReferenceTable
from leakhunter.sources import HDF5_SUFFIXES

MISSING_LISTED = 10  # missing files named in the error, the rest counted


@dataclass(frozen=True)
class LabelledFiles:
    """Recordings with their truth: a path, the label (a class name) and the group of each."""

    paths: list[Path]
    labels: list[str]
    groups: list[str]
    source: str  # "dataset", "manifest" or "class folders"
    group_from: str  # where the groups come from, for the report
    meta: list[dict] | None = None  # per file, the manifest's other columns (a fusion model's meta, a sensor_id)


@dataclass
class FileVotes:
    """Per evaluated file: its truth and the model's vote, from either scoring path; plus each long segment's
    P(LEAK) and file, so other thresholds (the card's operating points, the curves) can vote again."""

    paths: list[str]
    groups: list[str]
    file_is_leak: np.ndarray  # bool [F]
    file_targets: np.ndarray  # [F] class index in the card's class_names
    verdict: np.ndarray  # bool [F]
    mean_leak_prob: np.ndarray  # [F]
    top_class: np.ndarray  # [F] class index in the card's class_names
    long_leak_prob: np.ndarray  # [L]
    long_file: np.ndarray  # [L] position (0..F-1) of each long segment's file


def is_dataset(data: str | Path) -> bool:
    return Path(data).suffix.lower() in HDF5_SUFFIXES


GROUP_FROM = {"group column": "the manifest's group column", "sensor_id column": "the manifest's sensor_id column",
              "logger name": "the sensor id in the logger file name", "file": "each file its own group"}


def group_origin(origin: str) -> str:
    """How a report names where files' groups came from (SourceFile.group_from)."""
    return GROUP_FROM.get(origin) or f"the manifest's {origin}"


def source_files(data: str | Path, group_column: str | None = None) -> LabelledFiles:
    """A manifest CSV (path, label, optional group; as `leak data build` reads it) or a class-folder tree
    SRC/<CLASS>/**/*.wav. Groups: the manifest's `group` column, else its `sensor_id` column, else the logger
    sensor id of a file named `sensor~recording~time~gain`, else the file itself. A path listed twice is
    evaluated once."""
    from leakhunter.sources import find_sources

    data = Path(data)
    unique = {}
    for source in find_sources(data, group_column):
        unique.setdefault(source.path, source)
    files = list(unique.values())
    manifest = data.is_file()
    return LabelledFiles(paths=[f.path for f in files], labels=[f.label for f in files],
                         groups=[f.group for f in files], source="manifest" if manifest else "class folders",
                         group_from=", ".join(f"{group_origin(origin)} ({count} file{'s' if count > 1 else ''} "
                                              f"{'listed' if manifest else 'found'})"
                                              for origin, count in Counter(f.group_from for f in files).most_common()),
                         meta=[f.meta for f in files])


def dataset_files(leak_data, split: str) -> LabelledFiles:
    """The audio files a dataset split was built from (their paths as stored), refused when any is gone."""
    target = leak_data.splits[split]
    paths = [Path(p) for p in target.paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} of the {len(paths)} files of the {split} split of {leak_data.path} are not "
                         f"on disk, and an .onnx model scores the recordings themselves: "
                         f"{', '.join(missing[:MISSING_LISTED])}"
                         + (f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else "")
                         + "; evaluate where the dataset was built, or pass a manifest of the files' new paths")
    labels = [leak_data.dataset_classes[label] for label in leak_data.file_labels[target.file_index]]
    return LabelledFiles(paths=paths, labels=labels, groups=[leak_data.groups[i] for i in target.file_index],
                         source="dataset", group_from="the dataset's /files/group",
                         meta=[json.loads(leak_data.meta_json[i]) for i in target.file_index])


def class_targets(card: ModelCard, labels: list[str], source: str) -> np.ndarray:
    """Each label as a class index of the card: a binary model sees LEAK and everything else (NOLEAK); any
    other model must know every label."""
    names, mode = list(card.class_names), MODES[card.mode]
    unknown = sorted(label for label in set(labels) if mode.class_index(label, names, card.leak_idx) is None)
    if unknown:
        raise InputError(f"{source} has labels {unknown} that the {card.mode} model does not know; its classes are "
                         f"{names}")
    return np.array([mode.class_index(label, names, card.leak_idx) for label in labels], np.int64)


def score_files(model: str | Path, card: ModelCard, files: LabelledFiles, device: str = "auto",
                threshold: float | None = None, workers: int = 2,
                reference: str | Path | ReferenceTable | None = None) -> tuple[FileVotes, list[dict]]:
    """Score the files with leakhunter.inference's ScoringEngine (as `leak predict` does) and gather the rows of
    those scored `ok` into FileVotes; the rest come back as [{file, status, message}], left out of the votes."""
    from leakhunter.inference.engine import ScoringEngine

    targets = class_targets(card, files.labels, files.source)
    with ScoringEngine(model, device, workers=workers, threshold=threshold, reference=reference) as engine:
        if engine.request_fields and files.meta is not None:  # as predict: the manifest's columns, then the name
            engine.fields.add_manifest(dict(zip(files.paths, files.meta)))
        results = {result.row["file"]: result for result in engine.score(files.paths)}
    kept, failed, long_probs, long_file = [], [], [], []
    for position, path in enumerate(files.paths):
        result = results[str(path)]
        if result.row["status"] != "ok":
            failed.append({"file": str(path), "status": result.row["status"], "message": result.row["message"]})
            continue
        long_probs.append(result.long_leak_prob)
        long_file.append(np.full(len(result.long_leak_prob), len(kept)))
        kept.append(position)
    rows = [results[str(files.paths[i])].row for i in kept]
    names = list(card.class_names)
    votes = FileVotes(
        paths=[str(files.paths[i]) for i in kept], groups=[files.groups[i] for i in kept],
        file_is_leak=np.array([files.labels[i] == "LEAK" for i in kept], bool),
        file_targets=targets[kept], verdict=np.array([row["verdict"] == "LEAK" for row in rows], bool),
        mean_leak_prob=np.array([row["mean_leak_prob"] for row in rows], np.float64),
        top_class=np.array([names.index(row["top_class"]) for row in rows], np.int64),
        long_leak_prob=np.concatenate(long_probs) if long_probs else np.zeros(0),
        long_file=np.concatenate(long_file).astype(np.int64) if long_file else np.zeros(0, np.int64))
    return votes, failed
