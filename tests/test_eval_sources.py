"""`leak eval` on the deployment path: a .pth or an .onnx model on a dataset split, a manifest or class folders,
scored by predict's engine where recordings are scored; per group, false alarms, the card's operating points,
curves, broken files listed; and `leak predict --sensitivity`."""

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from leakhunter.card import OPERATING_POINTS
from leakhunter.checkpoint import card_of, load_checkpoint
from leakhunter.cli import app
from leakhunter.errors import InputError
from leakhunter.inference.predict import predict
from leakhunter.sources import group_from_name
from leakhunter.training.check import split_manifest
from leakhunter.training.evaluate import evaluate


@pytest.fixture(scope="module")
def test_manifest(training_dataset, tmp_path_factory):
    """The training dataset's test split as a manifest: files alternately at siteA and siteB, and one broken
    recording (not audio) at siteA. Returns (manifest, [(path, label, group)] of the good files)."""
    folder = tmp_path_factory.mktemp("manifest")
    good = [(row["path"], row["label"], "siteA" if i % 2 == 0 else "siteB")
            for i, row in enumerate(split_manifest(training_dataset, "test"))]
    broken = folder / "broken.wav"
    broken.write_text("timestamp,value\n2026-11-20,3\n")
    manifest = folder / "labels.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "group"), *good, (str(broken), "LEAK", "siteA")])
    return manifest, good


def test_training_writes_the_validation_operating_points_into_the_card(trained_model):
    card = card_of(load_checkpoint(trained_model), trained_model)
    points = card.operating_points
    assert set(points) == set(OPERATING_POINTS)
    assert points["balanced"]["threshold"] == card.voting.threshold  # the card's threshold is the balanced one
    for name, minimum in (("high", ("recall", 0.95)), ("low-false-alarm", ("specificity", 0.98))):
        if points[name]["threshold"] is not None:
            assert points[name][minimum[0]] >= minimum[1]
    assert points["balanced"]["n_files"] == len(split_manifest(card.training["data"], "val"))


def test_onnx_and_pth_on_the_same_manifest_give_the_same_verdicts_and_list_the_broken_file(
        trained_model, onnx_model, test_manifest, tmp_path):
    manifest, good = test_manifest
    by_onnx = evaluate(onnx_model, manifest, workers=0)
    by_pth = evaluate(trained_model, manifest, workers=0)
    assert by_onnx["source"] == "manifest" and "scoring engine (onnxruntime)" in by_onnx["scored_by"]
    assert [f["file"] for f in by_onnx["files"]] == [f["file"] for f in by_pth["files"]] == [
        str(Path(path).resolve()) for path, _, _ in good]
    assert [f["verdict"] for f in by_onnx["files"]] == [f["verdict"] for f in by_pth["files"]]
    assert max(abs(a["mean_leak_prob"] - b["mean_leak_prob"]) for a, b in zip(by_onnx["files"], by_pth["files"])) < 1e-4
    for report in (by_onnx, by_pth):
        assert report["n_files"] == len(good)
        assert [(row["file"].endswith("broken.wav"), row["status"]) for row in report["failed_files"]] == [
            (True, "not_audio")]


def test_groups_count_their_files_and_false_alarms_are_per_100_non_leak_recordings(onnx_model, test_manifest):
    manifest, good = test_manifest
    report = evaluate(onnx_model, manifest, workers=0)
    for site in ("siteA", "siteB"):
        mine = [label for _, label, group in good if group == site]
        assert report["groups"][site]["n_files"] == len(mine)
        assert report["groups"][site]["n_leak"] == mine.count("LEAK")
    files = report["files"]
    false_alarms = sum(f["verdict"] == "LEAK" and f["truth"] != "LEAK" for f in files)
    non_leak = sum(f["truth"] != "LEAK" for f in files)
    assert report["false_alarms_per_100"] == pytest.approx(100 * false_alarms / non_leak)
    assert report["file_specificity"] == pytest.approx(1 - false_alarms / non_leak)


def test_the_cards_operating_points_are_voted_again_on_the_evaluated_files(onnx_model, test_manifest):
    manifest, _ = test_manifest
    report = evaluate(onnx_model, manifest, workers=0)
    card_points = card_of(load_checkpoint(Path(onnx_model).with_suffix(".pth")), "best.pth").operating_points
    assert set(report["operating_points"]) == set(card_points)
    balanced = report["operating_points"]["balanced"]
    # the balanced point is the card's threshold: it gives exactly the report's own recall and specificity
    assert balanced["threshold"] == report["threshold"]
    assert balanced["recall"] == round(report["file_recall"], 4)
    assert balanced["specificity"] == round(report["file_specificity"], 4)
    assert balanced["calibrated"]["recall"] == card_points["balanced"]["recall"]


