"""The one training loop, for every mode (the card's Mode says its classes and P(LEAK) rule; the loss and
schedule are training/objective.py's). A fusion run is a list of these runs, each given a `stage`
(training/fusion.py) that chooses its inputs, transfer, freezing and epoch selection.

It selects the model on file-level leak F1 computed exactly as predict votes, writes a run directory
of self-describing, atomically written checkpoints, and resumes bit-for-bit on CPU.
"""

from __future__ import annotations

import csv
import io
import math
import re
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

import leakhunter
from leakhunter.card import CardError, ModelCard, VotingConfig
from leakhunter.checkpoint import CheckpointError, card_of, load_checkpoint, rewrite_card, save_atomic
from leakhunter.devices import autocast_dtype, to_device
from leakhunter.errors import InputError
from leakhunter.eval_tables import number
from leakhunter.files import write_atomic
from leakhunter.models import Scorer, build_model, check_weights, parameter_count
from leakhunter.operating import operating_points
from leakhunter.sources import leak_like_labels_warning
from leakhunter.training.augment import Augmenter
from leakhunter.training.baseline import fit_baseline
from leakhunter.training.config import TrainConfig, make_config, save_config
from leakhunter.training.cv import RunPlan, split_check
from leakhunter.training.data import LeakData
from leakhunter.training.distributed import (
    StepLosses,
    barrier,
    end_group,
    launch_from_env,
    share,
    start_group,
    together,
    training_device,
)
from leakhunter.training.evaluate import evaluate_split, finite_or_none, score_split
from leakhunter.training.health import (
    HealthFailure,
    HealthMonitor,
    baseline_findings,
    end_findings,
    epoch_findings,
    epoch_order_findings,
    fail,
    nonfinite_findings,
    setup_findings,
    trivial_loss,
    truth_shares,
)
from leakhunter.training.metrics import undefined_metrics
from leakhunter.training.objective import LeakLoss, class_weights, lr_factor
from leakhunter.training.plots import plot_confusion, plot_curves
from leakhunter.voting import calibrate_threshold, per_long_segment

RESUMABLE_OVERRIDES = ("epochs", "patience", "device", "eval_batch_size", "strict")
METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "segment_accuracy", "file_f1", "file_precision", "file_recall",
                  "file_specificity", "file_auc", "file_accuracy", "kappa", "threshold", "lr", "weight_change", "seconds")


@dataclass
class TrainResult:
    run_dir: Path
    card: ModelCard
    best_epoch: int
    history: list[dict]
    test_metrics: dict
    stopped_early: bool
    health: list
    baseline: dict  # training/baseline.py on the same split: its metrics on val and test


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(leakhunter.__file__).parent,
                                capture_output=True, text=True, timeout=5)
        return result.stdout.strip() if result.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def epoch_checkpoints(folder: Path) -> list[Path]:
    """epoch_N.pth files in `folder`, oldest first by the epoch NUMBER (names sort wrongly past 999)."""
    numbered = [(int(match.group(1)), path) for path in folder.glob("epoch_*.pth")
                if (match := re.fullmatch(r"epoch_(\d+)\.pth", path.name))]
    return [path for _, path in sorted(numbered)]


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Keep the newest `keep` epoch checkpoints."""
    for old in epoch_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def metrics_csv_text(history: list[dict]) -> str:
    """metrics.csv from the run's history: rewritten whole each epoch, so a resume never repeats a row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS + ("predicted_distribution",))
    for row in history:
        writer.writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in METRIC_COLUMNS]
                        + [" ".join(f"{share:.3f}" for share in row["predicted_distribution"])])
    return buffer.getvalue()


def find_resume_checkpoint(path: Path, warn) -> dict:
    """last.pth, or the newest loadable epoch checkpoint beside it when last.pth is damaged."""
    try:
        payload = load_checkpoint(path)
        if "config" not in payload or "optimizer" not in payload:  # a best.pth: weights and card, no training
            last = path.parent / "checkpoints" / "last.pth"
            raise InputError(f"{path}: holds a model's weights, not a training state to resume"
                             + (f"; pass {last}" if last.is_file() else ""))
        return payload
    except CheckpointError as error:
        for candidate in reversed(epoch_checkpoints(path.parent)):
            try:
                payload = load_checkpoint(candidate)
            except CheckpointError:
                continue
            warn(f"{error}; resuming from {candidate} instead")
            return payload
        raise


