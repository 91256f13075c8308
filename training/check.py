"""The data health report of a dataset file: what is in each split, and what is wrong with it.

Run before training (`leak data check`); the same problems make training refuse later (H003, H004).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leakhunter.errors import InputError
from leakhunter.sources import leak_like_labels_warning, lone_groups_warning
from leakhunter.training.dataset import dataset_configs, dead_channel_warning, file_metas, open_dataset
from leakhunter.training.splits import SPLITS, crossing_keys


@dataclass
class DatasetReport:
    path: Path
    class_names: tuple[str, ...]
    preset: str
    counts: np.ndarray  # [split, class] files
    hours: np.ndarray  # [split]
    groups: np.ndarray  # [split] distinct groups
    short_segments: np.ndarray  # [split]
    skipped: list[tuple[str, str, str]]  # (path, reason, detail)
    problems: list[str] = field(default_factory=list)  # make training refuse
    warnings: list[str] = field(default_factory=list)  # worth a look


def check_dataset(path: str | Path) -> DatasetReport:
    path = Path(path)
    with open_dataset(path) as h5:
        _, _, class_names = dataset_configs(h5)
        files = {name: h5["files"][name][:] for name in ("label", "split", "group", "sha256", "path", "duration_s",
                                                          "short_count", "clipped", "channels_in")}
        skipped = list(zip(*(h5["skipped"][k].asstr()[:] for k in ("path", "reason", "detail"))))
        preset = str(h5.attrs.get("preset", "?"))
        metas = file_metas(h5)
        silent_channels = (h5["files/silent_channels"][:] if "files/silent_channels" in h5  # older datasets lack it
                           else np.zeros(len(metas), np.int64))
    paths = [p.decode() if isinstance(p, bytes) else p for p in files["path"]]
    groups = [g.decode() if isinstance(g, bytes) else g for g in files["group"]]
    split, label = files["split"], files["label"]
    n_split, n_class = len(SPLITS), len(class_names)
    counts = np.zeros((n_split, n_class), dtype=int)
    np.add.at(counts, (split, label), 1)
    report = DatasetReport(
        path=path, class_names=class_names, preset=preset, counts=counts,
        hours=np.bincount(split, weights=files["duration_s"], minlength=n_split) / 3600,
        groups=np.array([len({g for g, s in zip(groups, split) if s == code}) for code in range(n_split)]),
        short_segments=np.bincount(split, weights=files["short_count"], minlength=n_split).astype(int),
        skipped=skipped,
    )
    for code, name in enumerate(SPLITS):
        if counts[code].sum() == 0:
            report.problems.append(f"split {name} is empty")
            continue
        for c, cls in enumerate(class_names):
            if counts[code, c] == 0:
                report.problems.append(f"split {name} has no {cls} files")
    for what, keys in (("group", groups), ("identical audio (sha256)", list(files["sha256"]))):
        for c in crossing_keys(keys, split, paths):
            shown = c.key.decode()[:12] if isinstance(c.key, bytes) else c.key
            report.problems.append(f"{what} {shown} is in two splits: {c.first_path} ({SPLITS[c.first_split]}) "
                                   f"and {c.other_path} ({SPLITS[c.other_split]})")
    duplicates = len(files["sha256"]) - len(set(files["sha256"]))
    if duplicates:
        report.warnings.append(f"{duplicates} file(s) repeat the bytes of another file in the same split")
    leak_like = leak_like_labels_warning(dict(zip(class_names, map(int, counts.sum(axis=0)))))
    if leak_like:
        report.warnings.append(leak_like)
    lone_groups = lone_groups_warning(groups, [json.loads(meta) for meta in metas])
    if lone_groups:
        report.warnings.append(lone_groups)
    dead = [(path, int(mask), int(n)) for path, mask, n in zip(paths, silent_channels, files["channels_in"]) if mask]
    if dead:
        report.warnings.append(dead_channel_warning(dead))
    if files["clipped"].any():
        report.warnings.append(f"{int(files['clipped'].sum())} file(s) are clipped (>= 0.1 % samples at full scale)")
    if skipped:
        report.warnings.append(f"{len(skipped)} file(s) were skipped at build time (listed above)")
    return report


def split_manifest(path: str | Path, split: str) -> list[dict[str, str]]:
    """Every file of one split as a manifest row: path, label, group and the extra columns its own manifest gave
    (a sensor_id, a fusion model's meta), so `leak predict`, `leak eval` and `leak reference build` read the
    recording as training did."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    with open_dataset(path) as h5:
        _, _, class_names = dataset_configs(h5)
        metas = file_metas(h5)
        rows = zip(h5["files/path"].asstr()[:], h5["files/label"][:], h5["files/split"][:],
                   h5["files/group"].asstr()[:], metas)
        return [{"path": file, "label": class_names[label], "group": group, **json.loads(meta)}
                for file, label, code, group, meta in rows if code == SPLITS.index(split)]
