"""The `leak` command as a user runs it: exit codes, what it prints, and its errors."""

import json
import re
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
