"""Each past incident, reproduced small, makes its health check fire; healthy runs stay quiet."""

import json
import shutil

import h5py
import numpy as np
import pytest
import soundfile
import torch
from conftest import quick_config
from typer.testing import CliRunner

from leakhunter.checkpoint import card_of, load_checkpoint
from leakhunter.cli import app
from leakhunter.inference.predict import predict
from leakhunter.training import trainer as trainer_module
from leakhunter.training.doctor import doctor
from leakhunter.training.health import HealthFailure
from leakhunter.training.trainer import Trainer, train

QUIET = lambda text: None  # noqa: E731


def codes(findings, level=None):
    return [f.code for f in findings if level is None or f.level == level]


def health_json(run_dir):
    return json.loads((run_dir / "health.json").read_text())


def edited_dataset(source, tmp_path, edit):
    """A copy of the dataset with its file arrays changed by `edit(files: dict)`."""
    path = tmp_path / "edited.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as h5:
        files = {k: h5["files"][k][...] for k in ("label", "split")}
        files["group"] = h5["files/group"].asstr()[...].astype(object)
        edit(files)
        h5["files/label"][...] = files["label"]
        h5["files/split"][...] = files["split"]
        del h5["files/group"]
        h5.create_dataset("files/group", data=files["group"], dtype=h5py.string_dtype())
    return path


def failing_run(config):
    with pytest.raises(HealthFailure) as caught:
        train(config, log=QUIET)
    return caught.value


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_runs_raise_no_failure_and_at_most_one_warning(training_dataset, tmp_path, mode, seed):
    result = train(quick_config(training_dataset, tmp_path / "run", mode=mode, seed=seed), log=QUIET)
    assert codes(result.health, "fail") == []
    assert len(result.health) <= 1, [f.line() for f in result.health]
    assert "H015" not in codes(result.health)  # the network beats (or ties) the baseline on validation
    assert health_json(result.run_dir)["status"] in ("ok", "warn")


def test_h001_a_head_that_disagrees_with_the_mode_stops_before_the_first_step(training_dataset, tmp_path,
                                                                              monkeypatch):
    """Incident: a binary switch that never took effect trained a 5-class model."""
    build = trainer_module.build_model

    def five_class_head(card):
        model = build(card)
        model.head = torch.nn.Linear(256, 5)
        return model

    monkeypatch.setattr(trainer_module, "build_model", five_class_head)
    failure = failing_run(quick_config(training_dataset, tmp_path / "run", mode="binary"))
    assert failure.finding.code == "H001" and failure.finding.when == "setup"
    assert "the head has 5 outputs for 2 classes" in failure.finding.message
    assert failure.exit_code == 101
    assert health_json(tmp_path / "run")["findings"][-1]["code"] == "H001"
    assert not (tmp_path / "run" / "checkpoints" / "last.pth").exists()


def test_h002_resuming_a_multiclass_run_as_binary_is_refused(training_dataset, tmp_path):
    train(quick_config(training_dataset, tmp_path / "run", mode="multiclass", epochs=1), log=QUIET)
    with pytest.raises(HealthFailure) as caught:
        Trainer(quick_config("x", "y"), resume=tmp_path / "run" / "checkpoints" / "last.pth",
                overrides={"mode": "binary"}, log=QUIET)
    assert caught.value.finding.code == "H002" and caught.value.exit_code == 102
    assert "mode='multiclass', the request asks mode='binary'" in caught.value.finding.message


def test_h003_a_validation_split_without_leak_files_fails_at_setup(training_dataset, tmp_path):
    def no_val_leak(files):
        files["split"][(files["split"] == 1) & (files["label"] == 0)] = 0

    data = edited_dataset(training_dataset, tmp_path, no_val_leak)
    failure = failing_run(quick_config(data, tmp_path / "run"))
    assert failure.finding.code == "H003" and "split val has no LEAK" in failure.finding.message


