"""Operating points: named thresholds chosen on labelled files by what they give file by file, stored in the card,
kept by export, and chosen by name in `leak predict --sensitivity`."""

import json
from dataclasses import replace

import numpy as np
import pytest

from leakhunter.card import BINARY_CLASSES, OPERATING_POINTS, CardError, ModelCard
from leakhunter.errors import InputError
from leakhunter.operating import deployed_threshold, file_rates, operating_points, points_on
from leakhunter.voting import calibrate_threshold

# One long segment per file. LEAK: 16 clear files at 0.805..0.895, three hard ones at 0.355, 0.405, 0.455 and one
# missed at 0.15. Non-LEAK: 40 quiet files at 0.1 and ten louder ones, two of them (0.855, 0.875) among the leaks.
LEAK_PROBS = np.r_[np.linspace(0.805, 0.895, 16), 0.355, 0.405, 0.455, 0.15]
OTHER_PROBS = np.r_[np.full(40, 0.1), 0.25, 0.3, 0.37, 0.38, 0.39, 0.43, 0.6, 0.705, 0.855, 0.875]


def one_long_per_file(leak_probs=LEAK_PROBS, other_probs=OTHER_PROBS):
    probs = np.r_[leak_probs, other_probs]
    return probs, np.arange(len(probs)), np.r_[np.ones(len(leak_probs), bool), np.zeros(len(other_probs), bool)]


def test_high_is_the_largest_threshold_that_still_finds_95_percent_of_the_leaks():
    high = operating_points(*one_long_per_file())["high"]
    # 19 of 20 leaks need a threshold at or below 0.355; 0.35 is the largest on the grid
    assert high["threshold"] == 0.35
    assert high["recall"] == 0.95 and high["n_files"] == 70 and high["n_leak"] == 20
    assert high["specificity"] == 0.84 and high["false_alarms_per_100"] == 16.0  # 8 of 50 non-LEAK over 0.35
    assert high["precision"] == round(19 / 27, 4) and high["f1"] == round(38 / 47, 4)


def test_low_false_alarm_is_the_smallest_threshold_with_specificity_98_percent():
    low = operating_points(*one_long_per_file())["low-false-alarm"]
    assert low["threshold"] == 0.86  # above 0.855: one false alarm (0.875) of 50 is left
    assert low["specificity"] == 0.98 and low["false_alarms_per_100"] == 2.0
    assert low["recall"] == 0.3  # 6 of the 20 leaks reach 0.86


def test_balanced_is_the_threshold_calibrate_threshold_picks():
    probs, files, truth = one_long_per_file()
    balanced = operating_points(probs, files, truth)["balanced"]
    assert balanced["threshold"] == round(calibrate_threshold(probs, files, truth)[0], 4)
    assert balanced["f1"] == round(calibrate_threshold(probs, files, truth)[1], 4)


def test_the_names_stay_in_order_where_both_rules_alone_would_cross():
    # separable files: recall >= 0.95 holds up to 0.89 and specificity >= 0.98 from 0.11, but a `high` sensitivity
    # must not flag less than `balanced`, nor `low-false-alarm` more
    points = operating_points(*one_long_per_file(np.full(5, 0.9), np.full(5, 0.1)))
    assert points["high"]["threshold"] == points["balanced"]["threshold"] == points["low-false-alarm"]["threshold"]
    assert points["balanced"]["threshold"] == 0.5 and points["high"]["recall"] == 1.0
    ordered = operating_points(*one_long_per_file())
    assert ordered["high"]["threshold"] < ordered["balanced"]["threshold"] == 0.71 < ordered["low-false-alarm"]["threshold"]


def test_the_vote_over_long_segments_decides_like_predict():
    # a non-LEAK file with two of its four long segments at 0.8 alarms at vote_fraction 0.5 up to threshold 0.8;
    # at 0.75 three segments must reach the threshold, and its two at 0.05 do only up to 0.05
    probs = np.array([0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.05, 0.05])
    files, truth = np.repeat([0, 1], 4), np.array([True, False])
    assert operating_points(probs, files, truth, vote_fraction=0.5)["balanced"]["threshold"] == 0.81
    assert operating_points(probs, files, truth, vote_fraction=0.75)["balanced"]["threshold"] == 0.5


