"""The `gain-confound` scenario: LEAK is louder at the pipe, a random recorder gain hides it, and only the level
minus the gain (audio and metadata together) tells the classes apart."""

import csv
from collections import defaultdict

import numpy as np
import pytest
import soundfile

from leakhunter.sources import group_from_name, logger_fields
from leakhunter.synth import BAND_EDGE_HZ, synth_corpus
from leakhunter.synth_confound import GAIN_RANGE_DB, RECORDINGS_PER_SENSOR

RATE = 8000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Eighty 1 s files per class: enough that the best of many thresholds is not a lucky one."""
    return synth_corpus(tmp_path_factory.mktemp("confound"), files_per_class=80, duration_s=1.0,
                        scenario="gain-confound", seed=7)


@pytest.fixture(scope="module")
def table(corpus):
    """Per file, in manifest order: is it a leak, its gain_db, its measured RMS level (dBFS), its samples."""
    with corpus.manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    audio = [soundfile.read(corpus.root / row["path"])[0] for row in rows]
    return {
        "rows": rows,
        "is_leak": np.array([row["label"] == "LEAK" for row in rows]),
        "gain_db": np.array([float(row["gain_db"]) for row in rows]),
        "level_db": np.array([20 * np.log10(np.sqrt(np.mean(x**2))) for x in audio]),
        "audio": audio,
    }


def best_balanced_accuracy(score: np.ndarray, is_leak: np.ndarray) -> float:
    """The best balanced accuracy of any single threshold on score, either way round."""
    best = 0.5
    for threshold in np.unique(score):
        above = score >= threshold
        accuracy = 0.5 * (above[is_leak].mean() + (~above[~is_leak]).mean())
        best = max(best, accuracy, 1 - accuracy)
    return float(best)


# --- layout ------------------------------------------------------------------------------------

def test_only_leak_and_normal_are_written_with_gain_in_name_and_manifest(corpus, table):
    assert corpus.scenario == "gain-confound" and corpus.counts == {"LEAK": 80, "NORMAL": 80}
    assert sorted(p.name for p in corpus.root.iterdir() if p.is_dir()) == ["LEAK", "NORMAL"]
    assert corpus.manifest.read_text().splitlines()[0] == "path,label,group,gain_db"
    assert [corpus.root / row["path"] for row in table["rows"]] == list(corpus.files)
    for row in table["rows"]:
        fields = logger_fields(row["path"])
        assert fields is not None, row["path"]
        assert fields["gain_db"] == row["gain_db"] and row["group"] == group_from_name(row["path"])
        assert row["path"].startswith(row["label"] + "/")


def test_every_sensor_holds_both_classes(table):
    labels = defaultdict(list)
    for row in table["rows"]:
        labels[row["group"]].append(row["label"])
    assert len(labels) == 80 // RECORDINGS_PER_SENSOR
    assert all(sorted(found) == ["LEAK"] * 4 + ["NORMAL"] * 4 for found in labels.values())


def test_same_seed_same_bytes_and_more_files_keep_the_earlier_ones(tmp_path):
    def read(corpus):
        return {p.relative_to(corpus.root).as_posix(): p.read_bytes() for p in (*corpus.files, corpus.manifest)}

    small = synth_corpus(tmp_path / "a", files_per_class=3, duration_s=0.5, scenario="gain-confound", seed=1)
    again = synth_corpus(tmp_path / "b", files_per_class=3, duration_s=0.5, scenario="gain-confound", seed=1)
    large = synth_corpus(tmp_path / "c", files_per_class=5, duration_s=0.5, scenario="gain-confound", seed=1)
    other = synth_corpus(tmp_path / "d", files_per_class=3, duration_s=0.5, scenario="gain-confound", seed=2)
    assert read(small) == read(again)
    assert {k: v for k, v in read(small).items() if k != "manifest.csv"}.items() <= read(large).items()
    assert read(small).keys() != read(other).keys()  # names carry the gain and the timestamp


def test_sites_are_refused_for_this_scenario(tmp_path):
    with pytest.raises(ValueError, match="sites applies to the sites scenario only"):
        synth_corpus(tmp_path, scenario="gain-confound", sites=3)
    assert not any(tmp_path.iterdir())


# --- the confound ------------------------------------------------------------------------------

def test_gain_spans_its_range_in_both_classes_and_is_shared_file_by_file(table):
    gains, is_leak = table["gain_db"], table["is_leak"]
    for in_class in (gains[is_leak], gains[~is_leak]):
        assert in_class.min() <= GAIN_RANGE_DB[0] + 2 and in_class.max() >= GAIN_RANGE_DB[1] - 2
    assert np.array_equal(gains[is_leak], gains[~is_leak])  # file i of either class: the same gain


def test_neither_level_nor_gain_alone_separates_the_classes_but_level_minus_gain_does(table):
    is_leak, level, gain = table["is_leak"], table["level_db"], table["gain_db"]
    measured = best_balanced_accuracy(level, is_leak)
    gain_only = best_balanced_accuracy(gain, is_leak)
    true_level = best_balanced_accuracy(level - gain, is_leak)
    assert measured <= 0.8, measured
    assert gain_only <= 0.65, gain_only
    assert true_level >= 0.97, true_level


def test_the_spectrum_shape_carries_no_label(table):
    """Spectral centroid below 1.8 kHz: one threshold on it does no better than gain alone."""
    freqs = np.fft.rfftfreq(RATE, 1 / RATE)
    power = np.array([np.abs(np.fft.rfft(x, RATE)) ** 2 for x in table["audio"]])
    centroid = (power * freqs).sum(axis=1) / power.sum(axis=1)
    assert best_balanced_accuracy(centroid, table["is_leak"]) <= 0.65


def test_nothing_clips_and_nothing_sits_above_the_band_edge(table):
    freqs = np.fft.rfftfreq(RATE, 1 / RATE)
    for samples in table["audio"]:
        assert samples.shape == (RATE,) and np.abs(samples).max() < 1.0
        power = np.abs(np.fft.rfft(samples)) ** 2
        assert power[freqs > BAND_EDGE_HZ + 100].sum() < 1e-3 * power.sum()
