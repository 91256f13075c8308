"""File-level evaluation exactly as deployed: per-input P(LEAK) → long-segment means → vote.

Training selects models with this, and `leak eval` reports with it; both use leakhunter.voting,
the code predict scores with. Recordings that are not a dataset's features are scored by predict's own
engine (training/eval_sources.py), so `leak eval` on an .onnx model measures what will be deployed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leakhunter.card import ModelCard
from leakhunter.errors import InputError
from leakhunter.inference.scorer import check_options
from leakhunter.operating import file_rates, points_on, threshold_sweep
from leakhunter.reference import ReferenceTable
from leakhunter.sources import check_output_name
from leakhunter.training.eval_sources import FileVotes, dataset_files, is_dataset, score_files, source_files
from leakhunter.training.metrics import (
    class_distribution,
    cohen_kappa,
    confusion_matrix,
    leak_metrics,
    undefined_metrics,
)
from leakhunter.voting import per_long_segment, top_class, vote_files

# torch, h5py (datasets) and matplotlib (pictures) are imported where they are used: `leak eval` of an .onnx
# on recordings runs in the scoring install, which has none of them.


def score_split(scorer, data, split, batch_size: int, device, autocast_dtype=None, criterion=None):
    """Class probabilities [N, C] and P(LEAK) [N] for every scoring input of a split (a training.data
    SplitData of `data`, a LeakData), and with a `criterion(logits, aux, targets, is_leak)` also the split's
    mean loss."""
    import torch

    from leakhunter.devices import to_device

    probs, leak, loss_sum = [], [], 0.0
    scorer.eval()
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(len(split), start + batch_size))
        batch = data.batch(split, rows).to(device)  # pinned on CUDA, so non_blocking is real
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype,
                                                    enabled=autocast_dtype is not None):
            logits, aux = scorer.model(*batch.args())
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


def evaluate_split(split, probs: np.ndarray, leak_prob: np.ndarray, class_names, threshold: float,
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
             threshold: float | None = None, confusion_png: str | Path | None = None,
             roc_png: str | Path | None = None, pr_png: str | Path | None = None, workers: int = 2,
             reference: str | Path | ReferenceTable | None = None, group_column: str | None = None) -> dict:
    """`leak eval`: the file-level report of a model (.pth or .onnx) on labelled recordings: one split of a
    dataset file, a manifest CSV (path, label, optional group) or a class-folder tree SRC/<CLASS>/**/*.wav.

    A .pth on a dataset is scored from the dataset's features; every other pair by the scoring engine `leak
    predict` uses, on the recordings themselves (`workers` decoding processes), and files it cannot score are
    listed under `failed_files` and left out of every metric. Beside the file metrics: per group, false alarms
    per 100 non-LEAK recordings, the card's operating points applied to these files, and the pictures asked for.
    A reference model scored from a dataset's features uses each sensor's reference from its own files; scored on
    recordings it needs `reference`, a table from `leak reference build` (as `leak predict` does).
    `group_column`: a manifest's column that names each file's group (as `leak data build --group-column`).
    """
    from leakhunter.inference.loader import read_card

    for flag, png in (("--confusion-png", confusion_png), ("--roc-png", roc_png), ("--pr-png", pr_png)):
        if png is not None:  # a picture named m.onnx or night.csv would replace the model or the manifest
            check_output_name(Path(png), "a picture", (".png",), f"{flag} {png}")
    card, _, backend = read_card(model)
    if reference is not None:  # a table this model cannot use is refused before anything is scored (loaded once)
        from leakhunter.reference import reference_table

        reference = reference_table(card, reference, model)
    check_options(threshold=threshold, workers=workers)
    used = card.voting.threshold if threshold is None else threshold
    segment: dict = {"segment_accuracy": None, "kappa": None, "predicted_distribution": None}
    if is_dataset(data) and group_column:
        raise InputError(f"--group-column {group_column}: {data} is a dataset file, whose groups were fixed when it "
                         f"was built (leak data build --group-column)")
    if is_dataset(data):
        from leakhunter.training.baseline import baseline_report
        from leakhunter.training.data import LeakData

        leak_data = LeakData(data, card.mode, reference=card.reference)
        leak_data.check_card(card, str(model))
        if card.branches is not None:  # a fusion model: its inputs as its card describes them
            from leakhunter.training.fusion import use_card_inputs

            use_card_inputs(leak_data, card, str(model))
        if split not in leak_data.splits:
            raise InputError(f"split {split!r} is not one of {', '.join(leak_data.splits)}")
        files = dataset_files(leak_data, split) if backend != "torch" else None
        if files is None and reference is not None:
            raise InputError(f"--reference {reference.source}: a .pth on a dataset is scored from the dataset's features, "
                             f"each sensor against the reference its own files give; the table applies where "
                             f"recordings are scored (an .onnx, a manifest or class folders)")
        if files is None:
            votes, segment = _score_dataset(model, card, leak_data, split, device, used)
            failed = []
        else:
            votes, failed = score_files(model, card, files, device, threshold, workers, reference)
        about = {"split": split, "source": "dataset", "baseline": baseline_report(leak_data, split),
                 "group_from": "the dataset's /files/group",
                 "scored_by": "the dataset's features (torch)" if files is None else
                              f"the recordings, by the scoring engine ({backend})"}
    else:
        files = source_files(data, group_column)
        votes, failed = score_files(model, card, files, device, threshold, workers, reference)
        about = {"split": None, "source": files.source, "baseline": None, "group_from": files.group_from,
                 "scored_by": f"the recordings, by the scoring engine ({backend})"}
    if failed and not len(votes.paths):
        reasons = ", ".join(sorted({row["status"] for row in failed}))
        raise InputError(f"none of the {len(failed)} files of {data} could be scored ({reasons}), e.g. "
                         f"{failed[0]['file']}: {failed[0]['message']}")
    report = dict(file_report(votes, card, used), **segment, **about, model=str(model), data=str(data),
                  mode=card.mode, failed_files=failed)
    _draw(report, votes, card, model, confusion_png, roc_png, pr_png)
    return report


def _score_dataset(model, card: ModelCard, leak_data, split: str, device: str,
                   threshold: float) -> tuple[FileVotes, dict]:
    """A checkpoint on a dataset split's stored features: the votes, and the segment-level metrics."""
    from leakhunter.checkpoint import read_model
    from leakhunter.devices import pick_device
    from leakhunter.models import Scorer

    _, network = read_model(model)
    target = leak_data.splits[split]
    torch_device = pick_device(device)
    probs, leak_prob = score_split(Scorer(network, card).to(torch_device), leak_data, target, 16384, torch_device)
    result = evaluate_split(target, probs, leak_prob, card.class_names, threshold, card.voting.vote_fraction,
                            leak_data.shorts_per_long, card.segmentation.unit, card.mode)
    segment = {k: result.metrics[k] for k in ("segment_accuracy", "kappa", "predicted_distribution")}
    if card.branches is not None:
        segment["branches"] = branch_report(network, card, leak_data, target, torch_device, threshold)
    votes = FileVotes(paths=list(target.paths), groups=[leak_data.groups[i] for i in target.file_index],
                      file_is_leak=target.file_is_leak, file_targets=target.file_targets,
                      verdict=result.file_verdict, mean_leak_prob=result.file_mean_leak_prob,
                      top_class=result.file_top_class, long_leak_prob=result.long_leak_prob,
                      long_file=target.long_file)
    return votes, segment


def branch_report(network, card: ModelCard, leak_data, target, device, threshold: float) -> list[dict]:
    """Each branch of a fusion model alone on the same files, at the card's threshold and vote, beside its weight."""
    from leakhunter.models import Scorer

    rows = []
    for name, weight in zip(network.branch_names, network.fusion_weights().tolist()):
        probs, leak_prob = score_split(Scorer(network.alone(name), card).to(device), leak_data, target, 16384, device)
        metrics = evaluate_split(target, probs, leak_prob, card.class_names, threshold, card.voting.vote_fraction,
                                 leak_data.shorts_per_long, card.segmentation.unit, card.mode).metrics
        rows.append({"branch": name, "weight": round(weight, 4), "file_f1": metrics["file_f1"],
                     "file_auc": metrics["file_auc"], "kappa": metrics["kappa"]})
    return rows


def file_report(votes: FileVotes, card: ModelCard, threshold: float) -> dict:
    """File-level leak metrics, false alarms per 100 non-LEAK recordings, the confusion matrix, the same per
    group, the card's operating points voted again on these files, and each file's truth and vote."""
    vote_fraction = card.voting.vote_fraction
    leak = leak_metrics(votes.file_is_leak, votes.verdict, np.nan_to_num(votes.mean_leak_prob))
    report = {f"file_{k}": v for k, v in leak.items()}
    report.update(dict.fromkeys(undefined_metrics(votes.file_is_leak, votes.verdict)))  # 0/0 is null, not 0.0
    report.update(
        n_files=len(votes.paths), n_leak=int(votes.file_is_leak.sum()),
        false_alarms_per_100=file_rates(votes.file_is_leak, votes.verdict, digits=None)["false_alarms_per_100"],
        threshold=float(threshold), vote_fraction=float(vote_fraction), class_names=list(card.class_names),
        confusion=confusion_matrix(votes.file_targets, votes.top_class, len(card.class_names)).tolist(),
        groups=group_report(votes),
        operating_points=points_on(card.operating_points, votes.long_leak_prob, votes.long_file,
                                   votes.file_is_leak, vote_fraction),
        files=[{"file": path, "group": group, "truth": card.class_names[truth], "verdict": "LEAK" if verdict else
                "NOLEAK", "mean_leak_prob": float(mean), "top_class": card.class_names[top]}
               for path, group, truth, verdict, mean, top in zip(votes.paths, votes.groups, votes.file_targets,
                                                                 votes.verdict, votes.mean_leak_prob, votes.top_class)])
    return report


def group_report(votes: FileVotes) -> dict[str, dict]:
    """Per group (site, sensor): file_rates and the LEAK verdicts, groups in name order."""
    groups = np.asarray(votes.groups, dtype=object)
    report = {}
    for group in sorted(set(votes.groups)):
        mine = groups == group
        report[group] = {**file_rates(votes.file_is_leak[mine], votes.verdict[mine]),
                         "leak_verdicts": int(votes.verdict[mine].sum())}
    return report


def default_png(model: str | Path, data: str | Path, split: str, kind: str) -> Path:
    """Where `leak eval` draws a picture unless told: beside the model, named by the split (a dataset) or by the
    manifest or folder evaluated, e.g. roc_test.png, pr_night_labels.png."""
    tag = split if is_dataset(data) else Path(data).stem
    return Path(model).with_name(f"{kind}_{tag}.png")


def _draw(report: dict, votes: FileVotes, card: ModelCard, model, confusion_png, roc_png, pr_png) -> None:
    if confusion_png is None and roc_png is None and pr_png is None:
        return
    from leakhunter.training.curves import plot_precision_recall, plot_roc
    from leakhunter.training.plots import plot_confusion

    where = report["split"] if report["split"] is not None else Path(report["data"]).name
    title = f"{Path(model).name} on {where} ({report['n_files']} files)"
    if confusion_png is not None:
        plot_confusion(np.array(report["confusion"]), card.class_names, confusion_png, title)
        report["confusion_png"] = str(confusion_png)
    if roc_png is None and pr_png is None:
        return
    sweep = threshold_sweep(votes.long_leak_prob, votes.long_file, votes.file_is_leak, card.voting.vote_fraction)
    evaluated = {"threshold": report["threshold"],
                 **file_rates(votes.file_is_leak, votes.verdict, digits=None)}
    marks = {"evaluated": evaluated, **{name: point for name, point in report["operating_points"].items()
                                        if point.get("threshold") is not None}}
    score = np.nan_to_num(votes.mean_leak_prob)
    if roc_png is not None:
        plot_roc(votes.file_is_leak, score, sweep, marks, report["file_auc"], roc_png, f"ROC: {title}")
        report["roc_png"] = str(roc_png)
    if pr_png is not None:
        plot_precision_recall(votes.file_is_leak, score, sweep, marks, pr_png, f"precision-recall: {title}")
        report["pr_png"] = str(pr_png)


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
