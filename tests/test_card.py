"""The model card refuses every inconsistency and names the field."""

import dataclasses
import json

import pytest

from leakhunter.card import (
    BINARY_CLASSES,
    PRESETS,
    STANDARD_CLASSES,
    CardError,
    FrontendConfig,
    ModelCard,
    SegmentationConfig,
    compare_configs,
    input_shape,
    preset,
    preset_name,
)


def multiclass_card(**changes):
    card = ModelCard.for_mode("multiclass", STANDARD_CLASSES)
    data = card.to_dict() | changes
    return data


def test_for_mode_derives_leak_idx_and_rule():
    binary = ModelCard.for_mode("binary", BINARY_CLASSES)
    assert binary.leak_idx == 1 and binary.leak_prob == "softmax"
    multi = ModelCard.for_mode("multiclass", ("NORMAL", "QUIET", "LEAK"))
    assert multi.leak_idx == 2 and multi.leak_prob == "mean_softmax_aux"


def test_json_round_trip_is_identical():
    card = ModelCard.for_mode("multiclass", STANDARD_CLASSES, training={"best_epoch": 3})
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert json.loads(again.to_json()) == json.loads(card.to_json())


@pytest.mark.parametrize("changes, field", [
    ({"leak_idx": 1}, "leak_idx"),
    ({"class_names": ["NORMAL", "QUIET"]}, "class_names"),
    ({"class_names": ["LEAK", "LEAK", "QUIET"]}, "class_names"),
    ({"mode": "regression"}, "mode"),
    ({"mode": "binary"}, "class_names"),          # 5 classes cannot be a binary model
    ({"leak_prob": "softmax"}, "leak_prob"),      # multiclass forms P(LEAK) with the aux head
    ({"schema_version": 99}, "schema_version"),
    ({"architecture": {"name": "resnet9000", "params": {}}}, "architecture.name"),
    ({"frontend": FrontendConfig(fmax=3000.0).__dict__}, "frontend.fmin/fmax"),
    ({"frontend": FrontendConfig(win_length=1024).__dict__}, "frontend.win_length"),
    ({"frontend": FrontendConfig(center=True).__dict__}, "frontend.center"),
    ({"frontend": FrontendConfig(n_mels=0).__dict__}, "frontend.n_mels"),
    ({"segmentation": SegmentationConfig(short_samples=256).__dict__}, "segmentation.short_samples"),
    ({"segmentation": SegmentationConfig(long_hop=384).__dict__}, "segmentation.long_hop"),
    ({"segmentation": SegmentationConfig(short_hop=200).__dict__}, "segmentation.short_hop"),
    ({"segmentation": SegmentationConfig(unit="file").__dict__}, "segmentation.unit"),
    ({"segmentation": SegmentationConfig(tail="wrap").__dict__}, "segmentation.tail"),
    ({"voting": {"rule": "frac_vote", "threshold": 1.5, "vote_fraction": 0.5}}, "voting.threshold"),
    ({"surprise": 1}, "surprise"),
    ({"frontend": {**FrontendConfig().__dict__, "dither": 1}}, "frontend.dither"),
])
def test_each_invalid_card_is_refused_naming_the_field(changes, field):
    with pytest.raises(CardError) as caught:
        ModelCard.from_dict(multiclass_card(**changes), source="model_meta.json")
    assert field in [name for name, _ in caught.value.problems]
    assert field in str(caught.value) and "model_meta.json" in str(caught.value)


def test_every_problem_is_listed_at_once():
    data = multiclass_card(leak_idx=4, leak_prob="softmax", schema_version=2)
    with pytest.raises(CardError) as caught:
        ModelCard.from_dict(data)
    assert {"leak_idx", "leak_prob", "schema_version"} <= {name for name, _ in caught.value.problems}


def test_missing_field_and_bad_json_are_refused():
    data = multiclass_card()
    del data["class_names"]
    with pytest.raises(CardError, match="class_names: missing"):
        ModelCard.from_dict(data)
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.from_json("{'mode': 'binary'}")  # a Python repr, not JSON


def test_presets_are_valid_and_give_the_documented_input_shapes():
    assert input_shape(*preset("short")) == (1, 32, 1)
    assert input_shape(*preset("long")) == (1, 32, 15)
    assert input_shape(*preset("wide")) == (1, 64, 1)
    for frontend, segmentation in PRESETS.values():
        assert frontend.problems() == [] and segmentation.problems(frontend) == []
    with pytest.raises(ValueError, match="short, long, wide"):
        preset("medium")


def test_a_front_end_is_named_by_its_preset_under_either_tail_rule():
    for name, (frontend, segmentation) in PRESETS.items():
        assert preset_name(frontend, segmentation) == name
        assert preset_name(frontend, dataclasses.replace(segmentation, tail="pad")) == name
    frontend, segmentation = PRESETS["short"]
    assert preset_name(dataclasses.replace(frontend, n_mels=40), segmentation) is None
    assert preset_name(PRESETS["wide"][0], PRESETS["short"][1]) is None


def test_compare_configs_names_both_sides():
    short, long_ = PRESETS["short"][1], PRESETS["long"][1]
    diffs = dict(compare_configs(short, long_, "checkpoint", "data.h5", "segmentation"))
    assert set(diffs) == {"segmentation.long_samples", "segmentation.long_hop", "segmentation.unit"}
    assert diffs["segmentation.unit"] == "checkpoint has 'short', data.h5 has 'long'"
