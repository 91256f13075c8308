"""`leak serve` on 127.0.0.1: the rows of `leak predict` over HTTP, the limits (413, 415, 503 + Retry-After),
folder jobs under the data root (403 outside), resume after a SIGKILL, and readiness. Every loop is bounded."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from servers import free_port, wait_ready
from test_predict import broken_files, write_recording
from test_predict_runs import FaultyDecoder

from leakhunter.errors import InputError
from leakhunter.inference.jobs import JobError, JobStore
from leakhunter.inference.predict import predict
from leakhunter.inference.serve import ServeSettings, Service, create_app
from leakhunter.synth import synth_recording

PATH_FIELDS = ("file", "mtime")  # where an upload and a file on disk differ by nature


@contextmanager
def running(**settings):
    """A server in a thread of this process (what `leak serve` runs), ready; yields its URL and Service."""
    import uvicorn

    service = Service(ServeSettings(**settings))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url, service
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def leak_serve(*arguments) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leakhunter.cli", "serve", *map(str, arguments)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def upload(url: str, path: Path, name: str | None = None, media: str = "audio/wav", params: dict | None = None,
           **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/score", params={"name": name or path.name, **(params or {})},
                      content=path.read_bytes(), headers={"Content-Type": media}, timeout=60, **kwargs)


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def wait_job(url: str, job_id: str, states=("done", "failed", "cancelled"), seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {states} within {seconds} s: {job}")


@pytest.fixture(scope="module")
def model(binary_export):
    return Path(binary_export[1].output)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A data root: 12 good recordings of 4-6 s and the 20 broken ones `leak predict` is tested with."""
    root = tmp_path_factory.mktemp("root")
    (root / "night").mkdir()
    for i in range(12):
        write_recording(root / "night" / f"S{i:03d}~R{i:05d}.wav", ["LEAK", "NORMAL", "QUIET"][i % 3],
                        seconds=4 + i % 3, seed=i)
    expected = broken_files(root / "night" / "broken")
    return root, expected


