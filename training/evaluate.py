"""File-level evaluation exactly as deployed: per-input P(LEAK) → long-segment means → vote.

Training selects models with this, and `leak eval` reports with it; both use leakhunter.voting,
the code predict scores with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leakhunter.devices import to_device
from leakhunter.errors import InputError
from leakhunter.training.baseline import baseline_report
from leakhunter.training.data import LeakData, SplitData
from leakhunter.training.metrics import class_distribution, cohen_kappa, confusion_matrix, leak_metrics
from leakhunter.voting import per_long_segment, top_class, vote_files


@torch.inference_mode()
def score_split(scorer, data: LeakData, split: SplitData, batch_size: int, device: torch.device,
                autocast_dtype: torch.dtype | None = None, criterion=None):
    """Class probabilities [N, C] and P(LEAK) [N] for every scoring input of a split, and with a
    `criterion(logits, aux, targets, is_leak)` also the split's mean loss."""
    probs, leak, loss_sum = [], [], 0.0
    scorer.eval()
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(len(split), start + batch_size))
        batch = to_device(data.inputs(split, rows), device)  # pinned on CUDA, so non_blocking is real
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, aux = scorer.model(batch)
            if criterion is not None:
                targets = to_device(torch.from_numpy(split.targets[rows]), device)
                is_leak = to_device(torch.from_numpy(split.is_leak[rows]), device)
                loss_sum += float(criterion(logits, aux, targets, is_leak)) * len(rows)
            batch_probs, batch_leak = scorer.combine(logits, aux)
        probs.append(batch_probs.float().cpu().numpy())
        leak.append(batch_leak.float().cpu().numpy())
    if not probs:
        probs, leak = [np.zeros((0, len(data.class_names)), np.float32)], [np.zeros(0, np.float32)]
    result = np.concatenate(probs), np.concatenate(leak)
    return result if criterion is None else (*result, loss_sum / max(1, len(split)))


@dataclass
class SplitEvaluation:
    metrics: dict
    file_leak_score: np.ndarray
    file_verdict: np.ndarray
    file_mean_leak_prob: np.ndarray
    file_top_class: np.ndarray
    long_leak_prob: np.ndarray
    predicted: np.ndarray  # per input


def evaluate_split(split: SplitData, probs: np.ndarray, leak_prob: np.ndarray, class_names, threshold: float,
                   vote_fraction: float, shorts_per_long: int, unit: str, mode: str) -> SplitEvaluation:
    """Segment accuracy, kappa and predicted-class shares; file-level leak metrics and confusion."""
    n_classes = len(class_names)
    predicted = probs.argmax(axis=1)
    long_prob = per_long_segment(leak_prob, unit, split.long_first_input, shorts_per_long)
    n_files = len(split.file_index)
    scores = vote_files(long_prob, split.long_file, n_files, threshold, vote_fraction)
    sums = np.zeros((n_files, n_classes))
    np.add.at(sums, split.long_file, per_long_segment(probs, unit, split.long_first_input, shorts_per_long))
    mean_classes = sums / np.maximum(1, np.bincount(split.long_file, minlength=n_files))[:, None]
    file_top_class = top_class(mode, mean_classes, scores.verdict, list(class_names).index("LEAK"))
    leak = leak_metrics(split.file_is_leak, scores.verdict, np.nan_to_num(scores.mean_leak_prob))
    metrics = {f"file_{k}": v for k, v in leak.items()}
    metrics.update(
        n_files=int(n_files), threshold=float(threshold), vote_fraction=float(vote_fraction),
        segment_accuracy=float((predicted == split.targets).mean()) if len(predicted) else 0.0,
        kappa=cohen_kappa(split.targets, predicted, n_classes),
        predicted_distribution=class_distribution(predicted, n_classes).round(4).tolist(),
        confusion=confusion_matrix(split.file_targets, file_top_class, n_classes).tolist(),
        class_names=list(class_names),
    )
    return SplitEvaluation(metrics=metrics, file_leak_score=scores.leak_score, file_verdict=scores.verdict,
                           file_mean_leak_prob=scores.mean_leak_prob, file_top_class=file_top_class,
                           long_leak_prob=long_prob, predicted=predicted)


def evaluate(model: str | Path, data: str | Path, split: str = "test", device: str = "auto",
             threshold: float | None = None, confusion_png: str | Path | None = None) -> dict:
    """`leak eval`: the file-level report of a checkpoint on one split of a dataset file."""
    from leakhunter.checkpoint import read_model
    from leakhunter.devices import pick_device
    from leakhunter.models import Scorer
    from leakhunter.training.plots import plot_confusion

    card, network = read_model(model)
    leak_data = LeakData(data, card.mode)
    leak_data.check_card(card, str(model))
    if split not in leak_data.splits:
        raise InputError(f"split {split!r} is not one of {', '.join(leak_data.splits)}")
    target = leak_data.splits[split]
    torch_device = pick_device(device)
    scorer = Scorer(network, card).to(torch_device)
    probs, leak_prob = score_split(scorer, leak_data, target, 16384, torch_device)
    result = evaluate_split(target, probs, leak_prob, card.class_names,
                            card.voting.threshold if threshold is None else threshold, card.voting.vote_fraction,
                            leak_data.shorts_per_long, card.segmentation.unit, card.mode)
    report = dict(result.metrics, model=str(model), data=str(data), split=split, mode=card.mode,
                  baseline=baseline_report(leak_data, split))
    if confusion_png is not None:
        plot_confusion(np.array(report["confusion"]), card.class_names, confusion_png,
                       f"{Path(model).name} on {split} ({report['n_files']} files)")
        report["confusion_png"] = str(confusion_png)
    return report


def finite_or_none(value):
    """JSON has no NaN: a metric that does not exist on this split (AUC with one class) becomes null."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def auc_missing_reason(report: dict) -> str | None:
    """Why the file AUC is undefined (a split without LEAK or without non-LEAK files), else None."""
    confusion = np.asarray(report["confusion"])
    names = list(report["class_names"])
    leak_files = int(confusion[names.index("LEAK")].sum())
    others = " or ".join(name for name in names if name != "LEAK")
    if leak_files == 0:
        return "the split has no LEAK files"
    if leak_files == int(confusion.sum()):
        return f"the split has no {others} files"
    return None


def report_json(report: dict) -> str:
    """Strict JSON (no NaN/Infinity tokens): non-finite values are null."""
    return json.dumps(finite_or_none(report), indent=2, default=str, allow_nan=False)
