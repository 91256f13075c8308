"""Short → long averaging and the file verdict (DESIGN §1): the one implementation that training
evaluates with and predict scores with, so a model is selected exactly as it is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leakhunter.card import MODES


def long_segment_means(short_values: np.ndarray, long_first_short: np.ndarray, shorts_per_long: int) -> np.ndarray:
    """Mean of per-short-segment values over each long segment's run of shorts: [L] (or [L, C])."""
    values = np.asarray(short_values, dtype=np.float64)
    cumulative = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
    return (cumulative[long_first_short + shorts_per_long] - cumulative[long_first_short]) / shorts_per_long


def per_long_segment(values: np.ndarray, unit: str, long_first_short: np.ndarray, shorts_per_long: int) -> np.ndarray:
    """Per-input values (P(LEAK) [N] or class probabilities [N, C]) → per long segment: the mean over each long
    segment's short segments for unit "short", the values themselves for unit "long" (one input per long
    segment). The one aggregation training, `leak eval` and `leak predict` use."""
    if unit == "long":
        return np.asarray(values, dtype=np.float64)
    return long_segment_means(values, long_first_short, shorts_per_long)


def top_class(mode: str, mean_class_probs: np.ndarray, verdict: np.ndarray, leak_idx: int) -> np.ndarray:
    """Each file's class index: for a model with fixed classes (binary) the verdict's class (LEAK or NOLEAK, so
    the class agrees with the vote); for every other mode the class with the highest mean probability over the file's long
    segments. The one rule `leak eval` (confusion matrix) and `leak predict` (top_class) use."""
    verdict = np.asarray(verdict, dtype=bool)
    if MODES[mode].fixed_classes:
        return np.where(verdict, leak_idx, 1 - leak_idx)
    return np.asarray(mean_class_probs).argmax(axis=-1)


@dataclass(frozen=True)
class FileScores:
    """Per file: the vote and what it was made of."""

    leak_score: np.ndarray  # fraction of long segments with P(LEAK) >= threshold
    verdict: np.ndarray  # bool: leak_score >= vote_fraction
    mean_leak_prob: np.ndarray
    max_long_prob: np.ndarray
    n_long: np.ndarray


def vote_files(long_leak_prob: np.ndarray, long_file_index: np.ndarray, n_files: int, threshold: float,
               vote_fraction: float = 0.5) -> FileScores:
    """A file is LEAK when at least vote_fraction of its long segments reach the threshold."""
    long_leak_prob = np.asarray(long_leak_prob, dtype=np.float64)
    n_long = np.bincount(long_file_index, minlength=n_files)
    over = np.bincount(long_file_index, weights=long_leak_prob >= threshold, minlength=n_files)
    total = np.bincount(long_file_index, weights=long_leak_prob, minlength=n_files)
    max_prob = np.full(n_files, np.nan)
    np.fmax.at(max_prob, long_file_index, long_leak_prob)
    with np.errstate(invalid="ignore", divide="ignore"):
        leak_score = over / n_long
        mean = total / n_long
    return FileScores(leak_score=leak_score, verdict=leak_score >= vote_fraction, mean_leak_prob=mean,
                      max_long_prob=max_prob, n_long=n_long)


def threshold_grid(candidates: int = 99) -> np.ndarray:
    """The thresholds calibration chooses from: [0.01, 0.02 ... 0.99] (the default 99 candidates)."""
    return np.linspace(0.01, 0.99, candidates)


def calibrate_threshold(long_leak_prob: np.ndarray, long_file_index: np.ndarray, file_is_leak: np.ndarray,
                        vote_fraction: float = 0.5, candidates: int = 99) -> tuple[float, float]:
    """The threshold in [0.01, 0.99] that maximises file-level leak F1 on these files: (threshold, F1).

    Ties go to the threshold closest to 0.5, so an easy validation set keeps the neutral default.
    """
    file_is_leak = np.asarray(file_is_leak, dtype=bool)
    grid = threshold_grid(candidates)
    best = (-1.0, 0.0, 0.5)  # (F1, -distance to 0.5, threshold)
    for threshold in grid:
        verdict = vote_files(long_leak_prob, long_file_index, len(file_is_leak), threshold, vote_fraction).verdict
        f1 = f1_score(file_is_leak, verdict)
        best = max(best, (f1, -abs(threshold - 0.5), float(threshold)))
    return best[2], best[0]


def f1_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    true_positive = np.sum(truth & predicted)
    denominator = np.sum(truth) + np.sum(predicted)
    return float(2 * true_positive / denominator) if denominator else 0.0
