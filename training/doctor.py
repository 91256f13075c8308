"""`leak doctor RUN_DIR`: re-run the health checks on a finished (or stopped) run from its files.

It recomputes every check from config.yaml, the checkpoints' history and card, and the dataset file,
with the same functions the live run used, and adds what only the live run could see (a non-finite
step, a refused resume) from health.json.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from leakhunter.card import MODES
from leakhunter.checkpoint import card_of, load_checkpoint
from leakhunter.models import build_model, parameter_count
from leakhunter.training.baseline import fit_baseline
from leakhunter.training.config import make_config
from leakhunter.training.cv import split_check
from leakhunter.training.data import LeakData
from leakhunter.training.dataset import DatasetError
from leakhunter.training.health import (
    Finding,
    HealthMonitor,
    baseline_findings,
    cv_baseline_findings,
    end_findings,
    epoch_findings,
    setup_findings,
    trivial_loss,
    truth_shares,
)
from leakhunter.training.objective import class_weights
from leakhunter.training.trainer import validation_measured_by


def doctor(run_dir: str | Path, log=lambda text: None) -> HealthMonitor:
    """The run's findings, recomputed; raises FileNotFoundError naming what is missing."""
    run_dir = Path(run_dir)
    if (run_dir / "stages").is_dir():
        return doctor_fusion(run_dir, log)
    config_path, last_path = run_dir / "config.yaml", run_dir / "checkpoints" / "last.pth"
    stopped_at_setup = (run_dir / "health.json").is_file() and not last_path.is_file() and not (
        run_dir / "best.pth").is_file()  # not a run whose checkpoints were pruned or not copied
    if stopped_at_setup:  # nothing to recompute: what it recorded
        return with_live_findings(HealthMonitor(log=log, stop=False), run_dir)
    for needed in (config_path, last_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: missing; is {run_dir} a leakhunter run directory?")
    config = make_config(yaml.safe_load(config_path.read_text(encoding="utf-8")))
    if not Path(config.data).is_file():  # older runs saved the data path as given
        where = "" if Path(config.data).is_absolute() else ", relative to the folder it was trained in: run it there"
        raise DatasetError(f"{config.data}: no such dataset file (the data of {config_path}{where})")
    last = load_checkpoint(last_path)
    card = card_of(last, last_path)
    plan = last.get("plan")  # a cross-validation fold or final model: its own splits, nothing selected on val
    data = LeakData(config.data, config.mode, split_files=None if plan is None else plan["split_files"],
                    reference=card.reference)
    train = data.splits["train"]
    weights, capped, raw_ratio = class_weights(train.targets, len(card.class_names), config.class_weight_cap)
    network = build_model(card)
    network.load_state_dict(last["model"])
    trainable = (card.training or {}).get("trainable_parameters", parameter_count(network, trainable_only=True))
    monitor = HealthMonitor(strict=config.strict, log=log, stop=False)
    monitor.add(setup_findings(config, card, network.head.out_features, network.aux is not None, data,
                               weights.tolist(), capped, raw_ratio, trainable, parameter_count(network),
                               val_selects=plan is None, frozen_by_design=MODES[card.mode].staged))
    shares = truth_shares(data.splits["val"], len(card.class_names))
    constant_loss = trivial_loss(data, card, config.aux_weight)
    history = last["history"]
    for end in range(1, len(history) + 1):
        monitor.add(epoch_findings(history[:end], card.class_names, shares, constant_loss,
                                   held_out_fold=data.held_out_fold(), measured_by=validation_measured_by(data)))
    finished = (run_dir / "best.pth").is_file() and history and (
        history[-1]["epoch"] == config.epochs or history[-1]["epoch"] - last["best_epoch"] >= config.patience)
    if plan is None:
        baseline_f1 = fit_baseline(data, ("val",)).metrics["val"]["file_f1"]  # H015 and H016 judge validation
        monitor.add(split_check(data, baseline_f1, config.seed))
        if finished:
            monitor.add(end_findings(history, last["best_epoch"])
                        + baseline_findings(history, last["best_epoch"], baseline_f1))
    elif (run_dir / "best.pth").is_file():
        cv = (card_of(load_checkpoint(run_dir / "best.pth"), run_dir / "best.pth").training or {}).get("cv")
        if cv:  # the final model of `leak train --cv`: H015 on the folds' pooled held-out F1
            monitor.add(cv_baseline_findings(cv["pooled"]["file_f1"], cv["baseline"]["pooled"]["file_f1"]))
    return with_live_findings(monitor, run_dir)


def with_live_findings(monitor: HealthMonitor, run_dir: Path) -> HealthMonitor:
    """Add what only the live run could see (a non-finite step, a refused resume, a meta field that copies the
    label, a branch starved of gradient) from its health.json, where no recomputed finding has the code."""
    live = run_dir / "health.json"
    if live.is_file():
        recorded = [Finding(f["code"], f["level"], f["when"], f["message"])
                    for f in json.loads(live.read_text(encoding="utf-8"))["findings"]]
        seen = {(f.code, f.level) for f in monitor.findings}
        monitor.add([f for f in recorded if (f.code, f.level) not in seen])
    return monitor



def doctor_fusion(run_dir: Path, log) -> HealthMonitor:
    """A fusion run (training/fusion.py): every fused stage's checks, recomputed as for any run (a branch alone in
    stage 0 is judged by H014 instead), then H014 and H013 from the finished stages' summaries."""
    from leakhunter.training.fusion import collapsed_findings, fused_findings, stage_summaries

    summaries = stage_summaries(run_dir)
    if not summaries:
        raise FileNotFoundError(f"{run_dir / 'stages'}: no finished stage (stage.json); rerun the training command")
    monitor = HealthMonitor(log=log, stop=False)
    monitor.add(collapsed_findings(summaries))
    for summary in summaries:
        if len(summary["branches"]) > 1:
            stage = doctor(run_dir / "stages" / summary["stage"])
            monitor.add([replace(f, when=f"stage {summary['stage']}, {f.when}") for f in stage.findings])
    if any(len(s["branches"]) > 1 for s in summaries):
        monitor.add(fused_findings(summaries))
    return with_live_findings(monitor, run_dir)
