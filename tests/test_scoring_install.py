"""The scoring install (`pip install leakhunter`, no extras) scores `.onnx` models without torch, h5py,
matplotlib, pyyaml or the onnx package; a command that needs the training extra says which extra to install."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from leakhunter.synth import synth_recording

# Run leak in a fresh interpreter where the training extra's packages cannot be imported.
BLOCKED = ("torch", "h5py", "matplotlib", "yaml", "onnx", "onnxscript", "librosa")
RUN_WITHOUT_TRAINING_EXTRA = f"""
import sys
from pathlib import Path
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["leak", *sys.argv[1:]]
from leakhunter.cli import app
app()
"""


def leak_without_training_extra(*arguments):
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_TRAINING_EXTRA, *map(str, arguments)],
                          capture_output=True, text=True)


def test_predict_info_and_bench_on_onnx_need_no_training_extra(binary_export, tmp_path):
    folder = tmp_path / "night"
    folder.mkdir()
    for seed in range(3):
        soundfile.write(folder / f"r{seed}.wav", synth_recording("LEAK", 4.0, 8000, np.random.default_rng(seed)), 8000)
    model = binary_export[1].output
    scored = leak_without_training_extra("predict", folder, "--model", model, "--out", tmp_path / "s.csv",
                                         "--timeline")
    assert scored.returncode == 0, scored.stderr
    assert "files: 3 ok" in " ".join(scored.stdout.split())
    assert len(list((tmp_path / "s.timeline").glob("*.png"))) == 3
    described = leak_without_training_extra("info", model)
    assert described.returncode == 0 and "opset" in described.stdout, described.stderr
    benched = leak_without_training_extra("bench", model, folder, "--json")
    assert benched.returncode == 0, benched.stderr


def test_eval_of_an_onnx_on_recordings_needs_no_training_extra(binary_export, tmp_path):
    for label in ("LEAK", "NORMAL"):
        (tmp_path / "labelled" / label).mkdir(parents=True)
        for seed in range(2):
            soundfile.write(tmp_path / "labelled" / label / f"{label}{seed}.wav",
                            synth_recording(label, 4.0, 8000, np.random.default_rng(seed)), 8000)
    model = binary_export[1].output
    evaluated = leak_without_training_extra("eval", model, "--data", tmp_path / "labelled", "--workers", "0")
    assert evaluated.returncode == 0, evaluated.stderr
    printed = " ".join(evaluated.stdout.split())
    assert "no pictures: they need matplotlib, which the scoring install leaves out (pip install 'leakhunter[train]')" \
        in printed
    assert "(4 files, 2 LEAK, threshold" in printed and "by the scoring engine (onnxruntime)" in printed, printed
    assert not list(Path(model).parent.glob("*_labelled.png"))
    asked = leak_without_training_extra("eval", model, "--data", tmp_path / "labelled", "--roc-png", tmp_path / "r.png")
    assert asked.returncode == 2 and "--roc-png: pictures need matplotlib, which the scoring install leaves out " \
        "(pip install 'leakhunter[train]')" in " ".join(asked.stderr.split())


def test_a_command_that_needs_the_training_extra_says_which(binary_export, tmp_path):
    trained = leak_without_training_extra("train", "--data", tmp_path / "data.h5", "--out", tmp_path / "run")
    assert trained.returncode == 2
    assert "pip install 'leakhunter[train]'" in trained.stderr and "Traceback" not in trained.stderr
    assert "`leak train` needs" in trained.stderr
    evaluated = leak_without_training_extra("eval", binary_export[0], "--data", tmp_path / "data.h5")
    assert evaluated.returncode == 2 and "`leak eval` needs" in evaluated.stderr, evaluated.stderr
    recording = tmp_path / "r.wav"
    soundfile.write(recording, synth_recording("LEAK", 2.0, 8000, np.random.default_rng(0)), 8000)
    scored = leak_without_training_extra("predict", recording, "--model", binary_export[0])  # a .pth needs torch
    assert scored.returncode == 2 and "leakhunter[train]" in scored.stderr, scored.stderr


def test_serve_on_onnx_needs_no_training_extra(binary_export, tmp_path):
    import httpx
    from servers import free_port, wait_ready

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", RUN_WITHOUT_TRAINING_EXTRA, "serve", "--model",
                               str(binary_export[1].output), "--port", str(port), "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    recording = tmp_path / "r.wav"
    soundfile.write(recording, synth_recording("LEAK", 4.0, 8000, np.random.default_rng(0)), 8000)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        row = httpx.post(f"http://127.0.0.1:{port}/v1/score", params={"name": "r.wav"}, content=recording.read_bytes(),
                         headers={"Content-Type": "audio/wav"}, timeout=60).json()
        assert row["status"] == "ok" and row["file"] == "r.wav"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_reference_model_scores_with_its_table_and_only_building_one_needs_the_training_extra(
        reference_run, reference_table, small_corpus, tmp_path):
    model = reference_run[1].output
    recording = small_corpus.files[0]
    scored = leak_without_training_extra("predict", recording, "--model", model, "--reference", reference_table,
                                         "--out", tmp_path / "s.csv", "--workers", "0")
    assert scored.returncode == 0, scored.stderr
    assert "reference_sensor" in (tmp_path / "s.csv").read_text().splitlines()[0]
    built = leak_without_training_extra("reference", "build", recording, "--model", model, "-o", tmp_path / "t.json")
    assert built.returncode == 2 and "pip install 'leakhunter[train]'" in built.stderr, built.stderr
    assert "Traceback" not in built.stderr and not (tmp_path / "t.json").exists()