@pytest.fixture(scope="module")
def reference(night, model, tmp_path_factory):
    """`leak predict --workers 0` on the data root's files: the table the server must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "scores.csv"
    predict([night[0] / "night"], model, out=out, workers=0)
    return {Path(row["file"]).name: row for row in csv_rows(out)}


@pytest.fixture(scope="module")
def server(model, night):
    with running(model=model, workers=2, data_root=night[0], max_upload_mb=1.0, max_queue=4) as (url, service):
        yield url, service


def as_csv_cells(record: dict) -> dict:
    """A JSON row as `leak predict` writes it to CSV, to compare the two cell by cell."""
    from leakhunter.inference.outputs import _cell

    return {key: _cell(value) for key, value in record.items()}


def test_served_rows_are_predicts_rows_for_good_and_every_kind_of_bad_file(server, night, reference):
    url, _ = server
    files = sorted((night[0] / "night").rglob("*.wav"))
    with ThreadPoolExecutor(4) as clients:  # concurrent uploads share the engine's batches
        responses = list(clients.map(lambda path: upload(url, path), files))
    assert [r.status_code for r in responses] == [200] * len(files)  # a bad recording is a row, not an error
    for path, response in zip(files, responses):
        served, expected = as_csv_cells(response.json()), dict(reference[path.name])
        expected["message"] = expected["message"].replace(str(path), path.name)  # a message names the upload
        assert served["file"] == path.name and response.json()["mtime"] is None  # null, as the README says
        assert {k: v for k, v in served.items() if k not in PATH_FIELDS} == \
               {k: v for k, v in expected.items() if k not in PATH_FIELDS}, path.name
    statuses = {path.name: r.json()["status"] for path, r in zip(files, responses)}
    assert {name: statuses[name] for name in night[1]} == night[1]


def test_media_type_and_name_must_say_audio(server, night):
    url, _ = server
    recording = next((night[0] / "night").glob("S000*.wav"))
    assert upload(url, recording, media="text/plain").status_code == 415
    assert upload(url, recording, media="audio/flac").status_code == 415  # the name says .wav
    assert upload(url, recording, name="notes.txt", media="application/octet-stream").status_code == 415
    octet = upload(url, recording, name="r.wav", media="application/octet-stream")
    assert octet.status_code == 200 and octet.json()["status"] == "ok"
    assert upload(url, recording, name="../r.wav").status_code == 422
    for params in ({"gain_db": "12"}, {"threshold": "0.1", "sensitivity": "high"}):  # was 200, at the card's
        other = httpx.post(f"{url}/v1/score", params={"name": recording.name, **params},  # threshold, silently
                           content=recording.read_bytes(), headers={"Content-Type": "audio/wav"}, timeout=60)
        assert other.status_code == 422, other.text
        assert (f"query parameters {', '.join(sorted(params))}: this model takes none but `name`"
                in other.json()["detail"])


def test_an_upload_over_the_limit_gets_413_declared_or_chunked(server, night):
    url, _ = server
    big = night[0] / "big.wav"
    soundfile.write(big, np.zeros(800_000, np.float32), 8000, subtype="PCM_16")  # 1.6 MB > 1 MB
    declared = upload(url, big)
    assert declared.status_code == 413 and "max-upload-mb" in declared.json()["detail"]
    data = big.read_bytes()

    def chunks():
        for start in range(0, len(data), 64 << 10):
            yield data[start: start + 64 << 10]

    chunked = httpx.post(f"{url}/v1/score", params={"name": "big.wav"}, content=chunks(),
                         headers={"Content-Type": "audio/wav"}, timeout=60)
    assert chunked.status_code == 413
    job = b'{"inputs": ["night/"], "out": "x.csv", "pad": "' + b" " * (2 << 20) + b'"}'  # a job is 1 MB at most
    for content in (job, (job[start: start + 64 << 10] for start in range(0, len(job), 64 << 10))):
        response = httpx.post(f"{url}/v1/jobs", content=content, timeout=60)
        assert response.status_code == 413 and "at most 1 MB" in response.json()["detail"]
    long_name = upload(url, next((night[0] / "night").glob("S000*.wav")), name="r" * 300 + ".wav")
    assert long_name.status_code == 422 and "at most 255 bytes" in long_name.json()["detail"]
    assert httpx.get(f"{url}/readyz").status_code == 200  # and the server goes on


def test_a_burst_of_four_times_capacity_gets_only_200s_and_503s_with_retry_after(server, night):
    url, service = server
    recording = next((night[0] / "night").glob("S001*.wav"))
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far (an export, a predict) must not hide this one
    rss_before = _rss_peak_kb()
    with ThreadPoolExecutor(16) as clients:
        responses = list(clients.map(lambda _: upload(url, recording), range(64)))  # max_queue 4, 16 at a time
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(200) >= 4 and 503 in codes
    assert all(r.headers.get("Retry-After") for r in responses if r.status_code == 503)
    assert all(r.json()["status"] == "ok" for r in responses if r.status_code == 200)
    assert service._admitted == 0 and not service._pending  # nothing left behind
    assert _rss_peak_kb() - rss_before < 100_000  # uploads are spooled to disk, the queue is bounded


def _rss_peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_a_folder_job_writes_predicts_table_and_its_rows_are_served(server, night, reference):
    url, _ = server
    submitted = httpx.post(f"{url}/v1/jobs", content=json.dumps({"inputs": ["night/"], "out": "out/night.csv"}),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)  # as curl -d
    assert submitted.status_code == 202, submitted.text
    job = wait_job(url, submitted.json()["id"])
    assert job["state"] == "done" and job["total"] == 32 and job["done"] == 32 and job["exit_code"] == 3
    assert job["statuses"]["ok"] == 12 and sum(job["statuses"].values()) == 32
    table = {Path(row["file"]).name: row for row in csv_rows(night[0] / "out" / "night.csv")}
    assert {k: {c: v for c, v in row.items() if c != "file"} for k, row in table.items()} == \
           {k: {c: v for c, v in row.items() if c != "file"} for k, row in reference.items()}
    rows = httpx.get(f"{url}/v1/jobs/{job['id']}/rows", params={"offset": 30, "limit": 5}).json()
    assert rows["total"] == 32 and len(rows["rows"]) == 2 and rows["offset"] == 30
    first = httpx.get(f"{url}/v1/jobs/{job['id']}/rows", params={"limit": 1}).json()["rows"][0]
    assert isinstance(first["size_bytes"], int) and (first["verdict"] is None) == (first["status"] != "ok")
    again = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "out/night.csv"}, timeout=10).json()
    assert wait_job(url, again["id"])["skipped"] == 32  # posting it again resumes: nothing left to score


def test_jobs_read_and_write_under_the_data_root_only(server, night, tmp_path):
    url, _ = server
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (night[0] / "escape").symlink_to(outside, target_is_directory=True)
    (night[0] / "dangling.csv").symlink_to(outside / "x.csv")
    for body in ({"inputs": ["../"], "out": "x.csv"}, {"inputs": ["/etc"], "out": "x.csv"},
                 {"inputs": ["night/"], "out": "../x.csv"}, {"inputs": ["escape/"], "out": "x.csv"},
                 {"inputs": ["night/"], "out": "escape/x.csv"}, {"inputs": ["night/"], "out": "dangling.csv"}):
        response = httpx.post(f"{url}/v1/jobs", json=body, timeout=10)
        assert response.status_code == 403, (body, response.text)
    assert httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "x.txt"}).status_code == 422
    assert httpx.post(f"{url}/v1/jobs", json={"inputs": [], "out": "x.csv"}).status_code == 422
    assert httpx.post(f"{url}/v1/jobs", json={"inputs": ["a"], "out": "x.csv", "extra": 1}).status_code == 422
    assert httpx.get(f"{url}/v1/jobs/nope").status_code == 404
    # what a client reads names paths as it gave them, never the server's data root
    (night[0] / "empty").mkdir(exist_ok=True)
    (night[0] / "other.csv").write_text("a,b\n1,2\n")  # a table with other columns than this model's rows
    for body, expected in (({"inputs": ["empty/"], "out": "e.csv"}, "no audio files"),
                           ({"inputs": ["night/"], "out": "other.csv"}, "other.csv")):
        job = wait_job(url, httpx.post(f"{url}/v1/jobs", json=body, timeout=10).json()["id"])
        assert job["state"] == "failed" and expected in job["error"] and str(night[0]) not in job["error"], job
    first = sorted((night[0] / "night").glob("*.wav"))[0].relative_to(night[0])
    mixed = wait_job(url, httpx.post(f"{url}/v1/jobs", json={"inputs": ["empty/", str(first)], "out": "f.csv"},
                                     timeout=10).json()["id"])  # the empty folder is named beside the rows
    assert mixed["state"] == "done" and mixed["total"] == 1, mixed
    assert mixed["empty_inputs"] == ["empty/: a folder with no audio files (.wav, .flac, .ogg, .mp3)"]  # as given
    assert json.loads((night[0] / "f.csv.params.json").read_text())["empty_inputs"] == mixed["empty_inputs"]
    (night[0] / "twice.csv").write_text(f"path\n{first.name}\n{first.name}\n")
    shutil.copy(night[0] / first, night[0] / first.name)
    twice = wait_job(url, httpx.post(f"{url}/v1/jobs", json={"inputs": ["twice.csv"], "out": "g.csv"},
                                     timeout=10).json()["id"])
    assert twice["state"] == "done" and twice["total"] == 1, twice
    assert twice["repeated_inputs"] == [f"twice.csv: lists a recording more than once ({first.name} 2 times)"]
    assert json.loads((night[0] / "g.csv.params.json").read_text())["repeated_inputs"] == twice["repeated_inputs"]
    rows = httpx.get(f"{url}/v1/jobs/{job['id']}/rows", timeout=10)
    assert rows.status_code == 409 and "other.csv" in rows.text and str(night[0]) not in rows.text


def test_a_second_job_on_the_same_table_is_409_and_more_than_max_jobs_503(model, night, tmp_path):
    # its own jobs folder: the module's server may hold the data root's (one server per jobs folder)
    with running(model=model, workers=0, data_root=night[0], jobs_dir=tmp_path / "jobs", max_jobs=1) as (url, service):
        with service.turns.turn():  # the engine is busy: the first job waits in its queue
            first = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "a.csv"})
            same_out = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/broken/"], "out": "a.csv"})
            assert same_out.status_code == 409 and "another job is writing a.csv" in same_out.text
            second = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "b.csv"})
            assert first.status_code == 202 and second.status_code == 503 and second.headers["Retry-After"]
            cancelled = httpx.delete(f"{url}/v1/jobs/{first.json()['id']}").json()
        assert cancelled["state"] in ("cancelled", "running")  # queued: cancelled at once; else between two rows
        assert wait_job(url, first.json()["id"])["state"] == "cancelled"


def test_a_job_over_a_name_that_is_not_utf8_serves_its_rows(server, night):
    url, _ = server
    latin = night[0] / "latin"
    latin.mkdir()
    write_recording(latin / "plain.wav", "LEAK", seconds=4, seed=1).rename(latin / os.fsdecode(b"caf\xe9.wav"))
    job = wait_job(url, httpx.post(f"{url}/v1/jobs", json={"inputs": ["latin/"], "out": "latin.csv"}).json()["id"])
    assert job["state"] == "done" and job["statuses"] == {"ok": 1}, job
    rows = httpx.get(f"{url}/v1/jobs/{job['id']}/rows", timeout=10)  # JSON is UTF-8: the byte as an escape
    assert rows.status_code == 200 and rows.json()["rows"][0]["file"].endswith("caf\\xe9.wav"), rows.text


def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_an_upload_waits_for_the_turn_running_now_not_the_next_one(model, night):
    """The uploads thread queues for a turn (its idle check) before an upload comes: it must take that upload
    when the turn comes, not leave it behind the job's next chunk."""
    recording = next((night[0] / "night").glob("S000*.wav"))
    with running(model=model, workers=0) as (url, service), ThreadPoolExecutor(2) as clients:
        answered_before_it = []

        def next_chunk(response):
            with service.turns.turn():  # the upload's row cannot come while this turn is held
                answered_before_it.append(wait([response], timeout=10).done == {response})

        with service.turns.turn():  # a job's chunk is being scored
            _until(lambda: len(service.turns._waiting) == 2)  # the uploads thread queued behind it
            response = clients.submit(upload, url, recording)
            _until(lambda: len(service._pending) == 1)
            chunk = clients.submit(next_chunk, response)  # the job's next chunk queues
            _until(lambda: len(service.turns._waiting) == 3)
        chunk.result(timeout=60)
        assert response.result().status_code == 200 and answered_before_it == [True]


