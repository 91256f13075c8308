"""A baseline to beat: L2-regularised logistic regression on each file's median log-mel spectrum.

Every run fits it on the training split alone (standardisation included) in a fraction of a second and reports
its file-level leak F1 and AUC beside the CNN's; a network that does worse on validation is not earning its
complexity (health check H015). Plain numpy, deterministic, no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leakhunter.training.metrics import leak_metrics
from leakhunter.voting import calibrate_threshold

BASELINE_NAME = "logistic regression on each file's median log-mel"
L2_PENALTY = 1.0  # on standardised features, against a class-balanced sum of log-losses
NEWTON_STEPS = 50
REPORTED = ("file_f1", "file_precision", "file_recall", "file_specificity", "file_auc", "file_accuracy", "n_files")


@dataclass(frozen=True)
class LogisticModel:
    """Standardisation (from the training rows) and the weights of a linear leak-vs-rest classifier."""
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float

    def leak_prob(self, features: np.ndarray) -> np.ndarray:
        logits = ((np.asarray(features, np.float64) - self.mean) / self.std) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))


def fit_logistic(features: np.ndarray, is_leak: np.ndarray, l2: float = L2_PENALTY) -> LogisticModel:
    """Newton-Raphson on the class-balanced, L2-penalised log-loss (the bias unpenalised).

    Balanced weights keep a 1-in-5 LEAK share from pulling every file to NOLEAK; the penalty keeps the fit
    finite on separable data and small on noise."""
    x = np.asarray(features, np.float64)
    y = np.asarray(is_leak, bool)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"features must be [files, bins] with one label per file, got {x.shape} and {y.shape}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    design = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    counts = np.array([(~y).sum(), y.sum()], np.float64)
    sample_weight = np.where(y, len(y) / (2 * max(counts[1], 1)), len(y) / (2 * max(counts[0], 1)))
    penalty = np.full(design.shape[1], float(l2))
    penalty[-1] = 1e-8  # the bias: unpenalised, but the system stays solvable when one class is absent
    theta = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -60.0, 60.0)))
        gradient = design.T @ (sample_weight * (p - y)) + penalty * theta
        hessian = (design * (sample_weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-9:
            break
    return LogisticModel(mean=mean, std=std, weights=theta[:-1], bias=float(theta[-1]))


def file_metrics(file_is_leak: np.ndarray, leak_prob: np.ndarray, threshold: float) -> dict:
    """The CNN's file-level leak metrics (same names) for one score per file."""
    metrics = {f"file_{k}": v for k, v in leak_metrics(file_is_leak, leak_prob >= threshold, leak_prob).items()}
    return metrics | {"n_files": int(len(file_is_leak))}


@dataclass(frozen=True)
class BaselineResult:
    """The fitted baseline, its threshold (best validation F1, as the CNN's) and its metrics per split."""
    model: LogisticModel
    threshold: float
    metrics: dict[str, dict]  # split name → file-level metrics

    def to_dict(self) -> dict:
        return {"model": BASELINE_NAME, "l2": L2_PENALTY, "threshold": round(self.threshold, 4),
                **{split: {k: values[k] for k in REPORTED} for split, values in self.metrics.items()}}

    def line(self, splits=("val", "test")) -> str:
        parts = [f"{split} file F1 {self.metrics[split]['file_f1']:.3f} AUC {self.metrics[split]['file_auc']:.3f}"
                 for split in splits if split in self.metrics]
        return f"baseline ({BASELINE_NAME}, threshold {self.threshold:.2f}): " + "; ".join(parts)


def fit_baseline(data, splits=("val", "test")) -> BaselineResult:
    """Fit on `data`'s training split (a training.data.LeakData), choose the threshold on validation, report
    `splits`. Any mode: the baseline always answers LEAK or not."""
    train = data.splits["train"]
    model = fit_logistic(data.file_mel_medians(train), train.file_is_leak)
    probs = {name: model.leak_prob(data.file_mel_medians(data.splits[name]))
             for name in dict.fromkeys(("val", *splits))}
    val = data.splits["val"]
    threshold, _ = calibrate_threshold(probs["val"], np.arange(len(val.file_index)), val.file_is_leak, 0.5)
    return BaselineResult(model=model, threshold=threshold, metrics={
        name: file_metrics(data.splits[name].file_is_leak, probs[name], threshold) for name in splits})


def held_out_probabilities(data, folds: list[np.ndarray], features: np.ndarray | None = None) -> list[np.ndarray]:
    """The baseline's P(LEAK) for each fold's files (dataset file indices), fitted on the other folds' files:
    the baseline's side of grouped cross-validation (training/cv.py). A training side without LEAK or
    non-LEAK files gives NaN (nothing to fit). `features` [every dataset file, ...] replaces the median log-mels
    (benchmarks/quantile_baseline.py fits other statistics the same way)."""
    if features is None:  # by dataset file index, filled for the folds' files
        every = data.subset(np.concatenate(folds))
        features = np.zeros((len(data.file_is_leak), data.frontend.n_mels), np.float32)
        features[every.file_index] = data.file_mel_medians(every)
    is_leak = data.file_is_leak
    probs = []
    for fold in folds:
        rest = np.concatenate([other for other in folds if other is not fold])
        truth = is_leak[rest]
        if truth.all() or not truth.any():
            probs.append(np.full(len(fold), np.nan))
            continue
        probs.append(fit_logistic(features[rest], truth).leak_prob(features[fold]))
    return probs


def baseline_report(data, split: str) -> dict | None:
    """`leak eval`'s baseline on one split of `data`: fitted on its training split, threshold from its validation
    split; None when the training split lacks LEAK or non-LEAK files (nothing to fit)."""
    train = data.splits["train"]
    if train.file_is_leak.all() or not train.file_is_leak.any():
        return None
    result = fit_baseline(data, (split,))
    return {"model": BASELINE_NAME, "threshold": round(result.threshold, 4), **result.metrics[split]}
