"""A reference model (`leak train --reference sensor`): each log-mel judged against its sensor's usual one, the
same in training (per sensor, from the dataset), in the exported graph and in every scoring front (a table from
`leak reference build`, looked up by the logger name's sensor id)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from conftest import quick_config
from test_serve import running, upload, wait_job
from typer.testing import CliRunner

from leakhunter.card import ModelCard
from leakhunter.cli import app
from leakhunter.errors import InputError
from leakhunter.reference import ReferenceError, ReferenceTable, recording_median, sensor_of, sensor_references
from leakhunter.training.config import ConfigError


def test_a_reference_is_the_median_of_each_recordings_median_log_mel():
    # two recordings of 3 frames; the reference is per bin the median over recordings of their own medians
    one = np.array([[[1.0, 2.0, 9.0]], [[0.0, 0.0, 0.0]]]).transpose(1, 0, 2)  # [shorts=1, n_mels=2, frames=3]
    assert recording_median(one).tolist() == [2.0, 0.0]
    refs = sensor_references(np.array([[1.0, 5.0], [3.0, 7.0], [10.0, 10.0], [4.0, 0.0]]), ["a", "a", "a", "b"])
    assert refs["a"].tolist() == [3.0, 7.0] and refs["b"].tolist() == [4.0, 0.0]
    assert sensor_of("x/S07~R00001~20261120T023000~12.wav") == "S07" and sensor_of("x/take1.wav") is None


def edited_copy(source, out: Path, rows: int | None = None, paths: dict[int, str] | None = None) -> Path:
    """A copy of a dataset file with /short/mel stored in `rows`-row HDF5 chunks, and/or some files' stored paths
    replaced ({file index: path}): what a rebuild would give, without decoding anything again."""
    import h5py

    shutil.copyfile(source, out)
    with h5py.File(out, "r+") as h5:
        if rows is not None:
            mel = h5["short/mel"][...]
            del h5["short/mel"]
            h5.create_dataset("short/mel", data=mel, chunks=(rows, *mel.shape[1:]))
        for index, path in (paths or {}).items():
            h5["files/path"][index] = path
    return out


@pytest.fixture(scope="module")
def chunked_dataset(small_dataset, tmp_path_factory):
    """The small dataset with 256-row HDF5 chunks, so the streamed path reads about ten chunks."""
    return edited_copy(small_dataset.output, tmp_path_factory.mktemp("chunked") / "data.h5", rows=256)


@pytest.mark.parametrize("streamed", [False, True])
def test_training_data_is_served_minus_each_files_sensor_reference(chunked_dataset, streamed):
    from leakhunter.training.data import LeakData

    plain = LeakData(chunked_dataset, "binary", streamed=streamed)
    referenced = LeakData(chunked_dataset, "binary", streamed=streamed, reference="sensor")
    assert not streamed or (referenced.chunk_rows == 256 and len(referenced.short_file_index) > 5 * 256)
    medians = plain.file_mel_medians(plain.subset(np.arange(len(plain.paths))))
    for i, path in enumerate(plain.paths):  # each sensor's reference: the median of its files' medians
        mine = [j for j, other in enumerate(plain.paths) if sensor_of(other) == sensor_of(path)]
        assert np.allclose(referenced.file_references[i], np.median(medians[mine], axis=0), atol=1e-5)
    train = plain.splits["train"]
    rows = np.arange(len(train))
    owners = train.file_index[train.input_file[rows]]
    shift = plain.inputs(train, rows)[:, 0] - referenced.inputs(referenced.splits["train"], rows)[:, 0]
    assert np.abs(shift.numpy() - referenced.file_references[owners][:, :, None]).max() < 0.05  # float16 storage
    # the baseline's feature moves with it: a sensor's files are now centred on zero
    moved = referenced.file_mel_medians(referenced.splits["train"])
    assert np.abs(moved - (medians[train.file_index] - referenced.file_references[train.file_index])).max() < 0.05
    plain.close(), referenced.close()


def test_the_card_and_the_config_refuse_what_a_reference_cannot_do(small_dataset):
    card = ModelCard.for_mode("binary", ("NOLEAK", "LEAK"), reference="sensor")
    assert card.recording_input == ("reference", card.frontend.n_mels)
    with pytest.raises(ValueError, match="reference"):
        ModelCard.for_mode("binary", ("NOLEAK", "LEAK"), reference="site")
    with pytest.raises(ConfigError, match="reference 'site' is not one of none, sensor"):
        quick_config(small_dataset.output, "x", reference="site")
    with pytest.raises(ConfigError, match="fusion model's meta branch"):
        quick_config(small_dataset.output, "x", mode="fusion", reference="sensor")


def test_the_model_exports_with_a_reference_input_and_passes_parity(reference_run):
    from leakhunter.inference.onnx_card import read_onnx

    checkpoint, exported = reference_run
    card = json.loads((checkpoint.parent / "model_meta.json").read_text())
    assert card["reference"] == "sensor"
    model = read_onnx(Path(exported.output))
    assert [value.name for value in model.facts.inputs] == ["waveform", "reference"]
    assert model.card.reference == "sensor"
    parity = json.loads(Path(Path(exported.output)).with_suffix(".parity.json").read_text())
    names = [f["name"] for f in parity["parity"][0]["files"]]
    assert any(n.endswith("/reference-own") for n in names) and any(n.endswith("/reference-flat") for n in names)
    assert exported.passed


def test_the_table_matches_the_references_training_used(reference_run, reference_table, small_dataset):
    from leakhunter.training.data import LeakData

    loaded = ReferenceTable.load(reference_table)
    data = LeakData(small_dataset.output, "binary", reference="sensor")
    sensors = {sensor_of(path): i for i, path in enumerate(data.paths)}
    assert set(loaded.references) == set(sensors)
    gaps = [np.abs(loaded.references[s] - data.file_references[i]).max() for s, i in sensors.items()]
    assert max(gaps) < 0.05  # float32 front-end vs the dataset's float16 mels
    assert loaded.recordings == {s: sum(1 for p in data.paths if sensor_of(p) == s) for s in sensors}


def test_a_louder_sensor_with_a_louder_reference_scores_the_same(reference_run, small_corpus):
    """What the reference is for: a sensor that hears everything 6 dB louder is judged the same."""
    from leakhunter.audio import load_audio
    from leakhunter.inference.loader import load_runner

    _, runner = load_runner(Path(reference_run[1].output), "cpu")
    path = next(p for p in small_corpus.files if "LEAK" in str(p))
    samples = load_audio(path, runner.card.frontend.sample_rate).samples
    reference = np.linspace(-60.0, -20.0, runner.card.frontend.n_mels).astype(np.float32)
    _, quiet = runner.score_waveform(samples, reference)
    _, loud = runner.score_waveform(2 * samples, reference + np.float32(20 * np.log10(2)))
    _, wrong = runner.score_waveform(2 * samples, reference)
    same, moved = np.abs(quiet - loud).max(), np.abs(quiet - wrong).max()
    assert same < 1e-5 and moved > max(30 * same, 1e-5), (same, moved)  # (2 epochs: a model that barely separates)
    with pytest.raises(ValueError, match="none was given"):
        runner.score_waveform(samples)


def test_predict_judges_each_recording_by_its_sensor_and_says_which(reference_run, reference_table, small_corpus,
                                                                    tmp_path):
    checkpoint, exported = reference_run
    folder = tmp_path / "night"
    shutil.copytree(small_corpus.root / "LEAK", folder)
    stranger = folder / "S999~R00001~20261120T023000~12.wav"
    shutil.copy(next(folder.glob("*.wav")), stranger)
    unnamed = folder / "take1.wav"
    shutil.copy(next(folder.glob("S0*.wav")), unnamed)
    rows = {}
    for model in (Path(exported.output), checkpoint):
        out = tmp_path / f"{model.suffix[1:]}.csv"
        result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(model), "--reference",
                                          str(reference_table), "--out", str(out), "--workers", "0"])
        assert result.exit_code == 3, result.output  # two files could not be judged
        rows[model.suffix] = {Path(r["file"]).name: r for r in csv.DictReader(open(out))}
    onnx, torch_rows = rows[".onnx"], rows[".pth"]
    assert onnx[stranger.name]["status"] == "no_reference"
    assert f"sensor S999 has no reference in {reference_table.name};" in onnx[stranger.name]["message"]  # no folder
    assert onnx[unnamed.name]["status"] == "no_reference" and "no sensor id" in onnx[unnamed.name]["message"]
    scored = [name for name, row in onnx.items() if row["status"] == "ok"]
    assert len(scored) == len(onnx) - 2
    digest = ReferenceTable.load(reference_table).digest
    for name in scored:
        assert onnx[name]["reference_sensor"] == sensor_of(name) and onnx[name]["reference_table"] == digest
        assert abs(float(onnx[name]["mean_leak_prob"]) - float(torch_rows[name]["mean_leak_prob"])) < 1e-5
        assert onnx[name]["verdict"] == torch_rows[name]["verdict"]
    # --resume keeps rows judged by the same table, and judges again with a rebuilt one
    resumed = CliRunner().invoke(app, ["predict", str(folder), "--model", str(Path(exported.output)), "--reference",
                                       str(reference_table), "--out", str(tmp_path / "onnx.csv"), "--workers", "0",
                                       "--resume"])
    assert f"{len(onnx)} already in" in " ".join(resumed.output.split()), resumed.output  # no_reference: kept too
    rebuilt = json.loads(reference_table.read_text()) | {"created": "later"}
    (tmp_path / "rebuilt.json").write_text(json.dumps(rebuilt))
    again = CliRunner().invoke(app, ["predict", str(folder), "--model", str(Path(exported.output)), "--reference",
                                     str(tmp_path / "rebuilt.json"), "--out", str(tmp_path / "onnx.csv"),
                                     "--workers", "0", "--resume"])
    assert "already in" not in again.output, again.output
    rows_now = list(csv.DictReader(open(tmp_path / "onnx.csv")))
    assert len(rows_now) == len(onnx) and {r["reference_table"] for r in rows_now if r["status"] == "ok"} == {
        ReferenceTable.load(tmp_path / "rebuilt.json").digest}


def test_a_reference_model_without_its_table_and_a_table_for_another_model_are_refused(
        reference_run, reference_table, binary_export, small_corpus, tmp_path):
    shutil.copy(small_corpus.files[0], tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(Path(reference_run[1].output))])
    assert result.exit_code == 2 and "give --reference TABLE" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(Path(binary_export[1].output)),
                                 "--reference", str(reference_table)])
    assert result.exit_code == 2 and "takes no sensor reference" in result.output
    result = runner.invoke(app, ["bench", str(Path(reference_run[1].output))])
    assert result.exit_code == 2 and "give --reference TABLE" in result.output
    result = runner.invoke(app, ["bench", str(Path(binary_export[1].output)), "--reference", str(reference_table)])
    assert result.exit_code == 2 and "takes no sensor reference" in result.output
    other = json.loads(reference_table.read_text())
    other["frontend"]["n_mels"] = 64
    for sensor in other["sensors"].values():
        sensor["log_mel"] = sensor["log_mel"] * 2
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(Path(reference_run[1].output)),
                                 "--reference", str(tmp_path / "other.json")])
    assert result.exit_code == 2 and "built for another front-end" in result.output and "n_mels" in result.output
    good = json.loads(reference_table.read_text())
    (tmp_path / "bad.json").write_text(json.dumps(good | {"sensors": {"S1": {"recordings": 3, "log_mel": [1.0]}}}))
    with pytest.raises(ReferenceError, match=r"bad.json: not a usable reference table .*'S1': log_mel must be 32"):
        ReferenceTable.load(tmp_path / "bad.json")


def test_building_a_table_refuses_unnamed_recordings_and_non_reference_models(reference_run, binary_export, tmp_path):
    soundfile.write(tmp_path / "take1.wav", np.zeros(8000, np.float32), 8000)
    runner = CliRunner()
    result = runner.invoke(app, ["reference", "build", str(tmp_path), "--model", str(Path(reference_run[1].output)),
                                 "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "take1.wav" in result.output and "no sensor id" in result.output
    result = runner.invoke(app, ["reference", "build", str(tmp_path), "--model", str(Path(binary_export[1].output)),
                                 "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "takes no sensor reference" in result.output
    result = runner.invoke(app, ["reference", "build", str(tmp_path / "nope"), "--model",
                                 str(Path(reference_run[1].output)), "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "nope: no such file or folder" in result.output  # not "no sensor id"
    assert not (tmp_path / "t.json").exists()
    manifest = tmp_path / "night.csv"
    manifest.write_text("path,sensor_id\ntake1.wav,S1\n")
    result = runner.invoke(app, ["reference", "build", str(manifest), "--model", str(Path(reference_run[1].output)),
                                 "-o", str(manifest)])  # a JSON table under a manifest's name, over the manifest
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "a reference table is written as .json (not .csv)" in said
    assert manifest.read_text() == "path,sensor_id\ntake1.wav,S1\n"
    result = runner.invoke(app, ["reference", "build", str(manifest), "--model", str(Path(reference_run[1].output)),
                                 "-o", str(tmp_path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "a folder, where a reference table would be written" in said
    manifest_json = tmp_path / "night.json"
    manifest_json.write_text("not a manifest")
    result = runner.invoke(app, ["reference", "build", str(manifest_json), "--model", str(Path(reference_run[1].output)),
                                 "-o", str(manifest_json)])
    assert result.exit_code == 2 and "is one of the inputs" in " ".join(result.output.split())
    assert manifest_json.read_text() == "not a manifest"


def test_serve_judges_an_upload_by_the_sensor_its_name_gives(reference_run, reference_table, small_corpus, tmp_path):
    model = Path(reference_run[1].output)
    recording = small_corpus.files[0]
    result = CliRunner().invoke(app, ["predict", str(recording), "--model", str(model), "--reference",
                                      str(reference_table), "--workers", "0", "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    expected = {Path(r["file"]).name: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    with running(model=model, workers=0, reference=reference_table) as (url, _):
        served = upload(url, recording).json()
        unnamed = upload(url, recording, name="take1.wav").json()
    row = expected[recording.name]
    assert served["status"] == "ok" and served["reference_sensor"] == row["reference_sensor"] == sensor_of(recording)
    assert served["mean_leak_prob"] == pytest.approx(float(row["mean_leak_prob"]), abs=1e-6)
    assert unnamed["status"] == "no_reference" and "no sensor id" in unnamed["message"]


def test_eval_from_the_datasets_references_agrees_with_eval_through_the_table(reference_run, reference_table,
                                                                              small_dataset):
    """The two ends of a reference model meet: the dataset's per-sensor references (training, `.pth` eval) and the
    table `leak reference build` made (every scoring front) judge the same recordings alike."""
    from leakhunter.training.evaluate import evaluate

    checkpoint, exported = reference_run
    from_features = evaluate(checkpoint, small_dataset.output, split="test", workers=0)
    from_recordings = evaluate(Path(exported.output), small_dataset.output, split="test", workers=0,
                               reference=reference_table)
    assert "features" in from_features["scored_by"] and "recordings" in from_recordings["scored_by"]
    pairs = list(zip(from_features["files"], from_recordings["files"]))
    assert len(pairs) == from_features["n_files"] > 0 and all(a["file"] == b["file"] for a, b in pairs)
    assert max(abs(a["mean_leak_prob"] - b["mean_leak_prob"]) for a, b in pairs) < 1e-3
    assert [a["verdict"] for a, _ in pairs] == [b["verdict"] for _, b in pairs]
    with pytest.raises(InputError, match="scored from the dataset's features"):
        evaluate(checkpoint, small_dataset.output, split="test", reference=reference_table)


def test_h017_fails_a_reference_run_on_files_without_a_sensor_id_and_warns_on_thin_sensors(
        reference_run, small_dataset, tmp_path):
    from leakhunter.training.data import LeakData
    from leakhunter.training.health import HealthFailure, reference_findings
    from leakhunter.training.trainer import train

    named = [f"S{i // 5}~R{i:05d}~20261120T023000~0.wav" for i in range(20)]
    assert reference_findings("sensor", named, list(map(sensor_of, named))) == []
    assert reference_findings(None, ["take1.wav"], [None]) == []
    lonely = named + [f"S9{i}~R1~T~0.wav" for i in range(3)]
    alone = reference_findings("sensor", lonely, list(map(sensor_of, lonely)))
    assert alone[0].level == "fail" and "3 of the 23 files are their sensor's only recording" in alone[0].message
    # the small corpus has sensors with 1-3 recordings: the run said so, naming them
    health = json.loads((reference_run[0].parent / "health.json").read_text())
    thin = [f for f in health["findings"] if f["code"] == "H017"]
    assert len(thin) == 1 and thin[0]["level"] == "warn" and "S000" in thin[0]["message"]
    # one sensor over two groups: its reference follows the sensor (what scoring looks up), not the groups; and
    # files whose names carry no sensor id stop the run
    plain = LeakData(small_dataset.output, "binary")
    groups = sorted(set(plain.groups))[:2]
    moved = [i for i, group in enumerate(plain.groups) if group in groups]
    renamed = {i: str(Path(plain.paths[i]).parent / f"S999~R{i:05d}~20261120T023000~0.wav") for i in moved}
    unnamed = {i: str(Path(plain.paths[i]).parent / f"take{i}.wav") for i in range(0, 40, 4) if i not in renamed}
    data = edited_copy(small_dataset.output, tmp_path / "edited.h5", paths=renamed | unnamed)
    loaded = LeakData(data, "binary", reference="sensor")
    medians = plain.file_mel_medians(plain.subset(np.arange(len(plain.paths))))
    assert np.allclose(loaded.file_references[moved[0]], np.median(medians[moved], axis=0), atol=1e-5)
    with pytest.raises(HealthFailure, match=rf"H017 thin reference .* {len(unnamed)} of the 40 files carry no sensor "
                                            rf"id \(e.g. \S+take\d+.wav: neither a manifest sensor_id column") as caught:
        train(quick_config(data, tmp_path / "run", mode="binary", reference="sensor", epochs=1), log=lambda t: None)
    assert caught.value.exit_code == 117


def test_the_graph_and_the_torch_runner_subtract_alike_under_the_long_preset(make_checkpoint, tmp_path):
    """The `long` unit stacks referenced short segments: the export graph (reference before its unfold) and the
    torch runner (reference before long_segment_inputs) must agree."""
    import dataclasses

    import torch

    from leakhunter.checkpoint import read_model, save_atomic
    from leakhunter.export.graph import graph_module
    from leakhunter.inference.torch_runner import TorchRunner

    card, model = read_model(make_checkpoint("binary", "long", tmp_path / "plain.pth"))
    card = dataclasses.replace(card, reference="sensor")
    save_atomic({"card": card.to_json(), "model": model.state_dict()}, tmp_path / "long.pth")
    runner = TorchRunner(tmp_path / "long.pth", device="cpu")
    samples = np.random.default_rng(0).standard_normal(3 * card.frontend.sample_rate).astype(np.float32) * 0.1
    reference = np.linspace(-50.0, -30.0, card.frontend.n_mels).astype(np.float32)
    expected = runner.score_waveform(samples, reference)[1]
    graph = graph_module(runner.scorer.model, card, "waveform")
    with torch.inference_mode():
        got = graph(torch.from_numpy(samples)[None], torch.from_numpy(reference)[None])[1].numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    assert np.abs(runner.score_waveform(samples, reference + 3)[1] - expected).max() > 1e-4  # it is used


def test_a_manifest_sensor_id_column_names_the_sensor_where_the_file_name_cannot(
        reference_run, reference_table, small_dataset, small_corpus, tmp_path):
    """Recordings that do not follow the logger grammar are judged alike when a manifest (or, for `leak serve`, a
    query parameter) gives their sensor_id: in training, in the table, and in predict and serve; the column wins
    over a name that says otherwise."""
    import h5py

    from leakhunter.training.data import LeakData
    from leakhunter.training.health import reference_findings

    model = Path(reference_run[1].output)
    # training: a dataset whose files are plain takes, their sensors in the manifest's columns (/files/meta)
    named = LeakData(small_dataset.output, "binary", reference="sensor")
    copy = edited_copy(small_dataset.output, tmp_path / "plain.h5",
                       paths={i: f"/recordings/take{i}.wav" for i in range(len(named.paths))})
    with h5py.File(copy, "r+") as h5:
        h5["files/meta"][...] = [json.dumps({"sensor_id": sensor_of(path)}) for path in named.paths]
    plain = LeakData(copy, "binary", reference="sensor")
    assert plain.file_sensors() == [sensor_of(path) for path in named.paths]
    listed = CliRunner().invoke(app, ["data", "files", str(copy), "--split", "test"])  # keeps the column
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert rows and all(row["sensor_id"] == sensor_of(named.paths[plain.paths.index(row["path"])]) for row in rows)
    assert np.array_equal(plain.file_references, named.file_references)
    assert reference_findings("sensor", plain.paths, plain.file_sensors()) == reference_findings(
        "sensor", named.paths, named.file_sensors())  # H017 sees the same sensors
    # the table and predict: plain copies listed with their sensors, and one named file the column moves
    sensor = Counter(map(sensor_of, small_corpus.files)).most_common(1)[0][0]
    chosen = [path for path in small_corpus.files if sensor_of(path) == sensor][:3]
    assert len(chosen) == 3
    night = tmp_path / "night"
    night.mkdir()
    lines = ["path,label,sensor_id"]
    for i, path in enumerate(chosen):
        shutil.copy(path, night / f"take{i}.wav")
        lines.append(f"take{i}.wav,{path.parent.name},{sensor}")
    moved = f"{sensor}~R99999~20261120T023000~0.wav"
    shutil.copy(chosen[0], night / moved)
    lines.append(f"{moved},{chosen[0].parent.name},S999")  # the column wins over the name
    lines.append(lines[2])  # take1 listed twice: taken once, and said
    (night / "manifest.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["reference", "build", str(night / "manifest.csv"), "--model", str(model),
                                 "-o", str(tmp_path / "t.json"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    built = ReferenceTable.load(tmp_path / "t.json")
    assert built.recordings == {sensor: 3, "S999": 1}
    assert (f"warning: {night / 'manifest.csv'}: lists a recording more than once (take1.wav 2 times); each "
            "counts once") in " ".join(result.output.split())
    by_names = runner.invoke(app, ["reference", "build", *map(str, chosen), str(night / "*.flac"), "--model",
                                   str(model), "-o", str(tmp_path / "named.json"), "--workers", "1"])
    assert by_names.exit_code == 0, by_names.output
    assert (f"warning: {night / '*.flac'}: a pattern that matches no audio file (.wav, .flac, .ogg, .mp3): no "
            "recording is taken from it"
            in " ".join(by_names.output.split()))
    assert np.array_equal(built.references[sensor], ReferenceTable.load(tmp_path / "named.json").references[sensor])
    result = runner.invoke(app, ["predict", str(night / "manifest.csv"), *map(str, chosen), "--model", str(model),
                                 "--reference", str(reference_table), "--out", str(tmp_path / "p.csv"),
                                 "--workers", "0"])
    assert result.exit_code == 3, result.output  # S999 is not in the table
    rows = {Path(r["file"]).name: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows[moved]["status"] == "no_reference" and "sensor S999" in rows[moved]["message"]
    for i, path in enumerate(chosen[1:], start=1):
        assert rows[f"take{i}.wav"]["status"] == "ok" and rows[f"take{i}.wav"]["reference_sensor"] == sensor
        assert rows[f"take{i}.wav"]["mean_leak_prob"] == rows[path.name]["mean_leak_prob"]
    # eval on the manifest: the takes judged by the column's sensor, the moved file left out as no_reference
    from leakhunter.training.evaluate import evaluate

    report = evaluate(model, night / "manifest.csv", workers=0, reference=reference_table)
    assert report["n_files"] == 3 and [row["status"] for row in report["failed_files"]] == ["no_reference"]
    # serve: an upload's sensor_id query parameter; another parameter is refused, naming the one it takes
    # and a job over the manifest reads its column as predict does
    with running(model=model, workers=0, reference=reference_table, data_root=night) as (url, service):
        served = upload(url, chosen[1], name="take1.wav", params={"sensor_id": sensor}).json()
        refused = upload(url, chosen[1], name="take1.wav", params={"gain_db": "6"})
        job = httpx.post(f"{url}/v1/jobs", content=json.dumps({"inputs": ["manifest.csv"], "out": "job.csv"}),
                         timeout=10).json()
        assert wait_job(url, job["id"])["state"] == "done"
        assert service.engine.fields.manifest == {}  # forgotten with the job
    jobbed = {Path(r["file"]).name: r for r in csv.DictReader(open(night / "job.csv"))}
    assert set(jobbed) == {"take0.wav", "take1.wav", "take2.wav", moved}
    assert {name: (r["status"], r["reference_sensor"], r["mean_leak_prob"]) for name, r in jobbed.items()} == {
        name: (r["status"], r["reference_sensor"], r["mean_leak_prob"]) for name, r in rows.items() if name in jobbed}
    assert served["status"] == "ok" and served["reference_sensor"] == sensor
    assert served["mean_leak_prob"] == pytest.approx(float(rows["take1.wav"]["mean_leak_prob"]), abs=1e-6)
    assert refused.status_code == 422 and "(the model's fields: sensor_id; and `name`)" in refused.json()["detail"]


def test_a_recording_listed_with_two_sensors_is_refused_and_splits_group_by_the_sensor_column(
        reference_run, reference_table, small_corpus, tmp_path):
    from leakhunter.inference.predict import manifest_fields
    from leakhunter.sources import find_sources

    recording = small_corpus.files[0]
    (tmp_path / "a.csv").write_text(f"path,label,sensor_id\n{recording},LEAK,S001\n{tmp_path / 'x.wav'},LEAK,S002\n")
    (tmp_path / "b.csv").write_text(f"path,label,sensor_id\n{recording},NORMAL,S001\n")
    assert manifest_fields([tmp_path / "a.csv", tmp_path / "b.csv"])[recording.resolve()]["sensor_id"] == "S001"
    (tmp_path / "c.csv").write_text(f"path,sensor_id\n{recording},S009\n")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"), "--model",
                                      str(Path(reference_run[1].output)), "--reference", str(reference_table)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{tmp_path / 'a.csv'}:2 and at {tmp_path / 'c.csv'}:2" in said, said
    assert "different sensor_id ('S001' and 'S009')" in said
    # leak data build and leak eval read manifests alike: a conflicting listing is refused, an identical one kept
    # once; a column name is stripped like its values, and one that differs from a read column by case is refused
    from leakhunter.sources import ManifestError

    roundabout = recording.parent / ".." / recording.parent.name / recording.name  # the same file
    (tmp_path / "e.csv").write_text(f"path,label,sensor_id\n{recording},LEAK,S001\n{roundabout},LEAK,\n"
                                    f"{recording},LEAK,S002\n")
    with pytest.raises(ManifestError, match=r"e.csv:2 and at \S+e.csv:4 with different sensor_id \('S001' and "):
        find_sources(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text(f"path, label , sensor_id\n{recording},LEAK,S001\n{recording},LEAK,\n")
    assert [(f.path, f.group, f.meta) for f in find_sources(tmp_path / "f.csv")] == [
        (recording.resolve(), "S001", {"sensor_id": "S001"})]
    (tmp_path / "g.csv").write_text(f"path,label,Sensor_ID\n{recording},LEAK,S001\n")
    with pytest.raises(ManifestError, match="column 'Sensor_ID' would be ignored: leakhunter reads 'sensor_id'"):
        find_sources(tmp_path / "g.csv")
    # leak data build: without a group column, a sensor_id column keeps a sensor's files in one split
    (tmp_path / "d.csv").write_text("path,label,sensor_id\n" + "".join(
        f"{path},{path.parent.name},P{i % 3}\n" for i, path in enumerate(small_corpus.files[:6])))
    assert [source.group for source in find_sources(tmp_path / "d.csv")] == ["P0", "P1", "P2"] * 2


def test_real_hydrophone_recordings_named_anyhow_get_a_reference_from_a_manifest_column(
        real_data_dir, reference_run, tmp_path):
    """Five real 8 kHz lab recordings (plain names, one hydrophone): a manifest's sensor_id column makes them one
    sensor, the table holds the median of their own median log-mels, and each is judged against it."""
    from leakhunter.audio import load_audio
    from leakhunter.frontend import FrontEnd
    from leakhunter.inference.loader import read_card
    from leakhunter.reference import samples_median

    model = Path(reference_run[1].output)
    card = read_card(model)[0]
    recordings = sorted(real_data_dir.glob("*.wav"))
    manifest = tmp_path / "h1.csv"
    manifest.write_text("path,sensor_id\n" + "".join(f"{path},H1\n" for path in recordings))
    runner = CliRunner()
    result = runner.invoke(app, ["reference", "build", str(manifest), "--model", str(model), "-o",
                                 str(tmp_path / "h1.json"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    table = ReferenceTable.load(tmp_path / "h1.json")
    frontend = FrontEnd(card.frontend, card.segmentation).eval()
    medians = [samples_median(frontend, load_audio(path, card.frontend.sample_rate).samples) for path in recordings]
    assert table.recordings == {"H1": 5}
    assert np.abs(table.references["H1"] - np.median(np.stack(medians), axis=0)).max() < 1e-3
    result = runner.invoke(app, ["predict", str(manifest), "--model", str(model), "--reference",
                                 str(tmp_path / "h1.json"), "--out", str(tmp_path / "h1-scores.csv"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "h1-scores.csv")))
    assert len(rows) == 5 and {(r["status"], r["reference_sensor"]) for r in rows} == {("ok", "H1")}
