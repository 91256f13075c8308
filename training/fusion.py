"""`leak train --mode fusion`: a list of stages, each one ordinary training run (training/trainer.py).

Stage 0 trains each informative branch alone; stage 1 loads those encoders without their heads, freezes them,
and trains the heads, the meta encoder and the fusion weights; stage 2 unfreezes everything at a quarter of the
learning rate after a warm-up. Every stage has its own optimizer, schedule, early stopping and folder
(OUT/stages/<name>/, a full run directory), and every stage selects on (kappa above a floor, file F1), so a
collapsed epoch can never win. A stage-0 branch that ended collapsed is not frozen into the fusion (H014): it
trains from scratch in stage 1. best.pth is the best fused epoch of stages 1 and 2. Rerunning the command
skips finished stages and resumes an interrupted one from its last.pth, so the run is bit-exact on CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from leakhunter.checkpoint import card_of, load_checkpoint, save_atomic
from leakhunter.errors import InputError
from leakhunter.eval_tables import number
from leakhunter.files import write_atomic
from leakhunter.fingerprint import file_sha256
from leakhunter.frontend import FEATURE_NAMES, FEATURE_VERSION
from leakhunter.meta import MetaSpec, parse_fields
from leakhunter.models import parameter_count
from leakhunter.training.config import TrainConfig
from leakhunter.training.data import LeakData
from leakhunter.training.dataset import DatasetError, feature_version
from leakhunter.training.health import KAPPA_ZERO, HealthMonitor, fail, warn
from leakhunter.training.metrics import roc_auc

STAGE2_LR_FACTOR = 0.25  # fine-tuning pre-trained encoders; never the 1e-6 that froze the predecessor's stage 2
BRANCH_WIDTH = 64  # the features and meta MLPs' width
SATURATED = 0.02  # H013: a fusion weight below this (or above 1 - this) leaves one branch deciding alone
STILL = 1e-4  # H013: fusion logits that moved less than this over a whole stage never trained
STARVED = 1e-3  # H013: a branch gradient this far under the largest branch's
LEAKY_AUC = 0.98  # H004: a meta field that ranks the training files' labels this well is probably the label


@dataclass(frozen=True)
class FusionInputs:
    """What every stage shares, fitted once on the training split: the meta encoding and feature statistics."""

    branches: tuple[str, ...]
    prior: tuple[float, ...]
    meta: MetaSpec | None
    meta_rows: np.ndarray | None  # [n_files, n_meta] encoded, NaN unknown
    feature_mean: np.ndarray
    feature_std: np.ndarray
    leakage: tuple = ()  # H004 findings on the meta fields (meta_leakage_findings)
    fingerprint: str = ""  # the dataset's (LeakData.content_fingerprint): a rebuilt dataset retrains every stage

    @classmethod
    def fit(cls, config: TrainConfig) -> FusionInputs:
        branches = config.branch_list()
        prior = config.prior_list() or tuple(1.0 / len(branches) for _ in branches)
        data = LeakData(config.data, config.mode, max_memory=config.max_memory)
        try:
            with h5py.File(data.path, "r") as h5:
                version = feature_version(h5)
                features = h5["short/features"][...] if "features" in branches else None
            if "features" in branches and version < FEATURE_VERSION:
                raise DatasetError(f"{data.path}: its engineered features are version {version}; fusion takes "
                                   f"version {FEATURE_VERSION} (exportable roll-off, flatness and zcr): rebuild it "
                                   f"with `leak data build`")
            train = data.splits["train"]
            meta = meta_rows = None
            leakage = []
            if "meta" in branches:
                meta = MetaSpec.fit(parse_fields(config.meta), [data.file_meta(f) for f in train.file_index])
                meta_rows = np.stack([meta.encode(data.file_meta(f)) for f in range(len(data.paths))])
                leakage = meta_leakage_findings(meta, meta_rows[train.file_index], train.file_is_leak)
            mean, std = np.zeros(len(FEATURE_NAMES)), np.ones(len(FEATURE_NAMES))
            if features is not None:
                values = features[np.unique(train.input_index)].astype(np.float64)
                mean, std = values.mean(axis=0), values.std(axis=0)
                std = np.where(std > 1e-6, std, 1.0)  # a feature constant in training: no division by ~0
        finally:
            data.close()
        return cls(branches, prior, meta, meta_rows, mean.astype(np.float32), std.astype(np.float32),
                   tuple(leakage), data.content_fingerprint)

    def card(self) -> dict:
        """The card's `branches`: what each branch reads and how it is normalised (predict needs the same)."""
        return {"names": list(self.branches), "prior": [round(p, 6) for p in self.prior],
                "features": {"version": FEATURE_VERSION, "names": list(FEATURE_NAMES),
                             "mean": [round(float(x), 5) for x in self.feature_mean],
                             "std": [round(float(x), 5) for x in self.feature_std]}
                if "features" in self.branches else None,
                "meta": None if self.meta is None else self.meta.to_dict()}


