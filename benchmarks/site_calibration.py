"""How much a per-site calibration of scores would give on held-out sites, from finished `leak train --cv K`
runs (no retraining). Each held-out long segment's P(LEAK), as a logit, is shifted by the median logit of its
site's held-out long segments at that epoch: no label, only other recordings of the same site, most of them
without a leak. Both sets of scores are judged by training/cv.py's own honest estimate (each fold with the epoch
and threshold chosen on the other folds, the card's vote), so the first column is exactly the run's CV estimate
under today's epoch rule (the latest of equals; a run recorded before 2026-12-04 chose the earliest, and its
README figures say so: benchmarks/epoch_rule.py rescores under both).
A third column changes the vote instead: each file scored by the mean logit of its long segments (every segment
given that score, so the card's vote becomes a threshold on it), judged the same way. A fourth changes how the
threshold is chosen on the other folds: the median of every threshold whose pooled F1 is within PLATEAU of the
best (the middle of the near-best range, not the edge the best sits on), at the epoch the CV chose; the last two
columns are the logistic-regression baseline on the same folds (refitted from the run's dataset, reference and
fold seed), with the CV's threshold rule, with the plateau rule, and with one oracle threshold.
With --labelled K: a threshold per site from K labelled LEAK and K labelled other recordings of that site (drawn
at random, 20 draws; the threshold with the best balanced accuracy on them, ties to the CV threshold), judged on
the site's other recordings beside the CV threshold on the same recordings.
Two ceilings beside them, at the epoch today's rule chooses on all folds (the run's own for a run recorded after
2026-12-04 and scored with its --vote-fraction) with the same vote and threshold grid: the best single threshold
for all held-out files, and the best threshold for each fold (its one to three sites) on its own.

    python benchmarks/site_calibration.py RUN_DIR... [--vote-fraction 0.5]
"""

import argparse
from dataclasses import fields, replace
from pathlib import Path

import h5py
import numpy as np
import yaml
from pool_levers import counts, f1  # the sibling script (benchmarks/ is on sys.path when this one runs)

from leakhunter.training.baseline import held_out_probabilities
from leakhunter.training.cv import HeldOut, choose, deal_folds, honest_estimate, pooled
from leakhunter.training.data import LeakData
from leakhunter.voting import calibrate_threshold, f1_score, threshold_grid, vote_files

DRAWS = 20
PLATEAU = 0.05  # F1 below the best that still counts as near-best


def run_sites(run: Path) -> np.ndarray:
    """Each dataset file's site (group), from the dataset the run trained on."""
    data = yaml.safe_load((run / "folds" / "fold_1" / "config.yaml").read_text())["data"]
    with h5py.File(data, "r") as file:
        return np.asarray(file["files/group"][:]).astype(str)


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


def plateau_threshold(long_prob: np.ndarray, long_file: np.ndarray, truth: np.ndarray, vote_fraction: float) -> float:
    """The median of the thresholds (calibrate_threshold's grid) whose file F1 is within PLATEAU of the best."""
    truth, grid = truth.astype(bool), threshold_grid()
    curve = np.array([f1_score(truth, vote_files(long_prob, long_file, len(truth), threshold, vote_fraction).verdict)
                      for threshold in grid])
    return float(np.median(grid[curve >= curve.max() - PLATEAU]))


def plateau_counts(folds: list[HeldOut], vote_fraction: float) -> np.ndarray:
    """The honest estimate's counts with each fold's threshold the plateau threshold of the other folds (at the
    epoch the CV chooses on them)."""
    totals = np.zeros(3, int)
    for i, fold in enumerate(folds):
        others = [f for j, f in enumerate(folds) if j != i]
        epoch = choose(others, vote_fraction)[0]
        threshold = plateau_threshold(*pooled(others, epoch), vote_fraction)
        totals += verdict_counts(fold.file_is_leak.astype(bool), vote_files(
            fold.long_prob[epoch - 1], fold.long_file, len(fold.files), threshold, vote_fraction).verdict)
    return totals


