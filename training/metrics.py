"""Segment- and file-level metrics in plain numpy: leak F1/precision/recall/specificity, ROC-AUC,
Cohen's kappa, confusion matrices and the predicted-class distribution.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = truth, columns = prediction."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def cohen_kappa(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Agreement beyond chance: 0 for a model that predicts one class whatever the input."""
    matrix = confusion_matrix(truth, predicted, n_classes).astype(np.float64)
    total = matrix.sum()
    if total == 0:
        return 0.0
    observed = np.trace(matrix) / total
    expected = (matrix.sum(0) * matrix.sum(1)).sum() / total**2
    return float((observed - expected) / (1 - expected)) if expected < 1 else 0.0


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half; NaN when one class is absent."""
    truth = np.asarray(truth, dtype=bool)
    n_pos, n_neg = truth.sum(), (~truth).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_score = np.asarray(score)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_score, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def leak_metrics(truth: np.ndarray, verdict: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Detection metrics for LEAK vs the rest."""
    truth, verdict = np.asarray(truth, bool), np.asarray(verdict, bool)
    tp = int(np.sum(truth & verdict))
    fp = int(np.sum(~truth & verdict))
    fn = int(np.sum(truth & ~verdict))
    tn = int(np.sum(~truth & ~verdict))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "accuracy": (tp + tn) / len(truth) if len(truth) else 0.0,
        "auc": roc_auc(truth, score),
    }


def undefined_metrics(truth: np.ndarray, verdict: np.ndarray) -> set[str]:
    """The file metrics that are 0/0 on these files (recall without a LEAK file, precision without a LEAK verdict,
    specificity without another file, F1 without either): reported as null (n/a), never as the 0.0 leak_metrics
    computes with, which a reader takes for a model that misses every leak."""
    truth, verdict = np.asarray(truth, bool), np.asarray(verdict, bool)
    n_leak, n_called = int(truth.sum()), int(verdict.sum())
    gone = {"file_recall": n_leak == 0, "file_specificity": n_leak == len(truth), "file_precision": n_called == 0,
            "file_f1": n_leak == 0 and n_called == 0}
    return {name for name, undefined in gone.items() if undefined}


def class_distribution(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of predictions per class."""
    counts = np.bincount(predicted, minlength=n_classes).astype(np.float64)
    return counts / max(1.0, counts.sum())
