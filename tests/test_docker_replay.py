"""The cpu image, replayed without a Docker engine: its COPY and pip steps, read from the Dockerfile, build a fresh
venv from the files the image would get; then the image's command line (ENTRYPOINT + `serve`, the image's ENV)
must pass the image's HEALTHCHECK, and `leak predict` must score files, with torch absent.

What it cannot check: the base image itself, the user, the layers; `docker build` is left to a machine with an
engine. pip's cache is used (and the index must be reachable) so the install takes seconds, not minutes."""

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
from dockerfile_parser import base_image, read_stages, target_instructions
from servers import free_port

from leakhunter.synth import synth_recording

ROOT = Path(__file__).resolve().parents[1]
TARGET = "cpu"
READY_WITHIN_S = 60

pytestmark = pytest.mark.slow


def replay_copy(sources: list[str], destination: str, image_root: Path) -> None:
    """COPY as Docker does it: a folder's contents land in the destination; files go into a `/`-ended one."""
    target = image_root / destination.lstrip("/")
    for source in sources:
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            into_folder = destination.endswith("/") or len(sources) > 1
            (target if into_folder else target.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name if into_folder else target)


def replay_pip(command: list[str], venv: Path, image_root: Path) -> None:
    """`pip install ...` with the venv's pip, image paths mapped into image_root, pip's cache allowed and no
    bytecode compiled at install."""
    arguments = []
    for word in command[1:]:
        if word == "--no-cache-dir":
            continue
        mapped = image_root / word.lstrip("/")
        arguments.append(str(mapped) if word.startswith("/") and mapped.exists() else word)
    # --no-compile: no .pyc written at install (a cache; Python compiles what it imports): 10 s less per run
    installed = subprocess.run([venv / "bin" / "pip", *arguments, "--disable-pip-version-check", "--quiet",
                                "--no-compile"], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, f"{shlex.join(command)} failed:\n{installed.stdout}\n{installed.stderr}"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The cpu target replayed: (venv, the image's ENV, ENTRYPOINT, HEALTHCHECK command)."""
    stages = read_stages(ROOT / "Dockerfile")
    python_tag = base_image(stages, TARGET).split(":")[1]
    if not python_tag.startswith(f"{sys.version_info.major}.{sys.version_info.minor}"):
        pytest.skip(f"the {TARGET} image runs Python {python_tag}, this interpreter is {sys.version.split()[0]}")
    work = tmp_path_factory.mktemp("image")
    image_root, venv = work / "root", work / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    environment, entrypoint, health = {}, None, None
    for step in target_instructions(stages, TARGET):
        if step.keyword == "COPY":
            assert "from" not in step.flags_and_rest()[0], "replaying COPY --from is not supported"
            replay_copy(*step.copy_paths(), image_root)
        elif step.keyword == "RUN":
            for command in step.shell_commands():
                if command[:2] == ["pip", "install"]:
                    replay_pip(command, venv, image_root)
                elif any(re.fullmatch(r"pip[0-9.]*", word) for word in command):
                    pytest.fail(f"line {step.line}: cannot replay {shlex.join(command)} (write it `pip install ...`)")
        elif step.keyword == "ENV":
            environment.update(step.env_pairs())
        elif step.keyword == "ENTRYPOINT":
            entrypoint = step.exec_form()
        elif step.keyword == "HEALTHCHECK":
            health = step.exec_form()
    return venv, environment, entrypoint, health


def in_venv(command: list[str], venv: Path) -> list[str]:
    """An image command (`leak ...`, `python ...`) resolved to the replayed venv's executables."""
    return [str(venv / "bin" / command[0]), *command[1:]]


def image_environment(environment: dict[str, str], venv: Path) -> dict[str, str]:
    """This machine's environment plus the image's ENV, the venv first on PATH, serve on loopback only."""
    merged = {**os.environ, **environment, "LEAK_SERVE_HOST": "127.0.0.1"}
    merged["PATH"] = f"{venv / 'bin'}{os.pathsep}{merged.get('PATH', '')}"
    merged.pop("PYTHONPATH", None)
    return merged



def test_the_image_has_no_torch_and_one_onnxruntime(image):
    venv = image[0]
    torch = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True, text=True, cwd=venv)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, torch.stderr
    listed = subprocess.run([venv / "bin" / "python", "-m", "pip", "list", "--format=freeze",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    runtimes = [line for line in listed.splitlines() if line.lower().startswith(("onnxruntime==", "onnxruntime-gpu=="))]
    assert len(runtimes) == 1 and runtimes[0].startswith("onnxruntime=="), runtimes


def test_the_image_serves_and_passes_its_healthcheck(image, binary_export, tmp_path):
    venv, environment, entrypoint, health = image
    environment = image_environment(environment, venv)
    port = free_port()
    log = tmp_path / "serve.log"
    command = in_venv(entrypoint, venv) + ["serve", "--model", str(binary_export[1].output), "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        probe = in_venv(health, venv) + ["--pid", str(server.pid)]
        deadline, checked = time.monotonic() + READY_WITHIN_S, None
        while time.monotonic() < deadline and server.poll() is None:
            checked = subprocess.run(probe, env=environment, capture_output=True, text=True, timeout=30, cwd=tmp_path)
            if checked.returncode == 0:
                break
            time.sleep(0.5)
        assert server.poll() is None, f"`{shlex.join(command)}` exited {server.returncode}:\n{log.read_text()}"
        assert checked is not None and checked.returncode == 0, (
            f"HEALTHCHECK not healthy within {READY_WITHIN_S} s: {checked and checked.stdout}\n{log.read_text()}")
        assert checked.stdout.startswith("healthy") and f":{port}/readyz answered 200" in checked.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as alive:
            assert alive.status == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_image_scores_files_with_predict(image, binary_export, tmp_path):
    venv, environment, entrypoint, _ = image
    folder = tmp_path / "night"
    folder.mkdir()
    for seed in range(2):
        soundfile.write(folder / f"r{seed}.wav", synth_recording("LEAK", 4.0, 8000, np.random.default_rng(seed)), 8000)
    scores = tmp_path / "scores.csv"
    command = in_venv(entrypoint, venv) + ["predict", str(folder), "--model", str(binary_export[1].output),
                                           "--out", str(scores)]
    scored = subprocess.run(command, env=image_environment(environment, venv), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    with open(scores, newline="") as table:
        rows = list(csv.DictReader(table))
    assert sorted(Path(row["file"]).name for row in rows) == ["r0.wav", "r1.wav"]
    assert all(row["status"] == "ok" and row["verdict"] for row in rows), rows
