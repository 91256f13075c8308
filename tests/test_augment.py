"""Training-time augmentation: each lever does what its name says within its bounds, is reproducible from
(seed, epoch, step), touches only training inputs, and a run with it still resumes bit for bit; a smaller
network's card says its sizes and exports with parity; a relative-level network ignores level, in training
statistics, card and export alike."""

import json

import numpy as np
import pytest
import torch
from conftest import Interrupt, final_weights, quick_config, stop_after
from typer.testing import CliRunner

from leakhunter.checkpoint import load_checkpoint, read_model
from leakhunter.cli import app
from leakhunter.models import LeakCNN, RelativeLevel
from leakhunter.training.augment import Augmenter, Strengths, parse_augment
from leakhunter.training.config import ConfigError, make_config
from leakhunter.training.data import LeakData
from leakhunter.training.trainer import Trainer, train

QUIET = lambda text: None  # noqa: E731
ALL = "gain,tilt,mix,mask"


def log_mels(batch=16, n_mels=32, frames=1, seed=0):
    """Raw dB inputs [batch, 1, n_mels, frames] around -50 dB, like the `short` preset's."""
    generator = torch.Generator().manual_seed(seed)
    return -50 + 10 * torch.randn(batch, 1, n_mels, frames, generator=generator)


def every_other_leak(batch=16):
    return torch.arange(batch) % 2 == 1


def test_gain_shifts_every_bin_of_an_input_by_one_amount_within_the_bound():
    mel = log_mels(frames=15)
    shifted = Augmenter("gain", seed=0)(mel, every_other_leak(), epoch=1, step=0)
    shift = (shifted - mel).flatten(1)
    per_input = shift[:, 0]
    torch.testing.assert_close(shift, per_input[:, None].expand_as(shift), rtol=0, atol=1e-4)
    assert per_input.abs().max() <= Strengths().gain_db
    assert per_input.std() > 2  # really random per input, not one shift for the batch


def test_tilt_is_linear_in_the_mel_bin_within_its_bound_and_the_bump_stays_within_its_own():
    mel = log_mels(frames=3)
    slope_only = Augmenter("tilt", seed=0, strengths=Strengths(bump_db=0.0))(mel, every_other_leak(), 1, 0)
    curve = (slope_only - mel)[:, 0]  # [batch, n_mels, frames]
    torch.testing.assert_close(curve, curve[:, :, :1].expand_as(curve), rtol=0, atol=1e-4)  # same every frame
    curve = curve[:, :, 0]
    steps = curve.diff(dim=1)
    torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=0, atol=1e-4)  # a straight line
    end_to_end = curve[:, -1] - curve[:, 0]
    assert end_to_end.abs().max() <= Strengths().tilt_db and end_to_end.abs().max() > 3
    assert curve.mean(dim=1).abs().max() < 1e-4  # tilted about the middle bin: no level change
    with_bump = Augmenter("tilt", seed=0)(mel, every_other_leak(), 1, 0) - mel
    assert with_bump.abs().max() <= Strengths().tilt_db / 2 + Strengths().bump_db


def test_mix_never_lowers_a_bin_and_never_adds_a_leak_input():
    batch, n_mels = 16, 32
    mel = torch.full((batch, 1, n_mels, 1), -100.0)
    mel[torch.arange(batch), 0, torch.arange(batch), 0] = 0.0  # input i: a 0 dB tag in bin i, -100 dB elsewhere
    is_leak = every_other_leak(batch)
    donors_seen = set()
    for step in range(10):
        mixed = Augmenter("mix", seed=0)(mel, is_leak, epoch=1, step=step)
        assert (mixed >= mel).all()
        raised = (mixed - mel)[:, 0, :batch, 0] > 10  # a tag 0-12 dB down over -100 dB (a floor adds <= 3 dB)
        for row, tag in raised.nonzero().tolist():
            assert not is_leak[tag] and tag != row, (step, row, tag)
            donors_seen.add(tag)
        assert 0 < raised.any(dim=1).sum() < batch  # about half the inputs get a donor
    assert donors_seen == {i for i in range(batch) if not is_leak[i]}


