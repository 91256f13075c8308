"""Operating points: the named thresholds a model can be deployed at (`high`, `balanced`, `low-false-alarm`),
chosen on labelled files by what they give file by file, and applied again to other files or by name.

Plain numpy on plain arrays (long-segment P(LEAK), each long segment's file, each file's truth), so the trainer
(validation), cross-validation (pooled out-of-fold predictions) and `leak eval` share it. Torch-free.
"""

from __future__ import annotations

import numpy as np

from leakhunter.card import OPERATING_POINTS, ModelCard
from leakhunter.errors import InputError
from leakhunter.voting import calibrate_threshold, threshold_grid, vote_files

MIN_RECALL = 0.95  # `high`: the largest threshold whose file recall reaches this
MIN_SPECIFICITY = 0.98  # `low-false-alarm`: the smallest threshold whose file specificity reaches this
TARGETS = {"high": f"file recall >= {MIN_RECALL}", "balanced": "best file F1",
           "low-false-alarm": f"file specificity >= {MIN_SPECIFICITY}"}
# a --cv card's training.cv.points_measured: each point's rates come from folds that did not choose it
HELD_OUT = "held_out"
DIGITS = 4  # thresholds and rates in a card, as the trainer writes voting.threshold


def file_rates(file_is_leak: np.ndarray, verdict: np.ndarray, digits: int | None = DIGITS) -> dict:
    """File-level recall, specificity, precision, F1 and false alarms per 100 non-LEAK recordings (LEAK verdicts
    on non-LEAK files × 100 / non-LEAK files), rounded to `digits` (None: exact), with n_files and n_leak; a rate
    these files cannot define (recall without LEAK files, precision without LEAK verdicts ...) is None."""
    truth, verdict = np.asarray(file_is_leak, bool), np.asarray(verdict, bool)
    tp, fp = int(np.sum(truth & verdict)), int(np.sum(~truth & verdict))
    n_leak, n_other = int(truth.sum()), int((~truth).sum())

    def share(part: int, whole: int, scale: float = 1.0):
        if not whole:
            return None
        return scale * part / whole if digits is None else round(scale * part / whole, digits)

    return {"recall": share(tp, n_leak), "specificity": share(n_other - fp, n_other),
            "precision": share(tp, tp + fp), "f1": share(2 * tp, n_leak + tp + fp),
            "false_alarms_per_100": share(fp, n_other, 100.0), "n_files": len(truth), "n_leak": n_leak}


def rates_at(threshold: float, long_leak_prob: np.ndarray, long_file_index: np.ndarray, file_is_leak: np.ndarray,
             vote_fraction: float, digits: int | None = DIGITS) -> dict:
    """file_rates of the vote at one threshold."""
    verdict = vote_files(long_leak_prob, long_file_index, len(file_is_leak), threshold, vote_fraction).verdict
    return file_rates(file_is_leak, verdict, digits)


def threshold_sweep(long_leak_prob: np.ndarray, long_file_index: np.ndarray, file_is_leak: np.ndarray,
                    vote_fraction: float = 0.5) -> list[dict]:
    """{threshold, **file_rates} (exact) at every threshold calibration chooses from (voting.threshold_grid),
    ascending: the file-level ROC and precision-recall curve of the vote itself."""
    return [{"threshold": float(threshold), **rates_at(threshold, long_leak_prob, long_file_index, file_is_leak,
                                                       vote_fraction, digits=None)}
            for threshold in np.round(threshold_grid(), DIGITS)]


