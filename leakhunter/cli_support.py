"""What every `leak` command shares: the consoles, the one place errors become messages, command registration
and the progress bar. The commands live in leakhunter/cli.py (and cli_data.py for `leak data`)."""

from __future__ import annotations

import functools
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Logs and CI are not terminals: give tables room rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def warn(message: str) -> None:
    """One yellow `warning:` line on stderr, the text as it is (a path with brackets is no markup)."""
    errors.print(f"warning: {message}", style="yellow", highlight=False, markup=False)


@dataclass
class Interrupted:
    signal: str | None = None  # SIGINT or SIGTERM, once one stopped the command
    number: int = 0


@contextmanager
def stopped_by_signal() -> Iterator[Interrupted]:
    """Ctrl-C and SIGTERM (`docker stop`, a scheduler's kill) stop a long command the same way: a
    KeyboardInterrupt unwinds every `with` (workers closed, the table's rows flushed) and the block ends with
    `.signal` set, for one line saying what is kept. SIGTERM used to end the process where it stood."""
    state = Interrupted()

    def on_term(number, frame):
        state.signal, state.number = "SIGTERM", number
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield state
    except KeyboardInterrupt:
        if state.signal is None:
            state.signal, state.number = "SIGINT", int(signal.SIGINT)
    except SystemExit as stop:  # ray.init puts its own SIGTERM handler in: sys.exit(15)
        if stop.code != signal.SIGTERM:
            raise
        state.signal, state.number = "SIGTERM", int(signal.SIGTERM)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


# What `pip install 'leakhunter[train]'` adds to the scoring install: training, export, .pth models, datasets.
TRAINING_EXTRA = frozenset({"torch", "h5py", "matplotlib", "yaml", "onnx", "onnxscript"})
# What `pip install 'leakhunter[ray]'` adds: `leak predict --engine ray` on a Ray cluster.
RAY_EXTRA = frozenset({"ray"})


def _warning_line(shown, message, category, filename, lineno, file=None, line=None) -> None:
    """A RuntimeWarning (a timeline PNG not drawn, a number that cannot be computed) is one `warning:` line, as
    `warn` prints, not Python's file, line number and source line; other categories keep Python's form."""
    if issubclass(category, RuntimeWarning):
        warn(str(message))
    else:
        shown(message, category, filename, lineno, file, line)


def handled(default_code: int = 2, name: str = "this command"):
    """The one place errors become messages: a LeakhunterError (or an OSError naming a file) prints one red line
    and exits with the error's own status (e.g. 100 + N for a failed health check), else `default_code`
    (2: bad input; 1 for commands whose job is to find problems). Anything else is a bug and keeps its traceback."""
    from leakhunter.errors import LeakhunterError

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            try:
                with warnings.catch_warnings():  # restores Python's own printer afterwards
                    shown = warnings.showwarning
                    warnings.showwarning = functools.partial(_warning_line, shown)
                    return command(*args, **kwargs)
            except LeakhunterError as error:
                raise fail(str(error), error.exit_code or default_code) from None
            except OSError as error:
                raise fail(str(error), default_code) from None
            except ModuleNotFoundError as error:
                if (error.name or "").split(".")[0] in RAY_EXTRA:
                    raise fail(f"`{name} --engine ray` needs {error.name}, which the scoring install leaves out: "
                               f"pip install 'leakhunter[ray]'", 2) from None
                if (error.name or "").split(".")[0] not in TRAINING_EXTRA:
                    raise
                raise fail(f"`{name}` needs {error.name}, which the scoring "
                           f"install leaves out (it scores and evaluates .onnx models only): pip install 'leakhunter[train]'",
                           2) from None
        return run
    return decorate


def command(group: typer.Typer, name: str, default_code: int = 2):
    """Register a `leak` command whose errors are `handled` (one red line, the right exit status); a command
    group's own name (typer.Typer(name=...)) is part of the command's name in messages."""
    full_name = " ".join(filter(None, ("leak", group.info.name, name)))

    def decorate(function):
        return group.command(name)(handled(default_code, full_name)(function))
    return decorate


def progress_bar(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=errors)