def test_mix_leaves_a_batch_without_two_non_leak_inputs_alone_where_it_must():
    mel, is_leak = log_mels(batch=4), torch.tensor([True, True, True, False])
    for step in range(5):  # the one non-leak input has no donor but itself
        mixed = Augmenter("mix", seed=0)(mel, is_leak, 1, step)
        assert torch.equal(mixed[3], mel[3])
    assert torch.equal(Augmenter("mix", seed=0)(mel, torch.ones(4, dtype=torch.bool), 1, 0), mel)


@pytest.mark.parametrize(("frames", "n_mels"), [(1, 32), (15, 32), (1, 64)])
def test_mask_sets_a_band_to_the_inputs_own_mean_level(frames, n_mels):
    """Up to 4 of the `short` preset's 32 bands, up to 8 of the `wide` preset's 64: the same share of the band."""
    mel = log_mels(batch=64, n_mels=n_mels, frames=frames)
    masked = Augmenter("mask", seed=0)(mel, every_other_leak(64), epoch=1, step=0)
    changed = (masked != mel)[:, 0]  # [batch, n_mels, frames]
    mean = mel.mean(dim=(1, 2, 3))
    assert 0 < changed.flatten(1).any(dim=1).sum() < len(mel)
    for row in range(len(mel)):
        torch.testing.assert_close(masked[row, 0][changed[row]], mean[row].expand(int(changed[row].sum())))
        bins = changed[row].all(dim=1).nonzero().flatten()  # whole mel bands set to the mean
        if len(bins):
            assert len(bins) <= Strengths().mask_bins * n_mels // 32 and bins.diff().eq(1).all()  # one run
    widths = [int(changed[row].all(dim=1).sum()) for row in range(len(mel))]
    assert max(widths) > Strengths().mask_bins * (n_mels // 32 - 1)  # the widest masks are drawn
    if frames > 1:
        columns = changed.all(dim=1)  # whole frames set to the mean
        assert columns.any() and columns.sum(dim=1).max() <= int(Strengths().mask_frames * frames)


def test_the_same_seed_epoch_and_step_give_the_same_batch_and_another_step_another():
    mel, is_leak = log_mels(frames=15), every_other_leak()
    augmenter = Augmenter(ALL, seed=7)
    first = augmenter(mel, is_leak, epoch=3, step=5)
    assert torch.equal(first, Augmenter(ALL, seed=7)(mel.clone(), is_leak, epoch=3, step=5))
    for other in [dict(epoch=3, step=6), dict(epoch=4, step=5)]:
        assert not torch.equal(first, augmenter(mel, is_leak, **other))
    assert not torch.equal(first, Augmenter(ALL, seed=8)(mel, is_leak, epoch=3, step=5))
    assert not torch.equal(first, Augmenter(ALL, seed=7, stream=1)(mel, is_leak, epoch=3, step=5))  # DDP rank
    state = torch.get_rng_state()
    augmenter(mel, is_leak, 1, 0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (the run's own) is never drawn from


def test_an_empty_list_is_the_identity_and_order_and_case_do_not_matter():
    mel = log_mels()
    assert Augmenter("", seed=0)(mel, every_other_leak(), 1, 0) is mel
    assert not Augmenter(" , ", seed=0)
    assert parse_augment("Mask, gain,tilt ,mix") == parse_augment("mix,tilt,gain,mask") == ("mix", "tilt", "gain", "mask")


def test_unknown_augmentations_and_network_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="'flip'.*gain, mask"):
        parse_augment("gain,flip")
    with pytest.raises(ConfigError, match="augment 'gain,flip': unknown augmentation"):
        make_config({"data": "x", "augment": "gain,flip"})
    with pytest.raises(ConfigError, match="channels must be 3 integers"):
        make_config({"data": "x", "channels": "8,16"})
    with pytest.raises(ConfigError, match=r"hidden must be an integer in \[1, 4096\]"):
        make_config({"data": "x", "hidden": 0})


def test_an_augmented_run_changes_training_only_and_resumes_bit_for_bit(training_dataset, tmp_path, monkeypatch):
    config = dict(mode="binary", epochs=3, augment=ALL)
    calls = []
    original_call = Augmenter.__call__

    def counted(self, inputs, is_leak, epoch, step):
        calls.append((epoch, step))
        return original_call(self, inputs, is_leak, epoch, step)

    with monkeypatch.context() as patch:
        patch.setattr(Augmenter, "__call__", counted)
        trainer = Trainer(quick_config(training_dataset, tmp_path / "straight", **config), log=QUIET)
        trainer.fit()
    assert calls == [(epoch, step) for epoch in (1, 2, 3) for step in range(trainer.steps_per_epoch)]  # not val/test
    straight = final_weights(tmp_path / "straight")
    plain = train(quick_config(training_dataset, tmp_path / "plain", mode="binary", epochs=3), log=QUIET)
    assert not all(torch.equal(straight[k], w) for k, w in final_weights(plain.run_dir).items())

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_epoch", stop_after(2))
        with pytest.raises(Interrupt):
            train(quick_config(training_dataset, out, **config), log=QUIET)
    train(quick_config(training_dataset, out), resume=out / "checkpoints" / "last.pth", log=QUIET)
    resumed = final_weights(out)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert load_checkpoint(out / "checkpoints" / "last.pth")["config"]["augment"] == ALL


def test_relative_level_makes_the_network_blind_to_level_and_its_statistics_match(training_dataset):
    relative, absolute = LeakCNN(2, False, level="relative"), LeakCNN(2, False)
    relative.eval(), absolute.eval()
    inputs = log_mels()
    torch.testing.assert_close(relative(inputs + 9.5)[0], relative(inputs)[0], rtol=0, atol=1e-5)  # ≈ 3× gain
    assert not torch.allclose(absolute(inputs + 9.5)[0], absolute(inputs)[0], atol=1e-3)
    data = LeakData(training_dataset, "binary")
    mean, std = data.mel_statistics(relative=True)
    assert abs(float(mean.mean())) < 1e-4  # every input is centred on its own mean, so the bins' means are too
    assert not np.allclose(mean, data.mel_statistics()[0])
    with pytest.raises(ConfigError, match="level must be one of absolute, relative, got 'loud'"):
        make_config({"data": "x", "level": "loud"})


def test_a_smaller_relative_network_is_in_its_card_and_exports_with_parity(training_dataset, tmp_path):
    result = CliRunner().invoke(app, ["train", "--mode", "binary", "--data", str(training_dataset), "--out",
                                      str(tmp_path / "small"), "--epochs", "2", "--batch-size", "256",
                                      "--channels", "8,16,32", "--hidden", "64", "--augment", "gain,mix",
                                      "--level", "relative"])
    assert result.exit_code == 0, result.output
    best = tmp_path / "small" / "best.pth"
    card, model = read_model(best)
    assert card.architecture == {"name": "leakcnn", "params": {"dropout": 0.25, "channels": [8, 16, 32],
                                                               "hidden": 64, "level": "relative"}}
    assert model.features[0].out_channels == 8 and model.head.in_features == 64
    assert isinstance(model.level, RelativeLevel)
    assert abs(np.mean(card.normalisation["mean"])) < 1e-3  # the normaliser learnt centred inputs' statistics
    assert card.training["config"]["augment"] == "gain,mix"
    exported = CliRunner().invoke(app, ["export", str(best)])
    assert exported.exit_code == 0, exported.output
    (fp32,) = json.loads(best.with_suffix(".parity.json").read_text())["parity"]
    assert fp32["precision"] == "fp32" and fp32["max_abs_leak_prob"] <= 1e-4 and not fp32["verdict_flips"]
