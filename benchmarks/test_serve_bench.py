"""Serving throughput on this machine: 10-s uploads (1 h of audio, 4096 Hz, `short` preset, onnx) posted to
`leak serve` (default settings) by 1, 4 and 16 concurrent clients on the same 2 cores, against `leak predict`
(default settings, fresh process) on the same files in the same run. Every served row must be ok and carry the
verdict predict gave the file."""

import csv
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_engine_bench import leak_predict, model, write_set  # noqa: F401 - model is a fixture

AUDIO_S = 3600.0


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):  # noqa: F811 - the fixture imported above
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "leakhunter.cli", "serve", "--model", str(model[1]),
                                "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=30)


def post_all(url: str, files: list[Path], clients: int) -> list[dict]:
    """Each client posts its share of the files one after the other, on one keep-alive connection."""
    def client(share: list[Path]) -> list[dict]:
        with httpx.Client(timeout=120) as http:
            return [http.post(f"{url}/v1/score", params={"name": path.name}, content=path.read_bytes(),
                              headers={"Content-Type": "audio/wav"}).raise_for_status().json() for path in share]

    with ThreadPoolExecutor(clients) as pool:
        return [row for rows in pool.map(client, [files[i::clients] for i in range(clients)]) for row in rows]


def test_serving_throughput_at_1_4_and_16_clients(benchmark, report_ratio, model, server, tmp_path):  # noqa: F811
    folder = write_set(tmp_path / "hour", 360, 10.0)
    files = sorted(folder.glob("*.wav"))
    post_all(server, files[:8], 4)  # connections and the first batches, outside the timing
    predict_s, _, _ = leak_predict(folder, "--model", model[1], "--out", tmp_path / "scores.csv")
    with open(tmp_path / "scores.csv", newline="") as handle:
        verdicts = {Path(row["file"]).name: row["verdict"] for row in csv.DictReader(handle)}
    report_ratio("leak predict defaults, 1 h of 10-s files (fresh process)",
                 f"{len(files) / predict_s:6.1f} files/s {AUDIO_S / predict_s:6.0f}x real time")
    for clients in (1, 4, 16):
        started = time.perf_counter()
        rows = post_all(server, files, clients)
        wall_s = time.perf_counter() - started
        assert len(rows) == len(files) and all(row["status"] == "ok" for row in rows)
        assert all(row["verdict"] == verdicts[row["file"]] for row in rows)
        benchmark.extra_info[f"clients_{clients}_realtime"] = AUDIO_S / wall_s
        report_ratio(f"leak serve, 10-s uploads, {clients:2d} client(s)",
                     f"{len(files) / wall_s:6.1f} files/s {AUDIO_S / wall_s:6.0f}x real time "
                     f"= {predict_s / wall_s:4.2f}x leak predict")
    benchmark.pedantic(lambda: post_all(server, files[:40], 4), rounds=1, iterations=1)