def baseline_counts(run: Path, k: int) -> np.ndarray:
    """The baseline's counts on the run's folds: honest with [the CV's threshold rule, the plateau rule], and
    with one oracle threshold for all held-out files."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    reference = config.get("reference")  # absent before reference models, "none" in later configs
    data = LeakData(config["data"], config["mode"], reference=None if reference in (None, "none") else reference)
    folds = deal_folds(data, k, config["seed"])
    probs, truths = held_out_probabilities(data, folds), [data.file_is_leak[fold] for fold in folds]
    totals = np.zeros((3, 3), int)
    for i, (prob, truth) in enumerate(zip(probs, truths)):
        others = [j for j in range(len(folds)) if j != i and np.isfinite(probs[j]).all()]
        other_prob, other_truth = np.concatenate([probs[j] for j in others]), np.concatenate([truths[j] for j in others])
        for row, rule in enumerate((lambda *a: calibrate_threshold(*a)[0], plateau_threshold)):
            threshold = rule(other_prob, np.arange(len(other_prob)), other_truth, 0.5)
            totals[row] += verdict_counts(truth.astype(bool), np.nan_to_num(prob, nan=0.0) >= threshold)
    data.close()
    every, truth = np.nan_to_num(np.concatenate(probs), nan=0.0), np.concatenate(truths).astype(bool)
    oracle = calibrate_threshold(every, np.arange(len(every)), truth, 0.5)[0]
    totals[2] = verdict_counts(truth, every >= oracle)
    return totals


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


def labelled_counts(folds: list[HeldOut], sites: np.ndarray, k: int, vote_fraction: float) -> np.ndarray:
    """Counts (TP, FP, FN) of [the CV threshold, a threshold from K labelled recordings per class of each site]
    on the site's unlabelled recordings, summed over the folds' sites and averaged over DRAWS draws."""
    grid, totals, rng = threshold_grid(), np.zeros((2, 3)), np.random.default_rng(0)
    for i, fold in enumerate(folds):
        epoch, cv_threshold, _ = choose([f for j, f in enumerate(folds) if j != i], vote_fraction)
        verdicts = np.stack([vote_files(fold.long_prob[epoch - 1], fold.long_file, len(fold.files), threshold,
                                        vote_fraction).verdict for threshold in grid])  # [thresholds, files]
        cv_verdict = vote_files(fold.long_prob[epoch - 1], fold.long_file, len(fold.files), cv_threshold,
                                vote_fraction).verdict
        truth, file_site = fold.file_is_leak.astype(bool), sites[fold.files]
        for site in np.unique(file_site):
            leaks, others = [np.flatnonzero((file_site == site) & (truth == want)) for want in (True, False)]
            for _ in range(DRAWS):
                labelled = np.concatenate([rng.choice(leaks, min(k, len(leaks)), replace=False),
                                           rng.choice(others, min(k, len(others)), replace=False)])
                rest = np.setdiff1d(np.concatenate([leaks, others]), labelled)
                recall = [verdicts[:, labelled[truth[labelled]]].mean(axis=1) if truth[labelled].any() else None,
                          (~verdicts[:, labelled[~truth[labelled]]]).mean(axis=1) if (~truth[labelled]).any()
                          else None]
                balanced = np.mean([r for r in recall if r is not None], axis=0)
                best = np.flatnonzero(balanced == balanced.max())
                chosen = best[np.argmin(np.abs(grid[best] - cv_threshold))]
                for row, verdict in enumerate((cv_verdict[rest], verdicts[chosen, rest])):
                    totals[row] += verdict_counts(truth[rest], verdict) / DRAWS
    return totals


def estimate_counts(run: Path, vote_fraction: float) -> np.ndarray:
    """The default table's counts for one run: the CV estimate, its two rescorings, the plateau threshold, the two
    oracles, and the baseline with both threshold rules."""
    folds, sites = load_folds(run), run_sites(run)
    return np.stack([np.array(counts(honest_estimate(variant, vote_fraction)[1]))
                     for variant in (folds, [site_relative(fold, sites) for fold in folds],
                                     [mean_logit_files(fold) for fold in folds])]
                    + [plateau_counts(folds, vote_fraction)]
                    + list(oracle_counts(folds, choose(folds, vote_fraction)[0], vote_fraction))
                    + list(baseline_counts(run, len(folds))))


def print_table(columns: list[str], runs: list[Path], counts_of) -> None:
    """One markdown row of F1s per run (counts_of(run): [columns, (TP, FP, FN)]), and the runs pooled."""
    print("| run | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    totals = 0
    for run in runs:
        found = counts_of(run)
        totals = totals + found
        print(f"| {run} | " + " | ".join(f"{f1(*row):.3f}" for row in found) + " |")
    if len(runs) > 1:
        print(f"| pooled over the {len(runs)} runs | " + " | ".join(f"{f1(*row):.3f}" for row in totals) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--vote-fraction", type=float, default=0.5)
    parser.add_argument("--labelled", type=int, default=0, help="K labelled recordings per class per site")
    args = parser.parse_args()
    if args.labelled:
        k = args.labelled
        print_table(["CV threshold, on the unlabelled recordings", f"threshold from {k} + {k} labelled per site"],
                    args.runs, lambda run: labelled_counts(load_folds(run), run_sites(run), k, args.vote_fraction))
    else:
        print_table(["held-out F1 (the CV estimate)", "the same, site-relative scores", "the same, mean-logit files",
                     "the same, plateau threshold", "one oracle threshold", "oracle threshold per fold",
                     "baseline (the CV estimate)", "baseline, plateau threshold", "baseline, one oracle threshold"],
                    args.runs, lambda run: estimate_counts(run, args.vote_fraction))


if __name__ == "__main__":
    main()