def test_a_failed_batch_tells_each_client_its_own_upload_only(model, night, monkeypatch):
    recordings = sorted((night[0] / "night").glob("S00*.wav"))[:2]
    with running(model=model, workers=0) as (url, service), ThreadPoolExecutor(2) as clients:
        def broken(*args, **kwargs):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(service.engine.runner, "score_rows", broken)
        with service.turns.turn():  # both uploads wait, then share one batch
            responses = [clients.submit(upload, url, path, name=f"client{i}.wav") for i, path in enumerate(recordings)]
            _until(lambda: len(service._pending) == 2)
        for i, response in enumerate(responses):
            detail = response.result().json()["detail"]
            assert response.result().status_code == 500 and "out of memory" in detail
            assert f"client{i}.wav" in detail and f"client{1 - i}.wav" not in detail and "another upload" in detail


def test_only_the_newest_finished_jobs_are_remembered(tmp_path):
    """A server that runs a job a minute kept every record in memory and in its jobs folder, and listed them all:
    beyond --keep-jobs the oldest finished ones are forgotten, queued ones never; the tables are not touched."""
    folder = tmp_path / "jobs"
    store = JobStore(tmp_path, folder, max_jobs=16, keep_jobs=2)
    jobs = [store.submit(["night/"], f"t{i}.csv", retry_failed=True) for i in range(4)]
    (tmp_path / "t0.csv").write_text("file\n")
    for job in jobs[:3]:  # cancelled while queued: finished, in one second, so the order is the submission's
        store.cancel(job.id)
    assert [job.id for job in store.listed()] == [job.id for job in jobs[1:]]
    assert sorted(path.stem for path in folder.glob("*.json")) == sorted(job.id for job in jobs[1:])
    assert (tmp_path / "t0.csv").exists()
    with pytest.raises(JobError, match=f"no job {jobs[0].id}"):
        store.get(jobs[0].id)
    with pytest.raises(JobError, match=f"job {jobs[1].id} is cancelled already: nothing to cancel") as caught:
        store.cancel(jobs[1].id)
    assert caught.value.status == 409
    finishing = store.submit(["night/"], "t9.csv", retry_failed=True)
    finishing.state = "done"  # as a job thread mid-finish might leave it: not yet finished, so not forgettable
    store.cancel(jobs[3].id)
    assert finishing.id in store.jobs and jobs[1].id not in store.jobs
    finishing.state, finishing.finished = "queued", None
    with pytest.raises(InputError, match="another leak serve keeps its jobs here; stop it, or start this one with "
                                         "its own --jobs-dir"):
        JobStore(tmp_path, folder, max_jobs=16, keep_jobs=1)  # two servers on one jobs folder: the second refused
    store.stop()
    store.release()
    restarted = JobStore(tmp_path, folder, max_jobs=16, keep_jobs=1)  # a lower setting applies at start
    assert [(job.id, job.state) for job in restarted.listed()] == [(jobs[3].id, "cancelled"), (finishing.id, "queued")]
    assert sorted(path.stem for path in folder.glob("*.json")) == sorted([jobs[3].id, finishing.id])
    # what clients read never names the data root: the root itself is "."; a sibling that shares its prefix stays
    assert store.for_client(f"no audio files to score: {tmp_path}: a folder") == "no audio files to score: .: a folder"
    assert store.for_client(f"{tmp_path}/night/a.wav; {tmp_path}x/b.wav") == f"night/a.wav; {tmp_path}x/b.wav"


