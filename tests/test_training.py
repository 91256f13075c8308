"""Training: both modes learn, checkpoints describe themselves, P(LEAK) is read by name, resume is exact."""

import csv
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import Interrupt, final_weights, quick_config, stop_after
from typer.testing import CliRunner

from leakhunter.card import CardError, ModelCard
from leakhunter.checkpoint import CheckpointError, load_checkpoint, read_model, save_atomic
from leakhunter.cli import app
from leakhunter.errors import InputError
from leakhunter.training.config import ConfigError, resolve_config
from leakhunter.training.evaluate import evaluate
from leakhunter.training.health import HealthFailure
from leakhunter.training.trainer import Trainer, class_weights, train

QUIET = lambda text: None  # noqa: E731


@pytest.fixture(scope="module")
def multiclass_run(training_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mc"
    return train(quick_config(training_dataset, out, mode="multiclass", epochs=6), log=QUIET)


@pytest.fixture(scope="module")
def binary_run(training_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bin"
    return train(quick_config(training_dataset, out, mode="binary", epochs=6), log=QUIET)


@pytest.mark.parametrize("run", ["multiclass_run", "binary_run"])
def test_both_modes_learn_the_synthetic_corpus(run, request):
    result = request.getfixturevalue(run)
    assert result.test_metrics["n_files"] == 20
    assert result.test_metrics["file_f1"] >= 0.95
    assert result.test_metrics["file_specificity"] >= 0.9


def test_every_run_reports_the_baseline_beside_the_network(binary_run, training_dataset):
    baseline = binary_run.baseline
    assert baseline["model"] == "logistic regression on each file's median log-mel"
    assert baseline["test"]["n_files"] == 20
    card = ModelCard.from_json(load_checkpoint(binary_run.run_dir / "best.pth")["card"])
    assert card.training["baseline"] == baseline
    report = evaluate(binary_run.run_dir / "best.pth", training_dataset, "test")
    assert report["baseline"]["file_f1"] == baseline["test"]["file_f1"]  # `leak eval` refits the same one
    assert report["baseline"]["file_auc"] == baseline["test"]["file_auc"]


def test_binary_checkpoint_describes_itself(binary_run):
    payload = load_checkpoint(binary_run.run_dir / "best.pth")
    card = ModelCard.from_json(payload["card"])
    assert card.mode == "binary" and card.class_names == ("NOLEAK", "LEAK") and card.leak_idx == 1
    assert card.leak_prob == "softmax"
    assert tuple(payload["model"]["head.weight"].shape) == (2, 256)
    assert "aux.weight" not in payload["model"]
    assert card.training["best_epoch"] == binary_run.best_epoch
    assert card.training["class_counts"]["test"] == {"NOLEAK": 16, "LEAK": 4}
    assert json.loads((binary_run.run_dir / "model_meta.json").read_text()) == json.loads(card.to_json())


def test_multiclass_checkpoint_has_five_classes_and_the_aux_head(multiclass_run):
    payload = load_checkpoint(multiclass_run.run_dir / "best.pth")
    card = ModelCard.from_json(payload["card"])
    assert card.class_names == ("LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL") and card.leak_idx == 0
    assert card.leak_prob == "mean_softmax_aux"
    assert tuple(payload["model"]["head.weight"].shape) == (5, 256)
    assert tuple(payload["model"]["aux.weight"].shape) == (1, 256)
    assert 0.01 <= card.voting.threshold <= 0.99
    assert len(card.normalisation["mean"]) == 32


def test_run_directory_holds_every_artefact(multiclass_run):
    run = multiclass_run.run_dir
    for name in ("best.pth", "model_meta.json", "checkpoints/last.pth", "metrics.csv", "config.yaml",
                 "curves.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pth")) == [
        "epoch_004.pth", "epoch_005.pth", "epoch_006.pth"]
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss,segment_accuracy,file_f1")
    assert len(rows) == 1 + 6
    assert yaml.safe_load((run / "config.yaml").read_text())["mode"] == "multiclass"
    last = load_checkpoint(run / "checkpoints" / "last.pth")
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "history", "config", "best_key"} <= set(last)


