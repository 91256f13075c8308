"""`leak bench`: every stage is timed and reported, backends are compared file by file, and the command's errors
are one line. No wall-clock time is asserted (this machine is shared): only that each figure exists and is sane."""

import json
import shutil
import subprocess
import sys

import onnxruntime
import pytest
from typer.testing import CliRunner

from leakhunter.cli import app
from leakhunter.inference.bench import bench, generate
from leakhunter.inference.predict import predict

runner = CliRunner()


@pytest.fixture
def lone_onnx(binary_export, tmp_path):
    """The exported .onnx alone in a folder (no best.pth beside it): one backend, no torch."""
    _, report = binary_export
    return shutil.copy(report.output, tmp_path / "lone.onnx")


def assert_timed(entry):
    assert entry["seconds"] > 0 and entry["x_real_time"] > 0 and entry["files_per_s"] > 0


def test_bench_times_every_stage_per_backend_and_the_backends_agree(binary_export):
    checkpoint, report = binary_export  # best.onnx beside best.pth, as `leak export` writes them
    result = bench(report.output, files=3, seconds=4.0, device="cpu")
    assert result["files"] == 3 and result["generated"] and result["audio_s"] == pytest.approx(12.0)
    assert [(r["backend"], r["device"]) for r in result["results"]] == [("onnxruntime", "cpu"), ("torch", "cpu")]
    for timed in result["results"]:
        expected = {"decode", "model", "voting"} | ({"frontend", "network"} if timed["backend"] == "torch" else set())
        assert set(timed["stages"]) == expected
        for stage in timed["stages"].values():
            assert_timed(stage)
        assert set(timed["end_to_end"]) == {"workers=2", "workers=0"}
        for run in timed["end_to_end"].values():
            assert_timed(run)
            assert run["rows"] == 3 and run["statuses"] == {"ok": 3} and run["engine_startup_s"] > 0
        assert timed["peak_rss_mb"] > 0 and timed["workers_peak_rss_mb"] > 0
    assert result["results"][1]["model"] == str(checkpoint)
    agreement = result["agreement"]
    assert agreement["reference"] == "onnxruntime/cpu"
    [pair] = agreement["pairs"]
    assert pair["with"] == "torch/cpu" and pair["files"] == 3 and pair["verdict_disagreements"] == 0
    assert pair["max_abs_delta_mean_leak_prob"] < 1e-4
    json.dumps(result)  # `--json` prints it as it is


def test_leak_bench_prints_a_table_on_the_given_files(lone_onnx, tmp_path):
    (tmp_path / "audio").mkdir()
    generate(tmp_path / "audio", 2, 3.0)
    result = runner.invoke(app, ["bench", str(lone_onnx), str(tmp_path / "audio"), str(tmp_path / "*.flac"),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for shown in (f"warning: {tmp_path / '*.flac'}: a pattern that matches no audio file (.wav, .flac, .ogg, .mp3): "
                  "nothing is timed from it",
                  "onnxruntime on cpu", "decode + resample", "model (score_rows)", "voting",
                  "end to end, workers=0", "engine start-up, workers=0", "× real time", "files/s",
                  "agreement: only onnxruntime/cpu", "audio: 0.00 h in 2 given files"):
        assert shown in text, shown
    assert "front-end alone" not in text  # an onnx graph is one call: no split


def test_leak_bench_json_runs_where_torch_cannot_be_imported(lone_onnx, tmp_path):
    script = f"""
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
from typer.testing import CliRunner
from leakhunter.cli import app
result = CliRunner().invoke(app, ["bench", {str(lone_onnx)!r}, "--files", "2", "--seconds", "3", "--workers", "0",
                                  "--json"])
print(result.stdout)
sys.exit(result.exit_code)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["files"] == 2 and report["agreement"]["pairs"] == []
    [timed] = report["results"]
    assert timed["end_to_end"]["workers=0"]["rows"] == 2 and set(timed["stages"]) == {"decode", "model", "voting"}


def test_leak_bench_errors_are_one_line_with_exit_2(lone_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in ((["--device", "gpu"], "device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
                          (["--files", "0"], "--files must be an integer >= 1"),
                          ([str(tmp_path / "empty")], "no audio files"),
                          ([str(tmp_path / "gone.wav")], "none of the 1 file(s) could be scored (missing)")):
        result = runner.invoke(app, ["bench", str(lone_onnx), *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["bench", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2 and "missing.onnx: no such file" in result.output


def test_leak_bench_on_cuda_without_it_is_a_clear_error(lone_onnx):
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has CUDA here")
    result = runner.invoke(app, ["bench", str(lone_onnx), "--device", "cuda", "--files", "1", "--seconds", "3"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error: device 'cuda' asked for" in text and "--device auto" in text and "Traceback" not in text


def test_a_reference_model_is_benched_with_its_table_on_generated_and_given_recordings(reference_run, reference_table,
                                                                                       small_corpus, tmp_path):
    """Generated recordings are taken as the table's first sensor; given ones are judged by sensor as predict
    judges them (a manifest's sensor_id column included), and one without a sensor costs its row, not the bench."""
    _, exported = reference_run  # best.onnx beside best.pth: both backends, compared file by file
    result = bench(exported.output, files=2, seconds=4.0, device="cpu", workers=0, reference=reference_table)
    assert [r["backend"] for r in result["results"]] == ["onnxruntime", "torch"]
    for timed in result["results"]:
        assert timed["files_ok"] == 2 and timed["end_to_end"]["workers=0"]["statuses"] == {"ok": 2}
    [pair] = result["agreement"]["pairs"]
    assert pair["files"] == 2 and pair["verdict_disagreements"] == 0 and pair["max_abs_delta_mean_leak_prob"] < 1e-4

    named = small_corpus.files[:2]  # logger-named: sensor from the name
    for path in named:
        shutil.copy(path, tmp_path)
    shutil.copy(small_corpus.files[2], tmp_path / "take1.wav")  # its sensor from the manifest below
    shutil.copy(small_corpus.files[3], tmp_path / "take2.wav")  # no sensor anywhere: no_reference
    sensor = small_corpus.files[2].name.split("~")[0]
    (tmp_path / "night.csv").write_text("path,sensor_id\n" + "".join(f"{p.name},\n" for p in named)
                                        + f"take1.wav,{sensor}\ntake2.wav,\n")
    result = bench(exported.output, [tmp_path / "night.csv"], device="cpu", workers=0, reference=reference_table)
    expected = predict([tmp_path / "night.csv"], exported.output, workers=0, reference=reference_table)
    assert dict(expected.statuses) == {"ok": 3, "no_reference": 1}
    for timed in result["results"]:
        assert timed["files_ok"] == 3 and timed["failed"] == 1
        assert timed["failed_files"] == [{"file": str((tmp_path / "take2.wav").resolve()), "status": "no_reference"}]
        assert timed["end_to_end"]["workers=0"]["statuses"] == dict(expected.statuses)
    assert result["agreement"]["pairs"][0]["files"] == 3
