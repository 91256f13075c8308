"""A recording's P(LEAK) over time, one bar per long segment, with the threshold line (`--timeline`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # a Figure draws without pyplot: no global backend, no display


def plot_timeline(timeline: dict, path: str | Path) -> None:
    starts = np.asarray(timeline["long_start_s"])
    probs = np.asarray(timeline["leak_prob"])
    over = probs >= timeline["threshold"]
    figure = Figure(figsize=(10, 3))
    axis = figure.subplots()
    width = min(timeline["long_seconds"], starts[1] - starts[0]) if len(starts) > 1 else timeline["long_seconds"]
    axis.bar(starts, probs, width=width, align="edge", color=np.where(over, "tab:red", "tab:blue"))
    axis.axhline(timeline["threshold"], color="black", linestyle="--", linewidth=1,
                 label=f"threshold {timeline['threshold']:.2f}")
    axis.set(xlabel="time (s)", ylabel="P(LEAK)", ylim=(0, 1),
             title=f"{Path(timeline['file']).name}: {over.mean():.0%} of long segments over the threshold")
    axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
