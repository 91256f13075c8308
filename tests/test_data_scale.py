"""Data at scale: a dataset bigger than the memory budget is streamed from disk with the same inputs and
statistics as the in-memory path, and a size budget is parsed and validated like any config key."""

import numpy as np
import pytest
import torch

from leakhunter.training.config import ConfigError, make_config, parse_memory
from leakhunter.training.data import LeakData


@pytest.fixture(scope="module", params=["short", "long"])
def both_paths(request, small_corpus, small_dataset, tmp_path_factory):
    """(in-memory LeakData, streamed LeakData, log lines) over the same file of each preset."""
    if request.param == "short":
        path = small_dataset.output
    else:
        from leakhunter.training.dataset import build_dataset

        path = build_dataset(small_corpus.root, tmp_path_factory.mktemp("long") / "long.h5", preset_name="long").output
    logs = []
    memory = LeakData(path, "multiclass", max_memory="100%", log=logs.append)
    streamed = LeakData(path, "multiclass", max_memory=1000, log=logs.append)
    yield memory, streamed, logs
    streamed.close()


def test_the_path_follows_the_budget_and_is_logged(both_paths):
    memory, streamed, logs = both_paths
    assert not memory.streamed and memory.mel is not None
    assert streamed.streamed and streamed.mel is None
    assert logs[0].endswith("read into memory") and "<= budget" in logs[0]
    assert logs[1].startswith("dataset ") and logs[1].endswith("> budget 0.0 MB: reading from disk in chunks")


@pytest.mark.parametrize("split_name", ["train", "val", "test"])
def test_streamed_inputs_equal_in_memory_inputs(both_paths, split_name):
    memory, streamed, _ = both_paths
    split, other = memory.splits[split_name], streamed.splits[split_name]
    assert np.array_equal(split.input_index, other.input_index)
    rng = np.random.default_rng(1)
    for rows in (np.arange(len(split)), rng.permutation(len(split))[:257], np.array([3, 3, 0, 1]),
                 np.zeros(0, np.int64)):
        assert torch.equal(memory.inputs(split, rows), streamed.inputs(other, rows))


def test_streamed_mel_statistics_equal_in_memory_and_a_whole_array_reference(both_paths):
    memory, streamed, _ = both_paths
    mean, std = memory.mel_statistics()
    np.testing.assert_array_equal(mean, streamed.mel_statistics()[0])
    np.testing.assert_array_equal(std, streamed.mel_statistics()[1])
    train = memory.splits["train"]
    shorts = (train.input_index if memory.segmentation.unit == "short"
              else np.flatnonzero(np.isin(memory.short_file_index, train.file_index)))
    whole = memory.mel[torch.from_numpy(shorts)].double()  # the former implementation
    np.testing.assert_allclose(mean, whole.mean(dim=(0, 2)).float().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(std, whole.std(dim=(0, 2)).clamp(min=1e-3).float().numpy(), rtol=0, atol=1e-5)


def test_mel_statistics_merge_chunks_exactly(both_paths, monkeypatch):
    """Many small chunks (Chan's merge) give the same statistics as one."""
    from leakhunter.training import data

    memory, _, _ = both_paths
    mean, std = memory.mel_statistics()
    monkeypatch.setattr(data, "STATISTICS_CHUNK_BYTES", 8 * 32 * 7)  # a few rows per chunk
    small_mean, small_std = memory.mel_statistics()
    np.testing.assert_allclose(small_mean, mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(small_std, std, rtol=0, atol=1e-5)


def test_epoch_order_is_a_seeded_permutation_and_unchanged_in_memory(both_paths):
    memory, streamed, _ = both_paths
    train = memory.splits["train"]
    assert np.array_equal(memory.epoch_order(train, 0, 3), np.random.default_rng([0, 3]).permutation(len(train)))
    order = streamed.epoch_order(streamed.splits["train"], 0, 3)
    assert np.array_equal(np.sort(order), np.arange(len(train)))
    assert np.array_equal(order, streamed.epoch_order(streamed.splits["train"], 0, 3))
    assert not np.array_equal(order, streamed.epoch_order(streamed.splits["train"], 0, 4))


def test_streamed_epoch_order_keeps_each_batch_within_a_buffer_of_chunks(both_paths, monkeypatch):
    _, streamed, _ = both_paths
    monkeypatch.setattr(streamed, "chunk_rows", 16 * (streamed.shorts_per_long if streamed.segmentation.unit
                                                       == "long" else 1))
    train = streamed.splits["train"]
    order = streamed.epoch_order(train, 5, 0)
    from leakhunter.training.data import BUFFER_BLOCKS

    buffer = 16 * BUFFER_BLOCKS  # BUFFER_BLOCKS whole runs of 16 rows (the short last run shifts the boundaries)
    for start in range(0, len(order), buffer):  # a batch of a buffer's size meets at most two buffers' runs
        assert len(np.unique(order[start:start + buffer] // 16)) <= 2 * BUFFER_BLOCKS


def test_max_memory_is_parsed_and_validated():
    assert parse_memory("8GB") == 8 * 10**9 and parse_memory("512MiB") == 512 * 2**20 and parse_memory(1000) == 1000
    assert 0 < parse_memory("50%") <= parse_memory("100%")
    assert make_config({"data": "d.h5", "max_memory": "2GB"}).max_memory == "2GB"
    with pytest.raises(ConfigError, match="max_memory 'lots' is not a size"):
        make_config({"data": "d.h5", "max_memory": "lots"})
    with pytest.raises(ConfigError, match=r"must be in \(0, 100\] %"):
        parse_memory("150%")


def test_relative_statistics_are_those_of_the_inputs_the_network_centres(both_paths):
    """--level relative: the normaliser's statistics come from each network input minus its own mean (a whole
    long segment under the `long` preset), on both loading paths."""
    from leakhunter.models import RelativeLevel

    memory, streamed, _ = both_paths
    mean, std = memory.mel_statistics(relative=True)
    streamed_mean, streamed_std = streamed.mel_statistics(relative=True)
    np.testing.assert_allclose(streamed_mean, mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(streamed_std, std, rtol=0, atol=1e-5)
    train = memory.splits["train"]
    seen = RelativeLevel()(memory.inputs(train, np.arange(len(train))).double())[:, 0]  # [n, n_mels, frames]
    np.testing.assert_allclose(mean, seen.mean(dim=(0, 2)).float().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(std, seen.std(dim=(0, 2)).clamp(min=1e-3).float().numpy(), rtol=0, atol=1e-5)
    assert abs(float(mean.mean())) < 1e-4
