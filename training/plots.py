"""The run's pictures: learning curves and a confusion matrix (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # a Figure draws without pyplot: no global backend, no display

from leakhunter.files import atomic_path


def _save(figure: Figure, path: str | Path) -> None:
    """Draw to a temporary file and rename: a killed run never leaves half a PNG."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")


def plot_curves(history: list[dict], path: str | Path, best_epoch: int | None = None) -> None:
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(14, 4))
    loss_axis, metric_axis, lr_axis = figure.subplots(1, 3)
    loss_axis.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], label="val")
    loss_axis.set(title="loss", xlabel="epoch")
    for key, label in (("file_f1", "file leak F1"), ("file_auc", "file AUC"), ("kappa", "segment kappa"),
                       ("segment_accuracy", "segment accuracy")):
        metric_axis.plot(epochs, [r[key] for r in history], label=label)
    metric_axis.set(title="validation", xlabel="epoch", ylim=(-0.05, 1.05))
    lr_axis.plot(epochs, [r["lr"] for r in history])
    lr_axis.set(title="learning rate", xlabel="epoch")
    for axis in (loss_axis, metric_axis):
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        axis.legend()
    figure.tight_layout()
    _save(figure, path)


def plot_confusion(matrix: np.ndarray, class_names, path: str | Path, title: str) -> None:
    """Rows = truth, columns = prediction; each cell shows the count and the row share."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    figure = Figure(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    axis = figure.subplots()
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, f"{count}\n{shares[row, column]:.0%}", ha="center", va="center",
                  color="white" if shares[row, column] > 0.5 else "black", fontsize=9)
    figure.tight_layout()
    _save(figure, path)


def plot_cv(summary: dict, path: str | Path) -> None:
    """Cross-validation at a glance: the pooled held-out F1 per epoch (the chosen epoch marked) and each
    fold's held-out F1 beside the baseline's."""
    figure = Figure(figsize=(12, 4))
    curve_axis, fold_axis = figure.subplots(1, 2)
    epochs = np.arange(1, len(summary["curve"]) + 1)
    curve_axis.plot(epochs, summary["curve"], label="pooled held-out file F1")
    curve_axis.axvline(summary["epochs"], color="grey", linestyle=":", label=f"chosen ({summary['epochs']} epochs)")
    curve_axis.axhline(summary["baseline"]["pooled"]["file_f1"], color="tab:orange", linestyle="--",
                       label="baseline (pooled)")
    curve_axis.set(title=f"{summary['k']}-fold grouped cross-validation", xlabel="epoch", ylim=(-0.05, 1.05))
    curve_axis.legend()
    folds = summary["folds"]
    positions = np.arange(len(folds))
    fold_axis.bar(positions - 0.2, [f["file_f1"] or 0 for f in folds], 0.4, label="CNN")
    fold_axis.bar(positions + 0.2, [f["file_f1"] or 0 for f in summary["baseline"]["folds"]], 0.4, label="baseline")
    fold_axis.set_xticks(positions, [f"fold {f['fold']}\n{f['n_leak']}/{f['n_files']} LEAK" for f in folds])
    pooled = summary["pooled"]["file_f1"]
    fold_axis.axhline(pooled, color="grey", linestyle=":", label=f"pooled CNN {pooled:.3f}")
    fold_axis.set(title="held-out file F1 per fold (each judged as the other folds chose)", ylim=(0, 1.05))
    fold_axis.legend()
    figure.tight_layout()
    _save(figure, path)
