"""Fusion's parts without training: the meta encoding, the fused network, its config and card rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leakhunter.card import CardError, ModelCard
from leakhunter.errors import InputError
from leakhunter.fusion import FusionNet
from leakhunter.meta import MetaSpec, file_meta, parse_fields
from leakhunter.models import build_model, check_weights
from leakhunter.training.config import ConfigError, resolve_config


def test_meta_fields_come_from_the_manifest_over_the_logger_name():
    named = file_meta("/x/S01~R00001~20261120T023000~12.wav")
    assert named == {"sensor_id": "S01", "recording_id": "R00001", "timestamp": "20261120T023000", "gain_db": "12"}
    assert file_meta("/x/S01~R00001~20261120T023000~12.wav", {"gain_db": "6", "pipe": ""})["gain_db"] == "6"
    assert "pipe" not in file_meta("/x/S01~R00001~20261120T023000~12.wav", {"pipe": " "})  # empty = missing
    assert file_meta("/x/plain.wav", {"pipe": "PVC"}) == {"pipe": "PVC"}
    # an empty cell is no value: the name's stands, in training as at predict (MetaResolver)
    assert file_meta("/x/S01~R00001~20261120T023000~12.wav", {"gain_db": ""})["gain_db"] == "12"


def test_a_meta_spec_standardises_numbers_and_one_hots_categories():
    training = [{"gain_db": "0", "pipe": "PVC"}, {"gain_db": "12", "pipe": "iron"}, {"gain_db": "6"}]
    spec = MetaSpec.fit(("gain_db", "pipe"), training)
    assert spec.numeric == {"gain_db": (6.0, pytest.approx(4.898979, abs=1e-5))}
    assert spec.columns == ("gain_db", "pipe=PVC", "pipe=iron")
    assert spec.column_fields().tolist() == [0, 1, 1]
    row = spec.encode({"gain_db": "3", "pipe": "iron"})
    assert row.tolist() == [3.0, 0.0, 1.0]
    unknown = spec.encode({"pipe": "steel"})  # a missing number and an unseen category are unknown
    assert all(math.isnan(v) for v in unknown)
    mean, std = spec.standardisation()
    assert mean.tolist() == [6.0, 0.0, 0.0] and std[1:].tolist() == [1.0, 1.0]
    assert MetaSpec.from_dict(spec.to_dict()) == spec


def test_a_mostly_numeric_field_stays_numeric_and_a_constant_one_divides_by_one():
    training = [{"gain_db": str(g)} for g in range(10)] + [{"gain_db": "n/a"}]
    spec = MetaSpec.fit(("gain_db",), training)
    assert "gain_db" in spec.numeric and math.isnan(spec.encode({"gain_db": "n/a"})[0])
    constant = MetaSpec.fit(("gain_db",), [{"gain_db": "12"}] * 5)
    assert constant.numeric["gain_db"] == (12.0, 1.0)  # not 1e-6: 12.5 must not become a 500 000-sigma value


@pytest.mark.parametrize("field", ["sensor_id", "recording_id", "timestamp", "group", "label"])
def test_meta_fields_that_identify_groups_or_recordings_are_refused(field):
    with pytest.raises(InputError, match=f"meta field '{field}' is refused"):
        MetaSpec.fit((field,), [{field: "x"}])


def test_a_meta_field_no_training_file_has_is_refused_naming_the_known_ones():
    with pytest.raises(InputError, match=r"'pipe' has no value in any training file \(known fields: gain_db\)"):
        MetaSpec.fit(("pipe",), [{"gain_db": "1"}])
    with pytest.raises(InputError, match="repeats"):
        parse_fields("gain_db,gain_db")


def _card(branches=("mel", "features", "meta"), n_meta=3, classes=("LEAK", "NORMAL")):
    params = {"branches": list(branches), "prior": [round(1 / len(branches), 6)] * len(branches),
              "channels": [4, 8, 8], "hidden": 16, "branch_width": 8}
    if "meta" in branches:
        params["n_meta"] = n_meta
    meta = {"fields": ["gain_db"], "columns": ["c"] * n_meta, "numeric": {}, "categories": {}}
    return ModelCard.for_mode("fusion", classes, architecture={"name": "fusion", "params": params},
                              branches={"names": list(branches), "meta": meta if "meta" in branches else None})


def test_the_fused_network_learns_its_weights_and_names_its_branch_tensors():
    torch.manual_seed(0)
    net = build_model(_card())
    assert isinstance(net, FusionNet) and net.branch_names == ("mel", "features", "meta")
    assert net.fusion_logits.requires_grad
    assert torch.allclose(net.fusion_weights(), torch.full((3,), 1 / 3))
    names = set(net.state_dict())
    assert {"mel.head.weight", "features.head.weight", "meta.head.weight", "fusion_logits",
            "features.normalise.mean", "meta.column_field"} <= names
    mel, features = torch.randn(5, 1, 32, 1), torch.randn(5, 14)
    meta = torch.tensor([[1.0, 0.0, 1.0]] * 4 + [[math.nan] * 3])
    net.eval()
    logits, aux = net(mel, features, meta)
    assert logits.shape == (5, 2) and aux is None and torch.isfinite(logits).all()
    branch = net.branch_logits(mel, features, meta)
    expected = sum(w * x for w, x in zip(net.fusion_weights(), branch))
    assert torch.allclose(logits, expected)
    logits.sum().backward()
    assert net.fusion_logits.grad is not None and net.fusion_logits.grad.abs().sum() > 0


def test_meta_dropout_hides_whole_fields_in_training_only():
    torch.manual_seed(0)
    net = build_model(_card(branches=("meta",), n_meta=3))
    net.meta.column_field.copy_(torch.tensor([0, 1, 1]))
    net.meta.meta_dropout = 1.0
    meta = torch.tensor([[1.0, 0.0, 1.0]])
    unknown = torch.tensor([[math.nan] * 3])
    net.train()
    assert torch.allclose(net(None, None, meta)[0], net(None, None, unknown)[0])  # every field hidden = every field unknown
    net.eval()
    assert not torch.allclose(net(None, None, meta)[0], net(None, None, unknown)[0])


def test_weights_whose_branch_head_disagrees_with_the_classes_are_refused():
    card = _card()
    state = build_model(card).state_dict()
    state["features.head.weight"] = torch.zeros(5, 8)
    with pytest.raises(CardError, match="features.head has 5 outputs"):
        check_weights(card, state, "x.pth")


def test_fusion_cards_must_agree_with_their_architecture():
    assert _card().schema_version == 2  # fusion's branches came with schema 2; binary and multiclass stay 1
    assert ModelCard.for_mode("binary", ("NOLEAK", "LEAK")).schema_version == 1
    with pytest.raises(CardError, match="a fusion card is schema 2, got 1"):
        card = _card()
        ModelCard.for_mode("fusion", card.class_names, branches=card.branches, architecture=card.architecture,
                           schema_version=1)
    with pytest.raises(CardError, match="only fusion models have branches"):
        ModelCard.for_mode("binary", ("LEAK", "NOLEAK"), branches={"names": ["mel"]})
    with pytest.raises(CardError, match="cannot have architecture 'leakcnn'"):
        ModelCard.for_mode("fusion", ("LEAK", "NORMAL"), architecture={"name": "leakcnn", "params": {}})
    with pytest.raises(CardError, match="meta branch takes 4 columns"):
        card = _card()
        ModelCard.for_mode("fusion", card.class_names, branches=card.branches,
                           architecture={"name": "fusion", "params": card.architecture["params"] | {"n_meta": 4}})
    with pytest.raises(CardError, match="prior"):
        ModelCard.for_mode("fusion", ("LEAK", "NORMAL"), branches={"names": ["mel"]},
                           architecture={"name": "fusion", "params": {"branches": ["mel"], "prior": [0.5, 0.4]}})


@pytest.mark.parametrize("flags, message", [
    ({"mode": "binary", "branches": "mel,meta"}, "branches applies to --mode fusion only"),
    ({"mode": "fusion", "branches": "mel,sound"}, "must be distinct names from mel, features, meta"),
    ({"mode": "fusion", "branches": "mel,meta"}, "the meta branch needs its fields"),
    ({"mode": "fusion", "meta": "gain_db"}, "has no meta branch"),
    ({"mode": "fusion", "fusion_prior": "0.7,0.2"}, "must be 2 positive weights summing to 1"),
    ({"mode": "fusion", "fusion_prior": "a,b"}, "is not a comma list of numbers"),
])
def test_fusion_settings_are_checked_together(flags, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, {"data": "d.h5", **flags}, environ={})


def test_a_fusion_config_resolves_with_its_prior():
    config = resolve_config(None, {"data": "d.h5", "mode": "fusion", "branches": "mel,features,meta",
                                   "meta": "gain_db", "fusion_prior": "0.5,0.3,0.2"}, environ={})
    assert config.branch_list() == ("mel", "features", "meta") and config.prior_list() == (0.5, 0.3, 0.2)
    assert np.isclose(sum(config.prior_list()), 1)


def test_a_branch_starved_of_gradient_warns():
    """RC5's other face: a branch whose gradient is ~0 next to the others learns nothing from the fusion."""
    from leakhunter.training.fusion import gradient_findings

    torch.manual_seed(0)
    net = build_model(_card(branches=("mel", "features")))
    logits, _ = net(torch.randn(4, 1, 32, 1), torch.randn(4, 14))
    logits.sum().backward()
    assert gradient_findings("1-fusion", net, 3) == []
    for parameter in net.features.parameters():
        parameter.grad.mul_(1e-6)
    found = gradient_findings("1-fusion", net, 3)
    assert [f.code for f in found] == ["H013"] and "features branch's gradient" in found[0].message
    for parameter in net.features.parameters():  # a frozen branch has no gradient and is not judged
        parameter.requires_grad_(False)
    assert gradient_findings("1-fusion", net, 3) == []
