"""Which of equally good epochs a cross-validated run should keep, from finished `leak train --cv K` runs (no
retraining): each run's held-out files judged as training/cv.py's honest estimate judges them (each fold with the
epoch and threshold chosen on the other folds, the card's vote), once with the earliest epoch of the best pooled
F1 (the rule before 2026-12-04, rebuilt here) and once with the latest (honest_estimate itself, whose `choose`
keeps the latest now). The first column is what
the run's cv.json recorded, so a run made under either rule shows which one it was made with. The baseline's
pooled F1 (cv.json) is beside them. With several runs, a last line counts the runs the latest rule raised,
lowered and left alike, the mean change, and the two-sided sign-test p of those raised against lowered.

    python benchmarks/epoch_rule.py RUN_DIR...
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from pool_levers import counts, f1  # the sibling script (benchmarks/ is on sys.path when this one runs)
from site_calibration import load_folds, verdict_counts

from leakhunter.card import VotingConfig
from leakhunter.training.cv import HeldOut, honest_estimate, pooled
from leakhunter.voting import calibrate_threshold, vote_files


def earliest_of_equals(folds: list[HeldOut], vote_fraction: float) -> np.ndarray:
    """(TP, FP, FN) over the folds, each judged at the epoch and threshold chosen on the others, the earliest of
    equally good epochs."""
    totals = np.zeros(3, int)
    for i, fold in enumerate(folds):
        others = [f for j, f in enumerate(folds) if j != i]
        curve = [calibrate_threshold(*pooled(others, epoch), vote_fraction)
                 for epoch in range(1, min(len(f.long_prob) for f in others) + 1)]
        f1s = np.array([value for _, value in curve])
        best = np.flatnonzero(f1s == f1s.max())[0]
        verdict = vote_files(fold.long_prob[best], fold.long_file, len(fold.files), curve[best][0],
                             vote_fraction).verdict
        totals += verdict_counts(fold.file_is_leak.astype(bool), verdict)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    vote_fraction = VotingConfig().vote_fraction
    print("| run | recorded (cv.json) | earliest of equals | latest of equals | baseline |")
    print("|---|---|---|---|---|")
    totals, changes = np.zeros((4, 3), int), []
    for run in args.runs:
        cv, folds = json.loads((run / "cv.json").read_text()), load_folds(run)
        found = np.stack([counts(cv["pooled"]), earliest_of_equals(folds, vote_fraction),
                          counts(honest_estimate(folds, vote_fraction)[1]),
                          counts(cv["baseline"]["pooled"])])
        totals += found
        changes.append(f1(*found[2]) - f1(*found[1]))
        print(f"| {run} | " + " | ".join(f"{f1(*row):.3f}" for row in found) + " |")
    if len(args.runs) > 1:
        print(f"| pooled over the {len(args.runs)} runs | " + " | ".join(f"{f1(*row):.3f}" for row in totals) + " |")
        print(sign_line(np.array(changes)))


def sign_line(changes: np.ndarray) -> str:
    """How often the latest rule moved a run's F1 up or down (beyond rounding), and how likely as lopsided a count
    would be if up and down were equally likely (two-sided sign test)."""
    up, down = int((changes > 5e-4).sum()), int((changes < -5e-4).sum())
    n, extreme = up + down, min(up, down)
    p = min(1.0, 2 * sum(math.comb(n, k) for k in range(extreme + 1)) / 2**n) if n else 1.0
    return (f"latest of equals raised {up}, lowered {down}, left alike {len(changes) - n} of {len(changes)} runs; "
            f"mean change {changes.mean():+.3f}; sign test p = {p:.2f}")


if __name__ == "__main__":
    main()