@dataclass
class Stage:
    """One stage: which branches its model has, what it transfers (branch → stage-0 best.pth), what it freezes,
    and what it starts from. The trainer calls its hooks; the rest of training is the ordinary loop."""

    name: str
    number: int
    branches: tuple[str, ...]
    inputs: FusionInputs
    transfer: dict[str, Path] = field(default_factory=dict)
    start_from: Path | None = None
    transferred: list[str] = field(default_factory=list)
    start_weights: list[float] = field(default_factory=list)  # the fusion weights training starts from

    @property
    def measured_by(self) -> str:
        """Stage 0 measures whether a branch learns alone: collapsing or memorising there is an answer (H014)."""
        return "a branch alone in fusion stage 0: one that learns nothing alone is not frozen into the fusion " \
               "(H014), not stopped" if self.number == 0 else ""

    @property
    def frozen(self) -> bool:
        return bool(self.transfer)

    def prepare_data(self, data: LeakData) -> None:
        data.use_branches(self.branches, self.inputs.meta_rows)

    def architecture(self, config: TrainConfig) -> dict:
        prior = [self.inputs.prior[self.inputs.branches.index(b)] for b in self.branches]
        prior = [round(p / sum(prior), 6) for p in prior]
        params = config.architecture_params() | {"branches": list(self.branches), "prior": prior,
                                                 "branch_width": BRANCH_WIDTH}
        if "meta" in self.branches:
            params["n_meta"] = len(self.inputs.meta.columns)
        return {"name": "fusion", "params": params}

    def card_branches(self) -> dict:
        return self.inputs.card() | {"stage": self.name}

    def prepare_model(self, net, data: LeakData, log) -> None:
        """Statistics into the branches' normalisers, the stage-0 encoders in (their heads left out), frozen."""
        if "features" in self.branches:
            net.features.normalise.mean.copy_(torch.from_numpy(self.inputs.feature_mean))
            net.features.normalise.std.copy_(torch.from_numpy(self.inputs.feature_std))
        if "meta" in self.branches:
            mean, std = self.inputs.meta.standardisation()
            net.meta.normalise.mean.copy_(torch.from_numpy(mean))
            net.meta.normalise.std.copy_(torch.from_numpy(std))
            net.meta.column_field.copy_(torch.from_numpy(self.inputs.meta.column_fields()))
        if self.start_from is not None:
            net.load_state_dict(load_checkpoint(self.start_from)["model"])
        own = net.state_dict()
        for branch, path in self.transfer.items():
            state = load_checkpoint(path)["model"]
            encoder = {k: v for k, v in state.items()
                       if k.startswith(f"{branch}.") and not k.startswith(f"{branch}.head.")}
            own.update(encoder)
            self.transferred += sorted(encoder)
            for name, parameter in net.named_parameters():
                if name in encoder:
                    parameter.requires_grad_(False)
        net.load_state_dict(own)
        self.start_weights = net.fusion_weights().tolist()
        if log is not None and self.transfer:
            log(f"stage {self.name}: {len(self.transferred)} tensors of the {', '.join(self.transfer)} encoder(s) "
                f"loaded from stage 0 and frozen; heads, fusion weights and other branches train")

    def setup_findings(self, net, optimizer) -> list:
        """H013: fusion weights that cannot learn are the predecessor's fixed 0.7/0.3 by another name."""
        if len(self.branches) < 2:
            return []
        weights = net.fusion_logits
        in_optimizer = any(p is weights for group in optimizer.param_groups for p in group["params"])
        if not weights.requires_grad or not in_optimizer:
            return [fail("H013", "setup", f"the fusion weights are {'frozen' if not weights.requires_grad else 'not in the optimizer'}: "
                                          f"they would stay {net.fusion_weights().tolist()}")]
        return []

    def selection_key(self, metrics: dict, val_loss: float) -> tuple:
        """(kappa above the floor, file F1, -loss): an epoch predicting one class never beats one that does not."""
        return (float(metrics["kappa"] > KAPPA_ZERO), metrics["file_f1"], -val_loss)


