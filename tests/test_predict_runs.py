"""`leak predict` runs that go wrong: hanging and crashing files become rows and are retried on resume,
the card's channel policy is used, timelines are named uniquely and repaired on resume, CSV cells cannot
smuggle formulas into a spreadsheet, `--device cuda` without CUDA stops with one message. Synthetic audio only."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from leakhunter.card import CardError, ModelCard
from leakhunter.cli import app
from leakhunter.inference.loader import read_card
from leakhunter.inference.outputs import RowWriter, columns_for, read_table
from leakhunter.inference.predict import PredictError, png_names, predict
from leakhunter.inference.scorer import RecordingDecoder
from leakhunter.synth import synth_recording

SR = 8000


def write_recording(path, label="LEAK", seconds=2.0, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, synth_recording(label, seconds, SR, np.random.default_rng(seed)), SR, subtype="PCM_16")
    return path


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def model(binary_export):
    """An exported binary model (random weights: the verdicts do not matter here)."""
    return Path(binary_export[1].output)


class FaultyDecoder(RecordingDecoder):
    """Hangs on a file with a `<stem>.hang` marker beside it; kills its worker on files named crash*.
    Module level, so worker processes can import it."""

    def decode(self, path, emit):
        path = Path(path)
        if path.with_suffix(".hang").exists():
            time.sleep(120)
        if path.stem.startswith("crash"):
            os._exit(9)
        return super().decode(path, emit)


@pytest.mark.slow
def test_a_hanging_and_a_crashing_file_get_rows_from_predict_and_resume_retries_them(model, tmp_path):
    folder = tmp_path / "night"
    for i in range(3):
        write_recording(folder / f"good{i}.wav", seed=i)
    hang = write_recording(folder / "hang.wav", seed=7)
    hang.with_suffix(".hang").touch()
    write_recording(folder / "crash.wav", seed=8)
    out = tmp_path / "scores.csv"
    summary = predict([folder], model, out=out, workers=2, file_timeout=3.0, decoder_class=FaultyDecoder)
    statuses = {Path(r["file"]).name: r["status"] for r in rows_of(out)}
    assert statuses == {"good0.wav": "ok", "good1.wav": "ok", "good2.wav": "ok", "hang.wav": "timeout",
                        "crash.wav": "worker_crash"}
    assert summary.exit_code == 3
    messages = {Path(r["file"]).name: r["message"] for r in rows_of(out)}
    assert "no result after 3 s" in messages["hang.wav"] and "exit code 9" in messages["crash.wav"]

    kept = predict([folder], model, out=out, workers=2, resume=True, retry_failed=False, decoder_class=FaultyDecoder)
    assert kept.rows == [] and kept.skipped == 5 and len(rows_of(out)) == 5

    hang.with_suffix(".hang").unlink()  # whatever hung is gone: the retry scores it
    retried = predict([folder], model, out=out, workers=2, file_timeout=60.0, resume=True, decoder_class=FaultyDecoder)
    assert sorted(Path(r["file"]).name for r in retried.rows) == ["crash.wav", "hang.wav"] and retried.skipped == 3
    final = rows_of(out)
    assert len(final) == 5 and len({r["file"] for r in final}) == 5  # one row per file, never two
    statuses = {Path(r["file"]).name: r["status"] for r in final}
    assert statuses["hang.wav"] == "ok" and statuses["crash.wav"] == "worker_crash"


class RewritingDecoder(RecordingDecoder):
    """Replaces a file by its `<stem>.next` right after reading it: a logger rewriting it meanwhile."""

    def decode(self, path, emit):
        decoded = super().decode(path, emit)
        if (replacement := Path(path).with_suffix(".next")).exists():
            os.replace(replacement, path)
        return decoded


def test_a_file_rewritten_after_it_was_read_is_scored_again_on_resume(model, tmp_path):
    """A row says the file as it was read: one rewritten after that is not taken as done by --resume."""
    folder = tmp_path / "night"
    kept, rewritten = write_recording(folder / "kept.wav", seed=1), write_recording(folder / "logger.wav", seed=2)
    write_recording(folder / "next.wav", "NORMAL", seconds=3.0, seed=3).rename(rewritten.with_suffix(".next"))
    before = rewritten.stat()
    out = tmp_path / "scores.csv"
    predict([folder], model, out=out, workers=0, decoder_class=RewritingDecoder)
    row = {Path(r["file"]).name: r for r in rows_of(out)}["logger.wav"]
    assert int(row["size_bytes"]) == before.st_size and row["mtime"] == f"{before.st_mtime:.6f}"
    assert rewritten.stat().st_size != before.st_size  # the rewrite happened after the read

    again = predict([folder], model, out=out, workers=0, resume=True)
    assert [Path(r["file"]).name for r in again.rows] == ["logger.wav"] and again.skipped == 1
    fresh = predict([rewritten], model, workers=0).rows[0]
    assert again.rows[0]["mean_leak_prob"] == fresh["mean_leak_prob"] and again.rows[0]["duration_s"] == 3.0
    assert {Path(r["file"]).name for r in rows_of(out)} == {kept.name, rewritten.name} and len(rows_of(out)) == 2


def test_audio_failures_are_properties_of_the_file_and_are_not_retried(model, tmp_path):
    write_recording(tmp_path / "in" / "good.wav")
    (tmp_path / "in" / "empty.wav").write_bytes(b"")
    soundfile.write(tmp_path / "in" / "low.wav", 0.1 * np.random.default_rng(0).standard_normal(6000), 3000)
    out = tmp_path / "scores.jsonl"
    first = predict([tmp_path / "in"], model, out=out, workers=0)
    low = {Path(r["file"]).name: r for r in first.rows}["low.wav"]
    assert low["status"] == "low_rate" and "3000 Hz is too low: the front-end's top mel band" in low["message"]
    again = predict([tmp_path / "in"], model, out=out, workers=0, resume=True)
    assert again.rows == [] and again.skipped == 3


def test_jsonl_and_timelines_one_per_file_with_unique_png_names(model, tmp_path):
    for night, name in (("night1", "a"), ("night2", "a"), ("night2", "b")):
        write_recording(tmp_path / night / f"{name}.wav", seed=len(night + name))
    (tmp_path / "night2" / "broken.wav").write_bytes(b"RIFF")
    out = tmp_path / "scores.jsonl"
    summary = predict([tmp_path / "night1", tmp_path / "night2"], model, out=out, workers=0, timeline=True)
    assert summary.exit_code == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    columns = columns_for(("NOLEAK", "LEAK"), multiclass=False)
    assert len(rows) == 4 and len({r["file"] for r in rows}) == 4
    assert all(tuple(row) == columns for row in rows)  # the CSV's columns, in its order
    assert sum(r["status"] == "ok" for r in rows) == 3
    timeline = [json.loads(line) for line in (tmp_path / "scores.timeline.jsonl").read_text().splitlines()]
    assert len(timeline) == 3 and {t["png"] for t in timeline} == {"night1__a.wav.png", "night2__a.wav.png",
                                                                     "night2__b.wav.png"}
    assert sorted(p.name for p in (tmp_path / "scores.timeline").iterdir()) == sorted(t["png"] for t in timeline)

    # a killed run leaves half lines in both files; a file gone from the table leaves its timeline line
    with open(out, "rb+") as handle:
        kept = handle.read().splitlines(keepends=True)[:2]
        handle.seek(0), handle.truncate(), handle.write(b"".join(kept) + b'{"file": "/half')
    with open(tmp_path / "scores.timeline.jsonl", "a") as handle:
        handle.write('{"file": "/half/writ')
    write_recording(tmp_path / "night1" / "c.wav", seed=9)
    predict([tmp_path / "night1", tmp_path / "night2"], model, out=out, workers=0, timeline=True, resume=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    timeline = [json.loads(line) for line in (tmp_path / "scores.timeline.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["file"] for r in rows}) == 5
    ok = sorted(r["file"] for r in rows if r["status"] == "ok")
    assert sorted(t["file"] for t in timeline) == ok and len(ok) == 4


def test_png_names_keep_apart_what_the_stems_would_merge(tmp_path):
    names = png_names([tmp_path / "n1" / "a.wav", tmp_path / "n2" / "a.wav", tmp_path / "n1__a.wav"])
    assert len(set(names.values())) == 3
    assert names[tmp_path / "n2" / "a.wav"] == "n2__a.wav.png"
    assert names[tmp_path / "n1" / "a.wav"].startswith("n1__a.wav.")  # collides with n1__a.wav: hashed


def test_a_timeline_png_of_a_long_name_or_deep_folders_is_drawn_and_kept_on_resume(model, tmp_path):
    """Folders joined by "__" or a 250-byte file name made a PNG name the file system refuses (its temporary
    name is 14 bytes longer still): the PNG was never drawn, every resume scored the file again, and a name over
    255 bytes stopped the resume with ENAMETOOLONG. Such a name is now a hash and the end of the file's name."""
    deep = tmp_path / "night" / ("utility_north_district_zone_A_pressure_main_DN300_cast_iron_1962_" * 3) / "logger"
    recordings = [deep / "SENSOR0042~R000123~20261120T023000~12.wav", tmp_path / "night" / ("é" * 120 + ".wav"),
                  tmp_path / "night" / "short.wav"]
    for seed, path in enumerate(recordings):
        write_recording(path, seed=seed)
    names = png_names(recordings)
    assert len(set(names.values())) == 3 and names[recordings[2]] == "short.wav.png"
    for path in recordings[:2]:
        assert len(os.fsencode(names[path])) <= 241 and names[path].endswith(".wav.png")
    assert names[recordings[0]].endswith(".SENSOR0042~R000123~20261120T023000~12.wav.png")
    out = tmp_path / "scores.csv"
    first = predict([tmp_path / "night"], model, out=out, workers=0, timeline=True)
    assert first.statuses == {"ok": 3}
    assert sorted(path.name for path in (tmp_path / "scores.timeline").glob("*.png")) == sorted(names.values())
    again = predict([tmp_path / "night"], model, out=out, workers=0, timeline=True, resume=True)
    assert again.rows == [] and again.skipped == 3