def test_h003_an_extreme_leak_share_warns(training_dataset, tmp_path):
    def few_leaks(files):
        train_leaks = np.flatnonzero((files["split"] == 0) & (files["label"] == 0))
        files["label"][train_leaks[1:]] = 1  # one LEAK file left in train

    data = edited_dataset(training_dataset, tmp_path, few_leaks)
    trainer = Trainer(quick_config(data, tmp_path / "run", mode="binary"), log=QUIET)
    warnings = [f for f in trainer.health.findings if f.code == "H003"]
    assert warnings and warnings[0].level == "warn" and "of the training inputs" in warnings[0].message


def test_h004_a_sensor_in_train_and_test_fails_at_setup_and_through_the_cli(training_dataset, tmp_path):
    def leak_a_group(files):
        test_file = np.flatnonzero(files["split"] == 2)[0]
        train_file = np.flatnonzero(files["split"] == 0)[0]
        files["group"][test_file] = files["group"][train_file]

    data = edited_dataset(training_dataset, tmp_path, leak_a_group)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"),
                                      "--epochs", "1"])
    assert result.exit_code == 104, result.output
    assert "H004 leakage (fail) at setup" in result.output and "what to do" in result.output
    assert health_json(tmp_path / "run")["status"] == "fail"


def test_h005_class_weights_far_apart_are_capped_and_reported(training_dataset, tmp_path):
    trainer = Trainer(quick_config(training_dataset, tmp_path / "run", mode="binary"), log=QUIET)
    weights = [f for f in trainer.health.findings if f.code == "H005"]
    assert weights[0].level == "warn" and "4.0x apart; capped at 3x" in weights[0].message
    assert float(trainer.criterion.weights.max() / trainer.criterion.weights.min()) == pytest.approx(3.0)


def test_h006_a_frozen_model_training_a_handful_of_parameters_warns(training_dataset, tmp_path, monkeypatch):
    build = trainer_module.build_model

    def frozen(card):
        model = build(card)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("head")
        return model

    monkeypatch.setattr(trainer_module, "build_model", frozen)
    trainer = Trainer(quick_config(training_dataset, tmp_path / "run"), log=QUIET)
    finding = [f for f in trainer.health.findings if f.code == "H006"][0]
    assert finding.level == "warn" and "only 1,285 of 618,758 parameters are trainable" in finding.message


def test_h007_a_model_stuck_on_one_class_warns_then_fails_after_five_epochs(training_dataset, tmp_path,
                                                                            monkeypatch):
    """Incident: val accuracy equal to one class's share, kappa 0.0000 for 20 epochs."""
    build = trainer_module.build_model

    def biased(card):
        model = build(card)
        with torch.no_grad():
            model.head.bias[1] = 50.0  # everything looks NORMAL
        return model

    monkeypatch.setattr(trainer_module, "build_model", biased)
    messages = []
    with pytest.raises(HealthFailure) as caught:
        train(quick_config(training_dataset, tmp_path / "run", lr=1e-9, epochs=8), log=messages.append)
    assert caught.value.finding.code == "H007" and caught.value.finding.when == "epoch 5"
    assert "100% of validation inputs are predicted NORMAL whose true share is 20%" in caught.value.finding.message
    assert any("H007 prediction collapse (warn) at epoch 1" in m for m in messages)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")["epoch"] == 5
    # the best.pth it leaves says so: export refuses it, info and predict warn (it was used silently)
    best = tmp_path / "run" / "best.pth"
    stopped = card_of(load_checkpoint(best), best).training["stopped_by"]
    assert stopped["code"] == "H007" and stopped["when"] == "epoch 5" and "predicted NORMAL" in stopped["message"]
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(best)])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "its run was stopped by health check H007 at epoch 5" in said, refused.output
    assert f"to finish it: leak train --resume {tmp_path / 'run' / 'checkpoints' / 'last.pth'}" in said
    assert "export it anyway with --allow-stopped" in said and not (tmp_path / "run" / "best.onnx").exists()
    for json_too in ([], ["--json"]):
        info = runner.invoke(app, ["info", str(best), *json_too])
        assert info.exit_code == 0 and "warning:" in info.output and "stopped by health check H007" in info.output
    # a resume that trains no further epoch (--epochs at the stop) reaches the end again: the mark stays
    train(quick_config(training_dataset, tmp_path / "run"), resume=tmp_path / "run" / "checkpoints" / "last.pth",
          overrides={"epochs": 5}, log=QUIET)
    assert card_of(load_checkpoint(best), best).training["stopped_by"]["code"] == "H007"
    recording = tmp_path / "r.wav"
    soundfile.write(recording, np.random.default_rng(0).standard_normal(8000 * 4) * 0.1, 8000)
    warned = []
    assert predict([recording], best, workers=0, warn=warned.append).rows[0]["status"] == "ok"
    assert warned == [f"{best}: {card_of(load_checkpoint(best), best).stopped_by()}"]


