"""The one base of every error leakhunter raises on purpose, so the CLI maps all of them to a message and
an exit status in one place (leakhunter.cli_support.handled) and a library user can catch them with one class."""

from __future__ import annotations


class LeakhunterError(Exception):
    """An error whose message names the file or setting and the reason; never a bare traceback.

    `exit_code` is the status the CLI exits with; None lets the command choose (2 for bad input, 1 for a
    check that found a problem)."""

    exit_code: int | None = None


class DeviceError(LeakhunterError, ValueError):
    """A device name that is not auto, cpu, cuda or cuda:N, or a GPU index this machine does not have."""

    exit_code = 2


class InputError(LeakhunterError, ValueError):
    """A parameter outside what is accepted (a preset, a split name, a channel policy, a fraction ...): bad
    input, exit status 2 from every command."""

    exit_code = 2


class DatasetError(LeakhunterError, ValueError):
    """A source or dataset that cannot be built or used; the message names the file and the reason."""
