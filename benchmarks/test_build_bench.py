"""Dataset builder throughput in audio-hours per minute, and its scaling from 1 to 2 decoding threads."""

import pytest

from leakhunter.synth import synth_corpus
from leakhunter.training.dataset import build_dataset

HOURS: dict[int, float] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synth_corpus(tmp_path_factory.mktemp("bench-corpus"), files_per_class=24, duration_s=30.0, seed=1)


@pytest.mark.parametrize("workers", [1, 2])
def test_build_throughput(benchmark, report_ratio, corpus, tmp_path, workers):
    report = benchmark.pedantic(build_dataset, args=(corpus.root, tmp_path / "data.h5"),
                                kwargs={"workers": workers}, rounds=3, warmup_rounds=1)
    hours_per_minute = report.hours / (benchmark.stats.stats.min / 60)
    HOURS[workers] = hours_per_minute
    benchmark.extra_info["audio_hours_per_minute"] = hours_per_minute
    text = f"{hours_per_minute:6.1f} audio-h/min ({report.n_files} files of 30 s at 8 kHz)"
    if workers == 2 and 1 in HOURS:
        text += f", {hours_per_minute / HOURS[1]:.2f}x the 1-worker rate"
    report_ratio(f"data build, {workers} worker(s)", text)