def test_h008_loss_near_zero_on_nearly_constant_targets_fails(tmp_path):
    """Incident: loss 0.0 at epoch 2 because nearly all targets were the same. Here 0.4 % of the training
    inputs are not LEAK (one short QUIET file) and validation's non-LEAK files are pumps: the model
    learns "anything audible is a leak", its loss falls to ~0 and validation kappa stays 0."""
    import soundfile

    from leakhunter.synth import synth_recording
    from leakhunter.training.dataset import build_dataset

    rows = ["path,label,split"]
    plan = [("LEAK", "train", 30, 4.0), ("QUIET", "train", 1, 0.5), ("LEAK", "val", 6, 4.0),
            ("MECHANICAL", "val", 6, 4.0), ("LEAK", "test", 2, 4.0), ("MECHANICAL", "test", 2, 4.0)]
    for label, split, count, seconds in plan:
        for i in range(count):
            path = tmp_path / f"{label}-{split}-{i}.wav"
            rng = np.random.default_rng([len(rows), 7])
            soundfile.write(path, synth_recording(label, seconds, 8000, rng), 8000, subtype="PCM_16")
            rows.append(f"{path.name},{label},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    data = build_dataset(tmp_path / "manifest.csv", tmp_path / "data.h5").output
    messages = []
    with pytest.raises(HealthFailure) as caught:
        train(quick_config(data, tmp_path / "run", mode="binary", epochs=8), log=messages.append)
    assert caught.value.finding.code == "H008", caught.value.finding.line()
    assert "is near zero" in caught.value.finding.message
    assert any("H003 labels (warn) at setup: LEAK is 99." in m for m in messages)


def test_h009_and_h010_a_learning_rate_that_never_moves_the_weights(training_dataset, tmp_path):
    """Incident: a fine-tuning stage at LR 1e-6 never moved; every stage restored epoch-1 weights."""
    result = train(quick_config(training_dataset, tmp_path / "run", lr=1e-12, epochs=3), log=QUIET)
    assert result.best_epoch == 1
    assert "H010" in codes(result.health, "warn") and "H009" in codes(result.health, "warn")
    report = doctor(tmp_path / "run")
    assert [(f.code, f.level) for f in report.findings] == [(f.code, f.level) for f in result.health]


def test_h010_a_diverging_loss_fails():
    from leakhunter.training.health import epoch_findings

    history = []
    for epoch, loss in enumerate([0.9, 0.4, 0.3, 1.2], start=1):
        history.append({"epoch": epoch, "train_loss": loss, "file_f1": 0.9, "kappa": 0.8, "lr": 1e-2,
                        "predicted_distribution": [0.5, 0.5], "weight_change": 0.01})
        findings = epoch_findings(history, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69)
    assert [(f.code, f.level) for f in findings] == [("H010", "fail")]
    assert "training loss 1.2000 diverges (best 0.3000)" in findings[0].message


def test_h011_a_batch_larger_than_the_training_split_warns(training_dataset, tmp_path):
    trainer = Trainer(quick_config(training_dataset, tmp_path / "run", batch_size=1_000_000), log=QUIET)
    finding = [f for f in trainer.health.findings if f.code == "H011"][0]
    assert "batch_size 1000000 exceeds the 2835 training inputs" in finding.message


def test_h012_a_nan_stops_within_one_step_names_the_files_and_keeps_the_last_good_checkpoint(
        training_dataset, tmp_path, monkeypatch):
    original = trainer_module.LeakLoss.forward
    calls = {"n": 0}

    def poisoned(self, logits, aux, targets, is_leak):
        calls["n"] += 1
        loss = original(self, logits, aux, targets, is_leak)
        return loss * float("nan") if calls["n"] == 12 + 1 + 3 else loss  # epoch 1: 12 steps + validation

    monkeypatch.setattr(trainer_module.LeakLoss, "forward", poisoned)
    failure = failing_run(quick_config(training_dataset, tmp_path / "run"))
    assert failure.finding.code == "H012" and failure.finding.when == "epoch 2"
    assert failure.finding.message.startswith("step 3: training loss nan; the batch's files: ")
    assert ".wav" in failure.finding.message
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pth")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values())


def test_strict_turns_a_warning_into_a_failure(training_dataset, tmp_path):
    failure = failing_run(quick_config(training_dataset, tmp_path / "run", mode="binary", strict=True))
    assert failure.finding.code == "H005" and failure.finding.level == "fail"
    # stopped at setup, before any checkpoint: doctor says what stopped it (it said "not a run directory")
    assert not (tmp_path / "run" / "checkpoints" / "last.pth").exists()
    cli = CliRunner().invoke(app, ["doctor", str(tmp_path / "run")])
    assert cli.exit_code == 1 and failure.finding.line() in " ".join(cli.output.split()), cli.output
    pruned = tmp_path / "pruned"  # a finished run's best.pth and health.json without its checkpoints: no pass
    pruned.mkdir()
    (pruned / "health.json").write_text('{"status": "pass", "findings": []}')
    (pruned / "best.pth").write_bytes(b"")
    cli = CliRunner().invoke(app, ["doctor", str(pruned)])
    assert cli.exit_code == 2 and "a leakhunter run directory?" in " ".join(cli.output.split()), cli.output


def test_doctor_prints_the_live_findings(training_dataset, tmp_path):
    result = train(quick_config(training_dataset, tmp_path / "run", mode="binary"), log=QUIET)
    cli = CliRunner().invoke(app, ["doctor", str(tmp_path / "run")])
    assert cli.exit_code == 0
    for finding in result.health:
        assert finding.line() in " ".join(cli.output.split())
    assert [f.line() for f in doctor(tmp_path / "run").findings] == [f.line() for f in result.health]


# ---- the promised branches not reproduced above (issue 9, item 16) -------------------------------------

def _row(epoch, kappa=0.5, shares=(0.5, 0.5), loss=0.5):
    return {"epoch": epoch, "train_loss": loss, "file_f1": 0.8, "kappa": kappa, "lr": 1e-3,
            "predicted_distribution": list(shares), "weight_change": 0.01}


def test_h007_kappa_near_zero_for_two_epochs_warns_on_the_second():
    from leakhunter.training.health import epoch_findings

    history = [_row(1, kappa=0.01)]
    assert epoch_findings(history, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69) == []
    history.append(_row(2, kappa=-0.02))
    found = epoch_findings(history, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69)
    assert [(f.code, f.level, f.when) for f in found] == [("H007", "warn", "epoch 2")]
    assert "kappa -0.0200 ≈ 0 for two epochs" in found[0].message
    history[0]["kappa"] = 0.3  # one epoch near zero is not enough
    assert epoch_findings(history, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69) == []


def test_h007_a_collapse_that_changes_class_says_so_instead_of_naming_one_for_five_epochs():
    """Five collapsed epochs stop a run whichever class each collapsed onto, but the message named the last
    epoch's class "for 5 epochs in a row" where it had been predicted in one of them."""
    from leakhunter.training.health import epoch_findings

    names, truth = ["LEAK", "NOLEAK"], [0.2, 0.8]
    onto = [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    history = [_row(epoch, kappa=0.0, shares=shares) for epoch, shares in enumerate(onto, start=1)]
    [found] = [f for f in epoch_findings(history, names, truth, trivial_loss=0.5) if f.code == "H007"]
    assert found.level == "fail" and found.message == ("100% of validation inputs are predicted NOLEAK whose true "
                                                       "share is 80%, and onto one class or another for 5 epochs "
                                                       "in a row (LEAK, NOLEAK, LEAK, LEAK, NOLEAK)")
    history = [_row(epoch, kappa=0.0, shares=(1.0, 0.0)) for epoch in range(1, 6)]
    [found] = [f for f in epoch_findings(history, names, truth, trivial_loss=0.5) if f.code == "H007"]
    assert found.message == "100% of validation inputs are predicted LEAK whose true share is 20% for 5 epochs in a row"


def test_h007_a_large_class_never_predicted_at_the_first_evaluation_warns_only_then():
    from leakhunter.training.health import epoch_findings

    names, truth = ["LEAK", "NORMAL", "QUIET"], [0.2, 0.45, 0.35]
    found = epoch_findings([_row(1, shares=(0.6, 0.0, 0.4))], names, truth, trivial_loss=1.0)
    assert [(f.code, f.level, f.when) for f in found] == [("H007", "warn", "epoch 1")]
    assert "NORMAL is never predicted while it is 45% of the validation inputs" in found[0].message
    assert epoch_findings([_row(1, shares=(0.6, 0.4, 0.0))], names, truth, trivial_loss=1.0) == []  # QUIET < 40 %
    assert epoch_findings([_row(1), _row(2, shares=(0.6, 0.0, 0.4))], names, truth, trivial_loss=1.0) == []


def test_h007_never_predicted_fires_at_epoch_1_of_a_real_run(training_dataset, tmp_path, monkeypatch):
    """Binary, head biased to LEAK at LR 1e-9: NOLEAK (80 % of the truth) is never predicted at epoch 1."""
    from leakhunter.training.health import epoch_findings, truth_shares

    build = trainer_module.build_model

    def biased(card):
        model = build(card)
        with torch.no_grad():
            model.head.bias[1] = 50.0
        return model

    monkeypatch.setattr(trainer_module, "build_model", biased)
    trainer = Trainer(quick_config(training_dataset, tmp_path / "run", mode="binary", lr=1e-9, epochs=1), log=QUIET)
    result = trainer.fit()
    first = epoch_findings(result.history[:1], result.card.class_names,
                           truth_shares(trainer.data.splits["val"], 2), trainer.trivial_loss)
    assert any(f.code == "H007" and f.when == "epoch 1" and "NOLEAK is never predicted while it is 80%"
               in f.message for f in first)
    assert any(f.code == "H007" and f.when == "epoch 1" for f in result.health)  # recorded live


def test_h001_leak_files_trained_towards_another_index_fail_at_setup(training_dataset, tmp_path, monkeypatch):
    class LeakAsNormal(trainer_module.LeakData):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            train = self.splits["train"]
            train.targets[train.is_leak] = 1  # LEAK files get NORMAL's target

    monkeypatch.setattr(trainer_module, "LeakData", LeakAsNormal)
    with pytest.raises(HealthFailure) as caught:
        Trainer(quick_config(training_dataset, tmp_path / "run", mode="multiclass"), log=QUIET)
    assert caught.value.finding.code == "H001" and caught.value.finding.when == "setup"
    assert "LEAK files are trained towards class index [1], not leak_idx 0" in caught.value.finding.message
    assert caught.value.exit_code == 101


def test_focal_loss_matches_a_hand_computed_value_and_a_run_trains_with_it(training_dataset, tmp_path):
    from leakhunter.training.trainer import LeakLoss

    loss = LeakLoss(torch.tensor([1.0, 3.0]), "focal", gamma=2.0, aux_weight=0.5)
    value = loss(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), None, torch.tensor([0, 1]), torch.tensor([False, True]))
    p1, p2 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-1.0))  # softmax of the true class
    expected = (1 * (1 - p1) ** 2 * -np.log(p1) + 3 * (1 - p2) ** 2 * -np.log(p2)) / (1 + 3)
    assert float(value) == pytest.approx(expected, rel=1e-6) and float(value) == pytest.approx(0.0174443, rel=1e-4)
    result = train(quick_config(training_dataset, tmp_path / "run", mode="binary", loss="focal", epochs=2), log=QUIET)
    assert codes(result.health, "fail") == []
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_onecycle_warms_up_over_30_percent_then_follows_a_cosine_and_the_run_records_it(training_dataset,
                                                                                        tmp_path):
    import csv

    from leakhunter.training.trainer import lr_factor

    assert lr_factor(0, 100, 7, "onecycle") == pytest.approx(1 / 30)  # warm-up ignores warmup_epochs
    assert lr_factor(14, 100, 7, "onecycle") == pytest.approx(15 / 30)
    assert lr_factor(29, 100, 7, "onecycle") == pytest.approx(1.0)
    assert lr_factor(30, 100, 7, "onecycle") == pytest.approx(1.0)
    assert lr_factor(65, 100, 7, "onecycle") == pytest.approx(0.5)
    assert lr_factor(100, 100, 7, "onecycle") == pytest.approx(0.0)
    config = quick_config(training_dataset, tmp_path / "run", mode="binary", schedule="onecycle", epochs=3)
    trainer = Trainer(config, log=QUIET)
    trainer.fit()
    steps, total = trainer.steps_per_epoch, 3 * trainer.steps_per_epoch
    with open(tmp_path / "run" / "metrics.csv") as handle:
        recorded = [float(row["lr"]) for row in csv.DictReader(handle)]
    expected = [config.lr * lr_factor(epoch * steps, total, 0, "onecycle") for epoch in (1, 2, 3)]
    assert recorded == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_early_stopping_stops_after_patience_epochs_without_improvement(training_dataset, tmp_path, monkeypatch):
    original = Trainer._validate
    calls = {"n": 0}

    def best_at_epoch_1(self):
        metrics, val_loss = original(self)
        calls["n"] += 1
        return {**metrics, "file_f1": 1.0 if calls["n"] == 1 else 0.0}, val_loss

    monkeypatch.setattr(Trainer, "_validate", best_at_epoch_1)
    result = train(quick_config(training_dataset, tmp_path / "run", mode="binary", epochs=8, patience=2), log=QUIET)
    assert result.stopped_early and result.best_epoch == 1
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert "H009" in codes(result.health, "warn")


