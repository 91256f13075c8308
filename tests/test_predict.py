"""`leak predict` as a field engineer runs it: one row per file, bad files named, rates and channels handled,
backends agreeing, a killed run resumed to the same table, long files streamed in bounded memory."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from typer.testing import CliRunner

from leakhunter.audio import load_audio
from leakhunter.cli import app
from leakhunter.errors import InputError
from leakhunter.inference.engine import ScoringEngine
from leakhunter.inference.outputs import OutputError
from leakhunter.inference.pool import WorkerFailure, WorkerPool
from leakhunter.inference.predict import PredictError, find_inputs, predict
from leakhunter.sources import ManifestError
from leakhunter.synth import synth_recording

SR = 8000


def write_recording(path, label, seconds=2.0, rate=SR, seed=0):
    rng = np.random.default_rng([seed, len(str(path))])
    soundfile.write(path, synth_recording(label, seconds, rate, rng), rate, subtype="PCM_16")
    return path


def broken_files(folder: Path) -> dict[str, str]:
    """Twenty bad recordings of eight kinds, and the status each must get."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    good = write_recording(folder / "template.wav", "LEAK")
    data = good.read_bytes()
    good.unlink()
    for i in range(3):
        (folder / f"truncated{i}.wav").write_bytes(data[: len(data) // 2 + i * 100])
        expected[f"truncated{i}.wav"] = "truncated"
        (folder / f"zero{i}.wav").write_bytes(b"")
        expected[f"zero{i}.wav"] = "empty"
        soundfile.write(folder / f"header{i}.wav", np.zeros((0, 1), np.float32), SR)  # a header, no frames
        expected[f"header{i}.wav"] = "header_only"
        nan = np.random.default_rng(i).standard_normal(SR * 2).astype(np.float32) * 0.1
        nan[100 * (i + 1)] = np.nan
        soundfile.write(folder / f"nan{i}.wav", nan, SR, subtype="FLOAT")
        expected[f"nan{i}.wav"] = "non_finite"
        (folder / f"random{i}.wav").write_bytes(np.random.default_rng(i).bytes(5000))
        expected[f"random{i}.wav"] = "decode_error"
    for i in range(2):
        (folder / f"text{i}.wav").write_text("timestamp,value\n2026-11-20,3\n" * (i + 1))
        expected[f"text{i}.wav"] = "not_audio"
        soundfile.write(folder / f"one_sample{i}.wav", np.zeros(1, np.float32) + 0.1, SR)
        expected[f"one_sample{i}.wav"] = "too_short"
    mp3 = folder / "tmp.mp3"
    soundfile.write(mp3, synth_recording("LEAK", 2.0, 16000, np.random.default_rng(5)), 16000, format="MP3")
    mp3.rename(folder / "mp3.wav")
    expected["mp3.wav"] = "format_mismatch"
    assert len(expected) == 20
    return expected


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A night folder: 180 good recordings of all classes and 20 broken ones."""
    folder = tmp_path_factory.mktemp("night")
    labels = ["LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL"]
    for i in range(180):
        write_recording(folder / f"S{i % 30:03d}~R{i:05d}~20261120T0{i % 6}0000~0.wav", labels[i % 5], seed=i)
    return folder, broken_files(folder / "broken")


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_hundred_files_with_twenty_broken_give_two_hundred_rows(night, onnx_model, tmp_path):
    folder, expected = night
    out = tmp_path / "scores.csv"
    summary = predict([folder], onnx_model, out=out, workers=2)
    rows = rows_of(out)
    assert len(rows) == 200 and len({r["file"] for r in rows}) == 200
    by_name = {Path(r["file"]).name: r for r in rows}
    for name, status in expected.items():
        assert by_name[name]["status"] == status, (name, by_name[name]["message"])
        assert by_name[name]["verdict"] == "" and by_name[name]["leak_score"] == ""
    assert sum(r["status"] == "ok" for r in rows) == 180
    assert summary.exit_code == 3
    assert summary.statuses["ok"] == 180


def test_exit_codes_and_empty_inputs(tmp_path, onnx_model, night):
    folder, _ = night
    good = sorted(folder.glob("*.wav"))[:3]
    assert predict(good, onnx_model, workers=0).exit_code == 0
    assert predict(sorted((folder / "broken").glob("zero*.wav")), onnx_model, workers=0).exit_code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictError, match="no audio files"):
        predict([tmp_path / "empty"], onnx_model)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "empty"), "--model", str(onnx_model)])
    assert result.exit_code == 2 and "no audio files" in result.output
    mixed = [*good, folder / "broken" / "zero0.wav"]
    assert predict(mixed, onnx_model, out=tmp_path / "t.csv", workers=0).exit_code == 3
    resumed = predict(mixed, onnx_model, out=tmp_path / "t.csv", workers=0, resume=True)
    assert resumed.skipped == 4 and not resumed.rows and resumed.exit_code == 3  # the table still has a failed file


@pytest.mark.parametrize("rate", [4096, 8000, 16000, 44100, 48000, "stereo"])
def test_the_same_recording_at_any_rate_or_as_stereo_scores_the_same(rate, tmp_path, onnx_model):
    native = synth_recording("LEAK", 6.0, 48000, np.random.default_rng(3))  # band-limited below 1.8 kHz
    base = soxr.resample(native, 48000, 4096).astype(np.float32)
    soundfile.write(tmp_path / "native.wav", base, 4096, subtype="FLOAT")
    if rate == "stereo":
        soundfile.write(tmp_path / "x.wav", np.stack([base, base], axis=1), 4096, subtype="FLOAT")
    else:
        soundfile.write(tmp_path / "x.wav", soxr.resample(native, 48000, rate).astype(np.float32), rate,
                        subtype="FLOAT")
    with ScoringEngine(onnx_model, workers=0) as engine:
        reference, other = engine.score_file(tmp_path / "native.wav").row, engine.score_file(tmp_path / "x.wav").row
    assert other["status"] == "ok"
    assert abs(other["mean_leak_prob"] - reference["mean_leak_prob"]) <= 0.02
    assert other["verdict"] == reference["verdict"]
    assert other["resampled"] == (rate not in (4096, "stereo"))
    assert other["channels_in"] == (2 if rate == "stereo" else 1)


def test_pth_and_onnx_give_the_same_verdicts_on_the_test_split(trained_model, onnx_model, training_dataset):
    import h5py

    with h5py.File(training_dataset) as h5:
        test_files = [p for p, s in zip(h5["files/path"].asstr()[:], h5["files/split"][:]) if s == 2]
    torch_rows = predict(test_files, trained_model, workers=0).rows
    onnx_rows = predict(test_files, onnx_model, workers=0).rows
    assert [r["verdict"] for r in torch_rows] == [r["verdict"] for r in onnx_rows]
    assert max(abs(a["mean_leak_prob"] - b["mean_leak_prob"]) for a, b in zip(torch_rows, onnx_rows)) < 1e-4


def test_sigkill_then_resume_gives_the_uninterrupted_table(night, onnx_model, tmp_path):
    folder, _ = night
    files = sorted(folder.glob("*.wav"))[:60] + sorted((folder / "broken").glob("*.wav"))[:10]
    manifest = tmp_path / "inputs.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in files))
    reference = tmp_path / "reference.csv"
    predict([manifest], onnx_model, out=reference, workers=1)
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "leakhunter.cli", "predict", str(manifest), "--model", str(onnx_model),
               "--out", str(out), "--workers", "1", "--batch-rows", "1"]  # rows come out 6 files at a time
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (not out.exists() or len(out.read_bytes().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.005)  # rows come out a batch (6 files) at a time: kill it after the first batch
    time.sleep(random.uniform(0, 0.02))
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(out.read_bytes().splitlines()) - 1
    assert 0 < written < 70  # it died mid-run
    with open(out, "ab") as handle:
        handle.write(b"/half/written,ok,LE")  # a row cut off mid-write is not a row
    result = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr  # the ten broken files
    final, expected = rows_of(out), rows_of(reference)
    assert len(final) == 70 and len({r["file"] for r in final}) == 70
    key = lambda r: r["file"]  # noqa: E731
    assert sorted(final, key=key) == sorted(expected, key=key)


def test_a_thirty_minute_file_streams_in_bounded_memory_and_equals_the_in_memory_result(trained_model, tmp_path):
    rng = np.random.default_rng(0)
    mid = np.concatenate([synth_recording("LEAK" if minute % 3 else "NORMAL", 60.0, 16000, rng) for minute in range(3)])
    soundfile.write(tmp_path / "mid.wav", mid, 16000, subtype="PCM_16")
    with soundfile.SoundFile(tmp_path / "long.wav", "w", 16000, 1, subtype="PCM_16") as handle:
        for _ in range(10):  # the same 3 minutes ten times: its late pieces must score as the first ones
            handle.write(mid)
    # streamed in 4000-frame blocks (720 of them in 3 minutes) equals the whole recording scored at once
    streamed = ScoringEngine(trained_model, workers=0, block_frames=4000)
    result = streamed.score_file(tmp_path / "mid.wav")
    audio = load_audio(tmp_path / "mid.wav", 4096, "mean", 1024)
    probs, leak = streamed.runner.score_waveform(audio.samples)
    from leakhunter.inference.runner import long_segment_probs

    in_memory = long_segment_probs(streamed.card, audio.samples.size, leak)
    assert result.row["n_long"] == len(in_memory) == 1 + (3 * 60 * 4096 - 1024) // 512
    assert abs(result.row["mean_leak_prob"] - in_memory.mean()) < 1e-5
    assert abs(result.row["max_long_prob"] - in_memory.max()) < 1e-5
    # peak memory of a fresh process scoring the 30 minutes, against one scoring a 10-second file
    probe = ("import resource, sys; from leakhunter.inference.engine import ScoringEngine; "
             "row = ScoringEngine(sys.argv[1], workers=0).score_file(sys.argv[2]).row; "
             "print(row['n_long'], row['max_long_prob'], row['mean_leak_prob'], "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    short = write_recording(tmp_path / "short.wav", "LEAK", seconds=10.0, rate=16000)
    peak, long_row = {}, {}
    for name, file in (("short", short), ("long", tmp_path / "long.wav")):
        printed = subprocess.run([sys.executable, "-c", probe, str(trained_model), str(file)],
                                 capture_output=True, text=True, check=True).stdout.split()
        long_row[name], peak[name] = [float(value) for value in printed[:3]], int(printed[3]) // 1024
    n_long, max_long, mean_leak = long_row["long"]
    assert n_long == 1 + (30 * 60 * 4096 - 1024) // 512  # all of it was scored
    # ten repeats of the 3 minutes score as they do (9 of 14,399 long segments straddle a repeat's start)
    assert abs(max_long - result.row["max_long_prob"]) < 1e-5 and abs(mean_leak - result.row["mean_leak_prob"]) < 1e-3
    decoded_mb = 30 * 60 * 16000 * 4 / 2**20  # the file as float32 at its own rate: 110 MB
    assert peak["long"] - peak["short"] < 40, peak  # MB: streamed, never the whole file
    assert decoded_mb > 100


def test_real_hydrophone_recordings_score(real_data_dir, onnx_model, tmp_path):
    summary = predict([real_data_dir], onnx_model, out=tmp_path / "real.jsonl", workers=0, timeline=True)
    assert summary.exit_code == 0 and len(summary.rows) == 5
    lines = (tmp_path / "real.jsonl").read_text().splitlines()
    assert all(json.loads(line)["sample_rate_in"] == 8000 for line in lines)
    assert len(list((tmp_path / "real.timeline").glob("*.png"))) == 5
    assert len((tmp_path / "real.timeline.jsonl").read_text().splitlines()) == 5


def test_threshold_override_is_recorded_in_each_row(onnx_model, night):
    folder, _ = night
    row = predict(sorted(folder.glob("*.wav"))[:1], onnx_model, threshold=0.9, workers=0).rows[0]
    assert row["threshold"] == 0.9 and "threshold 0.9 (card" in row["message"]


def test_inputs_are_files_folders_globs_and_manifests(night, tmp_path):
    folder, _ = night
    first = sorted(folder.glob("*.wav"))[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,site\n{first},x\n")
    found = find_inputs([folder / "broken", str(folder / "S000~*.wav"), manifest, first, tmp_path / "gone.wav"])
    assert len(found.paths) == len(set(found.paths)) == 20 + 6 + 1  # `first` given three ways counts once
    assert first.resolve() in found.paths and (tmp_path / "gone.wav").resolve() in found.paths
    assert found.empty == []
    manifest.write_text("file\nx.wav\n")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) path"):
        find_inputs([manifest])


def test_an_input_that_names_no_audio_is_said_not_dropped(night, onnx_model, tmp_path):
    """A typo'd pattern, an empty night's folder or a header-only manifest among other inputs used to add
    nothing and say nothing: each is named, with why, on the CLI and in params.json; the rest is scored."""
    folder, _ = night
    first = sorted(folder.glob("*.wav"))[0]
    (tmp_path / "night2").mkdir()
    (tmp_path / "night2" / "notes.txt").write_text("logger offline\n")
    (tmp_path / "header.csv").write_text("path,label\n")
    inputs = [str(first), str(tmp_path / "night2"), str(folder / "S999~*.wav"), str(tmp_path / "header.csv")]
    found = find_inputs(inputs)
    assert found.paths == [first.resolve()]
    assert found.empty == [f"{tmp_path / 'night2'}: a folder with no audio files (.wav, .flac, .ogg, .mp3)",
                           f"{folder / 'S999~*.wav'}: a pattern that matches no audio file (.wav, .flac, .ogg, .mp3)",
                           f"{tmp_path / 'header.csv'}: a manifest with no rows"]
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["predict", *inputs, "--model", str(onnx_model), "--out", str(out),
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for line in found.empty:  # said before scoring starts, not after an hours-long run
        assert said.index(f"warning: {line}: nothing is scored from it") < said.index("scored 0.00 h of audio")
    assert len(rows_of(out)) == 1
    assert json.loads(out.with_name("t.csv.params.json").read_text())["empty_inputs"] == found.empty
    with pytest.raises(PredictError, match=r"no audio files to score: .*night2: a folder with no audio files"
                                           r".*S999~\*\.wav: a pattern that matches no audio file"):
        find_inputs(inputs[1:])


def test_a_manifest_listing_a_recording_twice_is_said_and_scored_once(night, onnx_model, tmp_path):
    """A bad join or a concatenated export lists recordings twice: the table gets one row each, so it is shorter
    than the manifest, and the user is told why before anything is scored. Given again by another input (a
    folder and a manifest of it) is not a repeat."""
    folder, _ = night
    first, second = sorted(folder.glob("*.wav"))[:2]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{first}\n{second}\n{first}\n{folder}/./{first.name}\n{second}\n")
    found = find_inputs([manifest, first])
    assert found.paths == [first.resolve(), second.resolve()]
    assert found.repeated == [f"{manifest}: lists 2 recordings more than once ({first.name} 3 times)"]
    assert find_inputs([folder, first]).repeated == []
    out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["predict", str(manifest), "--model", str(onnx_model), "--out", str(out),
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.index(f"warning: {found.repeated[0]}; each gets one row") < said.index("scored 0.00 h of audio")
    assert len(rows_of(out)) == 2
    assert json.loads(out.with_name("t.csv.params.json").read_text())["repeated_inputs"] == found.repeated
    link = tmp_path / "link.wav"   # named as listed, not as the file it leads to
    link.symlink_to(first)
    manifest.write_text(f"path\n{link}\n{second}\n{link}\n")
    assert find_inputs([manifest]).repeated == [f"{manifest}: lists a recording more than once (link.wav 2 times)"]


def _crashy(state, task, emit):
    if task == "crash":
        os._exit(7)
    if task == "hang":
        time.sleep(60)
    return f"{state}:{task}"


def _setup(prefix):
    return prefix


def test_a_crashing_or_hanging_file_costs_one_row_not_the_batch():
    tasks = ["a", "crash", "b", "hang", "c", "d"]
    results = {}
    with WorkerPool(_setup, ("ok",), _crashy, workers=2, timeout=3.0) as pool:
        for task in tasks:
            pool.submit(task)
        while pool.outstanding:
            results.update((event.task, event.payload) for event in pool.events() if event.kind == "done")
    assert results["a"] == "ok:a" and results["b"] == "ok:b" and results["d"] == "ok:d"
    assert isinstance(results["crash"], WorkerFailure) and results["crash"].reason == "worker_crash"
    assert "exit code 7" in results["crash"].detail
    assert isinstance(results["hang"], WorkerFailure) and results["hang"].reason == "timeout"
    assert len(results) == 6


def test_a_jsonl_table_resumes_a_missing_files_row_like_a_csv_one(night, onnx_model, tmp_path):
    folder, _ = night
    inputs = [sorted(folder.glob("*.wav"))[0], tmp_path / "gone.wav"]
    out = tmp_path / "t.jsonl"
    assert predict(inputs, onnx_model, out=out, workers=0).statuses == {"ok": 1, "missing": 1}
    resumed = predict(inputs, onnx_model, out=out, workers=0, resume=True)  # size_bytes null in JSONL
    assert resumed.skipped == 2 and not resumed.rows
    for text, line in (("hello world\n", 1), ('{"file": "a.wav"}\n5\n', 1), (out.read_text() + "[1, 2]\n", 3)):
        other = tmp_path / "other.jsonl"  # a log, a list: no table to continue (was a JSONDecodeError traceback)
        other.write_text(text)
        with pytest.raises(OutputError, match=f"other.jsonl: line {line} is not a JSON object of a row|other "
                                              "columns than this model's"):
            predict(inputs, onnx_model, out=other, workers=0, resume=True)
        assert other.read_text() == text


def test_a_table_never_replaces_an_input_nor_shares_its_file_with_another_run(night, onnx_model, tmp_path):
    """`--out` over a recording or over the input manifest replaced it with scores, two runs on one table
    interleaved their rows into one no resume could read, and rerunning without --resume replaced a table
    silently: each is refused (the first two) or said (the last) before anything is written."""
    from leakhunter.files import LockFile

    folder, _ = night
    first, second = sorted(folder.glob("*.wav"))[:2]
    manifest = tmp_path / "night.csv"
    manifest.write_text(f"path\n{first}\n")
    copy = tmp_path / "copy.wav"
    copy.write_bytes(first.read_bytes())
    for out, inputs, why in ((manifest, [manifest], "is one of the inputs, and the table would replace it"),
                             (copy, [copy], r"a table is written as .csv or .jsonl \(an audio file's name\)"),
                             (tmp_path / "scores.WAV", [first], "an audio file's name"),
                             (tmp_path / "scores.txt", [first], r"a table is written as .csv or .jsonl \(not .txt\)")):
        before = out.read_bytes() if out.exists() else None
        with pytest.raises(InputError, match=why):
            predict(inputs, onnx_model, out=out, workers=0)
        assert (out.read_bytes() if out.exists() else None) == before
    out = tmp_path / "t.csv"
    with LockFile(tmp_path / "t.csv.lock").acquire("busy"):  # another process writing t.csv now
        with pytest.raises(InputError, match="t.csv: another run is writing this table now"):
            predict([first], onnx_model, out=out, workers=0)
        assert not out.exists()
    said = []
    predict([first], onnx_model, out=out, workers=0, warn=said.append)
    assert said == [] and not (tmp_path / "t.csv.lock").exists()  # released with the run
    predict([second], onnx_model, out=out, workers=0, warn=said.append)
    assert said == [f"{out}: the table there is replaced (--resume would continue it)"]
    with pytest.raises(PredictError, match=r"copy.wav/t.csv: cannot write a table there \(.*copy.wav is a file, not a folder\)"):
        predict([first], onnx_model, out=copy / "t.csv", workers=0)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_says_what_is_kept_and_resume_finishes_it(night, onnx_model, tmp_path, stop):
    """SIGTERM (docker stop) ended predict where it stood, with a stray `Process leakhunter-worker-1:` and no
    word; Ctrl-C exited 130 silently. Both now unwind, name the rows kept, and exit 128 + the signal."""
    folder, _ = night
    files = sorted(folder.glob("*.wav"))[:60]
    manifest = tmp_path / "inputs.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in files))
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "leakhunter.cli", "predict", str(manifest), "--model", str(onnx_model),
               "--out", str(out), "--workers", "1", "--batch-rows", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while (not out.exists() or len(out.read_bytes().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(process.pid, stop)  # as a terminal's Ctrl-C (or a container's stop) reaches the workers too
    _, stderr = process.communicate(timeout=60)
    written = len(rows_of(out))
    assert process.returncode == 128 + stop and 0 < written < 60, stderr
    said = " ".join(stderr.split())
    assert f"interrupted ({stop.name}): the rows written so far stay in {out}; rerun the same command with " \
           "--resume to score the rest" in said, stderr
    assert "Traceback" not in stderr and "Process leakhunter-worker" not in stderr, stderr
    assert subprocess.run(command + ["--resume"], capture_output=True).returncode == 0
    assert len(rows_of(out)) == 60


def test_ray_s_own_sigterm_handler_stops_predict_the_same_way():
    """ray.init replaces the SIGTERM handler with sys.exit(15): that exit is the same interruption; any other
    SystemExit goes on."""
    from leakhunter.cli_support import stopped_by_signal

    with stopped_by_signal() as interrupted:
        raise SystemExit(signal.SIGTERM)
    assert (interrupted.signal, interrupted.number) == ("SIGTERM", 15)
    with pytest.raises(SystemExit), stopped_by_signal():
        raise SystemExit(0)


def test_a_resume_that_rescores_or_mixes_models_says_so_before_scoring(night, onnx_model, tmp_path):
    """--resume keeps what the same model scored the same way. Rows of these files scored another way are scored
    again (as before), and rows of other files that another model scored are kept: both used to be silent."""
    folder, _ = night
    first, second = sorted(folder.glob("*.wav"))[:2]
    out = tmp_path / "t.csv"
    predict([first, second], onnx_model, out=out, workers=0)
    said: list[str] = []
    resumed = predict([first], onnx_model, out=out, workers=0, resume=True, threshold=0.9, warn=said.append)
    assert len(resumed.rows) == 1 and resumed.rows[0]["threshold"] == 0.9
    sha = resumed.rows[0]["model_sha256"][:16]
    assert said == [f"{out}: 1 row(s) of these files were scored with other settings (threshold, vote fraction, "
                    "sensitivity, meta or reference): --resume scores them again with this run's"]
    rows = rows_of(out)
    for row in rows:
        if row["file"] == str(second.resolve()):
            row["model_sha256"] = "0" * 64  # as if another model had scored it
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    said.clear()
    again = predict([first], onnx_model, out=out, workers=0, resume=True, threshold=0.9, warn=said.append)
    assert again.rows == [] and said == [f"{out}: keeps 1 row(s) of other files that another model scored (model "
                                         f"{'0' * 16}; this one is {sha}): the table mixes models (model_sha256 "
                                         "column); write another --out to keep them apart"]
    said.clear()
    predict([first, second], onnx_model, out=out, workers=0, resume=True, threshold=0.9, warn=said.append)
    assert said == [f"{out}: 1 row(s) of these files were scored by another model (model {'0' * 16}) or with "
                    "other settings (threshold, vote fraction, sensitivity, meta or reference): --resume scores "
                    "them again with this run's"]
    said.clear()
    predict([first, second], onnx_model, out=out, workers=0, resume=True, threshold=0.9, warn=said.append)
    assert said == []  # nothing scored another way is left: a plain resume says nothing


def test_a_pattern_takes_audio_files_only_so_a_table_beside_them_is_no_input(night, onnx_model, tmp_path):
    """`night/*` used to take the folder's notes and the table itself: a not_audio row each (exit 3 every night),
    and once the table was written there the same command was refused as replacing an input."""
    folder = tmp_path / "night"
    folder.mkdir()
    for path in sorted(night[0].glob("*.wav"))[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "README.txt").write_text("logger 12, valve chamber\n")
    pattern, out = str(folder / "*"), folder / "scores.csv"
    assert [path.suffix for path in find_inputs([pattern]).paths] == [".wav", ".wav"]
    for resume in (False, True):
        summary = predict([pattern], onnx_model, out=out, workers=0, resume=resume)
        assert summary.exit_code == 0 and len(rows_of(out)) == 2
    assert find_inputs([pattern, str(folder / "*.txt")]).empty == [
        f"{folder / '*.txt'}: a pattern that matches no audio file (.wav, .flac, .ogg, .mp3)"]
