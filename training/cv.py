"""`leak train --cv K`: grouped K-fold cross-validation, then the final model on all training data.

The training and validation files (never the test split) are dealt into K folds by group: a sensor, a site or
linked recordings sit in one fold, and each fold gets about 1/K of every class. Each fold trains on the other
folds for every epoch of the schedule and records its held-out files' predictions after each epoch. The epoch
count and the threshold are then chosen on the pooled held-out predictions, and the estimate is made honestly:
each fold is scored with the epoch and threshold chosen on the *other* folds alone, so no held-out file ever
chooses what it is judged with. The baseline (training/baseline.py) is cross-validated the same way. The final
model trains on every training and validation file for the chosen epochs and keeps the chosen threshold; its
card records the estimate (`training.cv`).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from leakhunter.card import VotingConfig
from leakhunter.errors import InputError
from leakhunter.files import write_atomic
from leakhunter.operating import HELD_OUT, file_rates, operating_points
from leakhunter.training.baseline import BASELINE_NAME, fit_baseline, held_out_probabilities
from leakhunter.training.config import TrainConfig
from leakhunter.training.data import LeakData
from leakhunter.training.evaluate import finite_or_none, score_split
from leakhunter.training.metrics import leak_metrics
from leakhunter.training.splits import assign_folds
from leakhunter.voting import calibrate_threshold, per_long_segment, vote_files

SELECTION = ("epoch (the latest of equals) and threshold of best pooled held-out file F1; each fold scored with "
             "those chosen on the other folds")


@dataclass(frozen=True)
class RunPlan:
    """A run cut from the dataset by cross-validation (training/cv.py) instead of by the file's own split.

    No model is selected on its validation split: every epoch up to `stop_after` runs (the schedule still
    spans config.epochs, as in the folds) and the last is kept. A fold validates on its held-out groups; the
    final model validates in-sample, with the `threshold` chosen on the folds' out-of-fold predictions."""
    label: str  # "fold 2/5", "final"
    split_files: dict[str, list[int]]  # split name → dataset file indices
    stop_after: int | None = None
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {"label": self.label, "split_files": {k: [int(i) for i in v] for k, v in self.split_files.items()},
                "stop_after": self.stop_after, "threshold": self.threshold}


@dataclass
class HeldOut:
    """One fold's held-out files and what was predicted for them after every epoch."""
    files: np.ndarray  # [F] dataset file indices
    file_is_leak: np.ndarray  # [F]
    long_file: np.ndarray  # [L] position in `files` of each long segment
    long_prob: np.ndarray  # [epochs, L] P(LEAK) per long segment after each epoch

    def save(self, path: Path, key: str) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, key=key, **{name: getattr(self, name) for name in self.__dataclass_fields__})
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, key: str) -> HeldOut | None:
        """The fold saved at `path` by the same plan, else None (it is trained again)."""
        if not path.is_file():
            return None
        with np.load(path) as saved:
            if str(saved["key"]) != key:
                return None
            return cls(**{name: saved[name] for name in cls.__dataclass_fields__})


def pooled(folds: list[HeldOut], epochs: list[int] | int):
    """Long-segment P(LEAK), file links and truth of several folds as one set (an epoch per fold, 1-based)."""
    epochs = epochs if isinstance(epochs, list) else [epochs] * len(folds)
    offsets = np.cumsum([0] + [len(f.files) for f in folds])
    long_prob = np.concatenate([f.long_prob[e - 1] for f, e in zip(folds, epochs)])
    long_file = np.concatenate([f.long_file + offset for f, offset in zip(folds, offsets)])
    return long_prob, long_file, np.concatenate([f.file_is_leak for f in folds])