# ---- H015: the network must beat a linear model on each file's median spectrum ----------------------------

def test_h015_warns_only_when_the_kept_epoch_is_below_the_baseline():
    from leakhunter.training.health import baseline_findings

    history = [_row(1), _row(2), _row(3)]
    history[1]["file_f1"] = 0.9  # the kept epoch
    found = baseline_findings(history, best_epoch=2, baseline_val_f1=0.95)
    assert [(f.code, f.level, f.when) for f in found] == [("H015", "warn", "end")]
    assert "validation file F1 0.900 (epoch 2) is below the baseline's 0.950" in found[0].message
    assert baseline_findings(history, best_epoch=2, baseline_val_f1=0.9) == []  # a tie is not a loss
    assert baseline_findings(history, best_epoch=2, baseline_val_f1=0.6) == []
    assert baseline_findings(history, best_epoch=2, baseline_val_f1=None) == []


def test_h015_a_network_that_never_trained_loses_to_the_baseline_and_doctor_says_so(training_dataset, tmp_path):
    """Incident: a CNN reported as the model while a linear model on median spectra did better (F1 1.0 vs
    less); here the network's LR is 1e-12, so it never leaves its random start."""
    messages = []
    result = train(quick_config(training_dataset, tmp_path / "run", mode="binary", lr=1e-12, epochs=1),
                   log=messages.append)
    h015 = [f for f in result.health if f.code == "H015"]
    assert [(f.level, f.when) for f in h015] == [("warn", "end")]
    assert result.history[0]["file_f1"] < result.baseline["val"]["file_f1"] == 1.0
    assert "below the baseline's 1.000" in h015[0].message
    assert any(m.startswith("baseline (") and "val file F1 1.000" in m for m in messages)  # shown beside the CNN
    assert "H015" in [f["code"] for f in health_json(result.run_dir)["findings"]]
    cli = CliRunner().invoke(app, ["doctor", str(tmp_path / "run")])
    assert cli.exit_code == 0 and "H015 baseline (warn) at end" in cli.output
    assert [f.line() for f in doctor(tmp_path / "run").findings] == [f.line() for f in result.health]
    (tmp_path / "run" / "health.json").unlink()  # recomputed, not read back from the live record
    assert "H015" in codes(doctor(tmp_path / "run").findings)