def test_without_a_data_root_folder_jobs_are_off(model):
    with running(model=model, workers=0) as (url, _):
        response = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "x.csv"})
        assert response.status_code == 403 and "--data-root" in response.json()["detail"]
        model_info = httpx.get(f"{url}/v1/model").json()
        assert model_info["card"]["mode"] == "binary" and model_info["columns"][0] == "file"


def test_a_crashing_or_hanging_upload_costs_its_own_row(model, night, tmp_path):
    root = night[0]
    hang = write_recording(root / "hang.wav", "LEAK", seed=3)
    hang.with_suffix(".hang").touch()  # FaultyDecoder hangs on files with this marker beside them
    crash = write_recording(root / "crash.wav", "LEAK", seed=4)
    good = next((root / "night").glob("S002*.wav"))
    with running(model=model, workers=2, file_timeout=3.0, decoder_class=FaultyDecoder) as (url, _):
        with ThreadPoolExecutor(2) as clients:  # an upload named crash* kills its worker
            responses = list(clients.map(lambda path: upload(url, path), [good, crash]))
        assert [r.json()["status"] for r in responses] == ["ok", "worker_crash"]
        assert upload(url, good).json()["status"] == "ok"  # the engine goes on
    with running(model=model, workers=2, file_timeout=3.0, decoder_class=FaultyDecoder, data_root=root,
                 jobs_dir=tmp_path / "jobs") as (url, _):  # its own: the module's server holds the root's
        job = httpx.post(f"{url}/v1/jobs", json={"inputs": ["hang.wav", "crash.wav", str(good.relative_to(root))],
                                                 "out": "faults.csv"}).json()
        done = wait_job(url, job["id"])
        assert done["statuses"] == {"timeout": 1, "worker_crash": 1, "ok": 1}