def test_p_leak_is_read_by_class_name_when_classes_are_permuted(multiclass_run, training_dataset, tmp_path):
    """Reorder the dataset's classes and the model's head the same way: identical P(LEAK) and verdicts."""
    order = [3, 0, 4, 2, 1]  # RANDOM, LEAK, MECHANICAL, QUIET, NORMAL
    data = tmp_path / "permuted.h5"
    shutil.copy(training_dataset, data)
    with h5py.File(data, "r+") as h5:
        names = json.loads(h5.attrs["class_names"])
        h5.attrs["class_names"] = json.dumps([names[i] for i in order])
        labels = h5["files/label"][:]
        h5["files/label"][:] = np.argsort(order)[labels]
    payload = load_checkpoint(multiclass_run.run_dir / "best.pth")
    card = ModelCard.from_json(payload["card"])
    state = dict(payload["model"])
    state["head.weight"], state["head.bias"] = state["head.weight"][order], state["head.bias"][order]
    permuted = ModelCard.for_mode("multiclass", [card.class_names[i] for i in order], frontend=card.frontend,
                                  segmentation=card.segmentation, voting=card.voting, architecture=card.architecture)
    assert permuted.leak_idx == 1
    save_atomic({"card": permuted.to_json(), "model": state}, tmp_path / "permuted.pth")
    original = evaluate(multiclass_run.run_dir / "best.pth", training_dataset, "test")
    reordered = evaluate(tmp_path / "permuted.pth", data, "test")
    for key in ("file_f1", "file_precision", "file_recall", "file_auc"):
        assert reordered[key] == pytest.approx(original[key], abs=1e-9), key
    matrix = np.array(original["confusion"])
    assert np.array_equal(np.array(reordered["confusion"]), matrix[np.ix_(order, order)])


def test_eval_json_has_the_documented_keys(binary_run, training_dataset, tmp_path):
    report = evaluate(binary_run.run_dir / "best.pth", training_dataset, "test", confusion_png=tmp_path / "c.png")
    for key in ("file_f1", "file_precision", "file_recall", "file_specificity", "file_auc", "file_accuracy",
                "n_files", "threshold", "confusion", "class_names"):
        assert key in report
    assert np.array(report["confusion"]).sum() == report["n_files"] == 20
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_a_checkpoint_that_disagrees_with_the_data_names_every_field(binary_run, training_dataset, tmp_path):
    from leakhunter.training.dataset import build_dataset

    with h5py.File(training_dataset) as h5:
        source = h5.attrs["source"]
    long_data = build_dataset(source, tmp_path / "long.h5", preset_name="long").output
    with pytest.raises(CardError) as caught:
        evaluate(binary_run.run_dir / "best.pth", long_data, "test")
    fields = {name for name, _ in caught.value.problems}
    assert {"segmentation.long_samples", "segmentation.long_hop", "segmentation.unit"} <= fields
    assert "best.pth has 'short'" in str(caught.value) and "long.h5 has 'long'" in str(caught.value)
    name, why = caught.value.problems[0]
    assert name == "preset" and why.endswith("best.pth is preset short, " + str(long_data) + " is preset long: build "
                                             "the data with leak data build --preset short")


def test_resume_refuses_a_different_mode(binary_run):
    with pytest.raises(HealthFailure, match="mode='binary', the request asks mode='multiclass'"):
        Trainer(quick_config("x", "y"), resume=binary_run.run_dir / "checkpoints" / "last.pth",
                overrides={"mode": "multiclass"}, log=QUIET)


def test_resuming_a_best_pth_names_the_last_pth_to_resume(binary_run):
    """best.pth holds weights and a card, no training state: `--resume best.pth` was a KeyError traceback."""
    last = binary_run.run_dir / "checkpoints" / "last.pth"
    with pytest.raises(InputError, match=f"best.pth: holds a model's weights, not a training state to resume; pass "
                                         f"{last}"):
        Trainer(quick_config("x", "y"), resume=binary_run.run_dir / "best.pth", log=QUIET)