def meta_leakage_findings(spec: MetaSpec, rows: np.ndarray, is_leak: np.ndarray) -> list:
    """H004 (warn): a meta field that tells LEAK training files from the rest almost perfectly (AUC above LEAKY_AUC
    either way; a category scored by its LEAK share) is more likely a copy of the label than a measurement."""
    found = []
    column_fields = spec.column_fields()
    for index, name in enumerate(spec.fields):
        values = rows[:, column_fields == index]
        known = ~np.isnan(values).any(axis=1)
        if name in spec.numeric:
            score = values[known, 0]
        else:
            category = values[known].argmax(axis=1)
            shares = np.array([is_leak[known][category == c].mean() if (category == c).any() else 0.0
                               for c in range(values.shape[1])])
            score = shares[category]
        truth = is_leak[known]
        if known.sum() < 2 or truth.all() or not truth.any():
            continue
        auc = roc_auc(truth, score)
        if max(auc, 1 - auc) > LEAKY_AUC:
            found.append(warn("H004", "setup", f"meta field {name!r} separates the training files' LEAK from the "
                                               f"rest with AUC {max(auc, 1 - auc):.3f}: probably the label (or a "
                                               f"proxy of it) leaking into the model, not a measurement"))
    return found


def gradient_findings(stage: str, net, epoch: int) -> list:
    """H013: a branch whose gradient (the epoch's last step, over its trainable parameters) is ~0 next to the
    others' learns nothing from the fusion: a fixed small weight starved the predecessor's branch this way."""
    norms = {}
    for name in net.branch_names:
        grads = [p.grad for p in getattr(net, name).parameters() if p.requires_grad and p.grad is not None]
        if grads:
            norms[name] = float(torch.sqrt(sum(g.float().square().sum() for g in grads)))
    if len(norms) < 2 or max(norms.values()) == 0:
        return []
    top = max(norms.values())
    return [warn("H013", f"stage {stage}, epoch {epoch}", f"the {name} branch's gradient is {norm / top:.1e} of the "
                                                          f"largest branch's: it hardly learns from the fusion")
            for name, norm in norms.items() if norm < STARVED * top]


def weight_findings(stage: str, start: list[float], weights: list[float], branches, epoch: int | None) -> list:
    """H013 during (`epoch`) and at the end of a stage: a saturated weight, weights that never moved."""
    when = f"stage {stage}" + (f", epoch {epoch}" if epoch is not None else ", end")
    found = [warn("H013", when, f"fusion weight of {b} is {w:.3f}: one branch decides alone")
             for b, w in zip(branches, weights) if w < SATURATED or w > 1 - SATURATED]
    if epoch is None and max(abs(a - b) for a, b in zip(start, weights)) < STILL:
        found.append(warn("H013", when, f"the fusion weights never moved from {[round(w, 4) for w in start]}"))
    return found