def test_on_a_held_out_cv_fold_collapse_and_overfitting_warn_while_divergence_still_fails():
    """A fold's validation is held-out sites that select nothing: collapsing or overfitting there is what the
    fold measures (4 of 45 fold runs of the lever study stopped on it), so H007/H008 warn; H010/H012 still fail."""
    from leakhunter.training.health import epoch_findings

    collapsed = [_row(e, kappa=0.0, shares=(1.0, 0.0), loss=0.001) for e in range(1, 6)]
    for row in collapsed:
        row["file_f1"] = 0.0
    single = epoch_findings(collapsed, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69)
    assert sorted((f.code, f.level) for f in single) == [("H007", "fail"), ("H008", "fail")]
    fold = epoch_findings(collapsed, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69, held_out_fold=True)
    assert sorted((f.code, f.level) for f in fold) == [("H007", "warn"), ("H008", "warn")]
    assert all("on held-out cross-validation sites" in f.message for f in fold)
    diverging = [_row(1, loss=0.5), _row(2, loss=0.1), _row(3, loss=5.0)]
    found = epoch_findings(diverging, ["NOLEAK", "LEAK"], [0.5, 0.5], trivial_loss=0.69, held_out_fold=True)
    assert [(f.code, f.level) for f in found] == [("H010", "fail")]