def choose(folds: list[HeldOut], vote_fraction: float) -> tuple[int, float, list[float]]:
    """(epoch, threshold, pooled F1 per epoch): the epoch whose pooled held-out F1 is best and the threshold that
    gives it. Of equals the latest, the most trained (under the default cosine schedule, the lowest learning
    rate): judged on held-out folds it beat the earliest in 39 of 81 runs and lost in 25, gaining most in the
    augmented recipes (README, "The epoch a run keeps")."""
    curve = []
    for epoch in range(1, min(len(f.long_prob) for f in folds) + 1):
        curve.append(calibrate_threshold(*pooled(folds, epoch), vote_fraction))
    f1s = np.array([f1 for _, f1 in curve])
    best = int(np.flatnonzero(f1s == f1s.max())[-1])
    return best + 1, curve[best][0], f1s.tolist()


def file_report(truth: np.ndarray, verdict: np.ndarray, score: np.ndarray) -> dict:
    """File-level metrics of one set of files, with false alarms per 100 non-LEAK recordings."""
    metrics = {f"file_{k}": v for k, v in leak_metrics(truth, verdict, score).items()}
    rates = file_rates(truth, verdict, digits=None)
    return metrics | {key: rates[key] for key in ("n_files", "n_leak", "false_alarms_per_100")}


def others_of(folds: list[HeldOut]):
    """Each fold beside the other folds: what may choose how that fold is judged."""
    for i, fold in enumerate(folds):
        yield fold, [f for j, f in enumerate(folds) if j != i]


def honest_estimate(folds: list[HeldOut], vote_fraction: float) -> tuple[list[dict], dict]:
    """Per-fold and pooled metrics, each fold judged with the epoch and threshold chosen on the others."""
    rows, truths, verdicts, scores = [], [], [], []
    for i, (fold, others) in enumerate(others_of(folds)):
        epoch, threshold, _ = choose(others, vote_fraction)
        scored = vote_files(fold.long_prob[epoch - 1], fold.long_file, len(fold.files), threshold, vote_fraction)
        rows.append(file_report(fold.file_is_leak, scored.verdict, scored.mean_leak_prob)
                    | {"fold": i + 1, "epoch": epoch, "threshold": round(threshold, 4)})
        truths.append(fold.file_is_leak)
        verdicts.append(scored.verdict)
        scores.append(scored.mean_leak_prob)
    pooled_report = file_report(np.concatenate(truths), np.concatenate(verdicts), np.concatenate(scores))
    return rows, pooled_report


def held_out_points(folds: list[HeldOut], epoch: int, vote_fraction: float) -> dict[str, dict]:
    """The operating points chosen on all folds' pooled predictions at `epoch`, each with the rates it gives where
    it was not chosen: every fold voted at the point (and epoch) the other folds choose, as honest_estimate judges
    the threshold, so `balanced` gives the CV estimate. Rates measured where the points were chosen would flatter
    them (the demo's `balanced` once: recall 1.000 there, 0.882 held out). A fold whose others cannot reach a point
    adds no file to it; a point no fold could be judged at keeps its threshold with no rates (n_files 0)."""
    points = operating_points(*pooled(folds, epoch), vote_fraction)
    truths, verdicts = {name: [] for name in points}, {name: [] for name in points}
    for fold, others in others_of(folds):
        chosen_epoch = choose(others, vote_fraction)[0]
        for name, point in operating_points(*pooled(others, chosen_epoch), vote_fraction).items():
            if point["threshold"] is not None:
                truths[name].append(fold.file_is_leak)
                verdicts[name].append(vote_files(fold.long_prob[chosen_epoch - 1], fold.long_file, len(fold.files),
                                                 point["threshold"], vote_fraction).verdict)
    return {name: point if point["threshold"] is None else
            point | file_rates(np.concatenate([[], *truths[name]]).astype(bool),
                               np.concatenate([[], *verdicts[name]]).astype(bool))
            for name, point in points.items()}


def deal_folds(data: LeakData, k: int, seed: int) -> list[np.ndarray]:
    """The training and validation files (dataset indices) in k grouped, stratified folds."""
    pool = np.concatenate([data.splits["train"].file_index, data.splits["val"].file_index])
    codes = assign_folds(data.file_labels[pool], [data.groups[i] for i in pool], [data.shas[i] for i in pool],
                         k, seed)
    return [np.sort(pool[codes == fold]) for fold in range(k)]


