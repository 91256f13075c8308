"""The HDF5 dataset: index-linked arrays, parity with predict-time features, bad files skipped, safe splits."""

import csv
import json
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

from leakhunter.audio import load_audio, open_audio
from leakhunter.card import STANDARD_CLASSES, preset
from leakhunter.cli import app
from leakhunter.errors import LeakhunterError
from leakhunter.frontend import FEATURE_NAMES, FrontEnd
from leakhunter.sources import ManifestError, find_sources
from leakhunter.training.check import check_dataset
from leakhunter.training.data import LeakData
from leakhunter.training.dataset import DatasetError, build_dataset, class_order, dataset_configs, dead_channel_warning
from leakhunter.training.splits import SplitError


def copy_tree(corpus, destination):
    shutil.copytree(corpus.root, destination)
    return destination


def test_arrays_link_files_long_and_short_segments(small_dataset):
    with h5py.File(small_dataset.output) as h5:
        files = {k: h5["files"][k][:] for k in ("long_start", "long_count", "short_start", "short_count")}
        long_file, long_short = h5["long/file_index"][:], h5["long/short_start"][:]
        short_file = h5["short/file_index"][:]
        assert h5["short/mel"].shape == (small_dataset.n_short, 32, 1) and h5["short/mel"].dtype == np.float16
        assert h5["short/mel"].compression is None
        assert h5["short/features"].shape == (small_dataset.n_short, len(FEATURE_NAMES))
        frontend, segmentation, class_names = dataset_configs(h5)
    assert (frontend, segmentation) == preset("short") and class_names == STANDARD_CLASSES
    for f in range(small_dataset.n_files):
        longs = slice(files["long_start"][f], files["long_start"][f] + files["long_count"][f])
        assert (long_file[longs] == f).all()
        shorts = slice(files["short_start"][f], files["short_start"][f] + files["short_count"][f])
        assert (short_file[shorts] == f).all()
        # every long segment's 3 shorts lie inside its own file's shorts
        assert long_short[longs].min() == shorts.start and long_short[longs].max() + 3 == shorts.stop
    assert files["long_count"].tolist() == [31] * small_dataset.n_files  # 4 s at 4096 Hz: (16384-1024)/512+1


