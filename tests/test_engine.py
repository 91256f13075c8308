"""The batched scoring engine: packing pieces of many files into one batch changes nothing in the scores, a
slow but working file is not a timeout, a model failure stops the job, and a long-lived engine stays usable."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from leakhunter.audio import load_audio
from leakhunter.inference.engine import ScoringEngine, ScoringError
from leakhunter.inference.runner import long_segment_probs
from leakhunter.inference.scorer import Decoded, RecordingDecoder
from leakhunter.synth import synth_recording

LENGTHS_S = (0.3, 1.0, 2.37, 4.0, 9.9, 31.4)  # shorter than a long segment ... several pieces of 2 s


def write(path: Path, seconds: float, seed: int, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    label = ("LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL")[seed % 5]
    soundfile.write(path, synth_recording(label, seconds, rate, np.random.default_rng(seed)), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    return [write(folder / f"r{i}.wav", seconds, seed=i) for i, seconds in enumerate(LENGTHS_S)]


def unbatched(model, path):
    """The reference: one recording at a time through the runner, as `score_waveform` scores it."""
    with ScoringEngine(model, workers=0) as engine:
        audio = load_audio(path, engine.card.frontend.sample_rate, "mean", engine.card.segmentation.long_samples)
        _, leak = engine.runner.score_waveform(audio.samples)
        return long_segment_probs(engine.card, audio.samples.size, leak)


@pytest.mark.parametrize("kind", ["onnx", "pth", "long-preset pth"])
def test_packing_many_files_into_one_batch_scores_each_as_alone(kind, binary_export, make_checkpoint, recordings,
                                                               tmp_path):
    model = {"onnx": lambda: binary_export[1].output, "pth": lambda: binary_export[0],
             "long-preset pth": lambda: make_checkpoint("multiclass", "long", tmp_path / "long.pth")}[kind]()
    rows = {}
    for workers, batch_rows, piece_seconds in ((0, 4, 2.0), (2, 1, 2.0), (0, 8, 60.0)):
        with ScoringEngine(model, workers=workers, batch_rows=batch_rows, piece_seconds=piece_seconds) as engine:
            rows[workers, batch_rows] = {Path(r.row["file"]).name: r.row for r in engine.score(recordings)}
    for name, row in rows[0, 4].items():
        path = next(p for p in recordings if p.name == name)
        if row["status"] != "ok":
            assert row["status"] == "too_short" and LENGTHS_S[recordings.index(path)] < 0.5
            continue
        alone = unbatched(model, path)
        assert row["n_long"] == len(alone)
        for other in rows.values():
            assert other[name]["verdict"] == row["verdict"]
            assert abs(other[name]["mean_leak_prob"] - alone.mean()) <= 1e-6
            assert abs(other[name]["max_long_prob"] - alone.max()) <= 1e-6


class SlowDecoder(RecordingDecoder):
    """Takes 0.5 s before every piece: slow, but making progress. Module level, for the worker processes."""

    def decode(self, path, emit):
        def slow(piece):
            time.sleep(0.5)
            emit(piece)

        return super().decode(path, slow)


def test_a_slow_file_that_makes_progress_is_not_a_timeout(binary_export, tmp_path):
    path = write(tmp_path / "long.wav", 10.0, seed=1)
    with ScoringEngine(binary_export[1].output, workers=1, file_timeout=2.0, piece_seconds=2.0,
                       decoder_class=SlowDecoder) as engine:
        row = engine.score_file(path).row  # five pieces, 2.5 s in all: over the timeout, never 2 s without progress
    assert row["status"] == "ok", row


class NoPieces(RecordingDecoder):
    def decode(self, path, emit):
        return Decoded(n_pieces=0, duration_s=0.0, sample_rate_in=8000, resampled=True, channels_in=1, clipped=False)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_recording_with_no_piece_gets_a_row_not_a_hang(binary_export, tmp_path, workers):
    path = write(tmp_path / "a.wav", 2.0, seed=2)
    with ScoringEngine(binary_export[1].output, workers=workers, decoder_class=NoPieces) as engine:
        row = engine.score_file(path).row
    assert row["status"] == "too_short"


def test_a_failing_model_stops_the_job_and_the_engine_stays_usable(binary_export, recordings, monkeypatch):
    with ScoringEngine(binary_export[1].output, workers=0) as engine:
        original = engine.runner.score_rows
        monkeypatch.setattr(engine.runner, "score_rows",
                            lambda rows, meta=None: (_ for _ in ()).throw(MemoryError("GPU full")))
        with pytest.raises(ScoringError, match="the model failed on a batch of .* MemoryError: GPU full"):
            list(engine.score(recordings))
        monkeypatch.setattr(engine.runner, "score_rows", original)
        assert {r.row["status"] for r in engine.score(recordings[1:3])} == {"ok"}


def test_one_engine_scores_one_batch_of_files_at_a_time(binary_export, recordings):
    with ScoringEngine(binary_export[1].output, workers=0) as engine:
        first = engine.score(recordings)
        next(first)
        with pytest.raises(RuntimeError, match="already scoring"):
            next(engine.score(recordings))
        first.close()  # a cancelled job leaves nothing behind
        assert len(list(engine.score(recordings))) == len(recordings)


def test_resume_keeps_only_rows_voted_with_the_same_threshold(binary_export, recordings, tmp_path):
    from leakhunter.inference.predict import predict

    out = tmp_path / "scores.csv"
    predict(recordings, binary_export[1].output, out=out, workers=0)
    assert predict(recordings, binary_export[1].output, out=out, workers=0, resume=True).skipped == len(recordings)
    again = predict(recordings, binary_export[1].output, out=out, workers=0, resume=True, threshold=0.9)
    assert again.skipped == 0 and len(again.rows) == len(recordings)  # every row was voted at 0.5: scored again
    import csv

    with open(out, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(recordings) and {row["threshold"] for row in table} == {"0.9"}


def test_an_upload_is_spooled_and_scored_like_the_file(binary_export, recordings, tmp_path):
    import io

    with ScoringEngine(binary_export[1].output, workers=1) as engine:
        from_disk = engine.score_file(recordings[3]).row
        uploaded = engine.score_file(io.BytesIO(recordings[3].read_bytes()), name="night~r3.wav").row
        renamed = engine.score_file(io.BytesIO(recordings[3].read_bytes()), name="r3.flac").row
        text = engine.score_file(io.BytesIO(b"path,label\nx.wav,LEAK\n" * 40), name="r4.wav").row
    assert uploaded["file"] == "night~r3.wav" and uploaded["status"] == "ok"
    assert uploaded["mean_leak_prob"] == from_disk["mean_leak_prob"] and uploaded["verdict"] == from_disk["verdict"]
    assert renamed["status"] == "format_mismatch" and text["status"] == "not_audio"  # every open_audio check
    with pytest.raises(ValueError, match="plain file name"):
        ScoringEngine.score_file(engine, io.BytesIO(b""), name="../x.wav")


def _nothing():
    return None


def _die(state, task, emit):
    os._exit(3)


class _FlickeringProcess:
    """A dead worker process whose is_alive() answers True, then False, then True ...: what a process
    that dies between two looks at it shows. The pool must look once per round and still report the task."""

    def __init__(self, process):
        self.process, self.answers = process, iter([True, False] * 50)

    def is_alive(self):
        self.process.join(timeout=5)
        return next(self.answers)

    def __getattr__(self, name):
        return getattr(self.process, name)


def test_a_worker_dying_between_two_looks_still_costs_its_task_a_row():
    from leakhunter.inference.pool import WorkerFailure, WorkerPool

    with WorkerPool(_nothing, (), _die, workers=1, timeout=30) as pool:
        task_id = pool.submit("x")
        deadline = time.monotonic() + 20
        while not any(worker.ready for worker in pool._workers) and time.monotonic() < deadline:
            pool.events(timeout=0.05)
        pool._workers[0].process = _FlickeringProcess(pool._workers[0].process)
        events = []
        while pool.outstanding and time.monotonic() < deadline:
            events += pool.events(timeout=0.05)
    assert [(e.task_id, e.payload.reason) for e in events if isinstance(e.payload, WorkerFailure)] == [
        (task_id, "worker_crash")]