def test_timeline_without_out_is_refused(model, tmp_path):
    write_recording(tmp_path / "a.wav")
    with pytest.raises(PredictError, match="--timeline needs --out"):
        predict([tmp_path / "a.wav"], model, timeline=True, workers=0)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.wav"), "--model", str(model), "--timeline"])
    assert result.exit_code == 2 and "--timeline needs --out" in result.output


def test_csv_cells_that_start_like_formulas_are_escaped_and_read_back(model, tmp_path):
    columns = columns_for(("NOLEAK", "LEAK"), multiclass=False)
    writer = RowWriter(tmp_path / "t.csv", columns, append=False)
    writer.write({"file": '=HYPERLINK("http://x")', "status": "ok", "leak_score": -0.5, "message": "-x",
                  "top_class": "@a", "verdict": "+1", "size_bytes": 3, "mtime": "1.000000", "model_sha256": "'q"})
    writer.close()
    cells = next(csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert cells["file"] == '\'=HYPERLINK("http://x")' and cells["message"] == "'-x" and cells["top_class"] == "'@a"
    assert cells["verdict"] == "'+1" and cells["model_sha256"] == "''q" and cells["leak_score"] == "-0.5"
    _, ((row, _),), _ = read_table(tmp_path / "t.csv", columns)
    assert row["file"] == '=HYPERLINK("http://x")' and row["message"] == "-x" and row["model_sha256"] == "'q"

    folder = tmp_path / "in"
    for name in ('=HYPERLINK("x").wav', "-x.wav", "@a.wav"):
        write_recording(folder / name)
    for out in (tmp_path / "s.csv", tmp_path / "s.jsonl"):
        first = predict([folder], model, out=out, workers=0)
        assert first.statuses["ok"] == 3
        again = predict([folder], model, out=out, workers=0, resume=True)
        assert again.rows == [] and again.skipped == 3  # the escaped names are recognised
    jsonl = [json.loads(line)["file"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert sorted(Path(f).name for f in jsonl) == sorted(['=HYPERLINK("x").wav', "-x.wav", "@a.wav"])


def test_card_channel_policy_round_trips_and_old_cards_read_as_mean():
    card = ModelCard.for_mode("binary", ("NOLEAK", "LEAK"), channel_policy="first")
    assert ModelCard.from_json(card.to_json()).channel_policy == "first"
    old = card.to_dict()
    del old["channel_policy"]
    assert ModelCard.from_dict(old).channel_policy == "mean" and old["schema_version"] == 1
    with pytest.raises(CardError, match="channel_policy"):
        ModelCard.from_dict(card.to_dict() | {"channel_policy": "left"})


@pytest.fixture(scope="module")
def first_channel_checkpoint(make_checkpoint, tmp_path_factory):
    """A binary checkpoint whose card says the training data took the first channel."""
    from leakhunter.checkpoint import load_checkpoint, save_atomic

    path = make_checkpoint("binary", "short", tmp_path_factory.mktemp("first") / "best.pth")
    payload = load_checkpoint(path)
    card = dataclasses.replace(ModelCard.from_json(payload["card"]), channel_policy="first")
    save_atomic({"card": card.to_json(), "model": payload["model"]}, path)
    return path


def test_predict_mixes_channels_as_the_card_says_unless_told_otherwise(first_channel_checkpoint, tmp_path):
    rng = np.random.default_rng(2)
    left, right = synth_recording("LEAK", 3.0, SR, rng), synth_recording("QUIET", 3.0, SR, rng)
    soundfile.write(tmp_path / "left.wav", left, SR, subtype="FLOAT")
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    mono, stereo = predict([tmp_path / "left.wav", tmp_path / "stereo.wav"], first_channel_checkpoint, workers=0).rows
    assert stereo["mean_leak_prob"] == pytest.approx(mono["mean_leak_prob"], abs=1e-7) and stereo["message"] == ""
    (mixed,) = predict([tmp_path / "stereo.wav"], first_channel_checkpoint, workers=0, channel="mean").rows
    assert "overridden: channel mean (card first)" in mixed["message"]
    result = CliRunner().invoke(app, ["info", str(first_channel_checkpoint), "--json"])
    assert json.loads(result.output)["channel_policy"] == "first"


@pytest.mark.slow
def test_the_channel_policy_travels_into_the_onnx_file(first_channel_checkpoint, tmp_path):
    from leakhunter.export import export_model

    report = export_model(first_channel_checkpoint, tmp_path / "first.onnx")
    result = CliRunner().invoke(app, ["info", report.output])
    assert result.exit_code == 0 and "channel_policy" in result.output and "first" in result.output
    assert read_card(report.output)[0].channel_policy == "first"


def test_training_data_reports_its_channel_policy(small_dataset):
    from leakhunter.training.data import LeakData

    assert LeakData(small_dataset.output, "binary").channel_policy == "mean"


@pytest.mark.slow
def test_cuda_without_it_stops_with_one_message_and_auto_runs_on_cpu_quietly(model, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime may run CUDA here: nothing to refuse")
    for i in range(4):
        write_recording(tmp_path / "in" / f"{i}.wav", seed=i)

    def run(device, out):
        return subprocess.run([sys.executable, "-m", "leakhunter.cli", "predict", str(tmp_path / "in"), "--model",
                               str(model), "--device", device, "--workers", "2", "--out", str(tmp_path / out)],
                              capture_output=True, text=True)

    refused = run("cuda", "cuda.csv")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("asked for, but") == 1 and "--device auto" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    quiet = run("auto", "auto.csv")
    assert quiet.returncode == 0, quiet.stderr
    assert "asked for" not in quiet.stderr and "Warning" not in quiet.stderr, quiet.stderr
    assert [row["status"] for row in rows_of(tmp_path / "auto.csv")] == ["ok"] * 4


def test_resume_rescores_an_ok_row_whose_timeline_png_is_missing(model, tmp_path):
    for name in ("a", "b", "c"):
        write_recording(tmp_path / "night" / f"{name}.wav", seed=ord(name))
    out = tmp_path / "scores.csv"
    predict([tmp_path / "night"], model, out=out, workers=0, timeline=True)
    (tmp_path / "scores.timeline" / "b.wav.png").unlink()  # killed before the worker drew it
    again = predict([tmp_path / "night"], model, out=out, workers=0, timeline=True, resume=True)
    assert [Path(row["file"]).name for row in again.rows] == ["b.wav"] and again.skipped == 2
    assert (tmp_path / "scores.timeline" / "b.wav.png").is_file() and len(rows_of(out)) == 3


def test_scoring_options_that_cannot_mean_anything_are_refused_naming_the_option(model, tmp_path):
    """A threshold of 1.5 used to call every file NOLEAK with exit 0, a negative timeout timed every file out."""
    write_recording(tmp_path / "in" / "a.wav")
    for options, message in ((["--threshold", "1.5"], "--threshold 1.5 must be in [0, 1]"),
                             (["--vote-fraction", "3"], "--vote-fraction 3 must be in (0, 1]"),
                             (["--file-timeout", "-5"], "--file-timeout -5 must be above 0 seconds"),
                             (["--workers", "-1"], "--workers -1 must be an integer >= 0")):
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), "--model", str(model),
                                          "--out", str(tmp_path / "s.csv"), *options])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (options, result.output)
        assert not (tmp_path / "s.csv").exists()
    result = CliRunner().invoke(app, ["eval", str(model), "--data", str(tmp_path / "in"), "--threshold", "-3"])
    assert result.exit_code == 2 and "--threshold -3 must be in [0, 1]" in result.output, result.output


def test_symlinks_that_lead_nowhere_get_rows_naming_the_link(model, tmp_path):
    """A dangling link or a loop in a folder or a manifest used to vanish or stop the run with a traceback."""
    folder = tmp_path / "night"
    write_recording(folder / "good.wav")
    (folder / "dangling.wav").symlink_to("gone.wav")
    (folder / "loop.wav").symlink_to("loop.wav")
    (tmp_path / "list.csv").write_text("path\nnight/loop.wav\nnight/good.wav\n")
    for inputs in ([folder], [tmp_path / "list.csv"], [folder / "loop.wav"]):
        summary = predict(inputs, model, workers=0)
        rows = {Path(r["file"]).name: (r["status"], r["message"]) for r in summary.rows}
        assert rows["loop.wav"] == ("missing", "a symlink loop"), inputs
        if inputs == [folder]:
            assert rows["dangling.wav"] == ("missing", "a symlink to gone.wav, which does not exist")
            assert rows["good.wav"][0] == "ok" and len(rows) == 3


def test_a_name_that_is_not_utf8_is_scored_written_and_resumed(model, tmp_path):
    """Latin-1 names from a network share: decoded, written as their own bytes, found again by --resume."""
    folder = tmp_path / "share"
    latin = folder / os.fsdecode(b"caf\xe9.wav")
    write_recording(folder / "plain.wav").rename(latin)
    write_recording(folder / "other.wav", seed=1)
    for out in (tmp_path / "s.csv", tmp_path / "s.jsonl"):
        first = predict([folder], model, out=out, workers=0)
        assert dict(first.statuses) == {"ok": 2}
        assert predict([folder], model, out=out, workers=0, resume=True).skipped == 2
    assert b"caf\xe9.wav" in (tmp_path / "s.csv").read_bytes()


def test_resume_drops_a_last_row_cut_after_a_newline_inside_its_name(model, tmp_path):
    folder = tmp_path / "in"
    write_recording(folder / "a.wav")
    write_recording(folder / "new\nline.wav", seed=1)
    out = tmp_path / "s.csv"
    predict([folder], model, out=out, workers=0)
    data = out.read_bytes()
    assert data.index(b"a.wav") < data.index(b"new\n")  # files are scored in sorted order: that row is last
    out.write_bytes(data[:data.index(b"new\n") + 4])  # the half-written row ends inside its quoted file name
    again = predict([folder], model, out=out, workers=0, resume=True)
    assert again.skipped == 1 and [Path(r["file"]).name for r in again.rows] == ["new\nline.wav"]
    assert sorted(Path(r["file"]).name for r in rows_of(out)) == ["a.wav", "new\nline.wav"]
    # cut inside its last cell, the message, after a newline there: the cell count alone looks whole
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1].rstrip("\n") + '"worker said:\n')
    again = predict([folder], model, out=out, workers=0, resume=True)
    assert again.skipped == 1 and len(again.rows) == 1 and len(rows_of(out)) == 2