def test_stored_mel_equals_predict_time_features_bit_for_bit(small_dataset):
    frontend_cfg, segmentation = preset("short")
    frontend = FrontEnd(frontend_cfg, segmentation)
    with h5py.File(small_dataset.output) as h5:
        paths = h5["files/path"].asstr()[:]
        for f in (0, len(paths) // 2, len(paths) - 1):
            start, count = h5["files/short_start"][f], h5["files/short_count"][f]
            stored = h5["short/mel"][start:start + count]
            stored_features = h5["short/features"][start:start + count]
            audio = load_audio(paths[f], frontend_cfg.sample_rate, "mean", segmentation.long_samples)
            with torch.inference_mode():
                mel, features = frontend.short_segments(torch.from_numpy(audio.samples)[None], with_features=True)
            np.testing.assert_array_equal(stored, mel[0].numpy().astype(np.float16))
            np.testing.assert_array_equal(stored_features, features[0].numpy())


def test_three_broken_files_among_forty_are_skipped_and_reported(small_corpus, tmp_path):
    root = copy_tree(small_corpus, tmp_path / "corpus")
    good = sorted(root.glob("*/*.wav"))
    assert len(good) == 40
    zero = good[0].with_name("zero.wav")
    zero.write_bytes(b"")
    half = good[5].with_name("half.wav")
    data = good[5].read_bytes()
    half.write_bytes(data[: len(data) // 2])
    text = good[20].with_name("notes.wav")
    text.write_text("sensor,comment\nS001,replaced battery\n")
    for replaced in (good[1], good[6], good[21]):  # three broken files take three good ones' places
        replaced.unlink()
    (root / "manifest.csv").unlink()
    report = build_dataset(root, tmp_path / "data.h5", workers=2, max_skipped_fraction=0.1)  # 3/40 = 7.5 %
    assert report.n_files == 37
    assert sorted((e.path.split("/")[-1], e.reason) for e in report.skipped) == [
        ("half.wav", "truncated"), ("notes.wav", "not_audio"), ("zero.wav", "empty")]
    with h5py.File(tmp_path / "data.h5") as h5:
        assert sorted(h5["skipped/reason"].asstr()[:]) == ["empty", "not_audio", "truncated"]
    assert len(check_dataset(tmp_path / "data.h5").skipped) == 3
    assert report.skipped_summary() == "skipped 3 files: 1 empty, 1 not_audio, 1 truncated"


@pytest.fixture(scope="module")
def ten_files(tmp_path_factory):
    """10 synthetic files of 2 s (2 per class), shared read-only: copy before breaking any."""
    from leakhunter.synth import synth_corpus

    return synth_corpus(tmp_path_factory.mktemp("ten"), files_per_class=2, duration_s=2.0, seed=5)


def two_broken_of_ten(ten_files, root):
    root = copy_tree(ten_files, root)
    (root / "manifest.csv").unlink()
    sorted(root.glob("NORMAL/*.wav"))[0].write_bytes(b"")
    sorted(root.glob("QUIET/*.wav"))[0].write_text("not,audio\n")
    return root


def test_more_skipped_than_the_allowed_fraction_fails_and_keeps_the_old_file(ten_files, tmp_path):
    root = two_broken_of_ten(ten_files, tmp_path / "corpus")
    output = tmp_path / "data.h5"
    output.write_bytes(b"previous dataset")
    with pytest.raises(DatasetError) as caught:
        build_dataset(root, output, val=0, test=0)
    message = str(caught.value)
    assert message.startswith("skipped 2 files: 1 empty, 1 not_audio of 10 (20.0%)")
    assert "--max-skipped-fraction 0.05" in message and "empty" in message
    assert output.read_bytes() == b"previous dataset" and [p.name for p in tmp_path.iterdir()] == ["corpus", "data.h5"]
    report = build_dataset(root, output, val=0, test=0, max_skipped_fraction=0.5)
    assert report.n_files == 8 and report.skipped_by_reason() == {"empty": 1, "not_audio": 1}


def test_cli_build_summary_counts_reasons_and_takes_the_fraction_option(ten_files, tmp_path):
    root = two_broken_of_ten(ten_files, tmp_path / "corpus")
    runner = CliRunner()
    args = ["data", "build", str(root), "-o", str(tmp_path / "d.h5"), "--val", "0", "--test", "0"]
    failed = runner.invoke(app, args)
    assert failed.exit_code != 0 and "max-skipped-fraction" in failed.output and not (tmp_path / "d.h5").exists()
    passed = runner.invoke(app, args + ["--max-skipped-fraction", "0.5"])
    assert passed.exit_code == 0, passed.output
    assert "skipped 2 files: 1 empty, 1 not_audio" in passed.output and "not_audio:" in passed.output


@pytest.mark.parametrize("bug", [KeyError("sample_rate"), MemoryError()])
def test_a_bug_in_the_decoder_stops_the_build_naming_the_file(ten_files, tmp_path, monkeypatch, bug):
    from leakhunter.training import dataset

    target = sorted(ten_files.files)[3]

    def buggy(path, *args, **kwargs):
        if path == target:
            raise bug
        return open_audio(path, *args, **kwargs)
    monkeypatch.setattr(dataset, "open_audio", buggy)
    output = tmp_path / "data.h5"
    with pytest.raises(LeakhunterError, match=f"{target}: unexpected {type(bug).__name__}.*this is a bug") as caught:
        build_dataset(ten_files.root, output, workers=2, max_skipped_fraction=1.0)
    assert caught.value.__cause__ is bug and not output.exists()


@pytest.mark.parametrize("preset_name", ["short", "long"])
def test_featurising_in_pieces_stores_exactly_what_the_whole_file_gives(ten_files, tmp_path, monkeypatch,
                                                                       preset_name):
    """The builder featurises each file a few long segments at a time: the short segments two pieces share
    are stored once, and the dataset is what each file in one piece gives: the same segments and indices, and
    log-mels and engineered features within float32 rounding (a matrix product over another number of frames
    rounds differently, which now and then moves a float16 log-mel by one step)."""
    from leakhunter.training import dataset

    whole = build_dataset(ten_files.root, tmp_path / "whole.h5", preset_name=preset_name, workers=1)
    monkeypatch.setattr(dataset, "BUILD_PIECE_LONGS", 2)
    pieces = build_dataset(ten_files.root, tmp_path / "pieces.h5", preset_name=preset_name, workers=2)
    assert pieces.n_short == whole.n_short and pieces.n_long == whole.n_long
    with h5py.File(whole.output) as one, h5py.File(pieces.output) as other:
        assert (one["files/long_count"][:] > 2).all()  # two pieces or more in every file
        for name in ("short/file_index", "long/file_index", "long/short_start", "files/short_start",
                     "files/short_count", "files/long_start", "files/duration_s"):
            np.testing.assert_array_equal(one[name][:], other[name][:], err_msg=name)
        np.testing.assert_allclose(one["short/mel"][:].astype(np.float32), other["short/mel"][:].astype(np.float32),
                                   rtol=2 ** -10, atol=2 ** -14)  # one float16 step
        np.testing.assert_allclose(one["short/features"][:], other["short/features"][:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_long_file_builds_in_the_memory_of_a_piece(ten_files, tmp_path, workers):
    """Memory is flat in the length of one file, not only in the number of files: a 20-minute recording
    (19.7 MB of samples at the model's rate) beside ten short ones never has its samples in memory at once.
    The builder once decoded each file whole, about 0.6 GB per audio-hour of one file."""
    root = copy_tree(ten_files, tmp_path / "corpus")
    (root / "manifest.csv").unlink()
    rate, seconds = 4096, 20 * 60
    samples = np.random.default_rng(0).normal(0, 0.05, rate * seconds).astype(np.float32)
    soundfile.write(root / "LEAK" / "night.wav", samples, rate, subtype="FLOAT")
    del samples
    tracemalloc.start()
    try:
        report = build_dataset(root, tmp_path / "data.h5", workers=workers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.n_files == 11 and report.hours > seconds / 3600
    assert peak < rate * seconds * 4 / 2, f"traced peak {peak / 1e6:.1f} MB"  # 6 MB, mostly its features

def test_no_group_and_no_identical_audio_in_two_splits(small_corpus, tmp_path):
    root = copy_tree(small_corpus, tmp_path / "corpus")
    (root / "manifest.csv").unlink()
    # the same bytes under another name and sensor: identical audio must follow its twin
    for i, original in enumerate(sorted(root.glob("LEAK/*.wav"))[:4]):
        shutil.copy(original, original.with_name(f"S9{i}~copy~20261120T000000~0.wav"))
    report = build_dataset(root, tmp_path / "data.h5", val=0.2, test=0.2)
    with h5py.File(tmp_path / "data.h5") as h5:
        split, groups = h5["files/split"][:], h5["files/group"].asstr()[:]
        shas = h5["files/sha256"][:]
    for key in (groups, shas):
        for value in set(key):
            assert len(set(split[key == value])) == 1, value
    assert report.files_per_split["val"] > 0 and report.files_per_split["test"] > 0
    assert check_dataset(tmp_path / "data.h5").problems == [] or all(
        "has no" in p for p in check_dataset(tmp_path / "data.h5").problems)


def test_manifest_paths_groups_forced_splits_and_extra_columns(small_corpus, tmp_path):
    rows = list(csv.DictReader(open(small_corpus.manifest)))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "group", "split", "pipe_material"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"path": str(small_corpus.root / row["path"]), "label": row["label"].lower(),
                             "group": f"site{i % 10}", "split": "test" if i % 10 == 0 else "",
                             "pipe_material": "PVC" if i % 2 else "cast iron"})
    build_dataset(manifest, tmp_path / "data.h5")
    with h5py.File(tmp_path / "data.h5") as h5:
        groups, split = h5["files/group"].asstr()[:], h5["files/split"][:]
        meta = [json.loads(m) for m in h5["files/meta"].asstr()[:]]
    assert set(groups) == {f"site{i}" for i in range(10)}
    assert (split[groups == "site0"] == 2).all()  # forced to test, with its whole group
    assert {m["pipe_material"] for m in meta} == {"PVC", "cast iron"}


def test_identical_audio_forced_into_two_splits_names_both_paths(small_corpus, tmp_path):
    first = small_corpus.files[0]
    twin = tmp_path / "twin.wav"
    shutil.copy(first, twin)
    manifest = tmp_path / "manifest.csv"
    lines = ["path,label,split", f"{first},LEAK,train", f"{twin},LEAK,test"]
    lines += [f"{p},{p.parent.name}," for p in small_corpus.files[1:]]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(SplitError) as caught:
        build_dataset(manifest, tmp_path / "data.h5")
    assert str(first) in str(caught.value) and str(twin) in str(caught.value)
    assert not (tmp_path / "data.h5").exists()


def test_a_crash_mid_build_leaves_no_file_and_keeps_the_old_one(small_corpus, tmp_path, monkeypatch):
    output = tmp_path / "data.h5"
    output.write_bytes(b"previous dataset")
    calls = []

    def exploding(self, waveform, with_features=False):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, waveform, with_features)

    original = FrontEnd.short_segments
    monkeypatch.setattr(FrontEnd, "short_segments", exploding)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(small_corpus.root, output)
    assert output.read_bytes() == b"previous dataset"
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]


def test_manifest_and_source_errors_are_clear(tmp_path, small_corpus):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.wav,LEAK\n")
    with pytest.raises(ManifestError, match=r"bad.csv: manifest lacks column\(s\) path, label"):
        find_sources(bad)
    bad.write_text("path,label,split\nx.wav,LEAK,holdout\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: split 'holdout'"):
        find_sources(bad)
    with pytest.raises(DatasetError, match="no such file or folder"):
        find_sources(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no LEAK files"):
        class_order(["NORMAL", "QUIET"])
    assert class_order(["ZEBRA", "QUIET", "LEAK", "ALPHA"]) == ("LEAK", "QUIET", "ALPHA", "ZEBRA")
    only_noise = tmp_path / "noise"
    (only_noise / "LEAK").mkdir(parents=True)
    (only_noise / "LEAK" / "a.wav").write_bytes(b"")
    nothing = r"none of the 1 files could be used \(skipped 1 file: 1 empty\); nothing to build. The first: .*a.wav: empty"
    with pytest.raises(DatasetError, match=nothing):
        build_dataset(only_noise, tmp_path / "x.h5")
    from leakhunter.training.data import LeakData

    with pytest.raises(DatasetError, match=r"bad.csv: not an HDF5 dataset file from leak data build"):
        LeakData(bad, "binary")  # `leak train --data manifest.csv`: h5py's own message named no file


def test_data_check_reports_cross_split_groups_and_missing_classes(small_dataset, tmp_path):
    path = tmp_path / "data.h5"
    shutil.copy(small_dataset.output, path)
    with h5py.File(path, "r+") as h5:
        groups = h5["files/group"].asstr()[:]
        split = h5["files/split"][:]
        labels = h5["files/label"][:]
        train_file, test_file = int(np.flatnonzero(split == 0)[0]), int(np.flatnonzero(split == 2)[0])
        groups[test_file] = groups[train_file]
        del h5["files/group"]
        h5.create_dataset("files/group", data=groups.astype(object), dtype=h5py.string_dtype())
        split[(labels == 2) & (split == 1)] = 0  # no QUIET left in val
        h5["files/split"][:] = split
    report = check_dataset(path)
    assert "split val has no QUIET files" in report.problems
    assert any(p.startswith(f"group {groups[train_file]} is in two splits") for p in report.problems)
    assert report.counts.sum() == small_dataset.n_files


def test_long_preset_builds_and_stores_shorts_once(small_corpus, tmp_path):
    report = build_dataset(small_corpus.root, tmp_path / "long.h5", preset_name="long")
    with h5py.File(tmp_path / "long.h5") as h5:
        assert json.loads(h5.attrs["segmentation"])["unit"] == "long"
        assert h5["long/short_count"][0] == 15
    # 4 s = 16384 samples: 7 long segments of 4096 (hop 2048) share 63 distinct shorts (6 * 8 + 15)
    assert report.n_long == 7 * 40 and report.n_short == 63 * 40


def test_recordings_too_slow_for_the_wide_preset_name_the_presets_that_read_them(tmp_path):
    """6 kHz loggers: the `short` preset reads them, the `wide` one (top band centred at 3945 Hz) cannot."""
    root = tmp_path / "src"
    noise = np.random.default_rng(0).standard_normal(6000 * 2).astype(np.float32) * 0.1
    for label in ("LEAK", "NORMAL"):
        (root / label).mkdir(parents=True)
        soundfile.write(root / label / f"{label}.wav", noise, 6000)
    assert build_dataset(root, tmp_path / "short.h5").n_files == 2
    with pytest.raises(DatasetError) as caught:
        build_dataset(root, tmp_path / "wide.h5", preset_name="wide")
    assert str(caught.value).startswith("none of the 2 files could be used (skipped 2 files: 2 low_rate (the "
                                        "presets read short 3885 Hz, long 3885 Hz, wide 7891 Hz and up)); nothing")
    assert "The first: " in str(caught.value) and "6000 Hz is too low" in str(caught.value)
    assert not (tmp_path / "wide.h5").exists()


def test_stereo_and_rates_are_recorded(tmp_path):
    root = tmp_path / "src"
    (root / "LEAK").mkdir(parents=True)
    (root / "NORMAL").mkdir(parents=True)
    rng = np.random.default_rng(0)
    soundfile.write(root / "LEAK" / "a.wav", rng.standard_normal((48000 * 2, 2)) * 0.1, 48000)
    soundfile.write(root / "NORMAL" / "b.flac", rng.standard_normal(16000 * 2) * 0.01, 16000)
    build_dataset(root, tmp_path / "d.h5", val=0, test=0)
    with h5py.File(tmp_path / "d.h5") as h5:
        assert h5["files/sample_rate_in"][:].tolist() == [48000, 16000]
        assert h5["files/channels_in"][:].tolist() == [2, 1]
        np.testing.assert_allclose(h5["files/duration_s"][:], [2.0, 2.0])


def test_a_dead_channel_averaged_into_a_training_file_is_flagged(tmp_path):
    """A dead hydrophone of a pair lowered a `mean` mix by 6 dB and the network learnt that pipe quieter, without
    a word: the build names a file, which channel and by how much, the dataset records the channels, and `leak
    data check` warns from them. Built again with another channel policy it is other data for every resume key."""
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    live = rng.standard_normal(16000 * 2) * 0.1
    silent = np.zeros_like(live)
    for label, name, channels in (("LEAK", "pair.wav", [live, silent]), ("LEAK", "both.wav", [live, live]),
                                  ("LEAK", "three.wav", [live, live, silent]), ("NORMAL", "mono.wav", [live * 0.1])):
        (root / label).mkdir(parents=True, exist_ok=True)
        soundfile.write(root / label / name, np.stack(channels, axis=1), 16000)
    report = build_dataset(root, tmp_path / "d.h5", val=0, test=0)
    assert report.dead_channels == [(root / "LEAK" / "pair.wav", 0b10, 2), (root / "LEAK" / "three.wav", 0b100, 3)]
    with h5py.File(tmp_path / "d.h5") as h5:
        assert dict(zip(h5["files/path"].asstr()[:], h5["files/silent_channels"][:].tolist())) == {
            str(root / "LEAK" / "both.wav"): 0, str(root / "LEAK" / "pair.wav"): 0b10,
            str(root / "LEAK" / "three.wav"): 0b100, str(root / "NORMAL" / "mono.wav"): 0}
    warning = (f"2 file(s) averaged in a channel silent throughout, e.g. {root / 'LEAK' / 'pair.wav'} (channel 1 of "
               f"2 silent: the mean is 6.0 dB under the live channel); build them with --channel N, a live one")
    assert warning in check_dataset(tmp_path / "d.h5").warnings
    assert "channel 2 of 3 silent: the mean is 3.5 dB under the live channels" in dead_channel_warning(
        report.dead_channels[1:])
    result = CliRunner().invoke(app, ["data", "build", str(root), "-o", str(tmp_path / "again.h5"), "--val", "0",
                                      "--test", "0"])
    assert result.exit_code == 0 and f"warning: {warning}" in " ".join(result.output.split()), result.output
    first = build_dataset(root, tmp_path / "first.h5", val=0, test=0, channel="first")
    assert first.dead_channels == []  # one channel chosen: nothing averaged in
    mean, first = LeakData(tmp_path / "d.h5", "binary"), LeakData(tmp_path / "first.h5", "binary")
    assert mean.fingerprint == first.fingerprint and mean.content_fingerprint != first.content_fingerprint


def test_a_site_column_not_called_group_is_named_and_can_group_the_splits(small_corpus, tmp_path):
    """A colleague's manifest said `site`, not `group`: every file became its own group, the splits and --cv mixed
    sites, and nothing said so. The build and `leak data check` now warn and name the column that could be the
    site; --group-column site groups by it (build and eval); a missing or empty cell of it is refused."""
    rows = list(csv.DictReader(open(small_corpus.manifest)))
    (tmp_path / "plain").mkdir()
    lines = ["path,label,site,notes"]
    for i, row in enumerate(rows):  # plain names: no logger name to fall back on
        shutil.copy(small_corpus.root / row["path"], tmp_path / "plain" / f"rec_{i:03d}.wav")
        lines.append(f'plain/rec_{i:03d}.wav,{row["label"]},site {i % 8},"checked, {i}"')
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    report = build_dataset(manifest, tmp_path / "mixed.h5", workers=2)
    said = ("splits and --cv cannot keep one site's recordings together, so validation and the cross-validated "
            "estimate mix sites and come out optimistic; a column that could name the site: site (8 values); build "
            "with --group-column NAME")  # notes has a value per file: not a site
    assert report.lone_groups == (f"{len(rows)} of {len(rows)} files are each alone in their group (no group or "
                                  f"sensor_id column, no logger name): {said}")
    assert f"{len(rows)} of {len(rows)} files are each alone in their group: {said}" in check_dataset(
        tmp_path / "mixed.h5").warnings  # the dataset no longer knows why
    result = CliRunner().invoke(app, ["data", "build", str(manifest), "-o", str(tmp_path / "sites.h5"),
                                      "--group-column", " site "])
    assert result.exit_code == 0 and "alone in their group" not in result.output, result.output
    with h5py.File(tmp_path / "sites.h5") as h5:
        groups, split = h5["files/group"].asstr()[:], h5["files/split"][:]
        assert h5.attrs["group_column"] == "site"
    assert set(groups) == {f"site {i}" for i in range(8)}
    assert all(len(set(split[groups == g])) == 1 for g in set(groups))  # each site in one split
    assert not any("alone in their group" in w for w in check_dataset(tmp_path / "sites.h5").warnings)
    from leakhunter.training.eval_sources import source_files

    assert source_files(manifest, "site").group_from == f"the manifest's site column ({len(rows)} files listed)"
    manifest.write_text("\n".join(lines[:2] + [lines[2].replace(",site 1,", ",,")]) + "\n")
    with pytest.raises(ManifestError, match=r"manifest.csv:3: empty site"):
        find_sources(manifest, "site")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) pipe"):
        find_sources(manifest, "pipe")
    with pytest.raises(LeakhunterError, match="names a manifest column, and this is a folder"):
        find_sources(small_corpus.root, "site")
    for column in ("", "label", " path"):
        with pytest.raises(LeakhunterError, match="path, label and split mean something else"):
            find_sources(manifest, column)


def test_a_label_that_reads_as_a_leak_but_is_not_leak_is_named(small_corpus, tmp_path):
    """`leak (confirmed)` built as a class of its own and trained as NOLEAK in binary mode without a word: the
    build, `leak data check` and a training run name it; a training run also says which labels each class
    gathers. Labels that negate a leak (`no leak`, `NOT_LEAK`) are not named."""
    from leakhunter.training.data import LeakData
    from leakhunter.training.trainer import class_mapping

    rows = list(csv.DictReader(open(small_corpus.manifest)))
    lines = ["path,label"]
    for i, row in enumerate(rows):
        label = row["label"]
        if i % 4 == 0:  # a leak spelt another way, or a non-leak spelt as one's negation
            label = "leak (confirmed)" if label == "LEAK" else ("no leak", "NOT_LEAK")[i % 8 // 4]
        lines.append(f"{small_corpus.root / row['path']},{label}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    report = build_dataset(tmp_path / "m.csv", tmp_path / "d.h5", workers=2)
    confirmed = sum(line.endswith(",leak (confirmed)") for line in lines)
    expected = (f"label 'LEAK (CONFIRMED)' ({confirmed} files) reads as a leak but is not LEAK: a binary model trains it "
                f"as NOLEAK, a multiclass one as a class of its own; relabel LEAK where it is one")
    assert report.leak_like == expected
    assert expected in check_dataset(tmp_path / "d.h5").warnings
    mapping = class_mapping(LeakData(tmp_path / "d.h5", "binary"))
    assert mapping.startswith("NOLEAK ← ") and "LEAK (CONFIRMED)" in mapping.split(";")[0]
    assert "NO LEAK" in mapping and "NOT_LEAK" in mapping and mapping.split("; ")[1].startswith("LEAK ← LEAK ")
    from leakhunter.sources import leak_like_labels_warning

    for negation in ("LEAK FREE", "LEAK-FREE", "NOT A LEAK", "BACKGROUND (NO LEAK)", "NON-LEAKING", "NO_LEAK"):
        assert leak_like_labels_warning({negation: 3}) is None, negation
    for leak in ("LEAKAGE", "SUSPECTED LEAK", "leak?"):
        assert leak_like_labels_warning({leak: 1}) is not None, leak


def test_a_build_whose_files_form_too_few_groups_for_its_splits_says_so(small_corpus, tmp_path):
    """One site's recordings: every file went to train, and training stopped at H003 ("split val is empty") with
    advice about fractions. The build now says which splits got nothing and why (a group stays in one split)."""
    rows = list(csv.DictReader(open(small_corpus.manifest)))
    for n_groups in (1, 2):
        manifest = tmp_path / f"groups{n_groups}.csv"
        manifest.write_text("path,label,group\n" + "".join(
            f'{small_corpus.root / row["path"]},{row["label"]},site {i % n_groups}\n' for i, row in enumerate(rows)))
        report = build_dataset(manifest, tmp_path / f"groups{n_groups}.h5", workers=2)
        empty = [name for name in ("val", "test") if report.files_per_split[name] == 0]
        assert empty  # two equal groups both go to train: the greedy apportionment's nearest target
        assert report.empty_splits == (
            f"split{'s' if len(empty) > 1 else ''} {' and '.join(empty)} got no file: the {len(rows)} files form "
            f"{n_groups} group{'s' if n_groups > 1 else ''} ({', '.join(f'site {i}' for i in range(n_groups))}), and "
            f"a group's files (a site's or sensor's) stay in one split; training stops on an empty split (H003): add "
            f"recordings of more sites or sensors (a site's own recordings cannot say how a model does on another)")
    result = CliRunner().invoke(app, ["data", "build", str(tmp_path / "groups1.csv"), "-o", str(tmp_path / "c.h5")])
    assert result.exit_code == 0 and "warning: splits val and test got no file" in " ".join(result.output.split())
    assert build_dataset(small_corpus.manifest, tmp_path / "fine.h5", workers=2).empty_splits is None
    assert build_dataset(tmp_path / "groups1.csv", tmp_path / "all.h5", val=0, test=0).empty_splits is None
    forced = tmp_path / "forced.csv"  # the split column sends site 0 to test; sites 1 and 2 go to train
    forced.write_text("path,label,group,split\n" + "".join(
        f'{small_corpus.root / row["path"]},{row["label"]},site {i % 3},{"test" if i % 3 == 0 else ""}\n'
        for i, row in enumerate(rows)))
    report = build_dataset(forced, tmp_path / "forced.h5", workers=2)
    n_test = sum(1 for i in range(len(rows)) if i % 3 == 0)
    assert report.empty_splits.startswith(
        f"split val got no file: the manifest's split column places {n_test} of the {len(rows)} files and the "
        f"other {len(rows) - n_test} form 2 groups (site 1, site 2)"), report.empty_splits