def test_a_killed_server_resumes_its_job_to_the_uninterrupted_table(model, night, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(night[0] / "night", root / "night")
    for i in range(30):  # enough work to kill the server in the middle of it
        write_recording(root / "night" / f"long{i:02d}.wav", "LEAK", seconds=30, seed=100 + i)
    expected = tmp_path / "expected.csv"
    predict([root / "night"], model, out=expected, workers=0)
    port = free_port()
    arguments = ["--model", model, "--port", port, "--data-root", root, "--workers", 1, "--batch-rows", 1,
                 "--log-level", "warning"]
    process = leak_serve(*arguments)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        job = httpx.post(f"{url}/v1/jobs", json={"inputs": ["night/"], "out": "scores.csv"}).json()
        out, deadline = root / "scores.csv", time.monotonic() + 60
        while (not out.exists() or len(out.read_bytes().splitlines()) < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    written = len(out.read_bytes().splitlines()) - 1
    assert 0 < written < 62, written  # it died mid-job
    saved = json.loads((root / ".leakhunter-jobs" / f"{job['id']}.json").read_text())
    assert saved["state"] == "running"
    process = leak_serve(*arguments)
    try:
        wait_ready(url)
        resumed = wait_job(url, job["id"])
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert resumed["state"] == "done" and resumed["skipped"] == written and resumed["done"] == 62
    key = lambda row: row["file"]  # noqa: E731
    assert sorted(csv_rows(out), key=key) == sorted(csv_rows(expected), key=key)


def test_readiness_says_why_not(model, night):
    with running(model=model, workers=2) as (url, service):
        assert httpx.get(f"{url}/readyz").json() == {"ready": True, "device": "cpu", "backend": "onnxruntime",
                                                     "workers": 2}
        service.settings.device = "cuda"  # as if CUDA had been asked for and the backend had fallen back to CPU
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503 and "cuda was asked for, but scoring runs on cpu" in response.text
        assert upload(url, next((night[0] / "night").glob("S000*.wav"))).status_code == 503
        service.settings.device = "auto"
        pids = {worker.process.pid for worker in service.engine.pool._workers}
        with service.turns.turn():  # no replacement while we look (it happens in a turn of the engine)
            for pid in pids:  # one did the warm-up; the other may not have said "ready" to the pool yet
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while "0 of 2" not in httpx.get(f"{url}/readyz").text and time.monotonic() < deadline:
                time.sleep(0.05)
            response = httpx.get(f"{url}/readyz")
            assert response.status_code == 503 and "0 of 2 decoding workers alive" in response.text
        deadline = time.monotonic() + 15  # an idle server replaces a worker that died
        while httpx.get(f"{url}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert not pids & {worker.process.pid for worker in service.engine.pool._workers}


def test_serve_refuses_a_missing_model_and_cuda_it_cannot_have(tmp_path, model):
    missing = leak_serve("--model", tmp_path / "nope.onnx", "--port", free_port())
    assert missing.wait(timeout=60) == 2 and "nope.onnx: no such model file" in missing.stdout.read()
    cuda = leak_serve("--model", model, "--device", "cuda", "--port", free_port(), "--workers", 0)
    output = cuda.communicate(timeout=60)[0]
    assert cuda.returncode == 2 and "CUDA" in output, output


def test_rows_match_for_an_upload_of_a_48k_stereo_flac(server, tmp_path):
    url, _ = server
    stereo = np.stack([synth_recording("LEAK", 3.0, 48000, np.random.default_rng(1))] * 2, axis=1)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, stereo, 48000)
    served = upload(url, path, media="audio/flac").json()
    expected = predict([path], Path(httpx.get(f"{url}/v1/model").json()["path"]), workers=0).rows[0]
    assert served["status"] == "ok" and served["resampled"] is True and served["channels_in"] == 2
    assert served["mean_leak_prob"] == pytest.approx(expected["mean_leak_prob"], abs=1e-6)


def test_settings_that_cannot_work_are_refused(model, tmp_path):
    from leakhunter.errors import InputError

    with pytest.raises(InputError, match="below --request-timeout"):
        ServeSettings(model=model, file_timeout=600, request_timeout=300)
    with pytest.raises(InputError, match="needs --data-root"):
        ServeSettings(model=model, jobs_dir=tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        ServeSettings(model=model, data_root=tmp_path / "nope")
    with pytest.raises(InputError, match="--keep-jobs must be >= 1"):
        ServeSettings(model=model, keep_jobs=0)


def test_a_job_table_never_replaces_an_input_and_an_unwritable_jobs_folder_says_what_to_do(tmp_path):
    (tmp_path / "night.csv").write_text("path\n")
    store = JobStore(tmp_path, tmp_path / "jobs", max_jobs=16)
    with pytest.raises(JobError, match="out: ./night.csv is one of the inputs, and the table would replace it") as caught:
        store.submit(["night.csv"], "./night.csv", retry_failed=True)
    assert caught.value.status == 422 and not store.jobs
    store.stop()
    store.release()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InputError, match=r"a-file/jobs: cannot keep the jobs there \(.*\); start the server with a "
                                         r"writable --jobs-dir"):
        JobStore(tmp_path, tmp_path / "a-file" / "jobs", max_jobs=16)


def test_an_upload_named_outside_ascii_gets_no_server_path_in_its_message(server, tmp_path):
    """libsndfile prints a path that is not ASCII as bytes (b'/tmp/leakhunter-serve-.../\\xc3\\xbc.wav'), which the
    spool path's replacement missed: the client read the server's spool folder."""
    noise = tmp_path / "noise.wav"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    url, service = server
    for name in ("ünï.wav", "plain.wav"):
        row = upload(url, noise, name=name).json()
        assert row["status"] != "ok" and row["file"] == name, row
        assert "leakhunter-serve" not in row["message"] and str(service.spool) not in row["message"], row
        assert row["message"].startswith("cannot decode it as audio (libsndfile: "), row


def test_a_job_whose_files_lead_outside_the_data_root_fails_without_naming_where(server, night, tmp_path):
    url, _ = server
    outside = write_recording(tmp_path / "elsewhere.wav", "LEAK", seed=5)
    links = night[0] / "links"
    links.mkdir()
    (links / "escape.wav").symlink_to(outside)
    job = wait_job(url, httpx.post(f"{url}/v1/jobs", json={"inputs": ["links/"], "out": "links.csv"}).json()["id"])
    assert job["state"] == "failed" and str(tmp_path) not in job["error"], job
    assert job["error"].startswith("1 file(s) named by links/ lead outside the data root (a symlink"), job


def test_a_stalled_upload_gets_408_and_frees_its_slot(model, night, capfd):
    """Uploads that sent their headers and part of a body, then nothing (a logger on a dropped link), held their
    --max-queue slots until the server restarted while /readyz said 200: after --receive-timeout they are 408.
    A client that goes away mid-body logged a 57-line ASGI traceback: now it frees its slot quietly."""
    import socket

    good = next((night[0] / "night").glob("S002*.wav"))
    head = (b"POST /v1/score?name=s.wav HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\0" * 1000)
    with running(model=model, workers=0, max_queue=1, receive_timeout=1.0) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as gone:
            gone.sendall(head)
            time.sleep(0.3)
        time.sleep(0.5)
        assert upload(url, good).json()["status"] == "ok"
        assert "Exception in ASGI application" not in capfd.readouterr().err
        with socket.create_connection((host, int(port))) as stalled:
            stalled.sendall(head)
            time.sleep(0.3)
            assert upload(url, good).status_code == 503  # its slot is taken while it stalls ...
            stalled.settimeout(10)
            answer = ""
            while "}" not in answer:  # the headers and the JSON body may come in two packets
                part = stalled.recv(4096).decode()
                answer += part
                if not part:
                    break
        assert answer.startswith("HTTP/1.1 408") and "--receive-timeout 1 s after 1000 bytes" in answer, answer
        assert upload(url, good).json()["status"] == "ok"  # ... and free again


def test_a_job_lists_each_input_once_and_at_most_a_thousand(tmp_path):
    (tmp_path / "night").mkdir()
    store = JobStore(tmp_path, tmp_path / "jobs", max_jobs=4)
    assert store.submit(["night/"] * 60_000, "t.csv", retry_failed=True).inputs == ["night/"]
    with pytest.raises(JobError, match="inputs: 1001 where a job takes at most 1000; list the files in a manifest"):
        store.submit([f"night/{i}.wav" for i in range(1001)], "u.csv", retry_failed=True)


@pytest.mark.parametrize("cancelled", [True, False])
def test_a_cancel_asked_before_the_server_stops_stays_a_cancel(tmp_path, monkeypatch, cancelled):
    """A job cancelled by its client and then stopped with the server (SIGTERM) was queued again, and the next
    start ran it; a job only stopped with the server is queued again, to resume."""
    from types import SimpleNamespace

    import leakhunter.inference.jobs as jobs_module
    from leakhunter.inference.jobs import Turns

    (tmp_path / "night").mkdir()
    write_recording(tmp_path / "night" / "a.wav", "LEAK")
    store = JobStore(tmp_path, tmp_path / "jobs", max_jobs=4)
    job = store.submit(["night/"], "t.csv", retry_failed=True)
    job.state = "running"

    def one_row_then(paths, engine, on_row, **settings):
        if cancelled:
            store.cancel(job.id)  # the client's DELETE ...
        store.stop()  # ... then SIGTERM, both before the next row
        on_row({"status": "ok", "verdict": "LEAK", "duration_s": 2.0}, 1, 1)

    monkeypatch.setattr(jobs_module, "score_batch", one_row_then)
    store._run(job, SimpleNamespace(request_fields=False), Turns(), {})
    assert job.state == ("cancelled" if cancelled else "queued")
    assert json.loads((tmp_path / "jobs" / f"{job.id}.json").read_text())["state"] == job.state


def test_a_cancel_asked_of_a_running_job_survives_a_server_killed_before_its_next_row(tmp_path):
    (tmp_path / "night").mkdir()
    store = JobStore(tmp_path, tmp_path / "jobs", max_jobs=4)
    running, other = (store.submit(["night/"], f"{name}.csv", retry_failed=True) for name in ("a", "b"))
    for job in (running, other):
        job.state = "running"
        store._save(job)  # as the job thread saves a job it starts
    store.cancel(running.id)  # the client's DELETE; then SIGKILL, or a file that outlasts the stop's wait
    assert "cancel_asked" not in store.get(running.id).public()  # not a client's business
    store.stop()
    store.release()
    restarted = JobStore(tmp_path, tmp_path / "jobs", max_jobs=4)
    assert restarted.get(running.id).state == "cancelled" and restarted.get(running.id).finished
    assert restarted.get(other.id).state == "queued"


def test_a_port_in_use_is_one_line_before_the_model_loads(model, tmp_path):
    """uvicorn logged a bind error, exited 3, and logged "ready" after it: now the port is bound first."""
    import socket

    from leakhunter.inference.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"127.0.0.1:{port}: cannot listen there \\(Address already in use\\)"):
            serve(ServeSettings(model=model, workers=0, data_root=tmp_path), port=port)
    assert not (tmp_path / ".leakhunter-jobs").exists()  # refused before the server took anything on


def test_a_killed_server_s_upload_spool_is_removed_by_the_next(tmp_path):
    from leakhunter.inference.serve import remove_dead_spools

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spools = {name: tmp_path / f"leakhunter-serve-{pid}-abc" for name, pid in
              (("dead", dead.pid), ("alive", os.getpid()))}
    for spool in spools.values():
        (spool / "up").mkdir(parents=True)
        (spool / "up" / "x.wav").write_bytes(b"RIFF")
    (tmp_path / "leakhunter-serve-notapid").mkdir()  # the old naming: not ours to judge
    remove_dead_spools(tmp_path)
    assert not spools["dead"].exists() and spools["alive"].exists()
    assert (tmp_path / "leakhunter-serve-notapid").exists()