def _resume_config(payload: dict, overrides: dict, source: Path) -> TrainConfig:
    """The run's own config, continued in the run's own folder wherever the command runs (out is where the
    checkpoint is, not the saved path taken from another working folder), with the few settings a resume may
    change."""
    saved = make_config(payload["config"])
    source = Path(source).resolve()  # `--resume last.pth` from inside checkpoints/ too
    run_dir = source.parent.parent if source.parent.name == "checkpoints" else source.parent
    if Path(saved.out).resolve() != run_dir:
        saved = replace(saved, out=str(run_dir))
    if overrides.get("data") is not None and Path(overrides["data"]).resolve() == Path(saved.data).resolve():
        overrides = {k: v for k, v in overrides.items() if k != "data"}  # the same file, however it is spelt
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(saved, k) != v}
    refused = sorted(set(changed) - set(RESUMABLE_OVERRIDES))
    if refused:
        card = card_of(payload, source)
        raise CardError([(key, f"{source} was trained with {key}={getattr(saved, key)!r}, the request asks "
                               f"{key}={changed[key]!r}" + (f" (its card: {card.mode}, {list(card.class_names)})"
                                                             if key == "mode" else "")) for key in refused],
                        f"resume of {source}")
    return replace(saved, **{k: changed[k] for k in changed})


def class_mapping(data) -> str:
    """Which dataset labels each of the model's classes trains on, with their file counts (`NOLEAK ← NORMAL
    40, QUIET 40`), so a label merged into another class is seen at the start of a run."""
    merged: dict[int, list[str]] = {}
    for label, (name, count) in enumerate(data.label_counts().items()):
        if count:  # every file of a label trains towards one class: the first one's says which
            target = int(data.file_targets[np.argmax(data.file_labels == label)])
            merged.setdefault(target, []).append(f"{name} {count}")
    return "; ".join(f"{data.class_names[target]} ← {', '.join(names)}" for target, names in sorted(merged.items()))


IN_SAMPLE_NOTE = ("on the final model's in-sample validation, which selects nothing: the cross-validation "
                  "measured it, at its chosen threshold")


def validation_measured_by(data, stage=None) -> str:
    """What measures a run whose validation is not there to stop it (epoch_findings' `measured_by`): a fusion
    stage's own rule, the final model of --cv (in-sample validation), else "" (the trainer and doctor share it)."""
    if stage is not None:
        return stage.measured_by
    return IN_SAMPLE_NOTE if data.validation_in_sample() else ""


