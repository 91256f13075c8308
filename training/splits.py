"""Group-aware, stratified train/val/test split by file (DESIGN §5).

Files that share a group (sensor, site, session) or identical bytes (sha256) move together, so one pipe
or one recording never sits in two splits; class proportions follow the requested fractions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from leakhunter.errors import InputError, LeakhunterError
from leakhunter.sources import SPLITS  # the one list: a manifest's split column names them too

RESTARTS = 32


class SplitError(LeakhunterError, ValueError):
    """A manifest that forces one group or one recording into two splits."""


def _clusters(groups, shas) -> np.ndarray:
    """Connected components of files linked by a shared group or identical bytes."""
    parent = list(range(len(groups)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict = {}
    for i, keys in enumerate(zip(groups, shas)):
        for key in (("group", keys[0]), ("sha", keys[1])):
            if key in first_seen:
                parent[root(i)] = root(first_seen[key])
            else:
                first_seen[key] = i
    return np.array([root(i) for i in range(len(groups))])


@dataclass(frozen=True)
class Crossing:
    """A key (group, sha256, cluster) whose files sit in more than one split."""
    key: object
    first_path: str
    first_split: object
    other_path: str  # the first file found in another split than the key's first file
    other_split: object
    count: int  # files of this key outside the first file's split


def _members(cluster: np.ndarray) -> dict[int, list[int]]:
    """Files per cluster, in file order."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(cluster):
        members[int(c)].append(i)
    return members


def crossing_keys(keys, splits, paths) -> list[Crossing]:
    """Every key found in two splits, in the order the first crossing file appears: the one split-crossing
    check behind H004, `leak data check` and the splitter's refusal of a manifest that forces one."""
    first: dict = {}
    found: dict = {}
    for key, split, path in zip(keys, splits, paths):
        if key not in first:
            first[key] = (split, path)
        elif split != first[key][0]:
            if key in found:
                found[key]["count"] += 1
            else:
                found[key] = {"first_split": first[key][0], "first_path": first[key][1], "other_split": split,
                              "other_path": path, "count": 1}
    return [Crossing(key=key, **fields) for key, fields in found.items()]


def _check_forced(keys, forced, paths, what: str) -> None:
    fixed = [(key, split, path) for key, split, path in zip(keys, forced, paths) if split is not None]
    crossings = crossing_keys(*zip(*fixed)) if fixed else []
    if crossings:
        c = crossings[0]
        raise SplitError(f"{what} {c.key} is forced into two splits by the manifest: {c.first_path} "
                         f"({c.first_split}) and {c.other_path} ({c.other_split})")


def assign_splits(labels, groups, shas, forced, paths, val: float = 0.15, test: float = 0.15,
                  seed: int = 0) -> np.ndarray:
    """Split code per file (0 train, 1 val, 2 test).

    Greedy apportionment: clusters (largest first, ties in seeded random order) go to the split whose
    per-class counts move closest to their targets, so with one-file groups every class's count in
    every split is within one file of its target. Multi-class groups make that a packing problem:
    the best of RESTARTS seeded orders is kept, first by fewest splits left without a class.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"val and test fractions must be in [0, 1) with val + test < 1, got {val} and {test}")
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    _check_forced([s.decode() if isinstance(s, bytes) else s for s in shas], forced, paths, "identical audio (sha256)")
    _check_forced(groups, forced, paths, "group")
    cluster = _clusters(groups, shas)
    _check_forced(cluster, forced, paths, "linked files (shared group or identical audio), cluster")

    members = _members(cluster)
    fractions = np.array([1 - val - test, val, test], dtype=np.float64)
    counts = np.zeros((len(SPLITS), n_classes))
    split = np.full(len(labels), -1, dtype=np.int8)
    free = []
    for c, files in members.items():
        fixed = {forced[i] for i in files if forced[i] is not None}
        if fixed:
            code = SPLITS.index(fixed.pop())
            split[files] = code
            np.add.at(counts[code], labels[files], 1)
        else:
            free.append(c)
    return _apportion(labels, members, free, split, counts, fractions, seed)


def assign_folds(labels, groups, shas, k: int, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) per file for grouped, stratified k-fold cross-validation, by the same apportionment as
    the split: linked files share a fold, and each fold gets about 1/k of every class."""
    labels = np.asarray(labels)
    cluster = _clusters(groups, shas)
    members = _members(cluster)
    if not 2 <= k <= len(members):
        raise InputError(f"{k}-fold cross-validation needs 2 to {len(members)} folds: the files form "
                         f"{len(members)} groups (sensor, site or linked recordings), and a group is never split")
    counts = np.zeros((k, int(labels.max()) + 1))
    return _apportion(labels, members, list(members), np.full(len(labels), -1, np.int32), counts,
                      np.full(k, 1 / k), seed)


def _apportion(labels, members, free, split, counts, fractions, seed) -> np.ndarray:
    """Greedy apportionment of the `free` clusters to parts with the given fractions (see assign_splits)."""
    n_classes = counts.shape[1]
    targets = fractions[:, None] * np.bincount(labels, minlength=n_classes)[None, :]
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(RESTARTS if len(free) > 1 else 1):
        order = [free[i] for i in rng.permutation(len(free))]
        order.sort(key=lambda c: -len(members[c]))
        trial_split, trial_counts = split.copy(), counts.copy()
        for c in order:
            files = members[c]
            size = np.bincount(labels[files], minlength=n_classes)
            cost = (size[None, :] * (2 * (trial_counts - targets) + size[None, :])).sum(axis=1)
            cost[fractions == 0] = np.inf
            code = int(np.argmin(cost))
            trial_split[files] = code
            trial_counts[code] += size
        # fewest (part, class) cells left empty where at least one file was due, then closest to target
        score = (int(((trial_counts == 0) & (targets >= 1)).sum()), float(((trial_counts - targets) ** 2).sum()))
        if best is None or score < best[0]:
            best = (score, trial_split)
    return best[1]