def test_a_dead_channel_averaged_in_is_said_on_the_row(model, tmp_path):
    """A hydrophone pair with one dead: the mean is 6 dB down, which the model reads as a quieter pipe."""
    live = synth_recording("LEAK", 2.0, SR, np.random.default_rng(0))
    soundfile.write(tmp_path / "pair.wav", np.stack([live, np.zeros_like(live)], axis=1), SR, subtype="PCM_16")
    row = predict([tmp_path / "pair.wav"], model, workers=0).rows[0]
    assert row["status"] == "ok" and row["channels_in"] == 2
    assert "channel 1 of 2 silent: the mean is 6.0 dB under the live channel; score one with --channel N" in \
        row["message"]
    alone = predict([tmp_path / "pair.wav"], model, workers=0, channel=0).rows[0]
    assert "silent" not in alone["message"]


def test_a_timeline_that_cannot_be_drawn_is_one_warning_line_naming_it(model, tmp_path, monkeypatch):
    """The row is kept and the PNG is drawn again on resume; the CLI says which one and why in one line (it
    printed Python's RuntimeWarning with a source line, naming neither)."""
    from leakhunter.inference.timeline import TimelinePlotter

    def broken(self, timeline, png):
        raise OSError("No space left on device")
    monkeypatch.setattr(TimelinePlotter, "draw", broken)
    write_recording(tmp_path / "night" / "a.wav")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "night"), "--model", str(model), "--out",
                                      str(tmp_path / "s.csv"), "--timeline", "--workers", "0"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (f"warning: {tmp_path / 's.timeline' / 'a.wav.png'}: the timeline could not be drawn (No space left on "
            "device)") in said and "RuntimeWarning" not in said
    assert rows_of(tmp_path / "s.csv")[0]["status"] == "ok"
