"""`leak eval`'s ROC and precision-recall pictures, file level: the ranking by mean P(LEAK) (whose area is the
reported AUC) and the deployed vote as its threshold sweeps 0.01-0.99, with the card's operating points and the
evaluated threshold marked where they land on these files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from leakhunter.training.plots import _save

POINT_STYLE = {"high": ("^", "tab:red"), "balanced": ("o", "tab:green"), "low-false-alarm": ("s", "tab:blue")}


def ranking_curve(file_is_leak: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """Recall, false-positive rate and precision at every cut of the files ranked by `score` (highest first;
    tied scores cut together), from (0, 0)."""
    truth = np.asarray(file_is_leak, bool)
    order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
    ranked = np.asarray(score, np.float64)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1] if len(ranked) else np.zeros(0, int)
    tp = np.cumsum(truth[order])[last_of_tie]
    fp = np.cumsum(~truth[order])[last_of_tie]
    n_leak, n_other = max(1, int(truth.sum())), max(1, int((~truth).sum()))
    return {"recall": np.r_[0.0, tp / n_leak], "fpr": np.r_[0.0, fp / n_other],
            "precision": np.r_[1.0, tp / np.maximum(1, tp + fp)]}


def plot_roc(file_is_leak, score, sweep: list[dict], marks: dict[str, dict], auc: float, path: str | Path,
             title: str) -> None:
    """ROC: recall against false alarms (1 - specificity). `marks` {name: file rates}: the evaluated threshold
    ("evaluated") and the operating points, drawn where they land on these files."""
    ranking = ranking_curve(file_is_leak, score)
    figure = Figure(figsize=(6, 5.5))
    axis = figure.subplots()
    axis.plot(ranking["fpr"], ranking["recall"], color="grey", drawstyle="steps-post",
              label=f"ranked by mean P(LEAK) (AUC {auc:.3f})" if np.isfinite(auc) else "ranked by mean P(LEAK)")
    _curve_and_marks(axis, sweep, marks, lambda row: (1 - row["specificity"], row["recall"])
                     if row.get("specificity") is not None and row.get("recall") is not None else None)
    axis.plot([0, 1], [0, 1], color="lightgrey", linestyle=":")
    axis.set(xlabel="false-positive rate (1 - specificity)", ylabel="recall (LEAK files found)", title=title,
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def plot_precision_recall(file_is_leak, score, sweep: list[dict], marks: dict[str, dict], path: str | Path,
                          title: str) -> None:
    """Precision against recall; the dotted line is the LEAK share (what guessing gives)."""
    truth = np.asarray(file_is_leak, bool)
    ranking = ranking_curve(truth, score)
    figure = Figure(figsize=(6, 5.5))
    axis = figure.subplots()
    axis.plot(ranking["recall"], ranking["precision"], color="grey", drawstyle="steps-post",
              label="ranked by mean P(LEAK)")
    _curve_and_marks(axis, sweep, marks, lambda row: (row["recall"], row["precision"])
                     if row.get("recall") is not None and row.get("precision") is not None else None)
    if len(truth):
        axis.axhline(truth.mean(), color="lightgrey", linestyle=":", label=f"LEAK share {truth.mean():.2f}")
    axis.set(xlabel="recall (LEAK files found)", ylabel="precision (LEAK verdicts right)", title=title,
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    _save(figure, path)


def _curve_and_marks(axis, sweep: list[dict], marks: dict[str, dict], where) -> None:
    """The vote's curve over the threshold grid, and a marker per mark at its (x, y); None: not drawable."""
    spots = [spot for row in sweep if (spot := where(row)) is not None]
    if spots:
        axis.plot(*zip(*spots), color="black", marker=".", markersize=3, label="file vote, threshold 0.01-0.99")
    for name, rates in marks.items():
        spot = where(rates)
        if spot is not None:
            marker, colour = POINT_STYLE.get(name, ("*", "gold"))
            threshold = rates.get("threshold")
            label = f"{name} (threshold {threshold:.2f})" if threshold is not None else name
            axis.plot(*spot, marker=marker, color=colour, markersize=10, linestyle="none", label=label,
                      markeredgecolor="black")
