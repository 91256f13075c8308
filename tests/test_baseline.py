"""The baseline every run must beat: logistic regression on each file's median log-mel, fitted on train only."""

import h5py
import numpy as np
import pytest

from leakhunter.training.baseline import BASELINE_NAME, baseline_report, file_metrics, fit_baseline, fit_logistic
from leakhunter.training.data import LeakData


def toy(n: int, seed: int, shift: float):
    """n files of 32 'mel bins'; a fifth are leaks, shifted by `shift` in bins 10-14."""
    rng = np.random.default_rng(seed)
    is_leak = np.arange(n) % 5 == 0
    features = rng.normal(-60, 8, (n, 32))
    features[is_leak, 10:15] += shift
    return features, is_leak


def test_a_trivially_separable_toy_set_is_separated_perfectly():
    model = fit_logistic(*toy(100, seed=0, shift=30.0))
    features, is_leak = toy(500, seed=1, shift=30.0)
    metrics = file_metrics(is_leak, model.leak_prob(features), 0.5)
    assert metrics["file_f1"] == 1.0 and metrics["file_auc"] == 1.0 and metrics["n_files"] == 500


def test_label_noise_scores_about_chance():
    features, _ = toy(200, seed=2, shift=0.0)
    noise_labels = np.random.default_rng(3).random(200) < 0.2
    model = fit_logistic(features, noise_labels)
    fresh, _ = toy(4000, seed=4, shift=0.0)
    fresh_labels = np.random.default_rng(5).random(4000) < 0.2
    metrics = file_metrics(fresh_labels, model.leak_prob(fresh), 0.5)
    assert abs(metrics["file_auc"] - 0.5) < 0.03
    assert metrics["file_f1"] < 0.36  # chance for a 20 % class with balanced weights: about 2·0.2·0.5/0.7 = 0.29


def test_the_fit_is_the_penalised_optimum_and_standardises_with_training_rows_only():
    features, is_leak = toy(120, seed=6, shift=4.0)
    model = fit_logistic(features, is_leak, l2=1.0)
    assert np.allclose(model.mean, features.mean(axis=0)) and np.allclose(model.std, features.std(axis=0))
    standardised = (features - model.mean) / model.std
    p = model.leak_prob(features)
    weight = np.where(is_leak, 120 / (2 * is_leak.sum()), 120 / (2 * (~is_leak).sum()))
    gradient = standardised.T @ (weight * (p - is_leak)) + 1.0 * model.weights
    assert np.abs(gradient).max() < 1e-6  # first-order optimality of the balanced, L2-penalised log-loss
    assert abs(float((weight * (p - is_leak)).sum())) < 1e-6  # and of the (unpenalised) bias


def test_file_mel_medians_are_each_files_median_over_its_short_segments(training_dataset):
    data = LeakData(training_dataset, "binary")
    streamed = LeakData(training_dataset, "binary", streamed=True)
    split = data.splits["val"]
    medians = data.file_mel_medians(split)
    with h5py.File(training_dataset) as h5:
        starts, counts = h5["files/short_start"][...], h5["files/short_count"][...]
        for row, file in enumerate(split.file_index[:5]):
            mel = h5["short/mel"][starts[file]:starts[file] + counts[file]].astype(np.float32)  # [k, n_mels, 1]
            assert np.array_equal(medians[row], np.median(mel[:, :, 0], axis=0))
    assert medians.shape == (len(split.file_index), 32)
    assert np.array_equal(streamed.file_mel_medians(split), medians)
    streamed.close()


def test_fit_baseline_reports_val_and_test_with_a_validation_threshold(training_dataset):
    result = fit_baseline(LeakData(training_dataset, "multiclass"))
    summary = result.to_dict()
    assert summary["model"] == BASELINE_NAME and set(summary) >= {"threshold", "val", "test"}
    assert summary["test"]["n_files"] == 20 and summary["val"]["n_files"] == 15
    assert summary["val"]["file_f1"] == 1.0  # the classes corpus is linearly separable: the bar is high
    assert result.line().startswith(f"baseline ({BASELINE_NAME}, threshold ") and "test file F1" in result.line()


def test_eval_has_no_baseline_when_training_lacks_a_class(training_dataset, tmp_path):
    import shutil

    path = tmp_path / "no-train-leak.h5"
    shutil.copy(training_dataset, path)
    with h5py.File(path, "r+") as h5:
        split, label = h5["files/split"][...], h5["files/label"][...]
        split[(split == 0) & (label == 0)] = 2  # every training LEAK file moves to test
        h5["files/split"][...] = split
    data = LeakData(path, "binary")
    assert baseline_report(data, "test") is None
    assert baseline_report(LeakData(training_dataset, "binary"), "test")["n_files"] == 20
    with pytest.raises(ValueError, match="one label per file"):
        fit_logistic(np.zeros((3, 2)), np.zeros(2, bool))
