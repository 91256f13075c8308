"""The `leak` command as a user runs it: exit codes, what it prints, and its errors."""

import json
import re
import shutil
import subprocess
import sys

import h5py
from typer.testing import CliRunner

from leakhunter.card import STANDARD_CLASSES, ModelCard
from leakhunter.cli import app

runner = CliRunner()


def test_leak_help_lists_the_commands_that_exist():
    result = subprocess.run([sys.executable, "-m", "leakhunter.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("data", "info"):
        assert command in result.stdout


def test_synth_build_check_end_to_end(tmp_path):
    corpus, data = tmp_path / "corpus", tmp_path / "data.h5"
    result = runner.invoke(app, ["data", "synth", str(corpus), "--files-per-class", "12", "--duration", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 60 recordings" in result.output
    result = runner.invoke(app, ["data", "build", str(corpus / "manifest.csv"), "-o", str(data)])
    assert result.exit_code == 0, result.output
    with h5py.File(data) as h5:
        n_files = len(h5["files/path"])
    assert n_files == 60 and f"wrote {data}: 60 files" in " ".join(result.output.split())
    assert "MECHANICAL; preset short" in " ".join(result.output.split())
    result = runner.invoke(app, ["data", "check", str(data)])
    # seed 0: the grouped, stratified split of this 60-file corpus gives every split every class (8/2/2 each)
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output and "problem:" not in result.output
    train_row = next(line for line in result.output.splitlines() if "train" in line)
    assert [int(cell) for cell in train_row.replace("│", " ").split()[1:7]] == [8, 8, 8, 8, 8, 40]


def test_check_exits_1_and_names_the_problem(tmp_path, small_dataset):
    path = tmp_path / "data.h5"
    path.write_bytes(small_dataset.output.read_bytes())
    with h5py.File(path, "r+") as h5:
        split = h5["files/split"][:]
        split[split == 2] = 0  # empty test split
        h5["files/split"][:] = split
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1
    assert "problem: split test is empty" in result.output


def test_build_errors_are_one_clear_line(tmp_path):
    result = runner.invoke(app, ["data", "build", str(tmp_path / "missing"), "-o", str(tmp_path / "x.h5")])
    assert result.exit_code == 2
    assert "missing: no such file or folder" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "c"), "--files-per-class", "0"])
    def said(output: str) -> str:  # the words of rich's error box, unwrapped
        return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())

    assert result.exit_code == 2
    assert "Invalid value for '--files-per-class': Input should be greater than or equal to 1" in said(result.output)
    for flag, value, words in (("--sites", "1000", "less than or equal to 999"),
                               ("--sample-rate", "2000", "greater than or equal to 4000"),
                               ("--seed", "-1", "greater than or equal to 0")):
        result = runner.invoke(app, ["data", "synth", str(tmp_path / "c"), "--scenario", "sites", flag, value])
        assert result.exit_code == 2 and f"Invalid value for '{flag}': Input should be {words}" in said(result.output)
    assert not (tmp_path / "c").exists()


def test_info_prints_a_valid_card_and_refuses_a_tampered_one(tmp_path):
    card = ModelCard.for_mode("multiclass", STANDARD_CLASSES)
    good = tmp_path / "model_meta.json"
    good.write_text(card.to_json())
    result = runner.invoke(app, ["info", str(good), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["leak_idx"] == 0
    tampered = card.to_dict() | {"leak_idx": 1}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tampered))
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert "leak_idx" in result.output and "bad.json" in result.output


def test_an_output_named_for_something_else_is_refused_before_anything_is_read(make_checkpoint, small_corpus,
                                                                                 small_dataset, tmp_path):
    """A picture named m.onnx, a dataset written over its manifest or a recording, a manifest over the dataset, a
    model over its checkpoint: each replaced a user's file without a word. Now refused, the file untouched."""
    checkpoint = make_checkpoint("binary", "short", tmp_path / "best.pth")
    manifest = tmp_path / "night.csv"
    shutil.copy(small_corpus.manifest, manifest)
    recording = tmp_path / "keep.wav"
    shutil.copy(small_corpus.files[0], recording)
    before = {path: path.read_bytes() for path in (checkpoint, manifest, recording)}

    def said(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    assert (f"--roc-png {checkpoint}: a picture is written as .png (not .pth)"
            in said("eval", str(checkpoint), "--data", str(small_dataset.output), "--roc-png", str(checkpoint)))
    assert (f"--confusion-png {manifest}: a picture is written as .png (not .csv)"
            in said("eval", str(checkpoint), "--data", str(manifest), "--confusion-png", str(manifest)))
    assert (f"--pr-png {recording}: a picture is written as .png (an audio file's name)"
            in said("eval", str(checkpoint), "--data", str(manifest), "--pr-png", str(recording)))
    assert (f"-o {manifest}: a dataset is written as .h5 or .hdf5 (not .csv)"
            in said("data", "build", str(manifest), "-o", str(manifest)))
    assert (f"-o {recording}: a dataset is written as .h5 or .hdf5 (an audio file's name)"
            in said("data", "build", str(small_corpus.root), "-o", str(recording)))
    (tmp_path / "folder.h5").mkdir()
    assert (f"-o {tmp_path / 'folder.h5'}: a folder, where a dataset would be written"
            in said("data", "build", str(manifest), "-o", str(tmp_path / "folder.h5")))
    dataset_bytes = small_dataset.output.read_bytes()
    assert (f"-o {small_dataset.output}: a manifest is written as .csv (not .h5)"
            in said("data", "files", str(small_dataset.output), "-o", str(small_dataset.output)))
    assert (f"-o {checkpoint}: an ONNX model is written as .onnx (not .pth)"
            in said("export", str(checkpoint), "-o", str(checkpoint)))
    assert {path: path.read_bytes() for path in before} == before
    assert small_dataset.output.read_bytes() == dataset_bytes
    result = runner.invoke(app, ["data", "files", str(small_dataset.output), "--split", "val", "-o",
                                 str(tmp_path / "new" / "val.csv")])  # a folder that does not exist yet is made
    assert result.exit_code == 0 and (tmp_path / "new" / "val.csv").read_text().startswith("path,label,group")


def test_a_run_folder_or_text_given_as_a_model_is_named_for_what_it_is(make_checkpoint, tmp_path):
    """`leak info runs/x` said "no such file" of a folder that exists, and a text file named .pth stopped
    `leak info` with a KeyError traceback from torch's unpickler."""
    run = tmp_path / "run"
    run.mkdir()
    make_checkpoint("binary", "short", run / "best.pth")
    (tmp_path / "notes.pth").write_text("hello\n")
    for args, message in ((["info", str(run)], f"{run}: a folder, not a model file; give {run / 'best.pth'}"),
                          (["export", str(run)], f"{run}: a folder, not a model file; give {run / 'best.pth'}"),
                          (["bench", str(run)], f"{run}: a folder, not a model file; give {run / 'best.pth'}"),
                          (["info", str(tmp_path)], f"{tmp_path}: a folder, not a model file"),
                          (["info", str(tmp_path / "notes.pth")], "notes.pth: not a torch checkpoint (a .pth is a "
                                                                   "zip archive or a pickle; this starts with")):
        result = runner.invoke(app, args)
        assert result.exit_code in (1, 2) and message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