def test_a_point_no_threshold_reaches_is_unavailable_with_its_reason():
    # one LEAK file in ten never gets over 0.01: recall is at most 0.9 at any threshold
    points = operating_points(*one_long_per_file(np.r_[np.full(9, 0.8), 0.001], np.full(10, 0.1)))
    assert points["high"]["threshold"] is None
    assert "recall >= 0.95" in points["high"]["reason"] and "at most 0.900" in points["high"]["reason"]
    assert points["balanced"]["threshold"] is not None and points["low-false-alarm"]["threshold"] is not None


def test_a_low_false_alarm_point_that_finds_no_leak_is_unavailable():
    # five loud non-LEAK files over every leak: specificity 0.98 only above them all, where recall is 0; such a
    # point used to be stored (recall 0.000) and `--sensitivity low-false-alarm` called every file NOLEAK
    points = operating_points(*one_long_per_file(np.full(5, 0.6), np.r_[np.full(45, 0.1), np.full(5, 0.95)]))
    low = points["low-false-alarm"]
    assert low["threshold"] is None
    assert low["reason"] == ("file specificity >= 0.98 is reached only where no leak is found (recall 0 from "
                                    "threshold 0.96 on)")
    assert points["balanced"]["threshold"] is not None and points["balanced"]["recall"] == 1.0


@pytest.mark.parametrize("leak, other, missing", [(5, 0, "no non-LEAK file"), (0, 5, "no LEAK file"),
                                                  (0, 0, "no files")])
def test_files_of_one_kind_give_no_points(leak, other, missing):
    points = operating_points(*one_long_per_file(np.full(leak, 0.9), np.full(other, 0.1)))
    assert set(points) == set(OPERATING_POINTS)
    assert all(p["threshold"] is None and missing in p["reason"] and p["n_files"] == leak + other
               for p in points.values())


def test_false_alarms_are_counted_per_100_non_leak_recordings():
    truth = np.r_[np.ones(10, bool), np.zeros(60, bool)]
    verdict = np.r_[np.ones(10, bool), np.ones(3, bool), np.zeros(57, bool)]
    assert file_rates(truth, verdict)["false_alarms_per_100"] == 5.0
    assert file_rates(truth[:10], verdict[:10])["false_alarms_per_100"] is None  # no non-LEAK file to alarm on


def test_points_applied_to_other_files_say_what_they_give_there_and_where_they_were_chosen():
    points = operating_points(*one_long_per_file())
    here = points_on(points, np.array([0.9, 0.5, 0.75, 0.2]), np.arange(4), np.array([True, True, False, False]),
                     0.5)
    assert here["high"]["recall"] == 1.0 and here["high"]["specificity"] == 0.5  # 0.75 alarms over 0.35
    assert here["high"]["calibrated"]["recall"] == 0.95 and here["high"]["calibrated"]["n_files"] == 70
    assert here["balanced"]["recall"] == 0.5 and here["balanced"]["false_alarms_per_100"] == 50.0
    assert here["low-false-alarm"]["recall"] == 0.5 and here["low-false-alarm"]["false_alarms_per_100"] == 0.0


def binary_card(**changes) -> ModelCard:
    return replace(ModelCard.for_mode("binary", BINARY_CLASSES), **changes).validate()


def test_the_card_keeps_its_points_through_json_and_old_cards_still_load():
    points = operating_points(*one_long_per_file(np.r_[np.full(9, 0.8), 0.001], np.full(10, 0.1)))
    card = binary_card(operating_points=points)
    again = ModelCard.from_json(card.to_json())
    assert again.operating_points == points and again.schema_version == 1
    old = json.loads(card.to_json())
    del old["operating_points"]
    assert ModelCard.from_dict(old).operating_points is None