class Trainer:
    def __init__(self, config: TrainConfig, resume: str | Path | None = None, overrides: dict | None = None,
                 log=print, plan: RunPlan | None = None, on_epoch=None, stage=None):
        """`on_epoch(trainer, epoch)` runs after each epoch's validation (the cross-validation driver collects
        held-out predictions with it). `stage` is one stage of a fusion run (training/fusion.py): it chooses the
        architecture, the inputs, what is transferred and frozen, and how an epoch is selected."""
        self.log, self.on_epoch, self.stage = log, on_epoch, stage
        self.launch = launch_from_env()
        self.rank, self.world = self.launch.rank, self.launch.world
        self.payload = None
        if resume is not None:
            resume = Path(resume)
            self.payload = find_resume_checkpoint(resume, lambda text: log(f"warning: {text}"))
            try:
                config = _resume_config(self.payload, overrides or {}, resume)
            except CardError as error:
                raise HealthFailure(fail("H002", "setup", str(error))) from None
            plan = RunPlan(**self.payload["plan"]) if self.payload.get("plan") else None
        else:  # saved absolute (config.yaml, checkpoints): a resume or `leak doctor` from another folder finds it
            config = replace(config, data=str(Path(config.data).resolve()))
        self.config, self.plan = config, plan
        self.run_dir = Path(config.out or f"runs/{config.mode}-{datetime.now():%Y%m%d-%H%M%S}")
        if resume is None and (self.run_dir / "best.pth").exists():
            last = self.run_dir / "checkpoints" / "last.pth"  # none in a fusion or --cv run's folder
            raise FileExistsError(f"{self.run_dir} already holds a run; "
                                  + (f"pass --resume {last} or " if last.is_file() else "") + "choose another --out")
        self.device = training_device(config.device, self.launch)  # under torchrun: cuda:LOCAL_RANK or cpu
        start_group(self.launch, self.device)  # train() destroys it on every exit path
        self.amp = autocast_dtype(self.device, config.amp)
        torch.manual_seed(config.seed)
        self.data = LeakData(config.data, config.mode, max_memory=config.max_memory,
                             log=log if self.rank == 0 else None,
                             streamed=None if self.payload is None else self.payload.get("streamed"),
                             split_files=None if plan is None else plan.split_files,
                             reference=config.card_reference())
        if stage is not None:
            stage.prepare_data(self.data)
        self.card = self._card()
        if self.payload is not None:
            try:
                self.data.check_card(card_of(self.payload, resume), str(resume))
                if self.payload.get("data_fingerprint") != self.data.fingerprint:
                    raise CardError([("data", f"{resume} was trained on data with fingerprint "
                                              f"{self.payload.get('data_fingerprint')}, {config.data} now has "
                                              f"{self.data.fingerprint} (rebuilt or re-split)")], f"resume of {resume}")
                check_weights(self.card, self.payload["model"], str(resume))
            except CardError as error:
                raise HealthFailure(fail("H002", "setup", str(error))) from None
        self.net = build_model(self.card).to(self.device)
        if config.normalise and self.net.normalise is not None:
            mean, std = self.data.mel_statistics(relative=config.level == "relative")
            self.net.normalise.mean.copy_(torch.from_numpy(mean))
            self.net.normalise.std.copy_(torch.from_numpy(std))
            self.card = replace(self.card, normalisation={"per_mel_bin": True,
                                                          "mean": mean.astype(float).round(4).tolist(),
                                                          "std": std.astype(float).round(4).tolist()})
        if stage is not None:  # before the optimizer: it takes the trainable parameters only
            stage.prepare_model(self.net, self.data, log if self.rank == 0 else None)
        self.channels_last = config.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.scorer = Scorer(self.net, self.card)
        train = self.data.splits["train"]
        weights, self.weights_capped, raw_ratio = class_weights(train.targets, len(self.card.class_names),
                                                                config.class_weight_cap)
        self.criterion = LeakLoss(weights, config.loss, config.focal_gamma, config.aux_weight).to(self.device)
        self.augmenter = Augmenter(config.augment, config.seed, stream=self.rank)  # training inputs only
        model = self.net
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if
                                                        self.device.type == "cuda" else None)
        self.model = torch.compile(model) if config.compile else model
        self.optimizer = torch.optim.AdamW(self.trainable(), lr=config.lr, weight_decay=config.weight_decay)
        per_rank = len(train) // self.world
        self.steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
        total = config.epochs * self.steps_per_epoch
        warmup = config.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, warmup, config.schedule))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.history: list[dict] = []
        self.start_epoch, self.best_epoch, self.best_key = 1, 0, (-1.0, 0.0)
        if self.rank == 0:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.health = HealthMonitor(config.strict, log, self.run_dir / "health.json" if self.rank == 0 else None)
        self.trivial_loss = trivial_loss(self.data, self.card, config.aux_weight)
        if self.payload is not None:
            self._restore(self.payload)
            self.health.load()
        else:
            trainable = parameter_count(self.net, trainable_only=True)
            self._check(setup_findings(config, self.card, self.net.head.out_features, self.net.aux is not None,
                                       self.data, weights.tolist(), self.weights_capped, raw_ratio, trainable,
                                       parameter_count(self.net), self.world, val_selects=plan is None,
                                       frozen_by_design=stage is not None and stage.frozen)
                        + ([] if stage is None else stage.setup_findings(self.net, self.optimizer)))
        # the bar the network must clear (H015); deterministic, so a resume and `leak doctor` refit the same one
        self.baseline = fit_baseline(self.data)
        if plan is None and self.payload is None:  # H016: is the validation split's estimate optimistic?
            self._check(split_check(self.data, self.baseline.metrics["val"]["file_f1"], config.seed))

    def trainable(self) -> list[nn.Parameter]:
        """The parameters this run trains (a fusion stage freezes some); the optimizer and H010 see these."""
        return [p for p in self.net.parameters() if p.requires_grad]

    def _together(self, action):
        """Run `action`; if it fails on any rank, every rank raises that failure (training/distributed.py)."""
        return together(action, self.launch, self.device, self.health.add)

    def _check(self, findings) -> None:
        """Record health findings; a failure on one rank stops all ranks with the same finding."""
        self._together(lambda: self.health.add(findings))

    def _card(self) -> ModelCard:
        config, data = self.config, self.data
        architecture = ({"name": "leakcnn", "params": config.architecture_params()} if self.stage is None
                        else self.stage.architecture(config))
        return ModelCard.for_mode(
            config.mode, data.class_names, frontend=data.frontend, segmentation=data.segmentation,
            architecture=architecture, branches=None if self.stage is None else self.stage.card_branches(),
            name=self.run_dir.name, created=datetime.now(UTC).isoformat(timespec="seconds"),
            leakhunter_version=leakhunter.__version__, git_commit=_git_commit(),
            channel_policy=data.channel_policy, reference=config.card_reference(),
        )

    def _restore(self, payload: dict) -> None:
        self.net.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"]["torch"])
        if torch.cuda.is_available() and payload["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        self.history = payload["history"]
        self.start_epoch = payload["epoch"] + 1
        self.best_epoch = payload["best_epoch"]
        self.best_key = tuple(payload["best_key"])
        self.card = card_of(payload, "last.pth")  # the run's card (normalisation, created) as first written

    # ---- one epoch -------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> float:
        train = self.data.splits["train"]
        order = self.data.epoch_order(train, self.config.seed, epoch)
        order = order[: len(order) // self.world * self.world]  # every rank takes the same number of steps
        mine, size = order[self.rank::self.world], self.config.batch_size
        self._check(epoch_order_findings(mine, len(train), epoch))
        self.model.train()
        losses = StepLosses(self.device, self.launch)  # the per-step loss read (and, under DDP, shared)
        for step, start in enumerate(range(0, len(mine), size)):
            rows = mine[start:start + size]
            inputs = self.data.batch(train, rows).to(self.device)
            targets = to_device(torch.from_numpy(train.targets[rows]), self.device)
            is_leak = to_device(torch.from_numpy(train.is_leak[rows]), self.device)
            if inputs.mel is not None:  # augmentation works on the mel (training inputs only)
                mel = self.augmenter(inputs.mel, is_leak, epoch, step)
                inputs = inputs._replace(mel=mel.to(memory_format=torch.channels_last) if self.channels_last else mel)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits, aux = self.model(*inputs.args())
                loss = self.criterion(logits, aux, targets, is_leak)
            losses.push(step, loss, len(rows))
            self._stop_on_nonfinite(losses.settle(), epoch, order)  # CPU: this step, before its update
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self._stop_on_nonfinite(losses.settle(final=True), epoch, order)
        return losses.mean

    def _stop_on_nonfinite(self, bad: tuple[int, int, float] | None, epoch: int, order: np.ndarray) -> None:
        """H012 for the first non-finite loss: its step, its rank under DDP, and that batch's files.

        Every rank holds every rank's losses (StepLosses), so all ranks raise this at the same step."""
        if bad is None:
            return
        step, rank, value = bad
        size, train = self.config.batch_size, self.data.splits["train"]
        rows = order[rank::self.world][step * size:(step + 1) * size]
        files = sorted({train.paths[i] for i in train.input_file[rows]})
        where = f"step {step + 1}" + (f" on rank {rank}" if self.world > 1 else "")
        self.health.add([fail("H012", f"epoch {epoch}", f"{where}: training loss {value}; the batch's files: "
                              f"{', '.join(files[:5])}" + (f" and {len(files) - 5} more" if len(files) > 5 else ""))])

    def _validate(self) -> tuple[dict, float]:
        val = self.data.splits["val"]
        probs, leak_prob, val_loss = score_split(self.scorer, self.data, val, self.config.eval_batch_size,
                                                 self.device, self.amp, self.criterion)
        unit = self.card.segmentation.unit
        long_prob = per_long_segment(leak_prob, unit, val.long_first_input, self.data.shorts_per_long)
        threshold, _ = calibrate_threshold(long_prob, val.long_file, val.file_is_leak,
                                           self.card.voting.vote_fraction)
        if self.plan is not None and self.plan.threshold is not None:
            threshold = self.plan.threshold
        result = evaluate_split(val, probs, leak_prob, self.card.class_names, threshold,
                                self.card.voting.vote_fraction, self.data.shorts_per_long, unit, self.card.mode)
        # This epoch's named thresholds, for the card: in the history (checkpoints), never in METRIC_COLUMNS. An
        # in-sample validation (a cross-validated final model) has none: they would flatter it; the folds' do not.
        result.metrics["operating_points"] = None if self.data.validation_in_sample() else operating_points(
            long_prob, val.long_file, val.file_is_leak, self.card.voting.vote_fraction)
        return result.metrics, val_loss

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train; a run a health check stops leaves its best.pth marked as such (`stopped_by` in the card), so
        export refuses it and info, predict and serve say so, instead of deploying a failed run's weights silently."""
        try:
            return self._fit()
        except HealthFailure as failure:
            if self.rank == 0 and (self.run_dir / "best.pth").is_file():
                finding = failure.finding
                how = ("see what the check says; its epochs are done, so a resume trains nothing (--strict fails on "
                       "warnings)" if finding.when == "end" else
                       "rerun the same leak train --cv command" if self.data.validation_in_sample() else
                       "rerun the same leak train --mode fusion command" if self.stage is not None else
                       f"leak train --resume {self.run_dir / 'checkpoints' / 'last.pth'}")
                mark = {"code": finding.code, "when": finding.when, "message": finding.message,
                        "epoch": self.best_epoch, "finish": how}
                try:
                    rewrite_card(self.run_dir / "best.pth",
                                 lambda card: replace(card, training={**card.training, "stopped_by": mark}),
                                 self.run_dir / "model_meta.json")
                except OSError as error:  # the failure, not the disk, is what the run reports
                    self.log(f"warning: {self.run_dir / 'best.pth'} could not be marked as stopped ({error})")
            raise

    def _fit(self) -> TrainResult:
        config = self.config
        if self.rank == 0:
            save_config(config, self.run_dir / "config.yaml")
            if self.history:  # a resume: drop rows of epochs after the checkpoint (a kill before last.pth)
                write_atomic(self.run_dir / "metrics.csv", metrics_csv_text(self.history))
        self.log(f"run {self.run_dir}: mode {config.mode}, classes {list(self.card.class_names)}, "
                 f"{parameter_count(self.net):,} parameters, device {self.device}, "
                 f"{len(self.data.splits['train']):,} training inputs, {self.steps_per_epoch} steps/epoch")
        if tuple(self.data.dataset_classes) != tuple(self.card.class_names):  # e.g. binary: NOLEAK gathers the rest
            self.log(f"classes from the dataset's labels: {class_mapping(self.data)}")
        leak_like = leak_like_labels_warning(self.data.label_counts())
        if leak_like:
            self.log(f"warning: {leak_like}")
        self.log(f"class weights {np.round(self.criterion.weights.cpu().numpy(), 3).tolist()}"
                 + (f" (capped at {config.class_weight_cap}x)" if self.weights_capped else ""))
        if self.plan is None:
            self.log(f"{self.baseline.line()}: the network must beat its validation F1")
        else:
            self.log(f"{self.plan.label}: {self._plan_text()}")
        stopped_early = False
        self.epochs_trained = 0  # in this process (a resume that trains none keeps best.pth's stop mark)
        last_epoch = config.epochs if self.plan is None or self.plan.stop_after is None else self.plan.stop_after
        for epoch in range(self.start_epoch, last_epoch + 1):
            self.epochs_trained += 1
            started = time.perf_counter()
            before = torch.cat([p.detach().flatten() for p in self.trainable()]).clone()
            train_loss = self._train_epoch(epoch)
            after = torch.cat([p.detach().flatten() for p in self.trainable()])
            # rank 0's numbers on every rank: the same history, findings, best epoch and early stop everywhere
            metrics, val_loss = share(self._validate(), self.launch, self.device)
            # before any checkpoint is written: non-finite weights must not overwrite the last good one
            self._check(nonfinite_findings(epoch, train_loss, val_loss, bool(torch.isfinite(after).all())))
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **metrics,
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                   "weight_change": float((after - before).norm() / before.norm().clamp(min=1e-12))}
            self.history.append(row)
            key = (metrics["file_f1"], -val_loss) if self.stage is None else self.stage.selection_key(metrics, val_loss)
            improved = key > self.best_key or self.plan is not None  # a plan keeps its last epoch
            if improved:
                self.best_key, self.best_epoch = key, epoch
            self.log(_epoch_line(row, improved))
            # rank 0 alone writes; a failed write there stops every rank instead of leaving them waiting
            self._together(lambda e=epoch, r=row, i=improved: self._write_epoch(e, r, i) if self.rank == 0 else None)
            self._check(epoch_findings(self.history, self.card.class_names,
                                       truth_shares(self.data.splits["val"], len(self.card.class_names)),
                                       self.trivial_loss, held_out_fold=self.data.held_out_fold(),
                                       measured_by=validation_measured_by(self.data, self.stage)))
            if self.on_epoch is not None:
                self.on_epoch(self, epoch)
            if epoch - self.best_epoch >= config.patience:
                self.log(f"early stop: no better file-level leak F1 for {config.patience} epochs")
                stopped_early = True
                break
        return self._finish(stopped_early)

    def _plan_text(self) -> str:
        plan, splits = self.plan, self.data.splits
        sizes = ", ".join(f"{len(splits[name].file_index)} {name}" for name in splits)
        epochs = f"{plan.stop_after} of {self.config.epochs}" if plan.stop_after else str(self.config.epochs)
        validation = ("in-sample: it selects nothing" if self.data.validation_in_sample()
                      else "held-out groups: it selects nothing, the folds' pooled predictions do")
        return (f"files {sizes}; {epochs} epochs, the last kept; validation is {validation}"
                + (f"; threshold {plan.threshold:.2f} from out-of-fold predictions" if plan.threshold is not None
                   else ""))

    def _training_card(self, row: dict) -> ModelCard:
        voting = VotingConfig(threshold=round(float(row["threshold"]), 4),
                              vote_fraction=self.card.voting.vote_fraction)
        training = {"data": str(self.data.path), "data_fingerprint": self.data.fingerprint,
                    "class_counts": self.data.class_counts(), "best_epoch": row["epoch"],
                    "parameters": parameter_count(self.net),
                    "trainable_parameters": parameter_count(self.net, trainable_only=True),
                    "val_metrics": finite_or_none({k: row[k] for k in METRIC_COLUMNS if k in row}),
                    # a plan's baseline is cross-validated with it (training.cv in the final card)
                    "baseline": None if self.plan else finite_or_none(self.baseline.to_dict()),
                    "config": self.config.to_dict()}
        return replace(self.card, voting=voting, training=training, operating_points=row.get("operating_points"))

    def _write_epoch(self, epoch: int, row: dict, improved: bool) -> None:
        write_atomic(self.run_dir / "metrics.csv", metrics_csv_text(self.history))
        state = self.net.state_dict()
        if improved:
            best_card = self._training_card(row)
            save_atomic({"card": best_card.to_json(), "model": state}, self.run_dir / "best.pth")
            write_atomic(self.run_dir / "model_meta.json", best_card.to_json())
        full = {
            "card": self.card.to_json(), "model": state, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best_epoch": self.best_epoch, "best_key": list(self.best_key), "history": self.history,
            "config": self.config.to_dict(), "data_fingerprint": self.data.fingerprint,
            "streamed": self.data.streamed,  # the loading path decides the shuffle order: a resume keeps it
            "plan": None if self.plan is None else self.plan.to_dict(),
        }
        checkpoints = self.run_dir / "checkpoints"
        save_atomic(full, checkpoints / f"epoch_{epoch:03d}.pth")
        save_atomic(full, checkpoints / "last.pth")
        prune_checkpoints(checkpoints, self.config.keep_checkpoints)

    def _finish(self, stopped_early: bool) -> TrainResult:
        if self.world > 1:
            barrier(self.device)  # rank 0 has written best.pth
        best = load_checkpoint(self.run_dir / "best.pth", map_location=self.device)
        card = card_of(best, self.run_dir / "best.pth")
        self.net.load_state_dict(best["model"])
        test = self.data.splits["test"]
        probs, leak_prob = score_split(self.scorer, self.data, test, self.config.eval_batch_size, self.device,
                                       self.amp)
        evaluation = evaluate_split(test, probs, leak_prob, card.class_names, card.voting.threshold,
                                    card.voting.vote_fraction, self.data.shorts_per_long,
                                    card.segmentation.unit, card.mode)
        test_metrics = evaluation.metrics
        # a resumed run that trained on past its stop finishes; one that only reached its end again keeps the mark
        training = {k: v for k, v in card.training.items() if k != "stopped_by" or not self.epochs_trained}
        undefined = undefined_metrics(test.file_is_leak, evaluation.file_verdict)  # null (n/a), not 0.0 or NaN
        card = replace(card, training={**training, "test_metrics": finite_or_none({
            k: None if k in undefined else test_metrics[k]
            for k in ("file_f1", "file_precision", "file_recall", "file_specificity", "file_auc", "file_accuracy",
                      "n_files", "confusion")})})
        if self.rank == 0:
            save_atomic({"card": card.to_json(), "model": best["model"]}, self.run_dir / "best.pth")
            write_atomic(self.run_dir / "model_meta.json", card.to_json())
            plot_curves(self.history, self.run_dir / "curves.png", self.best_epoch)
            plot_confusion(np.array(test_metrics["confusion"]), card.class_names, self.run_dir / "confusion.png",
                           f"best epoch {self.best_epoch} on test ({test_metrics['n_files']} files)")
        # a plan selects nothing on validation: H009 and H015 are judged on the folds (training/cv.py)
        if self.plan is None:
            self._check(end_findings(self.history, self.best_epoch)
                        + baseline_findings(self.history, self.best_epoch, self.baseline.metrics["val"]["file_f1"]))
        for line in self.health.summary():
            self.log(line)
        test_card = card.training["test_metrics"]
        self.log(f"{'best' if self.plan is None else 'kept'} epoch {self.best_epoch}: val file F1 "
                 f"{self.history[self.best_epoch - 1]['file_f1']:.3f}, threshold "
                 f"{card.voting.threshold:.2f}; test file F1 {number(test_card['file_f1'])}, precision "
                 f"{number(test_card['file_precision'])}, recall {number(test_card['file_recall'])}, "
                 f"AUC {number(test_card['file_auc'])} on {test_metrics['n_files']} files")
        if self.plan is None:  # a plan's baseline is cross-validated with it (training/cv.py)
            self.log(self.baseline.line())
        return TrainResult(run_dir=self.run_dir, card=card, best_epoch=self.best_epoch, history=self.history,
                           test_metrics=test_metrics, stopped_early=stopped_early, health=self.health.findings,
                           baseline=self.baseline.to_dict())


def _epoch_line(row: dict, improved: bool) -> str:
    shares = " ".join(f"{s:.2f}" for s in row["predicted_distribution"])
    return (f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}/{row['val_loss']:.4f}  "
            f"seg acc {row['segment_accuracy']:.3f}  file F1 {row['file_f1']:.3f} P {row['file_precision']:.3f} "
            f"R {row['file_recall']:.3f} spec {row['file_specificity']:.3f} AUC {row['file_auc']:.3f}  "
            f"kappa {row['kappa']:.3f}  thr {row['threshold']:.2f}  pred [{shares}]  lr {row['lr']:.2e}  "
            f"{row['seconds']:.1f}s" + ("  *" if improved else ""))


def train(config: TrainConfig, resume: str | Path | None = None, overrides: dict | None = None,
          log=print) -> TrainResult:
    """Train (or resume) a model; returns the run directory, final card and test metrics.

    Under torchrun the process group this call creates is destroyed on every exit path (success, a health
    failure, an error), so no rank leaves a group behind."""
    created = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    try:
        return Trainer(config, resume=resume, overrides=overrides, log=log).fit()
    finally:
        end_group(created)