def operating_points(long_leak_prob: np.ndarray, long_file_index: np.ndarray, file_is_leak: np.ndarray,
                     vote_fraction: float = 0.5) -> dict[str, dict]:
    """The named thresholds on these files, from voting.threshold_grid:

    - `high`: the largest threshold whose file recall is >= MIN_RECALL (the fewest false alarms that still
      find 95 % of the leaks), but never above `balanced`;
    - `balanced`: the best-F1 threshold, exactly as voting.calibrate_threshold picks it;
    - `low-false-alarm`: the smallest threshold whose file specificity is >= MIN_SPECIFICITY, but never below
      `balanced`.

    The bounds keep the names in order (high <= balanced <= low-false-alarm) where the files are easy enough that
    both rules alone would cross (on separable files "largest with recall >= 0.95" is near 0.99 and "smallest
    with specificity >= 0.98" near 0.01): a `high` sensitivity must never flag less than `balanced` does.

    Each is {target, threshold, recall, specificity, precision, f1, false_alarms_per_100, n_files, n_leak}, the
    rates being what that threshold gives on these files. A point no threshold reaches, or every point when the
    files lack LEAK or non-LEAK files, is {target, threshold: None, reason, n_files, n_leak}.
    """
    file_is_leak = np.asarray(file_is_leak, bool)
    n_files, n_leak = len(file_is_leak), int(file_is_leak.sum())
    missing = ("no files" if n_files == 0 else "no LEAK file" if n_leak == 0
               else "no non-LEAK file" if n_leak == n_files else None)
    if missing:
        return {name: _unavailable(name, f"the {n_files} calibration files have {missing}", n_files, n_leak)
                for name in OPERATING_POINTS}
    sweep = threshold_sweep(long_leak_prob, long_file_index, file_is_leak, vote_fraction)
    balanced = round(calibrate_threshold(long_leak_prob, long_file_index, file_is_leak, vote_fraction)[0], DIGITS)
    # recall only falls and specificity only rises with the threshold: a bound never makes a reachable point
    # unreachable (0.01 <= balanced <= 0.99)
    reaching_recall = [row for row in sweep if row["recall"] >= MIN_RECALL and row["threshold"] <= balanced]
    reaching_specificity = [row for row in sweep if row["specificity"] >= MIN_SPECIFICITY
                            and row["threshold"] >= balanced]
    finding_leaks = [row for row in reaching_specificity if row["recall"] > 0]  # a point that finds none is none
    chosen = {
        "high": (max(row["threshold"] for row in reaching_recall) if reaching_recall else
                 f"no threshold in [0.01, 0.99] gives file recall >= {MIN_RECALL} "
                 f"(at most {sweep[0]['recall']:.3f}, at {sweep[0]['threshold']:g})"),
        "balanced": balanced,
        "low-false-alarm": (min(row["threshold"] for row in finding_leaks) if finding_leaks else
                            f"file specificity >= {MIN_SPECIFICITY} is reached only where no leak is found (recall 0 "
                            f"from threshold {min(row['threshold'] for row in reaching_specificity):g} on)"
                            if reaching_specificity else
                            f"no threshold in [0.01, 0.99] gives file specificity >= {MIN_SPECIFICITY} "
                            f"(at most {sweep[-1]['specificity']:.3f}, at {sweep[-1]['threshold']:g})"),
    }
    return {name: (_unavailable(name, choice, n_files, n_leak) if isinstance(choice, str) else
                   {"target": TARGETS[name], "threshold": choice,
                    **rates_at(choice, long_leak_prob, long_file_index, file_is_leak, vote_fraction)})
            for name, choice in chosen.items()}


def _unavailable(name: str, reason: str, n_files: int, n_leak: int) -> dict:
    return {"target": TARGETS[name], "threshold": None, "reason": reason, "n_files": n_files, "n_leak": n_leak}


def in_order(points: dict[str, dict] | None) -> dict[str, dict]:
    """A card's points from the most to the least sensitive (a card's JSON sorts them by name)."""
    return {name: points[name] for name in OPERATING_POINTS if name in (points or {})}


def points_on(points: dict[str, dict] | None, long_leak_prob: np.ndarray, long_file_index: np.ndarray,
              file_is_leak: np.ndarray, vote_fraction: float) -> dict[str, dict]:
    """A card's operating points applied to other files: each available point's file_rates here, beside
    `calibrated` (what it gave where it was chosen); an unavailable one keeps its reason."""
    found = {}
    for name, point in in_order(points).items():
        if point.get("threshold") is None:
            found[name] = {"threshold": None, "reason": point.get("reason", "")}
            continue
        calibrated = {key: point.get(key) for key in ("recall", "specificity", "precision", "f1",
                                                      "false_alarms_per_100", "n_files")}
        found[name] = {"threshold": point["threshold"], "target": point.get("target"),
                       **rates_at(point["threshold"], long_leak_prob, long_file_index, file_is_leak, vote_fraction),
                       "calibrated": calibrated}
    return found


def deployed_threshold(card: ModelCard, threshold: float | None = None, sensitivity: str | None = None) -> float:
    """The P(LEAK) threshold to score with: `threshold` when given, the card's operating point `sensitivity`
    when named, else the card's calibrated voting.threshold. Both at once, an unknown name, or a point the card
    lacks is an InputError that lists what the card has."""
    if sensitivity is None:
        return card.voting.threshold if threshold is None else threshold
    if threshold is not None:
        raise InputError(f"--sensitivity {sensitivity} and --threshold {threshold:g} both choose the threshold: "
                         f"give one of them")
    points = in_order(card.operating_points)
    have = ", ".join(f"{name} ({point['threshold']:g})" for name, point in points.items()
                     if point.get("threshold") is not None) or "none"
    if not points:
        raise InputError(f"--sensitivity {sensitivity}: this model's card has no operating points (a model "
                         f"trained before they were calibrated); retrain, or use --threshold")
    point = points.get(sensitivity)
    if point is None:
        raise InputError(f"--sensitivity {sensitivity!r} is not an operating point of this model; its card has: "
                         f"{have}")
    if point.get("threshold") is None:
        raise InputError(f"--sensitivity {sensitivity} is unavailable in this model's card ({point.get('reason')}); "
                         f"it has: {have}")
    return float(point["threshold"])