def baseline_verdicts(data: LeakData, folds: list[np.ndarray], features: np.ndarray | None = None):
    """(truth, verdict, P(LEAK)) per fold: the baseline fitted on the other folds (on `features` instead of the
    median log-mels when given) and judged at the threshold chosen on their held-out predictions."""
    probs = held_out_probabilities(data, folds, features)
    truth_of = [data.file_is_leak[fold] for fold in folds]
    verdicts = []
    for i, prob in enumerate(probs):
        others = [j for j in range(len(folds)) if j != i and np.isfinite(probs[j]).all()]
        threshold = calibrate_threshold(np.concatenate([probs[j] for j in others]), np.arange(
            sum(len(folds[j]) for j in others)), np.concatenate([truth_of[j] for j in others]), 0.5)[0] \
            if others else 0.5
        verdicts.append(np.nan_to_num(prob, nan=0.0) >= threshold)
    return truth_of, verdicts, [np.nan_to_num(prob, nan=0.0) for prob in probs]


def baseline_estimate(data: LeakData, folds: list[np.ndarray]) -> tuple[list[dict], dict]:
    """The baseline's per-fold and pooled metrics, each fold fitted on the other folds and judged at the
    threshold chosen on their held-out predictions."""
    truths, verdicts, probs = baseline_verdicts(data, folds)
    rows = [file_report(*fold) | {"fold": i + 1} for i, fold in enumerate(zip(truths, verdicts, probs))]
    return rows, file_report(np.concatenate(truths), np.concatenate(verdicts), np.concatenate(probs))


def split_check(data: LeakData, split_f1: float, seed: int, k: int = 5) -> list:
    """H016 for a run on the dataset's own split: the baseline's validation F1 against its mean F1 on the folds
    of grouped k-fold cross-validation over the same training and validation files (fewer folds when there are
    fewer groups). Each fold's threshold is tuned on that fold, as the split's is on validation, so the two
    differ only by which groups were held out."""
    from leakhunter.training.health import split_findings

    groups = {data.groups[i] for split in ("train", "val") for i in data.splits[split].file_index}
    k = min(k, len(groups))
    if k < 2:
        return []
    try:
        folds = deal_folds(data, k, seed)
    except InputError:  # linked recordings leave fewer clusters than groups
        return []
    fold_f1 = [calibrate_threshold(prob, np.arange(len(fold)), data.file_is_leak[fold], 0.5)[1]
               for prob, fold in zip(held_out_probabilities(data, folds), folds)
               if np.isfinite(prob).all() and data.file_is_leak[fold].any()]
    return split_findings(split_f1, float(np.mean(fold_f1)), k) if fold_f1 else []


def spread(rows: list[dict]) -> dict:
    """Mean, standard deviation and range of the folds' F1, over folds that hold a LEAK file."""
    f1 = np.array([row["file_f1"] for row in rows if row["n_leak"]])
    if not len(f1):
        return {"folds_with_leak": 0}
    return {"folds_with_leak": int(len(f1)), "f1_mean": float(f1.mean()), "f1_std": float(f1.std()),
            "f1_min": float(f1.min()), "f1_max": float(f1.max())}


