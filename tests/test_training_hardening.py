"""Issue 9, training runs: non-finite weights never overwrite the last good checkpoint, artefacts are atomic and
resume never repeats a metrics row, eval JSON is strict, checkpoints sort by epoch number, and a card's
architecture params are validated before any layer is built."""

import json
import math
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from conftest import Interrupt, quick_config, stop_after
from typer.testing import CliRunner

from leakhunter.card import ModelCard
from leakhunter.checkpoint import load_checkpoint, save_atomic
from leakhunter.cli import app
from leakhunter.training.health import HealthFailure
from leakhunter.training.trainer import Trainer, find_resume_checkpoint, prune_checkpoints, train

QUIET = lambda text: None  # noqa: E731


def metrics_epochs(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,")
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_nan_weights_after_epoch_2_stop_with_h012_before_any_checkpoint_and_resume_works(
        training_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Trainer._train_epoch

    def poisons_epoch_2(self, epoch):
        loss = original(self, epoch)
        if epoch == 2:
            with torch.no_grad():
                self.net.head.weight[0, 0] = float("nan")  # the loss of every step was finite
        return loss

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_epoch", poisons_epoch_2)
        with pytest.raises(HealthFailure) as caught:
            train(quick_config(training_dataset, out, epochs=3), log=QUIET)
    assert caught.value.finding.code == "H012" and caught.value.finding.level == "fail"
    assert caught.value.finding.when == "epoch 2" and caught.value.exit_code == 112
    assert "weights hold NaN or inf" in caught.value.finding.message
    last = load_checkpoint(out / "checkpoints" / "last.pth")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values())
    assert not (out / "checkpoints" / "epoch_002.pth").exists()
    assert all(torch.isfinite(t).all() for t in load_checkpoint(out / "best.pth")["model"].values())
    assert metrics_epochs(out) == [1]
    assert json.loads((out / "health.json").read_text())["findings"][-1]["code"] == "H012"
    result = train(quick_config(training_dataset, out), resume=out / "checkpoints" / "last.pth", log=QUIET)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert metrics_epochs(out) == [1, 2, 3]


def test_a_kill_between_the_metrics_row_and_last_pth_does_not_repeat_rows_on_resume(
        training_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_epoch", stop_after(3))
        with pytest.raises(Interrupt):
            train(quick_config(training_dataset, out, epochs=4), log=QUIET)
    checkpoints = out / "checkpoints"
    shutil.copy(checkpoints / "epoch_002.pth", checkpoints / "last.pth")  # as if killed before last.pth of 3
    assert metrics_epochs(out) == [1, 2, 3]
    train(quick_config(training_dataset, out), resume=checkpoints / "last.pth", log=QUIET)
    assert metrics_epochs(out) == [1, 2, 3, 4]
    assert not list(out.rglob("*.tmp"))  # every artefact was renamed into place


def test_checkpoints_sort_by_epoch_number_past_999(tmp_path):
    for epoch in (998, 999, 1000, 1001):
        save_atomic({"card": "{}", "model": {}, "epoch": epoch}, tmp_path / f"epoch_{epoch:03d}.pth")
    (tmp_path / "last.pth").write_bytes(b"")
    warnings = []
    assert find_resume_checkpoint(tmp_path / "last.pth", warnings.append)["epoch"] == 1001
    assert "epoch_1001.pth" in warnings[0]
    prune_checkpoints(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == [
        "epoch_1000.pth", "epoch_1001.pth", "epoch_999.pth"]


def _only_leak_in_test(source, tmp_path):
    """The dataset with every non-LEAK test file moved to train: the test split holds one class."""
    path = tmp_path / "one_class.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as h5:
        names = json.loads(h5.attrs["class_names"])
        split, label = h5["files/split"][...], h5["files/label"][...]
        split[(split == 2) & (label != names.index("LEAK"))] = 0
        h5["files/split"][...] = split
    return path


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_eval_of_a_one_class_split_prints_strict_json_with_null_auc_and_says_why_in_text(
        training_dataset, make_checkpoint, tmp_path):
    model = make_checkpoint("binary", "short", tmp_path / "best.pth")
    data = _only_leak_in_test(training_dataset, tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(model), "--data", str(data), "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    report = _strict_json(result.stdout)
    assert report["file_auc"] is None and "NaN" not in result.stdout
    assert report["file_specificity"] is None  # no NOLEAK file: undefined, not 0.0
    assert report["n_files"] > 0 and math.isfinite(report["file_f1"]) and math.isfinite(report["file_recall"])
    text = runner.invoke(app, ["eval", str(model), "--data", str(data), "--split", "test"])
    assert text.exit_code == 0, text.output
    assert "AUC n/a: the split has no NOLEAK files" in " ".join(text.output.split())


@pytest.mark.parametrize("params, field", [({"channels": 10**9}, "architecture.params.channels"),
                                           ({"dropout": "x"}, "architecture.params.dropout"),
                                           ({"hidden": 10**12}, "architecture.params.hidden"),
                                           ({"width": 3}, "architecture.params.width")])
def test_leak_info_refuses_architecture_params_out_of_bounds_naming_the_field(make_checkpoint, tmp_path,
                                                                              params, field):
    good = load_checkpoint(make_checkpoint("binary", "short", tmp_path / "good.pth"))
    card = ModelCard.from_json(good["card"])
    bad = replace(card, architecture={"name": "leakcnn", "params": params}).to_dict()  # replace does not validate
    save_atomic({"card": json.dumps(bad), "model": good["model"]}, tmp_path / "bad.pth")
    result = CliRunner().invoke(app, ["info", str(tmp_path / "bad.pth")])
    assert result.exit_code == 1, result.output
    assert field in result.output
    assert not isinstance(result.exception, (TypeError, MemoryError))


def test_the_model_registry_matches_the_torch_free_params_table():
    from leakhunter.card import ARCHITECTURE_PARAMS
    from leakhunter.models import REGISTRY, check_registry

    check_registry()
    assert set(REGISTRY) == set(ARCHITECTURE_PARAMS)


def test_a_two_class_multiclass_models_eval_top_class_is_what_predict_gives(tmp_path):
    """Both go through leakhunter.voting.top_class by the card's mode: a 2-class *multiclass* model must not
    be mistaken for a binary one by either."""
    import soundfile

    from leakhunter.card import ModelCard
    from leakhunter.devices import pick_device
    from leakhunter.inference.engine import ScoringEngine
    from leakhunter.models import Scorer, build_model
    from leakhunter.synth import synth_recording
    from leakhunter.training.data import LeakData
    from leakhunter.training.dataset import build_dataset
    from leakhunter.training.evaluate import evaluate_split, score_split

    rows = ["path,label,split"]
    for label in ("LEAK", "NORMAL"):
        for split, count in (("train", 3), ("val", 2), ("test", 3)):
            for i in range(count):
                path = tmp_path / f"{label}-{split}-{i}.wav"
                soundfile.write(path, synth_recording(label, 2.0, 8000, np.random.default_rng([len(rows), 3])),
                                8000, subtype="PCM_16")
                rows.append(f"{path.name},{label},{split}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    data_path = build_dataset(tmp_path / "manifest.csv", tmp_path / "data.h5").output
    data = LeakData(data_path, "multiclass")
    assert list(data.class_names) == ["LEAK", "NORMAL"]
    card = ModelCard.for_mode("multiclass", data.class_names, frontend=data.frontend, segmentation=data.segmentation)
    torch.manual_seed(3)
    model = build_model(card).eval()
    save_atomic({"card": card.to_json(), "model": model.state_dict()}, tmp_path / "best.pth")
    test = data.splits["test"]
    device = pick_device("cpu")
    probs, leak_prob = score_split(Scorer(model, card), data, test, 4096, device)
    result = evaluate_split(test, probs, leak_prob, card.class_names, card.voting.threshold,
                            card.voting.vote_fraction, data.shorts_per_long, card.segmentation.unit, card.mode)
    with ScoringEngine(tmp_path / "best.pth", device="cpu", workers=0) as engine:
        predicted = [engine.score_file(tmp_path / path).row["top_class"] for path in test.paths]
    assert [card.class_names[c] for c in result.file_top_class] == predicted