def test_config_layers_and_refusals(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("mode: binary\nepochs: 7\nlr: 0.01\n")
    config = resolve_config(path, {"data": "d.h5", "epochs": 9}, environ={})
    assert (config.mode, config.epochs, config.lr) == ("binary", 9, 0.01)
    assert resolve_config(path, {"data": "d.h5"}, environ={"LEAK_MODE": "multiclass"}).mode == "multiclass"
    assert resolve_config(None, {"data": "d.h5", "mode": "binary"}, environ={"LEAK_MODE": "multiclass"}).mode == "binary"
    path.write_text("epoch: 7\n")
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        resolve_config(path, {"data": "d.h5"}, environ={})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        resolve_config(None, {"data": "d.h5", "lr": -1}, environ={})
    with pytest.raises(ConfigError, match="mode 'fusio' is not one of binary, multiclass, fusion"):
        resolve_config(None, {"data": "d.h5", "mode": "fusio"}, environ={})
    with pytest.raises(ConfigError, match="num_classes"):
        resolve_config(None, {"data": "d.h5", "num_classes": 5}, environ={})
    for text in ("epochs: true\n", "lr: false\n"):  # YAML booleans were 1 and 0 to Python: one epoch, lr 0
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"{text.split(':')[0]}: (True|False) is not a number"):
            resolve_config(path, {"data": "d.h5"}, environ={})
    path.write_text("augment: [gain, mix]\nchannels: [8, 16, 32]\n")  # YAML lists for comma lists
    config = resolve_config(path, {"data": "d.h5"}, environ={})
    assert (config.augment, config.channels) == ("gain,mix", "8,16,32")


def test_class_weights_are_capped_and_reported():
    targets = np.array([0] * 90 + [1] * 10)
    weights, capped, raw_ratio = class_weights(targets, 2, cap=3.0)
    assert capped and raw_ratio == pytest.approx(9.0) and weights[1] / weights[0] == pytest.approx(3.0)
    weights, capped, raw_ratio = class_weights(np.array([0] * 50 + [1] * 50), 2, cap=3.0)
    assert not capped and raw_ratio == 1.0 and torch.allclose(weights, torch.ones(2))


