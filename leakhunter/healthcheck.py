"""The container's HEALTHCHECK: `python -m leakhunter.healthcheck` exits 0 when `leak serve` is ready, 1 if not.

The images carry neither curl nor wget, so the probe is this stdlib-only module (no numpy, no leakhunter
imports: it runs every 30 s and must start fast). The same image also runs batch jobs (`leak predict`),
which have nothing to probe: the probe reads the command line of the container's main process (PID 1) and
only asks `/readyz` of a `leak serve`, on the port that process was given (`--port`, else $LEAK_SERVE_PORT in its
environment or this one, else 8000). Exit status 0 = healthy, 1 = unhealthy (Docker reserves 2), with one line
saying why.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8000"
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
SHELL_SEPARATORS = {";", "&&", "||", "|", "&"}  # where a shell's `leak serve ...` command ends
PROGRAM_TOKENS = {"leakhunter.cli", "-mleakhunter.cli"}  # `python -m leakhunter.cli serve ...`


def read_cmdline(pid: int) -> list[str]:
    """The argv of a process as the kernel holds it (a shebang script shows as `python /usr/.../leak ...`)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]


def read_environment(pid: int) -> dict[str, str]:
    """The environment a process started with; {} where it cannot be read (another user's process)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            pairs = [part.decode(errors="replace").partition("=") for part in environ.read().split(b"\0") if part]
    except OSError:
        return {}
    return {name: value for name, _, value in pairs}


def serve_arguments(argv: list[str]) -> list[str] | None:
    """The arguments after `serve` when argv runs `leak serve` (also behind python, docker-init or tini, or in a
    shell's `-c "mkdir -p /data/x && leak serve ..."`, whose words would otherwise hide it), else None."""
    argv = [word for before, token in zip(["", *argv], argv)
            for word in (_shell_words(token) if before == "-c" else [token])]
    for index, token in enumerate(argv):
        if os.path.basename(token) == "leak" or token in PROGRAM_TOKENS:
            rest = argv[index + 1:]
            command = next((word for word in rest if not word.startswith("-")), None)
            if command != "serve":
                return None
            arguments = rest[rest.index(command) + 1:]
            ends = [i for i, word in enumerate(arguments) if word in SHELL_SEPARATORS]
            return arguments[:ends[0]] if ends else arguments
    return None


def _shell_words(command: str) -> list[str]:
    """A `sh -c` command's words as a shell splits them, `;`, `&&`, `|` ... words of their own; unbalanced
    quotes leave it one word (not a command we can read)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True  # split on spaces and those only: `$PORT`, `/m-1.onnx` stay words
    try:
        return list(lexer)
    except ValueError:
        return [command]


def option_value(arguments: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` (the last one wins, as in the CLI)."""
    value = None
    for index, word in enumerate(arguments):
        if word == name and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def readyz_url(arguments: list[str], environment: dict[str, str] | None = None) -> str:
    """Where `serve` listens: --port/--host, else its $LEAK_SERVE_PORT/$LEAK_SERVE_HOST (the server's environment,
    else this one), else port 8000; a wildcard or unset host is probed on loopback."""
    environment = {**os.environ, **(environment or {})}
    given = option_value(arguments, "--port")  # `$PORT` in a shell's command was never expanded: not a port
    port = (given if given and given.isdigit() else None) or environment.get("LEAK_SERVE_PORT") or DEFAULT_PORT
    host = option_value(arguments, "--host") or environment.get("LEAK_SERVE_HOST") or ""
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}/readyz"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """(ready, one line): ready only on HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read(200)
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(200)
    except (OSError, ValueError, http.client.HTTPException) as error:  # InvalidURL is an HTTPException
        return False, f"unhealthy: {url}: {getattr(error, 'reason', error)}"
    excerpt = " ".join(body.decode(errors="replace").split())
    return status == 200, f"{'healthy' if status == 200 else 'unhealthy'}: {url} answered {status} {excerpt}".strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leakhunter.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, default=1, help="the process whose command line says what runs (1)")
    parser.add_argument("--url", help="probe this URL instead of the one derived from the command line")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (5)")
    options = parser.parse_args(argv)
    url = options.url
    if url is None:
        try:
            command_line = read_cmdline(options.pid)
        except OSError as error:
            command_line, reason = [], f"cannot read the command line of process {options.pid}: {error}"
        else:
            reason = f"process {options.pid} has no command line yet (starting, or exiting)"
        if not command_line:
            print(f"unhealthy: {reason}")
            return 1
        arguments = serve_arguments(command_line)
        if arguments is None:
            print(f"healthy: process {options.pid} is not `leak serve` ({' '.join(command_line)[:80]}), nothing to probe")
            return 0
        url = readyz_url(arguments, read_environment(options.pid))
    ready, message = probe(url, options.timeout)
    print(message)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
