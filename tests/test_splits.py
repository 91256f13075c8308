"""Splits: stratified within one file per class, groups and identical audio never cross, forced splits obeyed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakhunter.training.splits import SplitError, assign_splits


@settings(max_examples=80, deadline=None)
@given(per_class=st.lists(st.integers(1, 40), min_size=2, max_size=6),
       val=st.sampled_from([0.1, 0.15, 0.2, 0.3]), test=st.sampled_from([0.1, 0.15, 0.25]),
       seed=st.integers(0, 10))
def test_one_file_groups_are_stratified_within_one_file_per_class(per_class, val, test, seed):
    labels = np.repeat(np.arange(len(per_class)), per_class)
    n = len(labels)
    names = [f"f{i}" for i in range(n)]
    split = assign_splits(labels, names, names, [None] * n, names, val=val, test=test, seed=seed)
    fractions = np.array([1 - val - test, val, test])
    for c, total in enumerate(per_class):
        counts = np.bincount(split[labels == c], minlength=3)
        assert np.all(np.abs(counts - fractions * total) < 1 + 1e-9), (c, counts, fractions * total)


@settings(max_examples=50, deadline=None)
@given(n_files=st.integers(10, 120), n_groups=st.integers(2, 30), seed=st.integers(0, 5))
def test_groups_and_identical_audio_never_cross_splits(n_files, n_groups, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_files)
    groups = [f"g{g}" for g in rng.integers(0, n_groups, n_files)]
    shas = [f"sha{s}" for s in rng.integers(0, n_files * 2, n_files)]  # some files share bytes
    split = assign_splits(labels, groups, shas, [None] * n_files, groups, seed=seed)
    for key in (groups, shas):
        for value in set(key):
            members = [i for i, k in enumerate(key) if k == value]
            assert len(set(split[members])) == 1


def test_forced_splits_take_their_group_along():
    labels = [0, 0, 1, 1, 0, 1]
    groups = ["a", "a", "b", "b", "c", "d"]
    forced = ["test", None, None, None, None, "val"]
    split = assign_splits(labels, groups, [str(i) for i in range(6)], forced, groups, seed=0)
    assert split[0] == split[1] == 2 and split[5] == 1


def test_a_group_forced_into_two_splits_names_both_files():
    with pytest.raises(SplitError, match=r"group a is forced into two splits.*x.wav \(train\).*y.wav \(test\)"):
        assign_splits([0, 0], ["a", "a"], ["1", "2"], ["train", "test"], ["x.wav", "y.wav"])


def test_fractions_are_validated():
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        assign_splits([0, 1], ["a", "b"], ["1", "2"], [None, None], ["x", "y"], val=0.6, test=0.5)


def test_zero_fractions_put_everything_in_train():
    split = assign_splits([0, 1, 0], ["a", "b", "c"], ["1", "2", "3"], [None] * 3, ["x", "y", "z"], val=0, test=0)
    assert split.tolist() == [0, 0, 0]