def test_a_warning_is_given_once_per_phase_not_once_per_run():
    from leakhunter.training.health import HealthMonitor, warn

    monitor = HealthMonitor(log=lambda text: None)
    monitor.add([warn("H013", "stage 1-fusion, epoch 1", "saturated"), warn("H013", "stage 1-fusion, epoch 2", "again"),
                 warn("H013", "stage 2-finetune, epoch 1", "saturated there too"),
                 warn("H013", "end", "fused F1 below the best branch")])
    assert [f.when for f in monitor.findings] == ["stage 1-fusion, epoch 1", "stage 2-finetune, epoch 1", "end"]


def test_a_run_that_failed_a_check_at_its_end_is_not_called_unfinished():
    """Under --strict an end-of-run warning (H009, H015) fails a run that trained every epoch: its mark says the
    run did not accept those weights, and that a resume trains nothing, rather than 'not a finished run's'."""
    from leakhunter.card import stopped_by

    text = stopped_by({"stopped_by": {"code": "H015", "when": "end", "message": "below the baseline", "epoch": 7,
                                      "finish": "see what the check says; its epochs are done"}})
    assert text == ("its run failed health check H015 at its end (below the baseline): these are the weights of its "
                    "epoch 7, which the run did not accept; see what the check says; its epochs are done")
    assert stopped_by({"test_metrics": {}}) == "" and stopped_by(None) == ""