def test_an_onnx_model_on_a_dataset_scores_the_splits_recordings_like_their_manifest(
        onnx_model, training_dataset, test_manifest):
    on_dataset = evaluate(onnx_model, training_dataset, split="test", workers=0)
    on_manifest = evaluate(onnx_model, test_manifest[0], workers=0)
    assert on_dataset["source"] == "dataset" and "scoring engine" in on_dataset["scored_by"]
    assert on_dataset["baseline"] is not None and on_dataset["segment_accuracy"] is None
    assert [f["verdict"] for f in on_dataset["files"]] == [f["verdict"] for f in on_manifest["files"]]


def test_a_dataset_whose_recordings_are_gone_is_refused_naming_them(onnx_model, training_dataset, tmp_path):
    moved = tmp_path / "data.h5"
    shutil.copy(training_dataset, moved)
    with h5py.File(moved, "r+") as h5:
        test_file = int(np.flatnonzero(h5["files/split"][:] == 2)[0])
        h5["files/path"][test_file] = "/gone/S999~R00001~20261120T000000~0.wav"
    with pytest.raises(InputError, match=r"1 of the \d+ files of the test split .* /gone/S999~R00001"):
        evaluate(onnx_model, moved, split="test", workers=0)


def test_class_folders_are_grouped_by_the_logger_sensor(onnx_model, small_corpus):
    report = evaluate(onnx_model, small_corpus.root, workers=0)
    assert report["source"] == "class folders" and report["n_files"] == 40 and not report["failed_files"]
    assert set(report["groups"]) == {group_from_name(path) for path in small_corpus.files}
    assert sum(group["n_files"] for group in report["groups"].values()) == 40
    assert report["n_leak"] == 8
    assert report["group_from"] == "the sensor id in the logger file name (40 files found)"  # which rule, not all rules


def test_leak_eval_prints_strict_json_and_draws_roc_and_pr_curves(onnx_model, test_manifest, tmp_path):
    manifest, good = test_manifest
    pngs = {kind: tmp_path / f"{kind}.png" for kind in ("confusion", "roc", "pr")}
    result = CliRunner().invoke(app, ["eval", str(onnx_model), "--data", str(manifest), "--workers", "0", "--json",
                                      *(arg for kind, png in pngs.items() for arg in (f"--{kind}-png", str(png)))])
    assert result.exit_code == 3, result.output  # one recording could not be scored: as predict says it
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert report["n_files"] == len(good) and len(report["failed_files"]) == 1
    for png in pngs.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = CliRunner().invoke(app, ["eval", str(onnx_model), "--data", str(manifest), "--workers", "0",
                                     *(arg for kind, png in pngs.items() for arg in (f"--{kind}-png", str(png)))])
    assert table.exit_code == 3, table.output
    assert "false alarms /100" in table.stdout and "siteA" in table.stdout and "not_audio" in table.stdout
    refused = CliRunner().invoke(app, ["eval", str(onnx_model), "--data", str(manifest), "--split", "val"])
    assert refused.exit_code == 2 and "is evaluated whole" in " ".join(refused.output.split())  # was ignored


def test_predict_at_a_sensitivity_says_so_in_every_row_and_resume_keeps_no_other_sensitivitys_rows(
        onnx_model, test_manifest, tmp_path):
    _, good = test_manifest
    files = [path for path, _, _ in good[:4]]
    points = card_of(load_checkpoint(Path(onnx_model).with_suffix(".pth")), "best.pth").operating_points
    out = tmp_path / "scores.csv"
    rows = predict(files, onnx_model, out=out, workers=0, sensitivity="balanced").rows
    assert [(row["sensitivity"], row["threshold"]) for row in rows] == [("balanced", points["balanced"]["threshold"])] * 4
    assert all("sensitivity balanced: threshold" in row["message"] for row in rows)
    # the card's own threshold is the balanced one, but rows named by a sensitivity are not rows without one
    plain = predict(files, onnx_model, out=out, workers=0, resume=True)
    assert plain.skipped == 0 and {row["sensitivity"] for row in plain.rows} == {""}
    again = predict(files, onnx_model, out=out, workers=0, resume=True)
    assert again.skipped == 4
    with open(out, newline="") as handle:
        assert {row["sensitivity"] for row in csv.DictReader(handle)} == {""}


def test_predict_sensitivity_errors_name_what_the_card_has(onnx_model, make_checkpoint, test_manifest, tmp_path):
    file = test_manifest[1][0][0]
    runner = CliRunner()
    both = runner.invoke(app, ["predict", file, "--model", str(onnx_model), "--sensitivity", "high",
                               "--threshold", "0.5"])
    assert both.exit_code == 2 and "give one of them" in both.output
    unknown = runner.invoke(app, ["predict", file, "--model", str(onnx_model), "--sensitivity", "loud"])
    assert unknown.exit_code == 2 and "'loud' is not an operating point" in unknown.output
    assert "balanced (" in unknown.output
    no_points = make_checkpoint("binary", "short", tmp_path / "untrained.pth")
    none = runner.invoke(app, ["predict", file, "--model", str(no_points), "--sensitivity", "high"])
    assert none.exit_code == 2 and "has no operating points" in none.output
