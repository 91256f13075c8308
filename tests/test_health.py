"""Each past incident, reproduced small, makes its health check fire; healthy runs stay quiet."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import quick_config
from leakhunter.checkpoint import load_checkpoint
from leakhunter.cli import app
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


def test_h008_loss_near_zero_on_nearly_constant_targets_fails(tmp_path):
    """Incident: loss 0.0 at epoch 2 because nearly all targets were the same. Here 0.4 % of the training
    inputs are not LEAK (one short QUIET file) and validation's non-LEAK files are pumps: the model
    learns "anything audible is a leak", its loss falls to ~0 and validation kappa stays 0."""
    import soundfile

    from leakhunter.training.dataset import build_dataset
    from leakhunter.training.synth import synth_recording

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


def test_doctor_prints_the_live_findings(training_dataset, tmp_path):
    result = train(quick_config(training_dataset, tmp_path / "run", mode="binary"), log=QUIET)
    cli = CliRunner().invoke(app, ["doctor", str(tmp_path / "run")])
    assert cli.exit_code == 0
    for finding in result.health:
        assert finding.line() in " ".join(cli.output.split())
    assert [f.line() for f in doctor(tmp_path / "run").findings] == [f.line() for f in result.health]
