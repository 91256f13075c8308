"""Peak RSS of `leak data build` against corpus size: it must stay flat (the builder keeps no samples).

    .venv/bin/python benchmarks/build_memory.py /tmp/build-mem --hours 2 20 --duration 60

Writes a synthetic corpus of each size (`leak data synth`, 60-s files at 8 kHz) under WORKDIR, builds each
one in a child process and prints that child's peak RSS (os.wait4's ru_maxrss), then the growth.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

LEAK = Path(sys.executable).with_name("leak")


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run a command; return (its peak RSS in MB, wall seconds)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--hours", type=float, nargs="+", default=[2.0, 20.0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per synthetic file")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    peaks = []
    for hours in args.hours:
        per_class = max(1, round(hours * 3600 / args.duration / 5))
        corpus = args.workdir / f"corpus-{hours:g}h"
        if not (corpus / "manifest.csv").is_file():
            subprocess.run([str(LEAK), "data", "synth", str(corpus), "--files-per-class", str(per_class),
                            "--duration", str(args.duration)], check=True, stdout=subprocess.DEVNULL)
        rss, seconds = peak_rss_mb([str(LEAK), "data", "build", str(corpus), "-o", str(args.workdir / f"{hours:g}h.h5"),
                                    "--workers", str(args.workers)])
        peaks.append(rss)
        print(f"{hours:g} h ({per_class * 5} files of {args.duration:g} s): peak RSS {rss:.0f} MB, {seconds:.0f} s",
              flush=True)
    print(f"growth {args.hours[0]:g} h -> {args.hours[-1]:g} h: {peaks[-1] - peaks[0]:+.0f} MB")


if __name__ == "__main__":
    main()