@pytest.mark.parametrize("points, field", [
    ({"high": {"threshold": 1.5}}, "operating_points.high.threshold"),
    ({"sensitive": {"threshold": 0.5}}, "operating_points.sensitive"),
    ({"high": {"threshold": None}}, "operating_points.high.reason"),
    ({"balanced": {"threshold": 0.5, "recall": 2}}, "operating_points.balanced.recall"),
    ({"balanced": {"threshold": 0.5, "colour": "red"}}, "operating_points.balanced.colour"),
    (["high"], "operating_points"),
])
def test_a_card_with_bad_points_is_refused_naming_the_field(points, field):
    data = json.loads(binary_card().to_json()) | {"operating_points": points}
    with pytest.raises(CardError) as caught:
        ModelCard.from_dict(data)
    assert field in [name for name, _ in caught.value.problems]


def test_a_sensitivity_name_chooses_the_threshold_and_bad_requests_say_what_the_card_has():
    points = operating_points(*one_long_per_file(np.r_[np.full(9, 0.8), 0.001], np.full(10, 0.1)))
    card = binary_card(operating_points=points)
    assert deployed_threshold(card) == card.voting.threshold and deployed_threshold(card, 0.3) == 0.3
    assert deployed_threshold(card, sensitivity="balanced") == points["balanced"]["threshold"]
    with pytest.raises(InputError, match="give one of them"):
        deployed_threshold(card, 0.3, "balanced")
    with pytest.raises(InputError, match=r"'loud' is not an operating point .* balanced \(0\.\d+\), low-false-alarm"):
        deployed_threshold(card, sensitivity="loud")
    with pytest.raises(InputError, match="high is unavailable .*recall >= 0.95"):
        deployed_threshold(card, sensitivity="high")
    with pytest.raises(InputError, match="has no operating points"):
        deployed_threshold(binary_card(), sensitivity="high")


def test_an_exported_model_keeps_the_points_in_its_card(make_checkpoint, tmp_path):
    import torch

    from leakhunter.export import export_model
    from leakhunter.inference.describe import describe_model
    from leakhunter.inference.onnx_card import read_onnx

    checkpoint = make_checkpoint("binary", "short", tmp_path / "best.pth")
    payload = torch.load(checkpoint, weights_only=True)
    points = operating_points(*one_long_per_file())
    card = replace(ModelCard.from_json(payload["card"]), operating_points=points)
    torch.save({"card": card.to_json(), "model": payload["model"]}, checkpoint)
    exported = export_model(checkpoint).output
    assert read_onnx(exported).card.operating_points == points
    assert describe_model(exported)["operating_points"] == points  # what `leak info` prints


def test_leak_info_says_where_each_point_was_measured():
    from leakhunter.inference.describe import card_rows

    points = operating_points(*one_long_per_file())
    validated = dict(card_rows({"operating_points": points, "training": {}}))["operating_points"]
    assert "high: threshold 0.35 (file recall >= 0.95); on 70 calibration files: recall 0.950, 16.0 false" in validated
    cv_card = {"operating_points": points, "training": {"cv": {"k": 5, "points_measured": "held_out"}}}
    held_out = dict(card_rows(cv_card))["operating_points"]
    assert "on 70 held-out files (each fold at the point the other folds chose): recall" in held_out
    older = {"operating_points": points, "training": {"cv": {"k": 5}}}  # a --cv card from before: in-sample rates
    assert "on 70 calibration files: recall" in dict(card_rows(older))["operating_points"]
    unmeasured = {"balanced": {"target": "best file F1", "threshold": 0.4, "n_files": 0, "n_leak": 0,
                               "recall": None, "false_alarms_per_100": None}}
    assert "on 0 held-out files (each fold at the point the other folds chose): no rate measured" in dict(
        card_rows({"operating_points": unmeasured, "training": {"cv": {"points_measured": "held_out"}}}))[
        "operating_points"]
