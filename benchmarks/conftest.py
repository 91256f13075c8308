"""Benchmarks report ratios measured in one run; this collects them and prints a table at the end."""

import pytest

RATIOS: list[tuple[str, str]] = []


@pytest.fixture
def report_ratio():
    def record(name: str, text: str) -> None:
        RATIOS.append((name, text))

    return record


def pytest_terminal_summary(terminalreporter):
    if RATIOS:
        terminalreporter.section("leakhunter ratios (measured in this run)")
        for name, text in RATIOS:
            terminalreporter.write_line(f"{name:<48} {text}")