class CrossValidation:
    """Deals the folds, trains each (or reloads one already done), then trains the final model."""

    def __init__(self, config: TrainConfig, k: int, log=print):
        from leakhunter.training.distributed import launch_from_env

        if launch_from_env().world > 1:
            raise InputError("leak train --cv runs in one process; start it without torchrun")
        self.out = Path(config.out or f"runs/{config.mode}-cv-{datetime.now():%Y%m%d-%H%M%S}")
        self.config, self.k, self.log = replace(config, out=str(self.out)), k, log
        if (self.out / "cv.json").exists():  # written last: a final model stopped before it is trained again
            raise FileExistsError(f"{self.out} already holds a finished cross-validation; choose another --out")
        if (self.out / "best.pth").exists() and not (self.out / "folds").is_dir():  # not a --cv run's
            raise FileExistsError(f"{self.out} already holds a run; choose another --out")
        data = LeakData(config.data, config.mode, max_memory=config.max_memory, reference=config.card_reference())
        self.folds = deal_folds(data, k, config.seed)
        self.data_fingerprint = data.content_fingerprint
        self.pool, self.test = np.sort(np.concatenate(self.folds)), data.splits["test"].file_index
        self.groups = [sorted({data.groups[i] for i in fold}) for fold in self.folds]
        self.baseline_rows, self.baseline_pooled = baseline_estimate(data, self.folds)
        # H016 of the dataset's own split, judged like every single-split run's
        self.split_findings = split_check(data, fit_baseline(data, ("val",)).metrics["val"]["file_f1"],
                                          config.seed, k)
        data.close()

    def _key(self, fold: int) -> str:
        text = json.dumps([self.config.learning_settings(), self.data_fingerprint, self.k, fold,
                           self.folds[fold].tolist()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run_fold(self, fold: int) -> HeldOut:
        from leakhunter.training.trainer import Trainer

        folder = self.out / "folds" / f"fold_{fold + 1}"
        saved = HeldOut.load(folder / "held_out.npz", self._key(fold))
        if saved is not None:
            self.log(f"fold {fold + 1}/{self.k}: done before, its held-out predictions reloaded ({folder})")
            return saved
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished fold starts again
        rest = np.sort(np.concatenate([f for j, f in enumerate(self.folds) if j != fold]))
        plan = RunPlan(label=f"fold {fold + 1}/{self.k} (held out: {', '.join(self.groups[fold])})",
                       split_files={"train": rest.tolist(), "val": self.folds[fold].tolist(),
                                    "test": self.test.tolist()})
        epochs: list[np.ndarray] = []

        def collect(trainer, epoch):
            val = trainer.data.splits["val"]
            _, leak_prob = score_split(trainer.scorer, trainer.data, val, self.config.eval_batch_size,
                                       trainer.device, trainer.amp)
            epochs.append(per_long_segment(leak_prob, trainer.card.segmentation.unit, val.long_first_input,
                                           trainer.data.shorts_per_long))

        trainer = Trainer(replace(self.config, out=str(folder)), log=self.log, plan=plan, on_epoch=collect)
        val = trainer.data.splits["val"]
        trainer.fit()
        trainer.data.close()
        held_out = HeldOut(files=val.file_index, file_is_leak=val.file_is_leak, long_file=val.long_file,
                           long_prob=np.stack(epochs))
        held_out.save(folder / "held_out.npz", self._key(fold))
        return held_out

    def run(self):
        """Every fold, the estimate, then the final model; returns the final run's TrainResult."""
        from leakhunter.training.trainer import Trainer

        folds = [self.run_fold(fold) for fold in range(self.k)]
        vote_fraction = VotingConfig().vote_fraction  # the card's: a plan changes the threshold only
        epoch, threshold, curve = choose(folds, vote_fraction)
        rows, pooled_report = honest_estimate(folds, vote_fraction)
        baseline_rows, baseline_pooled = self.baseline_rows, self.baseline_pooled
        for row, groups, base in zip(rows, self.groups, baseline_rows):
            baseline = (f"baseline F1 {base['file_f1']:.3f}" if row["n_leak"] else  # no LEAK file: no F1
                        f"baseline {base['false_alarms_per_100']:.1f} false alarms per 100")
            self.log(f"fold {row['fold']}/{self.k} ({', '.join(groups)}): {fold_line(row)}; {baseline}")
        summary = finite_or_none({
            "k": self.k, "seed": self.config.seed, "grouping": "group (sensor, site) and identical audio",
            "selection": SELECTION, "epochs": epoch, "threshold": round(threshold, 4), "pooled": pooled_report,
            "spread": spread(rows), "curve": [round(f1, 4) for f1 in curve],
            "folds": [row | {"groups": groups} for row, groups in zip(rows, self.groups)],
            "baseline": {"model": BASELINE_NAME, "pooled": baseline_pooled, "folds": baseline_rows}})
        self.log(estimate_line(summary))
        plan = RunPlan(label="final model", split_files={"train": self.pool.tolist(), "val": self.pool.tolist(),
                                                         "test": self.test.tolist()},
                       stop_after=epoch, threshold=threshold)
        if (self.out / "best.pth").exists():  # a final model stopped before it finished (a kill, a health check)
            self.log(f"the final model in {self.out} did not finish before: it is trained again")
            (self.out / "best.pth").unlink()
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        trainer = Trainer(self.config, log=self.log, plan=plan)
        result = trainer.fit()
        trainer.data.close()
        points = held_out_points(folds, epoch, vote_fraction)
        summary["points_measured"] = HELD_OUT  # what `leak info` says of the rates (older cards: in-sample)
        return self._finish(result, summary, points)

    def _finish(self, result, summary: dict, points: dict):
        """The estimate and the operating points into the final card, health.json (H015 on the folds, H016 of
        the dataset's split), cv.json and cv.png."""
        from leakhunter.checkpoint import rewrite_card
        from leakhunter.training.health import HealthMonitor, cv_baseline_findings
        from leakhunter.training.plots import plot_cv

        best_path = self.out / "best.pth"
        card = rewrite_card(best_path, lambda card: replace(card, training={**card.training, "cv": summary},
                                                            operating_points=points), self.out / "model_meta.json")
        write_atomic(self.out / "cv.json", json.dumps(summary, indent=2))
        plot_cv(summary, self.out / "cv.png")
        health = HealthMonitor(self.config.strict, self.log, self.out / "health.json")
        health.load()
        health.add(cv_baseline_findings(summary["pooled"]["file_f1"], summary["baseline"]["pooled"]["file_f1"])
                   + self.split_findings)
        self.log(estimate_line(summary))
        self.log(f"final model: {best_path} ({summary['epochs']} epochs on {len(self.pool)} files, threshold "
                 f"{summary['threshold']:.2f}); its card holds the estimate (training.cv), cv.json and cv.png beside it")
        return replace(result, card=card, health=health.findings)


def fold_line(row: dict) -> str:
    """One fold's held-out result in a log line."""
    if not row["n_leak"]:
        return (f"{row['n_files']} files, no LEAK file: {row['false_alarms_per_100']:.1f} false alarms per 100 "
                f"(epoch {row['epoch']}, threshold {row['threshold']:.2f})")
    return (f"F1 {row['file_f1']:.3f} P {row['file_precision']:.3f} R {row['file_recall']:.3f} AUC "
            f"{row['file_auc']:.3f} on {row['n_files']} files, {row['n_leak']} LEAK (epoch {row['epoch']}, "
            f"threshold {row['threshold']:.2f})")


def estimate_line(summary: dict) -> str:
    """The cross-validated estimate beside the baseline's, in one line."""
    pooled, fold_spread, base = summary["pooled"], summary["spread"], summary["baseline"]["pooled"]
    folds = (f"folds {fold_spread['f1_mean']:.3f} ± {fold_spread['f1_std']:.3f}, {fold_spread['f1_min']:.3f}–"
             f"{fold_spread['f1_max']:.3f}" if fold_spread.get("folds_with_leak") else "no fold holds a LEAK file")
    auc = "n/a" if pooled["file_auc"] is None else f"{pooled['file_auc']:.3f}"
    return (f"cross-validation ({summary['k']} folds by group): held-out file F1 {pooled['file_f1']:.3f} "
            f"({folds}), precision {pooled['file_precision']:.3f}, recall {pooled['file_recall']:.3f}, AUC {auc}, "
            f"{pooled['n_files']} files; baseline {base['file_f1']:.3f}; chosen: {summary['epochs']} epochs, "
            f"threshold {summary['threshold']:.2f}")


def cross_validate(config: TrainConfig, k: int, log=print):
    """`leak train --cv K`: the folds, the estimate and the final model (its TrainResult)."""
    return CrossValidation(config, k, log).run()
