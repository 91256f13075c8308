"""Grouped cross-validation (`leak train --cv K`): folds by group, selection that never lets a held-out file
choose what it is judged with, the final model and its card, and H016 (an optimistic split)."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from leakhunter.errors import InputError
from leakhunter.operating import operating_points
from leakhunter.synth import synth_corpus
from leakhunter.training.cv import (
    HeldOut,
    choose,
    cross_validate,
    held_out_points,
    honest_estimate,
    pooled,
    split_check,
)
from leakhunter.training.data import LeakData
from leakhunter.training.dataset import build_dataset
from leakhunter.training.health import split_findings
from leakhunter.training.splits import assign_folds
from tests.conftest import quick_config


def test_folds_keep_groups_whole_and_share_every_class():
    labels = np.repeat([0, 1, 2], 40)
    groups = [f"G{i % 12}" for i in range(120)]
    codes = assign_folds(labels, groups, [f"sha{i}" for i in range(120)], 4, seed=0)
    for group in set(groups):
        assert len({codes[i] for i in range(120) if groups[i] == group}) == 1
    per_fold = np.array([np.bincount(labels[codes == fold], minlength=3) for fold in range(4)])
    assert per_fold.sum() == 120 and per_fold.min() >= 6  # every fold holds every class
    with pytest.raises(InputError, match="needs 2 to 12 folds"):
        assign_folds(labels, groups, [f"sha{i}" for i in range(120)], 13)


def held_out(truth, long_probs_per_epoch):
    """A fold of one long segment per file: P(LEAK) per file per epoch."""
    truth = np.asarray(truth, bool)
    return HeldOut(files=np.arange(len(truth)), file_is_leak=truth, long_file=np.arange(len(truth)),
                   long_prob=np.asarray(long_probs_per_epoch, float))


def test_the_pooled_curve_chooses_the_epoch_and_each_fold_is_judged_as_the_others_chose():
    truth = [True, True, False, False]
    folds = [held_out(truth, [[0.6, 0.6, 0.6, 0.6], [0.9, 0.8, 0.2, 0.1]]),
             held_out(truth, [[0.6, 0.6, 0.6, 0.6], [0.9, 0.7, 0.3, 0.2]]),
             # the third fold's model is scaled differently: its own best threshold (0.3) is not the others'
             held_out(truth, [[0.6, 0.6, 0.6, 0.6], [0.45, 0.4, 0.2, 0.1]])]
    epoch, threshold, curve = choose(folds, 0.5)
    assert epoch == 2 and curve[0] == pytest.approx(2 / 3) and curve[1] == 1.0
    rows, pooled = honest_estimate(folds, 0.5)
    assert [row["epoch"] for row in rows] == [2, 2, 2]
    assert rows[0]["file_f1"] == rows[1]["file_f1"] == 1.0
    # folds 1 and 2 choose a threshold between 0.3 and 0.7: fold 3's leaks (0.45, 0.4) fall under it
    assert rows[2]["threshold"] > 0.45 and rows[2]["file_recall"] == 0.0
    assert pooled["file_recall"] == pytest.approx(4 / 6) and pooled["file_precision"] == 1.0
    assert pooled["n_files"] == 12 and pooled["false_alarms_per_100"] == 0.0


def test_operating_points_report_what_they_give_on_folds_that_did_not_choose_them():
    truth = [True, True, False, False]
    folds = [held_out(truth, [[0.9, 0.8, 0.2, 0.1]]), held_out(truth, [[0.9, 0.7, 0.3, 0.2]]),
             held_out(truth, [[0.45, 0.4, 0.2, 0.1]])]
    points = held_out_points(folds, 1, 0.5)
    in_sample = operating_points(*pooled(folds, 1), 0.5)
    assert {name: p["threshold"] for name, p in points.items()} == {
        name: p["threshold"] for name, p in in_sample.items()}  # chosen on every fold, as before
    assert in_sample["balanced"]["recall"] == 1.0  # where it was chosen, every leak is found ...
    _, honest = honest_estimate(folds, 0.5)
    assert points["balanced"]["recall"] == pytest.approx(4 / 6, abs=1e-4)  # ... but not on a fold left out
    assert points["balanced"]["f1"] == pytest.approx(honest["file_f1"], abs=1e-4) and points["balanced"]["n_files"] == 12
    one_class = [held_out([True, True], [[0.9, 0.8]]), held_out([True, True], [[0.7, 0.6]]),
                 held_out([False, False], [[0.2, 0.1]])]
    points = held_out_points(one_class, 1, 0.5)  # the last fold's others hold no non-LEAK file: no point there
    assert points["balanced"]["threshold"] is not None
    assert points["balanced"]["n_files"] == 4 and points["balanced"]["specificity"] is None


def test_h016_fires_only_when_the_split_beats_an_average_fold_by_the_margin():
    assert split_findings(0.95, 0.80, 5)[0].code == "H016"
    assert split_findings(0.85, 0.80, 5) == []
    assert split_findings(None, 0.80, 5) == []


@pytest.fixture(scope="module")
def sites_dataset(tmp_path_factory):
    """Six sites, six 2 s files per class; LEAK recorded at two of them only (regrouped by a manifest), so with
    three folds one held-out fold has no LEAK file."""
    root = tmp_path_factory.mktemp("cv")
    corpus = synth_corpus(root / "corpus", files_per_class=6, duration_s=2.0, scenario="sites", sites=6, seed=2)
    with corpus.manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(row for row in rows if row["label"] == "LEAK"):
        row["group"] = f"LEAKSITE{i % 2}"
    manifest = root / "regrouped.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "path": str(corpus.root / row["path"])} for row in rows)
    return build_dataset(manifest, root / "data.h5", val=0.2, test=0.2, seed=0, workers=2).output


def test_cross_validation_trains_every_fold_then_the_final_model(sites_dataset, tmp_path, monkeypatch):
    out = tmp_path / "cv"
    lines = []
    config = quick_config(sites_dataset, out, mode="binary", epochs=3)
    result = cross_validate(config, 3, log=lines.append)
    cv = result.card.training["cv"]
    data = LeakData(sites_dataset, "binary")
    pool = set(data.splits["train"].file_index) | set(data.splits["val"].file_index)
    held = [set(np.load(out / "folds" / f"fold_{k}" / "held_out.npz")["files"].tolist()) for k in (1, 2, 3)]
    assert set.union(*held) == pool and sum(map(len, held)) == len(pool)  # each file held out exactly once
    fold_groups = [set(fold["groups"]) for fold in cv["folds"]]
    assert all(not a & b for i, a in enumerate(fold_groups) for b in fold_groups[i + 1:])
    no_leak = [fold for fold in cv["folds"] if fold["n_leak"] == 0]
    assert len(no_leak) == 1 and no_leak[0]["false_alarms_per_100"] is not None  # handled, not a crash
    assert cv["k"] == 3 and 1 <= cv["epochs"] <= 3 and len(cv["curve"]) == 3
    assert result.card.voting.threshold == pytest.approx(cv["threshold"], abs=1e-4)
    # the operating points come from the pooled held-out predictions, not from the in-sample validation
    assert result.card.operating_points["balanced"]["threshold"] == pytest.approx(cv["threshold"], abs=1e-4)
    assert result.card.operating_points["balanced"]["n_files"] == cv["pooled"]["n_files"]
    assert result.card.operating_points["balanced"]["f1"] == pytest.approx(cv["pooled"]["file_f1"], abs=1e-4)
    assert cv["points_measured"] == "held_out"
    assert result.card.training["baseline"] is None and cv["baseline"]["pooled"]["n_files"] == cv["pooled"]["n_files"]
    assert result.history[-1]["epoch"] == cv["epochs"]  # the final model ran the chosen epochs
    assert len(result.history) == cv["epochs"]
    assert json.loads((out / "cv.json").read_text())["pooled"] == cv["pooled"]
    assert (out / "cv.png").stat().st_size > 10_000
    assert any(line.startswith("cross-validation (3 folds by group): held-out file F1") for line in lines)
    [no_leak_line] = [line for line in lines if line.startswith("fold ") and "files, no LEAK file" in line]  # the baseline has no F1 there either
    assert "false alarms per 100" in no_leak_line.split("; baseline ")[1] and "baseline F1" not in no_leak_line
    fold_health = json.loads((out / "folds" / "fold_1" / "health.json").read_text())
    assert fold_health["status"] != "fail"

    (out / "cv.json").unlink()  # unfinished: a rerun reloads the finished folds instead of training them again,
    monkeypatch.chdir(sites_dataset.parent)  # also from another folder, the data spelt another way
    again = []
    rerun = cross_validate(replace(config, data=sites_dataset.name), 3, log=again.append)
    assert sum("done before" in line for line in again) == 3
    assert rerun.card.training["cv"]["pooled"] == cv["pooled"]


def test_split_check_compares_the_split_with_an_average_held_out_fold(sites_dataset, monkeypatch):
    import leakhunter.training.cv as cv

    data = LeakData(sites_dataset, "binary")
    perfect = lambda data, folds: [data.file_is_leak[fold].astype(float) for fold in folds]  # noqa: E731
    monkeypatch.setattr(cv, "held_out_probabilities", perfect)
    assert split_check(data, 1.0, seed=0, k=3) == []  # every fold as good as the split
    inverted = lambda data, folds: [1.0 - p for p in perfect(data, folds)]  # noqa: E731
    monkeypatch.setattr(cv, "held_out_probabilities", inverted)
    fired = split_check(data, 1.0, seed=0, k=3)
    assert [f.code for f in fired] == ["H016"] and "3-fold grouped cross-validation" in fired[0].message
    assert split_check(data, 0.0, seed=0, k=3) == []


def test_the_baseline_of_each_fold_is_fitted_on_the_other_folds_alone(sites_dataset):
    from leakhunter.training.baseline import fit_logistic, held_out_probabilities

    data = LeakData(sites_dataset, "binary")
    pool = np.concatenate([data.splits["train"].file_index, data.splits["val"].file_index])
    folds = [np.sort(pool[1::2]), np.sort(pool[::2])]  # interleaved: the folds' files are not in file order
    probs = held_out_probabilities(data, folds)
    for fold, rest, prob in ((folds[0], folds[1], probs[0]), (folds[1], folds[0], probs[1])):
        model = fit_logistic(data.file_mel_medians(data.subset(rest)), data.file_is_leak[rest])
        np.testing.assert_allclose(prob, model.leak_prob(data.file_mel_medians(data.subset(fold))), rtol=1e-6)


class Interrupt(Exception):
    """A kill, or a health check that stops the run."""


def test_a_final_model_that_was_stopped_is_trained_again_by_the_same_command(sites_dataset, tmp_path, monkeypatch):
    """A final model stopped by a health check left best.pth behind, and rerunning the command said the folder
    'already holds a run'. Now the rerun reloads the folds and trains the final model again; its in-sample
    validation only warns on H007/H008 (the cross-validation measured it); a finished run is still refused."""
    import leakhunter.training.trainer as trainer_module
    from leakhunter.training.trainer import IN_SAMPLE_NOTE, Trainer

    out = tmp_path / "cv"
    config = quick_config(sites_dataset, out, mode="binary", epochs=2)
    measured_by = []
    findings = trainer_module.epoch_findings
    monkeypatch.setattr(trainer_module, "epoch_findings",
                        lambda *args, **kwargs: measured_by.append(kwargs["measured_by"]) or findings(*args, **kwargs))
    write_epoch = Trainer._write_epoch

    def stop_the_final_model(self, epoch, row, improved):
        write_epoch(self, epoch, row, improved)
        if self.data.validation_in_sample():
            raise Interrupt

    monkeypatch.setattr(Trainer, "_write_epoch", stop_the_final_model)
    with pytest.raises(Interrupt):
        cross_validate(config, 3, log=lambda line: None)
    assert (out / "best.pth").exists() and not (out / "cv.json").exists()
    assert IN_SAMPLE_NOTE not in measured_by  # the folds are judged as held-out folds
    monkeypatch.setattr(Trainer, "_write_epoch", write_epoch)
    lines = []
    result = cross_validate(config, 3, log=lines.append)
    assert sum("done before" in line for line in lines) == 3
    assert any("did not finish before: it is trained again" in line for line in lines)
    assert (out / "cv.json").exists() and result.card.training["cv"]["k"] == 3
    assert measured_by[-1] == IN_SAMPLE_NOTE
    with pytest.raises(FileExistsError, match="already holds a finished cross-validation"):
        cross_validate(config, 3, log=lambda line: None)
    single = tmp_path / "single"  # another kind of run in --out is never taken for a stopped final model
    single.mkdir()
    (single / "best.pth").write_bytes(b"a single-split run's model")
    with pytest.raises(FileExistsError, match="already holds a run"):
        cross_validate(quick_config(sites_dataset, single, mode="binary", epochs=2), 3, log=lambda line: None)
    assert (single / "best.pth").read_bytes() == b"a single-split run's model"


def test_of_equally_good_epochs_the_latest_is_chosen():
    """A plateau of equal pooled F1: the latest epoch (the lowest learning rate, the most settled model) is kept,
    not the first epoch that reached it; a strictly better earlier epoch still wins."""
    truth = [True, True, False, False]
    good, poor = [0.9, 0.8, 0.2, 0.1], [0.6, 0.6, 0.6, 0.6]
    folds = [held_out(truth, [poor, good, good, good]), held_out(truth, [poor, good, [0.8, 0.7, 0.3, 0.2], good])]
    epoch, _, curve = choose(folds, 0.5)
    assert curve[1:] == [1.0, 1.0, 1.0] and epoch == 4
    folds = [held_out(truth, [poor, good, [0.9, 0.1, 0.2, 0.1]]), held_out(truth, [poor, good, good])]
    assert choose(folds, 0.5)[0] == 2  # epoch 3 misses a leak: F1 below epoch 2's
    low = [0.35, 0.3, 0.1, 0.05]  # as good, on a lower scale: its threshold, not epoch 2's, comes with it
    folds = [held_out(truth, [poor, good, low]), held_out(truth, [poor, good, low])]
    epoch, threshold, _ = choose(folds, 0.5)
    assert epoch == 3 and 0.1 < threshold <= 0.3 and choose(folds[:1] + [held_out(truth, [poor, good])], 0.5)[1] > 0.3
    rows, _ = honest_estimate(folds, 0.5)  # each fold judged at the epoch the other chose: the latest too
    assert [row["epoch"] for row in rows] == [3, 3] and all(row["file_f1"] == 1.0 for row in rows)
