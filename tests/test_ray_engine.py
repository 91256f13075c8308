"""`leak predict --engine ray` on a local Ray (2 CPUs, a small object store) started and stopped by this module: the
same table as local scoring, one row per file when files crash or hang (or kill their actor), a SIGKILLed driver
resumed to the uninterrupted table, and the errors an operator meets (no ray installed, bad options)."""

import csv
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

import leakhunter
from leakhunter.audio import AudioError
from leakhunter.cli import app
from leakhunter.inference import ray_engine
from leakhunter.inference.predict import predict
from leakhunter.inference.ray_engine import RayOptions
from leakhunter.inference.scorer import RecordingDecoder
from leakhunter.reference import ReferenceTable, sensor_of
from leakhunter.synth import synth_recording

ray = pytest.importorskip("ray")
# Ray's own DataContext copies warn about its deprecated settings; not leakhunter's business.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]
SR = 8000
LABELS = ("LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module; its workers can import this module (FaultyDecoder). Yields its address."""
    ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                       os.environ.get("PYTHONPATH", "")])}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(binary_export):
    return Path(binary_export[1].output)


def write_recording(path, label, seconds, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, synth_recording(label, seconds, SR, np.random.default_rng(seed)), SR, subtype="PCM_16")
    return path


def malformed_files(folder: Path) -> dict[str, str]:
    """Ten bad recordings of the kinds `leak predict` names, and the status each must get."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_recording(folder / "template.wav", "LEAK", 2.0, 0).read_bytes()
    (folder / "template.wav").unlink()
    expected = {}
    for i in range(2):
        (folder / f"empty{i}.wav").write_bytes(b"")
        expected[f"empty{i}.wav"] = "empty"
        (folder / f"truncated{i}.wav").write_bytes(data[: len(data) // 2 + i * 100])
        expected[f"truncated{i}.wav"] = "truncated"
        (folder / f"text{i}.wav").write_text("timestamp,value\n2026-11-20,3\n" * (i + 1))
        expected[f"text{i}.wav"] = "not_audio"
        (folder / f"header{i}.wav").write_bytes(data[:20 + i])  # cut inside the header
        expected[f"header{i}.wav"] = "decode_error"
        soundfile.write(folder / f"short{i}.wav", np.zeros(10, np.float32) + 0.1, SR)
        expected[f"short{i}.wav"] = "too_short"
    return expected


@pytest.fixture(scope="module")
def night(tmp_path_factory, model):
    """90 recordings of 1-3 s and 10 malformed ones, and the table `leak predict --workers 0` makes of them."""
    folder = tmp_path_factory.mktemp("night")
    for i in range(90):
        write_recording(folder / f"S{i % 19:03d}~R{i:05d}~20261120T000000~0.wav", LABELS[i % 5], 1.0 + i % 3, i)
    expected = malformed_files(folder / "broken")
    reference = folder.parent / "reference.csv"
    predict([folder], model, out=reference, workers=0)
    return folder, expected, rows_of(reference)


def rows_of(path):
    with open(path, newline="") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["file"])


class FaultyDecoder(RecordingDecoder):
    """Hangs on hang*, kills its decoding worker on crash*, kills the Ray actor above that worker on killactor*, and
    does not find unmounted* (as on a node without the shared mount). Module level, so Ray workers (PYTHONPATH
    above) and their decoding processes can import it."""

    def decode(self, path, emit):
        name = Path(path).stem
        if name.startswith("unmounted"):
            raise AudioError("missing", path, "no such file")
        if name.startswith("hang"):
            time.sleep(60)
        if name.startswith("crash"):
            os._exit(9)
        if name.startswith("killactor"):
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(0)
        return super().decode(path, emit)


def test_the_ray_table_equals_the_local_one_on_a_hundred_files(ray_cluster, night, model, tmp_path):
    folder, expected, reference = night
    out = tmp_path / "ray.csv"
    summary = predict([folder], model, out=out, engine="ray")
    rows = rows_of(out)
    assert len(rows) == 100 and len({row["file"] for row in rows}) == 100
    assert rows == reference  # every column: there is no timing column in a row
    by_name = {Path(row["file"]).name: row["status"] for row in rows}
    assert {name: by_name[name] for name in expected} == expected
    assert summary.exit_code == 3 and summary.statuses["ok"] == 90
    assert '"engine": "ray"' in (tmp_path / "ray.csv.params.json").read_text()


def test_a_sigkilled_driver_resumed_ends_with_the_uninterrupted_table(ray_cluster, night, model, tmp_path):
    folder, _, reference = night
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "leakhunter.cli", "predict", str(folder), "--model", str(model), "--out",
               str(out), "--engine", "ray", "--address", ray_cluster, "--files-per-batch", "4"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while (not out.exists() or len(out.read_bytes().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = len(out.read_bytes().splitlines()) - 1
    assert 0 < written < 100  # it died mid-run
    with open(out, "ab") as handle:
        handle.write(b"/half/written,ok,LE")  # a row cut off mid-write is not a row
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 3, resumed.stderr  # the ten malformed files
    assert f"{written} already in" in resumed.stdout
    assert rows_of(out) == reference


def test_without_ray_the_engine_names_the_extra_to_install(model, tmp_path):
    recording = write_recording(tmp_path / "r.wav", "LEAK", 2.0, 0)
    blocked = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'ray':\n"
               "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
               "sys.meta_path.insert(0, Block())\nsys.argv = ['leak', *sys.argv[1:]]\n"
               "from leakhunter.cli import app\napp()\n")
    done = subprocess.run([sys.executable, "-c", blocked, "predict", str(recording), "--model", str(model),
                           "--engine", "ray"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "pip install 'leakhunter[ray]'" in done.stderr and "--engine ray` needs ray" in done.stderr


def test_an_address_where_no_cluster_answers_is_one_clear_error_at_once():
    started = time.monotonic()
    with pytest.raises(ray_engine.RayEngineError, match="no Ray cluster answers at --address 127.0.0.1:1"):
        ray_engine.check_reachable("127.0.0.1:1")  # Ray itself would retry for minutes
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("arguments, message", [
    (["--engine", "ray", "--actors", "0"], "--actors must be at least 1"),
    (["--gpus-per-actor", "0.25"], "--gpus-per-actor needs --engine ray"),
    (["--actors", "4", "--address", "ray://head:10001"], "--address, --actors need --engine ray"),
    (["--engine", "spark"], "expected local or ray"),
    (["--engine", "ray", "--cpus-per-actor", "0"], "--cpus-per-actor must be more than 0"),
    (["--engine", "ray", "--workers", "0"], "at least one decoding worker per actor"),
    (["--engine", "ray", "--device", "cuda"], "needs --gpus-per-actor"),
    (["--engine", "ray", "--device", "cpu", "--gpus-per-actor", "1"], "GPUs the actors never use"),
    (["--engine", "ray", "--address", "head"], "expected host:port"),
])
def test_bad_option_combinations_are_one_clear_error(arguments, message, model, tmp_path):
    recording = write_recording(tmp_path / "r.wav", "LEAK", 2.0, 0)
    result = CliRunner().invoke(app, ["predict", str(recording), "--model", str(model), *arguments])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_reference_model_on_ray_judges_each_file_by_the_same_sensor(ray_cluster, reference_run, reference_table,
                                                                      small_corpus, tmp_path):
    model = Path(reference_run[1].output)
    folder = tmp_path / "night"
    folder.mkdir()
    for path in small_corpus.files[:6]:
        shutil.copy(path, folder)
    shutil.copy(small_corpus.files[0], folder / "take1.wav")  # no sensor id: no reference
    listed = tmp_path / "listed"  # a manifest's sensor_id column names the sensor: the actors get it too
    listed.mkdir()
    shutil.copy(small_corpus.files[0], listed / "take2.wav")
    (listed / "manifest.csv").write_text(f"path,sensor_id\ntake2.wav,{sensor_of(small_corpus.files[0])}\n")
    inputs = [folder, listed / "manifest.csv"]
    predict(inputs, model, out=tmp_path / "local.csv", workers=0, reference=reference_table)
    summary = predict(inputs, model, out=tmp_path / "ray.csv", engine="ray", reference=reference_table)
    assert rows_of(tmp_path / "ray.csv") == rows_of(tmp_path / "local.csv")
    assert summary.statuses == {"ok": 7, "no_reference": 1}
    rows = {Path(row["file"]).name: row for row in rows_of(tmp_path / "ray.csv")}
    assert rows["take2.wav"]["reference_sensor"] == sensor_of(small_corpus.files[0])
    assert rows["take2.wav"]["mean_leak_prob"] == rows[small_corpus.files[0].name]["mean_leak_prob"]
    # an actor whose node reads another table than the driver's refuses to start, naming both digests
    data, table = model.read_bytes(), ReferenceTable.load(reference_table)
    with pytest.raises(ray_engine.RayEngineError, match=rf"is not the driver's \(sha256 {table.digest} against "
                                                        rf"0{{16}}\): every node must see the same file"):
        ray_engine.ScoringActor([ray.put(data)], model.suffix, hashlib.sha256(data).hexdigest(),
                                leakhunter.__version__, {"device": "cpu", "workers": 0, "reference": reference_table},
                                reference_digest="0" * 16)


def test_a_crashing_a_hanging_and_an_actor_killing_file_each_cost_one_row(ray_cluster, model, tmp_path, monkeypatch):
    """Last in the module: the actor it kills is restarted in the background, which would slow a later test."""
    monkeypatch.setattr(ray_engine, "BATCH_RETRIES", 0)  # one death condemns a batch: the test need not wait 3
    folder = tmp_path / "night"
    for i in range(3):
        write_recording(folder / f"good{i}.wav", LABELS[i], 2.0, i)
    for name in ("hang", "crash", "killactor", "unmounted"):
        write_recording(folder / f"{name}.wav", "LEAK", 2.0, 9)
    out = tmp_path / "scores.csv"
    summary = predict([folder], model, out=out, file_timeout=3.0, decoder_class=FaultyDecoder, timeline=True,
                      engine="ray", ray_options=RayOptions(files_per_batch=8))  # 4 files a batch
    rows = {Path(row["file"]).name: row for row in sorted(rows_of(out), key=lambda row: Path(row["file"]).name)}
    assert set(rows) == {"good0.wav", "good1.wav", "good2.wav", "hang.wav", "crash.wav", "killactor.wav",
                         "unmounted.wav"}
    assert rows["hang.wav"]["status"] == "timeout" and "no result after 3 s" in rows["hang.wav"]["message"]
    assert rows["crash.wav"]["status"] == "worker_crash" and "exit code 9" in rows["crash.wav"]["message"]
    assert rows["killactor.wav"]["status"] == "worker_crash" and "Ray actor" in rows["killactor.wav"]["message"]
    assert rows["unmounted.wav"]["status"] == "error" and "mount the inputs" in rows["unmounted.wav"]["message"]
    ok = [name for name, row in rows.items() if row["status"] == "ok"]
    assert ok == ["good0.wav", "good1.wav", "good2.wav"] and summary.exit_code == 3  # its batch-mates were retried
    pngs = {png.name for png in (tmp_path / "scores.timeline").glob("*.png")}  # drawn by the actors' workers
    assert pngs == {f"{name}.png" for name in ok}
    assert len((tmp_path / "scores.timeline.jsonl").read_text().splitlines()) == len(ok)