class FusionRun:
    """The stages of one fusion run, in order, each skipped when done before and resumed when interrupted."""

    def __init__(self, config: TrainConfig, log=print):
        from leakhunter.training.distributed import launch_from_env

        if launch_from_env().world > 1:
            raise InputError("--mode fusion trains in one process: its stages are separate runs that share files; "
                             "start it without torchrun")
        self.config, self.log = config, log
        self.out = Path(config.out or "runs/fusion")  # fixed: the same command finishes an interrupted run
        if (self.out / "best.pth").exists() or (self.out / "cv.json").exists():  # an interrupted one has neither
            kind = "fusion run" if (self.out / "stages").is_dir() else "run"
            raise FileExistsError(f"{self.out} already holds a finished {kind}; choose another --out (an "
                                  "interrupted fusion run continues when its command is given again)")
        self.inputs = FusionInputs.fit(config)
        self.out.mkdir(parents=True, exist_ok=True)
        self.health = HealthMonitor(config.strict, log, self.out / "health.json", stop=False)
        self.health.add(list(self.inputs.leakage))
        self.summaries: list[dict] = []

    def _key(self, stage: Stage) -> str:
        """What a finished stage was made from: the settings, the data (its fingerprint and feature version) and
        the checkpoints it started from, so a rebuilt dataset or a retrained stage 0 trains the stage again."""
        settings = self.config.learning_settings()
        sources = {str(name): file_sha256(path) for name, path in
                   [*sorted(stage.transfer.items()), ("start_from", stage.start_from)] if path is not None}
        text = json.dumps([settings, stage.name, self.inputs.fingerprint, FEATURE_VERSION, sources], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _best(self, summary: dict) -> Path:
        """A finished stage's best.pth, in this run's folder (a run moved elsewhere still finds its own)."""
        return self.out / "stages" / summary["stage"] / "best.pth"

    def run_stage(self, stage: Stage, config: TrainConfig) -> dict:
        from leakhunter.training.trainer import Trainer

        folder = self.out / "stages" / stage.name
        done = folder / "stage.json"
        if done.is_file() and json.loads(done.read_text())["key"] == self._key(stage):
            summary = json.loads(done.read_text())["summary"]
            self.log(f"stage {stage.name}: done before ({folder}): {stage_line(summary)}")
            self._add_stage_findings(stage, folder)
            return summary
        last = folder / "checkpoints" / "last.pth"
        resume = last if last.is_file() and (folder / "stage.key").is_file() and \
            (folder / "stage.key").read_text() == self._key(stage) else None
        if resume is None:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            write_atomic(folder / "stage.key", self._key(stage))
        def watch(trainer, epoch):
            if len(stage.branches) > 1 and trainer.rank == 0:
                self.log(f"  fusion weights after epoch {epoch}: " + " ".join(
                    f"{b} {w:.3f}" for b, w in zip(stage.branches, trainer.net.fusion_weights().tolist())))
            if len(stage.branches) > 1:
                trainer._check(weight_findings(stage.name, stage.start_weights, trainer.net.fusion_weights().tolist(),
                                               stage.branches, epoch)
                               + gradient_findings(stage.name, trainer.net, epoch))

        trainer = Trainer(replace(config, out=str(folder)), resume=resume, log=self.log, stage=stage, on_epoch=watch)
        result = trainer.fit()
        trainer.data.close()
        best = result.history[result.best_epoch - 1]
        weights = torch.softmax(load_checkpoint(folder / "best.pth")["model"]["fusion_logits"], 0).tolist()
        summary = {"stage": stage.name, "branches": list(stage.branches), "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history), "file_f1": best["file_f1"], "kappa": best["kappa"],
                   "trainable_parameters": parameter_count(trainer.net, trainable_only=True),
                   "parameters": parameter_count(trainer.net), "fusion_weights": [round(w, 4) for w in weights],
                   "start_weights": [round(w, 4) for w in stage.start_weights],
                   "transferred": stage.transferred, "test_f1": result.card.training["test_metrics"]["file_f1"],
                   }
        self._add_stage_findings(stage, folder)
        write_atomic(done, json.dumps({"key": self._key(stage), "summary": summary}, indent=2))
        self.log(f"stage {stage.name}: {stage_line(summary)}")
        return summary

    def _add_stage_findings(self, stage: Stage, folder: Path) -> None:
        """A fused stage's findings (its own health.json) into the run's; a branch alone may collapse or memorise,
        and stage 0 answers that with H014, its findings staying in its own folder."""
        if stage.number > 0:
            recorded = HealthMonitor(path=folder / "health.json", stop=False)
            recorded.load()
            self.health.add([replace(f, when=f"stage {stage.name}, {f.when}") for f in recorded.findings])

    def run(self):
        config, inputs = self.config, self.inputs
        alone = {b: self.run_stage(Stage(f"0-{b}", 0, (b,), inputs), config) for b in inputs.branches}
        self.summaries += list(alone.values())
        collapsed = [b for b, s in alone.items() if s["kappa"] <= KAPPA_ZERO]
        self.health.add(collapsed_findings(self.summaries))
        # the audio encoders are transferred and frozen; the meta encoder (small, and only useful with the others) trains
        transfer = {b: self._best(s) for b, s in alone.items() if b not in collapsed and b != "meta"}
        fused = self.run_stage(Stage("1-fusion", 1, inputs.branches, inputs, transfer=transfer), config)
        tuned = self.run_stage(Stage("2-finetune", 2, inputs.branches, inputs, start_from=self._best(fused)),
                               replace(config, lr=config.lr * STAGE2_LR_FACTOR, warmup_epochs=1))
        self.summaries += [fused, tuned]
        self.health.add(fused_findings(self.summaries))
        return self._finish(alone, fused, collapsed)

    def _finish(self, alone: dict, fused: dict, collapsed: list[str]):
        """best.pth: the better fused stage, its card listing the stages, the transfer and the fusion weights."""
        from leakhunter.training.trainer import TrainResult

        winner = best_fused(self.summaries)
        best_single = max(alone.values(), key=lambda s: s["file_f1"])
        payload = load_checkpoint(self._best(winner))
        card = card_of(payload, self._best(winner))
        branches = card.branches | {"weights": winner["fusion_weights"], "collapsed_alone": collapsed,
                                    "transferred": fused["transferred"], "selected_stage": winner["stage"],
                                    "stages": [{k: s[k] for k in s if k != "transferred"} for s in self.summaries]}
        card = replace(card, name=self.out.name, branches=branches)
        save_atomic({"card": card.to_json(), "model": payload["model"]}, self.out / "best.pth")
        write_atomic(self.out / "model_meta.json", card.to_json())
        self.health.write()
        for line in self.health.summary():
            self.log(line)
        self.log(f"fusion: best fused stage {winner['stage']} (val file F1 {winner['file_f1']:.3f}, test "
                 f"{number(winner['test_f1'])}; best single branch {best_single['branches'][0]}: val "
                 f"{best_single['file_f1']:.3f}, test {number(best_single['test_f1'])}) → {self.out / 'best.pth'}")
        test = card.training.get("test_metrics", {})
        return TrainResult(run_dir=self.out, card=card, best_epoch=winner["best_epoch"], history=[],
                           test_metrics=test, stopped_early=False, health=self.health.findings, baseline={})


def stage_summaries(run_dir: Path) -> list[dict]:
    """The stages of the run best.pth came from (its card lists them: a rerun with other branches leaves older
    stage folders behind), else, for a run stopped before best.pth, the finished stages' stage.json."""
    best = Path(run_dir) / "best.pth"
    if best.is_file():
        return card_of(load_checkpoint(best), best).branches["stages"]
    found = sorted(Path(run_dir).glob("stages/*/stage.json"), key=lambda p: (p.parent.name[0], p.stat().st_mtime))
    return [json.loads(p.read_text(encoding="utf-8"))["summary"] for p in found]


def best_fused(summaries: list[dict]) -> dict:
    """The fused stage best.pth keeps: (not collapsed, file F1), the earlier stage of equals."""
    return max((s for s in summaries if len(s["branches"]) > 1), key=lambda s: (s["kappa"] > KAPPA_ZERO, s["file_f1"]))


def collapsed_findings(summaries: list[dict]) -> list:
    """H014 from stage 0's summaries: the branches that learned nothing alone (one finding naming all)."""
    collapsed = [s for s in summaries if len(s["branches"]) == 1 and s["kappa"] <= KAPPA_ZERO]
    if not collapsed:
        return []
    which = ", ".join(f"{s['branches'][0]} (best kappa {s['kappa']:.3f})" for s in collapsed)
    return [warn("H014", "stage 0", f"branch(es) that ended collapsed alone: {which}; not frozen into the fusion "
                                    f"but trained from scratch in stage 1")]


def fused_findings(summaries: list[dict]) -> list:
    """H013 at the end of the fused stages: weights that never moved or saturated, a branch informative alone
    that the fusion ignores, a fused model worse than the best branch alone. Recomputed by `leak doctor`."""
    alone = {s["branches"][0]: s for s in summaries if len(s["branches"]) == 1}
    found = []
    for summary in summaries:
        if len(summary["branches"]) > 1:
            found += weight_findings(summary["stage"], summary["start_weights"], summary["fusion_weights"],
                                     summary["branches"], None)
    winner, best_single = best_fused(summaries), max(alone.values(), key=lambda s: s["file_f1"])
    if winner["file_f1"] < best_single["file_f1"]:
        found.append(warn("H013", "end", f"the fused model's validation file F1 {winner['file_f1']:.3f} is below "
                                         f"the {best_single['branches'][0]} branch alone ({best_single['file_f1']:.3f})"))
    for branch, weight in zip(winner["branches"], winner["fusion_weights"]):
        if alone[branch]["kappa"] > KAPPA_ZERO and weight < 0.05:
            found.append(warn("H013", "end", f"the {branch} branch was informative alone (kappa "
                                             f"{alone[branch]['kappa']:.3f}) but weighs {weight:.3f} in the fusion"))
    return found


def use_card_inputs(data: LeakData, card, source: str) -> None:
    """Serve a fusion card's inputs from a dataset file (`leak eval`): its branches, the dataset's features if
    computed as the card's were, and each file's meta encoded with the card's own fields and vocabulary."""
    names, meta = card.architecture["params"]["branches"], card.branches.get("meta")
    if card.branches.get("features"):
        with h5py.File(data.path, "r") as h5:
            version = feature_version(h5)
        if version != card.branches["features"]["version"]:
            raise DatasetError(f"{data.path}: its engineered features are version {version}, {source} was trained "
                               f"on version {card.branches['features']['version']}: rebuild it with `leak data build`")
    rows = None
    if meta:
        spec = MetaSpec.from_dict(meta)
        rows = np.stack([spec.encode(data.file_meta(f)) for f in range(len(data.paths))])
    data.use_branches(tuple(names), rows)


def stage_line(summary: dict) -> str:
    """The one summary line of a stage."""
    weights = summary.get("fusion_weights")
    fused = "" if not weights or len(weights) < 2 else ", fusion weights " + " ".join(
        f"{b} {w:.2f}" for b, w in zip(summary["branches"], weights))
    return (f"best epoch {summary['best_epoch']}/{summary['epochs_run']}, val file F1 {summary['file_f1']:.3f}, "
            f"kappa {summary['kappa']:.3f}, trainable {summary['trainable_parameters']:,}/"
            f"{summary['parameters']:,} parameters{fused}; test file F1 {number(summary['test_f1'])}")


def train_fusion(config: TrainConfig, log=print):
    """`leak train --mode fusion`: the stages and best.pth (a TrainResult like train()'s)."""
    return FusionRun(config, log).run()
