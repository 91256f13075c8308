"""Training that cannot fail silently (DESIGN §7): each past incident is a named check.

The checks are plain functions of what a run records (card, data, config, per-epoch history), so the
live run and `leak doctor` reach the same findings. A check fails when continuing can only produce
garbage and warns otherwise; strict mode turns warnings into failures.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leakhunter.errors import LeakhunterError
from leakhunter.files import write_atomic
from leakhunter.reference import NO_SENSOR, thin_sensors
from leakhunter.sources import LOGGER_GRAMMAR
from leakhunter.training.baseline import BASELINE_NAME
from leakhunter.training.splits import crossing_keys

EXIT_BASE = 100  # a run stopped by Hxxx exits with status 100 + xxx
COLLAPSE_SHARE = 0.95
NEVER_PREDICTED_TRUTH_SHARE = 0.40
KAPPA_ZERO = 0.05
LEAK_SHARE_RANGE = (0.05, 0.95)
MIN_TRAINABLE = 10_000
MIN_TRAINABLE_FRACTION = 0.10
MIN_RELATIVE_CHANGE = 1e-4
DIVERGENCE_FACTOR = 3.0
NEAR_ZERO_LOSS = 0.05

ADVICE = {
    "H001": "Set the mode in one place (--mode, LEAK_MODE or the YAML) and rebuild the run; never patch "
            "class lists or heads by hand.",
    "H002": "Resume, evaluate or export with the same mode, front-end and classes the checkpoint was trained "
            "with, or start a new run.",
    "H003": "Rebuild the dataset (leak data build) with other --val/--test fractions or more files, so every "
            "split holds every class (a group's files, a site's or sensor's, stay in one split: a split may need "
            "more groups); check the labels of the source.",
    "H004": "Rebuild the dataset so each group (sensor, site) and each recording sits in one split; fix the "
            "manifest's group/split columns.",
    "H005": "The class weights were capped; collect more files of the rare class, or raise class_weight_cap "
            "knowingly.",
    "H006": "Unfreeze layers or train a larger part of the model; a stage with this few parameters converges "
            "to whatever its frozen features allow.",
    "H007": "The model predicts (almost) one class. Lower the learning rate, check class weights (cap), "
            "check labels, and try --loss ce instead of focal.",
    "H008": "The training loss is near zero while validation is poor: the targets are (almost) constant or the "
            "model memorises; check labels and the split (leak data check).",
    "H009": "Epoch 1 stayed the best: the model never improved. Check the learning rate (H010), labels (H003) "
            "and whether validation has both LEAK and non-LEAK files.",
    "H010": "Weights barely move (raise lr) or the loss diverges (lower lr, check the data for extreme values).",
    "H011": "Use a batch size smaller than the training split; every epoch must visit each input once.",
    "H012": "Non-finite loss or weights: check the named files for NaN/inf or extreme values, lower lr; the "
            "last good checkpoint was kept.",
    "H013": "Fusion weights must be trainable and in the optimizer (never fixed constants); a weight stuck near 0 "
            "or 1 or never moving means one branch decides alone: check that branch's inputs, or lower "
            "--fusion-prior's extreme, or drop the branch that adds nothing.",
    "H014": "A branch that learned nothing alone (kappa ≈ 0 in stage 0) is not frozen into the fusion: it is "
            "trained from scratch with the others. If it stays useless, check its inputs or drop it.",
    "H015": "A linear model on each file's median spectrum beats the network on validation: check the run "
            "(H009, H010, too few epochs), add sites and leaks, and trust neither number on a new site before "
            "grouped cross-validation; until the CNN wins, its complexity buys nothing.",
    "H016": "The validation split's groups are easier than the average group: its numbers overstate what a new "
            "site will see. Estimate with `leak train --cv K` (grouped cross-validation), or rebuild the split "
            "with more validation groups.",
    "H017": "A reference model judges each file against its sensor, named by the manifest's sensor_id column "
            f"or the file's logger name ({LOGGER_GRAMMAR}), and needs several recordings per sensor: give each "
            "file its sensor, add recordings, or train without --reference sensor.",
}
NAMES = {"H001": "config", "H002": "checkpoint", "H003": "labels", "H004": "leakage", "H005": "class weights",
         "H006": "trainable params", "H007": "prediction collapse", "H008": "trivial loss", "H009": "no progress",
         "H010": "learning rate", "H011": "data cycling", "H012": "non-finite", "H013": "fusion weights",
         "H014": "collapsed branch", "H015": "baseline",
         "H016": "optimistic split", "H017": "thin reference"}
CHECKED = "H001–H012, H015–H017"  # and on a fusion run, H013/H014 (training/fusion.py)
ALONE_SHARE = 0.10  # H017 fails when more files than this are their sensor's only recording
OPTIMISM_MARGIN = 0.10  # H016: validation F1 this far above the grouped cross-validated F1 (the baseline's)


@dataclass(frozen=True)
class Finding:
    code: str
    level: str  # "fail" | "warn"
    when: str  # "setup", "epoch N", "end"
    message: str

    @property
    def name(self) -> str:
        return NAMES[self.code]

    @property
    def advice(self) -> str:
        return ADVICE[self.code]

    def line(self) -> str:
        return f"{self.code} {self.name} ({self.level}) at {self.when}: {self.message}"


class HealthFailure(LeakhunterError, RuntimeError):
    """A check that failed the run; `exit_code` is 100 + the check number."""

    def __init__(self, finding: Finding):
        self.finding = finding
        self.exit_code = EXIT_BASE + int(finding.code[1:])
        super().__init__(f"training stopped by health check {finding.line()}\n  what to do: {finding.advice}")


def fail(code, when, message) -> Finding:
    return Finding(code, "fail", when, message)


def warn(code, when, message) -> Finding:
    return Finding(code, "warn", when, message)


# ---- before the first step -----------------------------------------------------------------------

def config_findings(mode: str, card_mode: str, class_names, leak_idx: int, head_outputs: int, has_aux: bool,
                    rule: str, leak_targets: set[int]) -> list[Finding]:
    """H001: mode, class names, head size, aux head and leak_idx must tell one story."""
    problems = []
    if mode != card_mode:
        problems.append(f"the run asked for mode {mode!r} but the model card says {card_mode!r}")
    if head_outputs != len(class_names):
        problems.append(f"the head has {head_outputs} outputs for {len(class_names)} classes {list(class_names)}")
    if has_aux != (rule == "mean_softmax_aux"):
        problems.append(f"P(LEAK) rule {rule!r} but the model {'has' if has_aux else 'lacks'} the auxiliary head")
    if "LEAK" not in class_names or leak_idx != list(class_names).index("LEAK"):
        problems.append(f"leak_idx {leak_idx} does not point at LEAK in {list(class_names)}")
    if leak_targets and leak_targets != {leak_idx}:
        problems.append(f"LEAK files are trained towards class index {sorted(leak_targets)}, not leak_idx {leak_idx}")
    return [fail("H001", "setup", "; ".join(problems))] if problems else []


def label_findings(class_names, counts: dict[str, dict[str, int]], train_leak_share: float,
                   val_selects: bool = True) -> list[Finding]:
    """H003: every split needs every class; validation needs LEAK and non-LEAK to select a model (a
    cross-validation fold's held-out groups select nothing, so there it is a warning)."""
    found = []
    for split, per_class in counts.items():
        missing = [name for name, n in per_class.items() if n == 0]
        total = sum(per_class.values())
        if total == 0:
            found.append(fail("H003", "setup", f"split {split} is empty"))
            continue
        if split == "train" and missing:
            found.append(fail("H003", "setup", f"split train has no {', '.join(missing)} files: those classes "
                                               f"cannot be learnt"))
        elif split == "val" and val_selects and ("LEAK" in missing or len(missing) == len(per_class) - 1):
            found.append(fail("H003", "setup", f"split val has no {', '.join(missing)} files: file-level leak F1 "
                                               f"cannot select a model"))
        elif missing:
            found.append(warn("H003", "setup", f"split {split} has no {', '.join(missing)} files"))
    low, high = LEAK_SHARE_RANGE
    if not low <= train_leak_share <= high:
        found.append(warn("H003", "setup", f"LEAK is {train_leak_share:.1%} of the training inputs (outside "
                                           f"{low:.0%}–{high:.0%}): a constant answer already looks good"))
    return found


def leakage_findings(groups: list[str], shas: list[str], splits: np.ndarray, paths: list[str]) -> list[Finding]:
    """H004: the same group or the same audio in two splits inflates every validation number."""
    found = []
    for what, keys in (("group", groups), ("identical audio", shas)):
        crossings = crossing_keys(keys, splits, paths)
        if crossings:
            example = crossings[0]
            found.append(fail("H004", "setup", f"{sum(c.count for c in crossings)} file(s) share a {what} with a "
                                               f"file of another split, e.g. {example.key!s:.24} in "
                                               f"{example.first_path} and {example.other_path}"))
    return found


def weight_findings(weights: list[float], capped: bool, cap: float, raw_ratio: float) -> list[Finding]:
    """H005: class weights far apart drive a model to the heavy class."""
    if capped:
        return [warn("H005", "setup", f"inverse-frequency class weights were {raw_ratio:.1f}x apart; capped at "
                                      f"{cap:g}x: {[round(w, 3) for w in weights]}")]
    return []


def trainable_findings(trainable: int, total: int, frozen_by_design: bool = False) -> list[Finding]:
    """H006: a stage that trains a handful of parameters (the rest frozen) converges in an epoch to nothing
    useful; a small model that trains all of its parameters is not this failure. A fusion
    stage that freezes its transferred encoders on purpose (training/fusion.py checks what it freezes) is
    judged on having something to train, not on the share."""
    if trainable == 0:
        return [fail("H006", "setup", f"no trainable parameters (of {total:,})")]
    if frozen_by_design:
        return []
    if trainable < total and (trainable < MIN_TRAINABLE or trainable < MIN_TRAINABLE_FRACTION * total):
        return [warn("H006", "setup", f"only {trainable:,} of {total:,} parameters are trainable "
                                      f"({trainable / total:.2%})")]
    return []


def cycling_findings(batch_size: int, train_inputs_per_rank: int) -> list[Finding]:
    """H011: a batch larger than the split silently shrinks (or, in other loaders, repeats samples)."""
    if batch_size > train_inputs_per_rank:
        return [warn("H011", "setup", f"batch_size {batch_size} exceeds the {train_inputs_per_rank} training "
                                      f"inputs per process: every epoch is one smaller batch")]
    return []


def epoch_order_findings(order: np.ndarray, n_inputs: int, epoch: int) -> list[Finding]:
    """H011: an epoch must visit each input at most once."""
    repeated = len(order) - len(np.unique(order))
    if repeated or (len(order) and (order.min() < 0 or order.max() >= n_inputs)):
        return [fail("H011", f"epoch {epoch}", f"the epoch's order repeats {repeated} input(s)")]
    return []


def setup_findings(config, card, head_outputs: int, has_aux: bool, data, weights, capped: bool,
                   raw_ratio: float, trainable: int, total: int, world: int = 1,
                   val_selects: bool = True, frozen_by_design: bool = False) -> list[Finding]:
    """Every check that can run before the first step, from the run's config, card, model and data."""
    train = data.splits["train"]
    return (
        config_findings(config.mode, card.mode, card.class_names, card.leak_idx, head_outputs, has_aux,
                        card.leak_prob, set(train.targets[train.is_leak].tolist()))
        + label_findings(card.class_names, data.class_counts(), float(train.is_leak.mean()) if len(train) else 0.0,
                         val_selects)
        + leakage_findings(data.groups, data.shas, data.split_codes, data.paths)
        + weight_findings(list(weights), capped, config.class_weight_cap, raw_ratio)
        + trainable_findings(trainable, total, frozen_by_design)
        + cycling_findings(config.batch_size, len(train) // world)
        + reference_findings(card.reference, data.paths, data.file_sensors())
    )


def reference_findings(reference: str | None, paths: list[str], sensors: list[str | None]) -> list[Finding]:
    """H017: a reference model whose sensors are too thin to have a usual sound. A file without a sensor id
    (`sensors`: each file's, None without one) could never be looked up in a table, and a sensor's only recording
    is its own reference, which normalises a steady leak away with the background (README: about chance)."""
    if reference is None or not paths:
        return []
    unnamed = [path for path, sensor in zip(paths, sensors) if sensor is None]
    if unnamed:
        return [fail("H017", "setup", f"{len(unnamed)} of the {len(paths)} files carry no sensor id (e.g. "
                                      f"{unnamed[0]}: {NO_SENSOR}): each would be its own reference, "
                                      f"and no table could hold it for scoring")]
    counts = Counter(sensors)
    alone = sum(1 for sensor in sensors if counts[sensor] == 1)
    if alone > ALONE_SHARE * len(paths):
        return [fail("H017", "setup", f"{alone} of the {len(paths)} files are their sensor's only recording, so "
                                      f"each is judged against itself and a steady leak vanishes with its background")]
    thin = thin_sensors(dict(counts))
    return [warn("H017", "setup", thin)] if thin else []


def trivial_loss(data, card, aux_weight: float) -> float:
    train = data.splits["train"]
    shares = np.bincount(train.targets, minlength=len(card.class_names)) / max(1, len(train))
    return prior_loss(shares, float(train.is_leak.mean()) if len(train) else 0.0,
                      aux_weight if card.leak_prob == "mean_softmax_aux" else None)


def truth_shares(split, n_classes: int) -> list[float]:
    return (np.bincount(split.targets, minlength=n_classes) / max(1, len(split))).tolist()


# ---- every epoch ---------------------------------------------------------------------------------

def prior_loss(train_class_shares: np.ndarray, leak_share: float, aux_weight: float | None) -> float:
    """Loss of the best constant predictor (the class prior): what a trivial solution scores."""
    shares = train_class_shares[train_class_shares > 0]
    loss = float(-(shares * np.log(shares)).sum())
    if aux_weight is not None and 0 < leak_share < 1:
        loss += aux_weight * float(-(leak_share * math.log(leak_share) + (1 - leak_share) * math.log(1 - leak_share)))
    return loss


def nonfinite_findings(epoch: int, train_loss: float, val_loss: float, weights_finite: bool) -> list[Finding]:
    """H012, checked after an epoch and BEFORE its checkpoints are written, so the last good one survives."""
    problems = ([] if weights_finite else ["the weights hold NaN or inf after this epoch"]) + [
        f"{name} {value}" for name, value in (("training loss", train_loss), ("validation loss", val_loss))
        if not math.isfinite(value)]
    if problems:
        return [fail("H012", f"epoch {epoch}", "; ".join(problems) + " (no checkpoint of this epoch was written)")]
    return []


def epoch_findings(history: list[dict], class_names, val_truth_shares: list[float], trivial_loss: float,
                   held_out_fold: bool = False, measured_by: str = "") -> list[Finding]:
    """Checks on the newest epoch of `history` (H007, H008, H010, H012).

    On a cross-validation fold (`held_out_fold`) validation is held-out sites that select nothing: a model that
    collapses or overfits there is what the fold exists to measure (its held-out F1 counts it), not a broken
    run, so H007 and H008 warn instead of stopping the fold. `measured_by` does the same for another run that
    exists to measure this, saying what measures it (a fusion branch alone in stage 0: H014). H010 and H012
    judge training itself and still fail."""
    if held_out_fold:
        measured_by = "on held-out cross-validation sites: measured by the fold's estimate, not stopped"
    row = history[-1]
    when = f"epoch {row['epoch']}"
    found = []
    shares = np.array(row["predicted_distribution"])
    truth = np.array(val_truth_shares)
    # on a fold (or a stage-0 branch) the two checks that judge the validation itself only warn, and say why
    stop, fold_note = (warn, f" ({measured_by})") if measured_by else (fail, "")

    def collapsed(r):
        predicted = np.array(r["predicted_distribution"])
        return predicted.max() >= COLLAPSE_SHARE and truth[predicted.argmax()] < COLLAPSE_SHARE

    if collapsed(row):
        top = int(shares.argmax())
        lasting = len(history) >= 5 and all(collapsed(r) for r in history[-5:])
        streak = ""
        if lasting:
            onto = [class_names[int(np.argmax(r["predicted_distribution"]))] for r in history[-5:]]
            changing = f", and onto one class or another for 5 epochs in a row ({', '.join(onto)})"
            streak = (" for 5 epochs in a row" if len(set(onto)) == 1 else changing) + fold_note
        found.append((stop if lasting else warn)(
            "H007", when, f"{shares[top]:.0%} of validation inputs are predicted {class_names[top]} whose true "
                          f"share is {truth[top]:.0%}{streak}"))
    elif abs(row["kappa"]) < KAPPA_ZERO and len(history) >= 2 and abs(history[-2]["kappa"]) < KAPPA_ZERO:
        found.append(warn("H007", when, f"Cohen's kappa {row['kappa']:.4f} ≈ 0 for two epochs: no better than "
                                        f"chance"))
    if row["epoch"] == 1:
        for c, name in enumerate(class_names):
            if shares[c] == 0 and truth[c] >= NEVER_PREDICTED_TRUTH_SHARE:
                found.append(warn("H007", when, f"{name} is never predicted while it is {truth[c]:.0%} of the "
                                                f"validation inputs"))
    poor = row["file_f1"] < 0.5 or row["kappa"] < 0.2
    if row["train_loss"] < NEAR_ZERO_LOSS and poor:
        found.append(stop("H008", when, f"training loss {row['train_loss']:.4f} is near zero (a constant "
                                        f"predictor of the training classes scores {trivial_loss:.4f}) while "
                                        f"validation file F1 is {row['file_f1']:.3f} and kappa {row['kappa']:.3f}"
                                        f"{fold_note}"))
    change = row.get("weight_change")
    if change is not None and not math.isfinite(change):
        found.append(fail("H012", when, "the weights hold NaN or inf after this epoch"))
    elif change is not None and change < MIN_RELATIVE_CHANGE:
        found.append(warn("H010", when, f"the weights moved by {change:.2e} of their norm this epoch (lr "
                                        f"{row['lr']:.2e}): too little for training to matter"))
    first_loss = history[0]["train_loss"]
    if len(history) >= 3 and row["train_loss"] > DIVERGENCE_FACTOR * min(r["train_loss"] for r in history) \
            and row["train_loss"] > first_loss:
        found.append(fail("H010", when, f"training loss {row['train_loss']:.4f} diverges (best "
                                        f"{min(r['train_loss'] for r in history):.4f})"))
    return found


def end_findings(history: list[dict], best_epoch: int) -> list[Finding]:
    """H009: weights restored from epoch 1 mean nothing after it helped."""
    if len(history) > 1 and best_epoch == history[0]["epoch"] == 1:
        return [warn("H009", "end", f"the best epoch is the first of {len(history)}: the weights of epoch 1 "
                                    f"are the ones kept")]
    return []


def baseline_findings(history: list[dict], best_epoch: int, baseline_val_f1: float | None) -> list[Finding]:
    """H015: the kept epoch's validation file F1 below the baseline's (training/baseline.py). It can only be
    judged once the best epoch is final, so it runs at the end, like H009."""
    kept = [row for row in history if row["epoch"] == best_epoch]
    if baseline_val_f1 is None or not kept or not kept[0]["file_f1"] < baseline_val_f1 - 1e-9:
        return []
    return [warn("H015", "end", f"the CNN's validation file F1 {kept[0]['file_f1']:.3f} (epoch {best_epoch}) is below "
                                f"the baseline's {baseline_val_f1:.3f} ({BASELINE_NAME}): the network is not "
                                f"earning its complexity")]


def cv_baseline_findings(cnn_f1: float, baseline_f1: float) -> list[Finding]:
    """H015 of a cross-validated run: the pooled held-out F1s, each fold judged as the others chose."""
    if not cnn_f1 < baseline_f1 - 1e-9:
        return []
    return [warn("H015", "end", f"the CNN's cross-validated held-out file F1 {cnn_f1:.3f} is below the baseline's "
                                f"{baseline_f1:.3f} ({BASELINE_NAME}): the network is not earning its complexity")]


def split_findings(split_f1: float | None, fold_f1: float | None, k: int) -> list[Finding]:
    """H016: the baseline's F1 on the validation split far above its mean F1 on the held-out folds of grouped
    cross-validation over the same training and validation files (training/cv.py split_check): the split's
    groups are easy ones, so the run's validation numbers, the CNN's included, are optimistic. Cheap enough
    to judge on every run."""
    if split_f1 is None or fold_f1 is None or not split_f1 > fold_f1 + OPTIMISM_MARGIN:
        return []
    return [warn("H016", "setup", f"the baseline scores file F1 {split_f1:.3f} on the validation split but "
                                  f"{fold_f1:.3f} on an average held-out fold of {k}-fold grouped cross-validation "
                                  f"of the same files: the validation groups are easier than most, expect less "
                                  f"on a new site")]


# ---- the report ----------------------------------------------------------------------------------

def phase(when: str) -> str:
    """`when` without its epoch number: "epoch 3" → "epoch", "stage 1-fusion, epoch 3" → "stage 1-fusion, epoch"."""
    return re.sub(r"epoch \d+$", "epoch", when)


class HealthMonitor:
    """Collects findings, prints each once, writes health.json, and stops the run on a failure."""

    def __init__(self, strict: bool = False, log=print, path: Path | None = None, stop: bool = True):
        self.strict, self.log, self.path, self.stop = strict, log, path, stop
        self.findings: list[Finding] = []

    def add(self, findings: list[Finding]) -> None:
        """Record findings; a warning already given under the same code in the same phase (setup, the epochs, the
        end; of the same fusion stage) is not repeated, so an epoch check warns once, not every epoch."""
        for finding in findings:
            if self.strict and finding.level == "warn":
                finding = Finding(finding.code, "fail", finding.when, finding.message + " (--strict)")
            if finding.level == "warn" and any(f.code == finding.code and f.level == "warn"
                                               and phase(f.when) == phase(finding.when) for f in self.findings):
                continue
            self.findings.append(finding)
            self.log(f"health {finding.line()}")
            if finding.level == "fail" and self.stop:
                self.write()
                raise HealthFailure(finding)
        self.write()

    def load(self) -> None:
        """Findings an earlier part of this run recorded (before a resume)."""
        if self.path is not None and self.path.is_file():
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            self.findings = [Finding(f["code"], f["level"], f["when"], f["message"]) for f in payload["findings"]]

    @property
    def status(self) -> str:
        levels = {f.level for f in self.findings}
        return "fail" if "fail" in levels else "warn" if "warn" in levels else "ok"

    def write(self) -> None:
        if self.path is None:
            return
        payload = {"status": self.status, "strict": self.strict,
                   "findings": [asdict(f) | {"name": f.name, "advice": f.advice} for f in self.findings]}
        write_atomic(self.path, json.dumps(payload, indent=2))

    def summary(self) -> list[str]:
        if not self.findings:
            return [f"health: all checks passed ({CHECKED})"]
        return [f"health: {self.status}"] + [f"  {f.line()}\n    what to do: {f.advice}" for f in self.findings]