@pytest.fixture(scope="module")
def uninterrupted(training_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "straight"
    train(quick_config(training_dataset, out, mode="multiclass", epochs=4), log=QUIET)
    return final_weights(out)


@pytest.mark.parametrize("broken", [None, "rng", "optimizer", "scheduler"])
def test_resume_is_exact_and_each_restored_state_matters(broken, uninterrupted, training_dataset, tmp_path,
                                                         monkeypatch):
    """Interrupted after epoch 2 and resumed: bit-identical weights; forgetting any state breaks that."""
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_epoch", stop_after(2))
        with pytest.raises(Interrupt):
            train(quick_config(training_dataset, out, mode="multiclass", epochs=4), log=QUIET)
    if broken is not None:
        original = Trainer._restore

        def forgetful(self, payload):
            payload = dict(payload)
            if broken == "rng":
                payload["rng"] = {"torch": torch.Generator().manual_seed(12345).get_state()}
            elif broken == "optimizer":  # fresh AdamW: no moments, no step count
                payload["optimizer"] = torch.optim.AdamW(self.net.parameters(), lr=self.config.lr).state_dict()
            else:  # the schedule restarts its warm-up
                payload["scheduler"] = {**payload["scheduler"], "last_epoch": 0, "_step_count": 1}
            original(self, payload)

        monkeypatch.setattr(Trainer, "_restore", forgetful)
    train(quick_config(training_dataset, out), resume=out / "checkpoints" / "last.pth", log=QUIET)
    resumed = final_weights(out)
    identical = all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert identical == (broken is None)


def test_sigkill_mid_training_then_resume_gives_the_same_weights(uninterrupted, training_dataset, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "leakhunter.training", "--data", str(training_dataset), "--out", str(out),
               "--mode", "multiclass", "--epochs", "4", "--batch-size", "256", "--seed", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "epoch_001.pth").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.3))  # somewhere in epoch 2 (or during its checkpoint)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(out / "checkpoints" / "last.pth")["epoch"] < 4  # it really died mid-run
    result = subprocess.run([sys.executable, "-m", "leakhunter.training", "--resume",
                             str(out / "checkpoints" / "last.pth")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resumed = final_weights(out)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_corrupt_last_checkpoint_falls_back_to_the_newest_good_epoch(training_dataset, tmp_path):
    out = tmp_path / "run"
    train(quick_config(training_dataset, out, epochs=3), log=QUIET)
    (out / "checkpoints" / "last.pth").write_bytes(b"")
    messages = []
    trainer = Trainer(quick_config("x", "y"), resume=out / "checkpoints" / "last.pth", log=messages.append)
    assert trainer.start_epoch == 4
    assert "last.pth: empty file" in messages[0] and "epoch_003.pth" in messages[0]


def test_malicious_and_empty_checkpoints_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"card": "{}", "model": Payload()}, handle)
    with pytest.raises(CheckpointError, match="evil.pth: refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()
    torch.save({"card": "{}", "model": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_model(evil)
    assert not (tmp_path / "pwned").exists()
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: empty file"):
        read_model(empty)
    half = tmp_path / "half.pth"
    torch.save({"card": "{}", "model": {"w": torch.zeros(1000)}}, half)
    half.write_bytes(half.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="half.pth: truncated or not a torch checkpoint"):
        load_checkpoint(half)


SAVER = """
import sys, torch
from leakhunter.checkpoint import save_atomic
payload = {"card": "{}", "model": {"w": torch.randn(2_000_000)}}
print("ready", flush=True)
while True:
    save_atomic(payload, sys.argv[1])
"""


def test_a_kill_during_checkpoint_save_never_leaves_an_unloadable_file(tmp_path):
    target = tmp_path / "last.pth"
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE)
        process.stdout.readline()
        time.sleep(0.3 + random.uniform(0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if target.exists():
            assert load_checkpoint(target)["model"]["w"].shape == (2_000_000,)
    assert target.exists()


def test_two_process_ddp_trains_and_only_rank_zero_writes(training_dataset, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(29500 + random.randint(0, 400)), "-m", "leakhunter.training", "--data", str(training_dataset),
               "--out", str(out), "--mode", "binary", "--epochs", "2", "--batch-size", "256"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # a header and one row per epoch: rank 1 wrote nothing
    assert len(list((out / "checkpoints").glob("*.pth"))) == 3
    card, _ = read_model(out / "best.pth")
    assert card.mode == "binary"
    assert result.stdout.count("best model:") == 2  # both ranks trained to the end


@pytest.mark.slow
def test_a_streamed_run_resumes_on_its_own_loading_path_bit_for_bit(training_dataset, tmp_path, monkeypatch):
    """The loading path decides the shuffle order: a run that read from disk (a tiny memory budget) resumes
    from disk even when the resume's budget would fit the data, and ends with the weights of an
    uninterrupted streamed run."""
    config = dict(mode="multiclass", epochs=3)
    straight = tmp_path / "straight"
    train(quick_config(training_dataset, straight, max_memory="1KB", **config), log=QUIET)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_epoch", stop_after(1))
        with pytest.raises(Interrupt):
            train(quick_config(training_dataset, out, max_memory="1KB", **config), log=QUIET)
    assert load_checkpoint(out / "checkpoints" / "last.pth")["streamed"] is True
    train(quick_config(training_dataset, out), resume=out / "checkpoints" / "last.pth", log=QUIET)
    resumed, expected = final_weights(out), final_weights(straight)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


def test_a_run_resumes_and_is_doctored_from_another_folder(training_dataset, tmp_path, monkeypatch):
    """Relative --data and --out used to be read against the folder of the resume: it trained a new run there."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    shutil.copy(training_dataset, home / "data.h5")
    monkeypatch.chdir(home)
    train(quick_config("data.h5", "runs/r", mode="binary", epochs=2), log=QUIET)
    monkeypatch.chdir(elsewhere)
    result = train(quick_config("x", "y", epochs=3), resume=home / "runs" / "r" / "checkpoints" / "last.pth",
                   overrides={"epochs": 3}, log=QUIET)
    assert result.run_dir.resolve() == (home / "runs" / "r").resolve() and not list(elsewhere.iterdir())
    assert len((home / "runs" / "r" / "metrics.csv").read_text().splitlines()) == 1 + 3
    monkeypatch.chdir(home / "runs" / "r" / "checkpoints")  # `--resume last.pth` from beside it, the data spelt anew
    train(quick_config("x", "y"), resume="last.pth", overrides={"epochs": 4, "data": "../../../data.h5"}, log=QUIET)
    assert len((home / "runs" / "r" / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert not (home / "runs" / "r" / "checkpoints" / "checkpoints").exists()
    doctored = CliRunner().invoke(app, ["doctor", str(home / "runs" / "r")])
    assert "no such dataset file" not in doctored.output and doctored.exit_code in (0, 1), doctored.output
    assert doctored.exception is None or isinstance(doctored.exception, SystemExit), doctored.exception


def test_the_wide_preset_trains_exports_and_scores_like_the_others(small_corpus, tmp_path):
    """`--preset wide` (8192 Hz, 64 bands to 4096 Hz) changes only the card's front-end and segmentation: the
    dataset, the network, the exported graph and predict all follow the card, and verdicts survive export."""
    from leakhunter.export import export_model
    from leakhunter.inference.predict import predict
    from leakhunter.training.dataset import build_dataset

    data = build_dataset(small_corpus.root, tmp_path / "wide.h5", preset_name="wide", workers=2).output
    with h5py.File(data) as h5:
        assert h5.attrs["preset"] == "wide" and h5["short/mel"].shape[1:] == (64, 1)
        assert json.loads(h5.attrs["frontend"])["sample_rate"] == 8192
    result = train(quick_config(data, tmp_path / "run", mode="binary", epochs=3, channels=[8, 16, 32], hidden=64),
                   log=QUIET)
    assert result.test_metrics["file_f1"] >= 0.9  # the plumbing corpus: any working front-end learns it
    card, _ = read_model(result.run_dir / "best.pth")
    assert card.frontend.n_mels == 64 and card.frontend.fmax == 4096.0 and card.segmentation.short_samples == 1024
    report = export_model(result.run_dir / "best.pth")
    assert report.passed and report.parity[0].max_abs_leak_prob <= 1e-4 and not report.parity[0].verdict_flips
    files = sorted((small_corpus.root / "LEAK").glob("*.wav"))[:3] + sorted((small_corpus.root / "QUIET").glob("*.wav"))[:3]
    by_model = {kind: {row["file"]: row for row in predict(files, result.run_dir / f"best.{kind}", workers=0).rows}
                for kind in ("pth", "onnx")}
    assert len(by_model["onnx"]) == 6
    for file, row in by_model["onnx"].items():
        assert row["status"] == "ok" and row["verdict"] == by_model["pth"][file]["verdict"], row
        assert abs(row["mean_leak_prob"] - by_model["pth"][file]["mean_leak_prob"]) <= 1e-4
    assert [by_model["onnx"][str(f)]["verdict"] for f in files] == ["LEAK"] * 3 + ["NOLEAK"] * 3


def test_a_test_split_without_a_leak_file_has_null_metrics_in_the_card_not_zero_or_nan(small_corpus, tmp_path):
    """Recall, and F1 without a LEAK verdict, are 0/0 on a test split without a LEAK file: the card said 0.000
    (a model that misses every leak, to a reader) and AUC NaN (no JSON parser but Python's reads it). Now null,
    as `leak eval` reports the same files, and n/a in the log."""
    rows = list(csv.DictReader(open(small_corpus.manifest)))
    for row in rows:  # the test split: QUIET recordings only
        row["split"] = "test" if row["label"] == "QUIET" else ""
        row["path"] = row["group"] = str(small_corpus.root / row["path"])  # each file its own group
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    from leakhunter.training.dataset import build_dataset

    data = build_dataset(manifest, tmp_path / "d.h5", val=0.3, test=0.0).output
    lines = []
    result = train(quick_config(data, tmp_path / "run", mode="binary", epochs=2), log=lines.append)
    card = json.loads((result.run_dir / "model_meta.json").read_text(),
                      parse_constant=lambda name: pytest.fail(f"{name} in the card"))
    test = card["training"]["test_metrics"]
    assert test["file_recall"] is None and test["file_auc"] is None and test["file_specificity"] is not None
    assert (test["file_f1"] is None) == (test["file_precision"] is None)  # both 0/0 only without a LEAK verdict
    [line] = [line for line in lines if line.startswith("best epoch")]
    assert "recall n/a" in line and "AUC n/a" in line
