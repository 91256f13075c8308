"""The batched scoring engine's acceptance figures, as a user meets them: `leak predict` with default settings
in a fresh process (interpreter start to exit) on 1 h of 10-s files, 600 files of 1 s and 4 files of 15 min
(4096 Hz, `short` preset, onnx, 2 cores), against a competent reference pipeline written without leakhunter
(one librosa mel per file, the torch model, the same vote) on the same files in the same run; and the peak
RSS of `leak predict` on one 2-hour file and on 10,000 files."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from reference import CompetentReference
from timing import best_of_interleaved

from leakhunter.card import ModelCard
from leakhunter.checkpoint import save_atomic
from leakhunter.export import export_model
from leakhunter.models import build_model
from leakhunter.synth import synth_recording

RATE = 4096
LABELS = ("LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL")


def write_set(folder: Path, n_files: int, seconds: float, rate: int = RATE, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n_files):
        soundfile.write(folder / f"S{index % 40:03d}~R{index:05d}~20261201T000000~0.wav",
                        synth_recording(LABELS[index % 5], seconds, rate, rng), rate, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(best.pth, best.onnx): a multiclass `short` model with seeded random weights (speed does not depend on
    what it learnt), exported with the default waveform graph."""
    root = tmp_path_factory.mktemp("engine_models")
    torch.manual_seed(0)
    card = ModelCard.for_mode("multiclass", LABELS)
    save_atomic({"card": card.to_json(), "model": build_model(card).state_dict()}, root / "best.pth")
    return root / "best.pth", Path(export_model(root / "best.pth").output)


def leak_predict(*arguments) -> tuple[float, int, str]:
    """Wall seconds of `leak predict ...` in a fresh process, its peak RSS in MB (the largest of it and its
    workers), and what it printed."""
    command = [sys.executable, "-m", "leakhunter.cli", "predict", *map(str, arguments)]
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode);"
             "print(done.stdout[-600:], done.stderr[-600:])")
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    first, _, printed = done.stdout.partition("\n")
    wall_s, peak_kb, code = first.split()
    assert code in ("0", "3"), printed
    return float(wall_s), int(peak_kb) // 1024, printed


def test_default_predict_on_an_hour_of_ten_second_files(benchmark, report_ratio, model, tmp_path):
    checkpoint, onnx = model
    folder = write_set(tmp_path / "hour", 360, 10.0)
    reference = CompetentReference(checkpoint)
    files = sorted(folder.glob("*.wav"))
    results = {}

    def ours():
        results["ours"] = leak_predict(folder, "--model", onnx, "--out", tmp_path / "scores.csv")

    def theirs():
        results["theirs"] = [reference.score_file(path) for path in files]

    benchmark.pedantic(ours, rounds=1, iterations=1)
    ours_s, theirs_s = best_of_interleaved([ours, theirs], 2)
    import csv

    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    agree = sum(rows[str(r["file"])]["verdict"] == r["verdict"] for r in results["theirs"])
    delta = max(abs(float(rows[str(r["file"])]["mean_leak_prob"]) - r["mean_leak_prob"]) for r in results["theirs"])
    audio_s = 3600.0
    benchmark.extra_info.update(realtime=audio_s / ours_s, reference_realtime=audio_s / theirs_s)
    report_ratio("leak predict defaults, 1 h of 10-s files (fresh process)",
                 f"{audio_s / ours_s:6.0f}x real time, peak RSS {results['ours'][1]} MB")
    report_ratio("  competent reference (librosa mel per file + torch)",
                 f"{audio_s / theirs_s:6.0f}x real time; leakhunter = {theirs_s / ours_s:4.1f}x it; verdicts agree "
                 f"{agree}/{len(files)}, max |d mean_leak_prob| {delta:.1e}")
    assert agree == len(files) and delta < 1e-3


@pytest.mark.parametrize("n_files, seconds", [(600, 1.0), (4, 900.0)])
def test_default_predict_on_short_and_long_files(benchmark, report_ratio, model, tmp_path, n_files, seconds):
    _, onnx = model
    folder = write_set(tmp_path / "set", n_files, seconds)
    runs = []
    benchmark.pedantic(lambda: runs.append(leak_predict(folder, "--model", onnx, "--out", tmp_path / "s.csv")),
                       rounds=1, iterations=1)
    wall_s, peak_mb, _ = runs[0]
    report_ratio(f"leak predict defaults, {n_files} files of {seconds:g} s (fresh process)",
                 f"{n_files * seconds / wall_s:6.0f}x real time, peak RSS {peak_mb} MB")


def test_peak_rss_on_a_two_hour_file_and_on_ten_thousand_files(benchmark, report_ratio, model, tmp_path):
    _, onnx = model
    long_file = tmp_path / "long" / "S000~R00000~20261201T000000~0.wav"
    long_file.parent.mkdir()
    rng = np.random.default_rng(1)
    with soundfile.SoundFile(long_file, "w", 8000, 1, subtype="PCM_16") as handle:
        for minute in range(120):
            handle.write(synth_recording(LABELS[minute % 5], 60.0, 8000, rng))
    many = write_set(tmp_path / "many", 10_000, 1.0, rate=8000, seed=2)
    runs = {}
    benchmark.pedantic(lambda: runs.update(long=leak_predict(long_file, "--model", onnx, "--out", tmp_path / "l.csv")),
                       rounds=1, iterations=1)
    runs["many"] = leak_predict(many, "--model", onnx, "--out", tmp_path / "m.csv")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import leakhunter.cli"], check=True)
    report_ratio("peak RSS of leak predict, one 2-hour file",
                 f"{runs['long'][1]} MB ({7200 / runs['long'][0]:5.0f}x real time)")
    report_ratio("peak RSS of leak predict, 10,000 files of 1 s",
                 f"{runs['many'][1]} MB ({10_000 / runs['many'][0]:5.0f}x real time)")
    benchmark.extra_info.update(long_peak_mb=runs["long"][1], many_peak_mb=runs["many"][1],
                                import_s=time.perf_counter() - started)
    assert runs["long"][1] <= 500 and runs["many"][1] <= 500


def test_timeline_png_per_file(benchmark, report_ratio, tmp_path):
    """What `--timeline` adds per file: one PNG of a 10-s recording's 79 long segments."""
    from leakhunter.inference.timeline import TimelinePlotter

    plotter = TimelinePlotter()
    rng = np.random.default_rng(0)
    timeline = {"file": "S000~R00000~20261201T000000~0.wav", "long_start_s": (np.arange(79) * 0.125).tolist(),
                "long_seconds": 0.25, "leak_prob": rng.random(79).tolist(), "threshold": 0.5}
    benchmark.pedantic(plotter.draw, args=(timeline, tmp_path / "t.png"), rounds=20, warmup_rounds=2)
    assert (tmp_path / "t.png").stat().st_size > 1000
    report_ratio("timeline PNG of a 10-s file", f"{1000 * benchmark.stats.stats.min:5.1f} ms")
