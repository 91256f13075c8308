"""How much a per-site calibration of scores would give on held-out sites, from finished `leak train --cv K`
runs (no retraining): each held-out file's vote score (the P(LEAK) level at which the frac-vote flips it) as a
logit, minus the median logit of its own site's held-out files, which needs no label, only other recordings of
the same site, most of them without a leak. Judged honestly, like the CV estimate: each fold with the epoch and
threshold chosen on the other folds. Prints the uncalibrated estimate (as `leak train --cv` computes it, from the
same vote scores) beside the calibrated one.

    python benchmarks/site_calibration.py RUN_DIR... [--vote-fraction 0.5]
"""

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import yaml


def vote_scores(long_prob: np.ndarray, long_file: np.ndarray, n_files: int, vote_fraction: float) -> np.ndarray:
    """Per file: the largest threshold at which at least vote_fraction of its long segments still reach it."""
    out = np.zeros(n_files)
    for f in range(n_files):
        p = np.sort(long_prob[long_file == f])[::-1]
        out[f] = p[max(int(np.ceil(vote_fraction * len(p))) - 1, 0)]
    return out


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def site_relative(scores: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Each score minus the median score of its site's files."""
    out = scores.copy()
    for site in np.unique(sites):
        out[sites == site] -= np.median(scores[sites == site])
    return out


def counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()])


def f1(tp, fp, fn) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def honest(folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """folds: (scores [epochs, files], truth). Each fold judged with the (epoch, threshold) of best pooled F1 on
    the others; returns the pooled (true positive, false positive, false negative) counts of those verdicts."""
    total = np.zeros(3, int)
    for k, (scores, truth) in enumerate(folds):
        others = [fold for j, fold in enumerate(folds) if j != k]
        best = (-1.0, 0, 0.0)
        for epoch in range(scores.shape[0]):
            pooled = np.concatenate([s[epoch] for s, _ in others])
            truths = np.concatenate([t for _, t in others])
            for threshold in np.unique(pooled):
                value = f1(*counts(pooled >= threshold, truths))
                if value > best[0]:
                    best = (value, epoch, threshold)
        _, epoch, threshold = best
        total += counts(scores[epoch] >= threshold, truth)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--vote-fraction", type=float, default=0.5)
    args = parser.parse_args()
    print("| run | held-out F1, threshold from other folds | the same, site-relative scores |")
    print("|---|---|---|")
    totals = np.zeros((2, 3), int)
    for run in args.runs:
        config = json.loads((run / "cv.json").read_text())
        data = yaml.safe_load((run / "folds" / "fold_1" / "config.yaml").read_text())["data"]
        with h5py.File(data, "r") as file:
            groups = np.asarray(file["files/group"][:]).astype(str)
        plain, relative = [], []
        for fold in sorted((run / "folds").glob("fold_*")):
            held = np.load(fold / "held_out.npz")
            sites = groups[held["files"]]
            truth = held["file_is_leak"].astype(bool)
            scores = np.stack([logit(vote_scores(p, held["long_file"], len(held["files"]), args.vote_fraction))
                               for p in held["long_prob"]])
            plain.append((scores, truth))
            relative.append((np.stack([site_relative(s, sites) for s in scores]), truth))
        found = np.stack([honest(plain), honest(relative)])
        totals += found
        print(f"| {run} (k={config['k']}) | {f1(*found[0]):.3f} | {f1(*found[1]):.3f} |")
    if len(args.runs) > 1:
        print(f"| pooled over the {len(args.runs)} runs | {f1(*totals[0]):.3f} | {f1(*totals[1]):.3f} |")


if __name__ == "__main__":
    main()
