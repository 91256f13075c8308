"""How much a per-site calibration of scores would give on held-out sites, from finished `leak train --cv K`
runs (no retraining). Each held-out long segment's P(LEAK), as a logit, is shifted by the median logit of its
site's held-out long segments at that epoch: no label, only other recordings of the same site, most of them
without a leak. Both sets of scores are judged by training/cv.py's own honest estimate (each fold with the epoch
and threshold chosen on the other folds, the card's vote), so the first column is exactly the run's CV estimate.
A third column changes the vote instead: each file scored by the mean logit of its long segments (every segment
given that score, so the card's vote becomes a threshold on it), judged the same way.
Two ceilings beside them, at the run's chosen epoch with the same vote and threshold grid: the best single
threshold for all held-out files, and the best threshold for each fold (its one to three sites) on its own.

    python benchmarks/site_calibration.py RUN_DIR... [--vote-fraction 0.5]
"""

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np
import yaml
from pool_levers import counts, f1  # the sibling script (benchmarks/ is on sys.path when this one runs)

from leakhunter.training.cv import HeldOut, honest_estimate, pooled
from leakhunter.voting import calibrate_threshold, vote_files


def load_folds(run: Path) -> list[HeldOut]:
    folds = []
    for path in sorted((run / "folds").glob("fold_*/held_out.npz")):
        with np.load(path) as saved:
            folds.append(HeldOut(**{field.name: saved[field.name] for field in fields(HeldOut)}))
    return folds


def site_relative(fold: HeldOut, sites: np.ndarray) -> HeldOut:
    """The fold with each long segment's logit minus the median logit of its site's segments, per epoch."""
    p = np.clip(fold.long_prob.astype(np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p))
    segment_site = sites[fold.files][fold.long_file]
    for site in np.unique(segment_site):
        at = segment_site == site
        logits[:, at] -= np.median(logits[:, at], axis=1, keepdims=True)
    return replace(fold, long_prob=1 / (1 + np.exp(-logits)))


def mean_logit_files(fold: HeldOut) -> HeldOut:
    """The fold with every long segment's P(LEAK) replaced by its file's mean-logit score, per epoch."""
    p = np.clip(fold.long_prob.astype(np.float64), 1e-6, 1 - 1e-6)
    n_long = np.bincount(fold.long_file, minlength=len(fold.files))
    per_file = np.stack([np.bincount(fold.long_file, weights=row, minlength=len(fold.files)) / np.maximum(n_long, 1)
                         for row in np.log(p / (1 - p))])
    return replace(fold, long_prob=1 / (1 + np.exp(-per_file[:, fold.long_file])))


def verdict_counts(truth: np.ndarray, verdict: np.ndarray) -> np.ndarray:
    return np.array([(verdict & truth).sum(), (verdict & ~truth).sum(), (~verdict & truth).sum()])


def oracle_counts(folds: list[HeldOut], epoch: int, vote_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts with one threshold chosen on all held-out files, and with each fold's own best threshold."""
    long_prob, long_file, truth = pooled(folds, epoch)
    threshold, _ = calibrate_threshold(long_prob, long_file, truth, vote_fraction)
    one = verdict_counts(truth.astype(bool), vote_files(long_prob, long_file, len(truth), threshold,
                                                        vote_fraction).verdict)
    per_fold = np.zeros(3, int)
    for fold in folds:
        threshold, _ = calibrate_threshold(fold.long_prob[epoch - 1], fold.long_file, fold.file_is_leak,
                                           vote_fraction)
        verdict = vote_files(fold.long_prob[epoch - 1], fold.long_file, len(fold.files), threshold,
                             vote_fraction).verdict
        per_fold += verdict_counts(fold.file_is_leak.astype(bool), verdict)
    return one, per_fold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--vote-fraction", type=float, default=0.5)
    args = parser.parse_args()
    print("| run | held-out F1 (the CV estimate) | the same, site-relative scores | the same, mean-logit files | "
          "one oracle threshold | oracle threshold per fold |")
    print("|---|---|---|---|---|---|")
    totals = np.zeros((5, 3), int)
    for run in args.runs:
        data = yaml.safe_load((run / "folds" / "fold_1" / "config.yaml").read_text())["data"]
        with h5py.File(data, "r") as file:
            sites = np.asarray(file["files/group"][:]).astype(str)
        folds, cv = load_folds(run), json.loads((run / "cv.json").read_text())
        found = np.stack([np.array(counts(honest_estimate(variant, args.vote_fraction)[1]))
                          for variant in (folds, [site_relative(fold, sites) for fold in folds],
                                          [mean_logit_files(fold) for fold in folds])]
                         + list(oracle_counts(folds, cv["epochs"], args.vote_fraction)))
        totals += found
        print(f"| {run} (k={cv['k']}) | " + " | ".join(f"{f1(*row):.3f}" for row in found) + " |")
    if len(args.runs) > 1:
        print(f"| pooled over the {len(args.runs)} runs | " + " | ".join(f"{f1(*row):.3f}" for row in totals) + " |")


if __name__ == "__main__":
    main()
