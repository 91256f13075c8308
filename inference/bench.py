"""`leak bench`: where scoring time goes on the user's own files (or a generated set), per backend and device.

Each stage is timed alone on the same decoded audio, with the production pieces of code (no re-implementation
that could drift from what `leak predict` runs): decode + resample (RecordingDecoder.decode), the model on the
packed batches (PieceBatcher.score → runner.score_rows), for a .pth the front-end and the network apart, the
vote (RecordingScorer.result), then `predict()` end to end with the default workers and with workers=0, and
the engine start-up (ScoringEngine construction). Backends: the model's own, and for an .onnx also torch on a
.pth with the same stem beside it (as `leak export` writes), whose rows must agree file by file.

Torch-free at import: torch is imported only to bench a .pth.
"""

from __future__ import annotations

import csv
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from leakhunter.audio import AudioError
from leakhunter.card import STANDARD_CLASSES
from leakhunter.devices import parse_device
from leakhunter.errors import InputError
from leakhunter.files import not_a_model_file
from leakhunter.inference.engine import ScoringEngine
from leakhunter.inference.loader import CHECKPOINT_SUFFIXES, ONNX_SUFFIXES, read_card
from leakhunter.inference.onnx_card import ModelLoadError
from leakhunter.inference.predict import find_inputs, manifest_fields, predict
from leakhunter.reference import SENSOR_FIELD, reference_table

SYNTH_RATE = 8000  # Hz of the generated set: a common logger rate, resampled to the card's like real files


def bench(model: str | Path, inputs: list[str | Path] | None = None, device: str = "auto", files: int = 60,
          seconds: float = 10.0, workers: int = 2, log: Callable[[str], None] | None = None,
          reference: str | Path | None = None) -> dict:
    """Time every scoring stage and the whole `predict` per backend/device; see the module docstring.

    inputs: audio files, folders, globs or manifests as `leak predict` takes them; None generates `files`
    synthetic recordings of `seconds` each (leakhunter.synth, every class in turn) in a temporary folder.
    device: auto (cpu, plus cuda where the backend has it), cpu, or cuda[:N] (an error without CUDA).
    reference: a reference model's table (`leak reference build`), as predict takes it: each given recording is
    judged against its sensor's reference (a manifest's sensor_id column, else its logger name); the generated
    recordings are all taken as the table's first sensor, as `leak serve` warms up.
    Returns {"audio_s", "files", "generated", "results": [...], "agreement": {...}}; peak RSS is the
    process's peak so far (ru_maxrss never goes down), so later results include earlier ones.
    """
    say = log or (lambda text: None)
    model = Path(model)
    if model.is_dir():  # a run's folder: name its model file
        raise ModelLoadError(not_a_model_file(model))
    if model.suffix.lower() not in ONNX_SUFFIXES + CHECKPOINT_SUFFIXES:
        raise ModelLoadError(f"{model}: not a model file; expected one of "
                             f"{', '.join(ONNX_SUFFIXES + CHECKPOINT_SUFFIXES)}")
    if not model.is_file():
        raise ModelLoadError(not_a_model_file(model))
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    request = parse_device(device)  # a bad name fails before anything is generated
    table = reference_table(read_card(model)[0], reference, model)  # a missing or mismatched table: refused now
    models = [model]
    if model.suffix.lower() in ONNX_SUFFIXES and (sibling := model.with_suffix(".pth")).is_file() and _has_torch():
        models.append(sibling)  # the scoring install has no torch: then the .onnx is benched alone
    with tempfile.TemporaryDirectory(prefix="leak-bench-") as folder:
        generated = inputs is None
        if generated:
            if int(files) != files or files < 1 or not seconds > 0:
                raise InputError(f"--files must be an integer >= 1 and --seconds > 0, got {files} and {seconds}")
            say(f"generating {files} recordings of {seconds:g} s at {SYNTH_RATE} Hz")
            paths = generate(Path(folder), int(files), float(seconds))
            if table is not None:
                sensor = min(table.references)
                say(f"the generated recordings are scored as sensor {sensor} of {reference}")
                inputs = [sensor_manifest(Path(folder) / "recordings.csv", paths, sensor)]
            else:
                inputs = paths
        else:
            found = find_inputs(list(inputs))
            for line in found.empty:
                say(f"warning: {line}: nothing is timed from it")
            for line in found.repeated:
                say(f"warning: {line}; each is timed once")
            paths = found.paths
        results, rows = [], []
        for path in models:
            for name in devices_for(path, str(request)):
                say(f"{path.name} on {name}")
                result, result_rows = bench_one(path, name, list(inputs), paths, workers, say, reference)
                results.append(result)
                rows.append(result_rows)
    audio_s = results[0]["audio_s"]
    return {"audio_s": audio_s, "files": len(paths), "generated": generated, "model": str(model),
            "results": results, "agreement": agreement(results, rows)}


def generate(folder: Path, files: int, seconds: float) -> list[Path]:
    """`files` synthetic recordings (every class in turn, seeded by index), 16-bit WAV at SYNTH_RATE."""
    from leakhunter.synth import synth_recording

    paths = []
    for index in range(files):
        label = STANDARD_CLASSES[index % len(STANDARD_CLASSES)]
        path = folder / f"{index:04d}_{label}.wav"
        samples = synth_recording(label, seconds, SYNTH_RATE, np.random.default_rng([0, index]))
        soundfile.write(path, samples, SYNTH_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def sensor_manifest(manifest: Path, paths: list[Path], sensor: str) -> Path:
    """A manifest giving every recording the same sensor_id, as a reference model's recordings need one."""
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", SENSOR_FIELD])
        writer.writerows([path.name, sensor] for path in paths)
    return manifest


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def devices_for(model: Path, device: str) -> list[str]:
    """`auto`: cpu, plus cuda where this backend has it; anything else as asked (the loader refuses a
    missing GPU)."""
    if device != "auto":
        return [device]
    if model.suffix.lower() in ONNX_SUFFIXES:
        import onnxruntime

        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    else:
        import torch

        has_cuda = torch.cuda.is_available()
    return ["cpu", "cuda"] if has_cuda else ["cpu"]


@dataclass
class _Recording:
    """What the batcher needs to know of a recording here: where its results go, and that it has not failed."""

    index: int
    path: Path
    context: object = None  # its per-recording input (ScoringEngine.recording_context), else None
    failure: None = None


def _timed(work: Callable) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _rate(seconds: float, audio_s: float, n_files: int) -> dict:
    seconds = max(seconds, 1e-9)
    return {"seconds": round(seconds, 6), "x_real_time": round(audio_s / seconds, 1),
            "files_per_s": round(n_files / seconds, 2)}


def bench_one(model: Path, device: str, inputs: list[str | Path], paths: list[Path], workers: int,
              say: Callable[[str], None], reference: str | Path | None = None) -> tuple[dict, list[dict]]:
    """One backend on one device: every stage alone, then end to end; and the rows of the default run.
    `inputs` as predict takes them (their manifests' columns reach the model as predict's do), `paths` found in
    them."""
    started = time.perf_counter()
    with ScoringEngine(model, device, workers=0, reference=reference) as engine:
        load_s = time.perf_counter() - started
        if engine.request_fields:  # a reference model's sensor_id, a fusion model's meta
            engine.fields.add_manifest(manifest_fields(inputs))
        runner, scorer, batcher = engine.runner, engine.scorer, engine.batcher
        say(f"  decode + resample ({runner.backend}, {runner.device})")
        decoded, pieces, failed, contexts = {}, [], {}, {}
        started = time.perf_counter()
        for index, path in enumerate(paths):
            contexts[index], _, refused = engine.recording_context(path)
            if refused is not None:  # predict refuses it undecoded
                failed[index] = refused[0]
                continue
            try:
                decoded[index] = engine.decoder.decode(path, lambda piece, index=index: pieces.append((index, piece)))
            except AudioError as error:
                failed[index] = error.reason
        decode_s = time.perf_counter() - started
        pieces = [(index, piece) for index, piece in pieces if index in decoded]
        if not decoded:
            reasons = ", ".join(sorted(set(failed.values())))
            raise InputError(f"none of the {len(paths)} file(s) could be scored ({reasons})")
        audio_s = sum(info.duration_s for info in decoded.values())
        n_ok = len(decoded)
        batches = []
        states = {index: _Recording(index, paths[index], contexts[index]) for index in decoded}
        for index, piece in pieces:  # packed as the engine packs them (packing itself is not a stage)
            if not batcher.add(states[index], piece):
                batches.append(batcher.seal())
                batcher.add(states[index], piece)
        batches.append(batcher.seal())
        say(f"  model on {len(batches)} packed batch(es)")
        with ThreadPoolExecutor(max_workers=1) as thread:  # the model runs in a thread of its own in the engine,
            # and so here: torch measured 2-3x slower on the main thread of this process than in that thread
            thread.submit(batcher.score, batches[0]).result()  # warm-up: a first call plans the graph, allocates
            model_s, scored = thread.submit(_timed, lambda: [item for batch in batches
                                                             for item in batcher.score(batch)]).result()
            stages = {"decode": _rate(decode_s, audio_s, n_ok), "model": _rate(model_s, audio_s, n_ok)}
            if runner.backend == "torch":
                stages.update(thread.submit(_torch_split, runner, batches, audio_s, n_ok).result())
        long_leak, long_classes = {}, {}
        for placed, leak, classes in scored:
            long_leak.setdefault(placed.state.index, {})[placed.index] = leak
            long_classes.setdefault(placed.state.index, {})[placed.index] = classes
        started = time.perf_counter()
        for index, info in decoded.items():
            order = sorted(long_leak[index])
            scorer.result(paths[index], info, np.concatenate([long_leak[index][i] for i in order]),
                          np.concatenate([long_classes[index][i] for i in order]))
        stages["voting"] = _rate(time.perf_counter() - started, audio_s, n_ok)
        backend, device_used = runner.backend, runner.device
    end_to_end, rows, workers_peak_kib = {}, None, 0
    for count in dict.fromkeys((workers, 0)):
        say(f"  predict end to end, workers={count}")
        started = time.perf_counter()
        engine = ScoringEngine(model, device, workers=count, reference=reference)
        startup_s = time.perf_counter() - started  # workers are started, not waited for: as predict() begins
        engine.close()
        started = time.perf_counter()
        with ChildPeak() as children:
            summary = predict(inputs, model, device=device, workers=count, reference=reference)
        entry = _rate(time.perf_counter() - started, audio_s, n_ok)
        workers_peak_kib = max(workers_peak_kib, children.peak_kib)
        statuses = dict(summary.statuses)
        entry.update(rows=len(summary.rows), statuses=statuses, engine_startup_s=round(startup_s, 4))
        end_to_end[f"workers={count}"] = entry
        rows = summary.rows if rows is None else rows
    to_mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {"backend": backend, "device": device_used, "model": str(model), "audio_s": round(audio_s, 3),
            "files_ok": n_ok, "failed": len(failed), "model_load_s": round(load_s, 4), "stages": stages,
            "failed_files": [{"file": str(paths[index]), "status": reason} for index, reason in sorted(failed.items())],
            "end_to_end": end_to_end,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb, 1),
            "workers_peak_rss_mb": round(workers_peak_kib * to_mb, 1)}, rows


class ChildPeak:
    """The largest peak RSS (KiB) of any child process (a decoding worker) while the block runs, sampled from
    /proc. Not RUSAGE_CHILDREN: measured here, it gave about the parent's size (a spawned child's high-water mark
    starts from the parent's RSS at fork, before exec), 156-365 MB for workers of 38 MB. Without /proc:
    RUSAGE_CHILDREN, as an upper bound."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.peak_kib = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="leak-bench-rss")

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if not Path("/proc/self/task").is_dir():
            self.peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

    def _watch(self) -> None:
        while True:
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    try:
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:  # ended meanwhile
                        continue
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            if self._stop.wait(self.every_s):
                return


def _torch_split(runner, batches, audio_s: float, n_ok: int) -> dict:
    """The torch runner's two halves on the same packed rows: front-end (float64 DFT → mel dB, and a fusion
    model's features) and network."""
    import torch

    from leakhunter.fusion import recording_inputs
    from leakhunter.inference.torch_runner import full_float32, scoring_mels

    def inputs_of(samples):
        if runner.card.branches:
            return recording_inputs(runner.frontend, samples, runner.n_meta)
        return scoring_mels(runner.frontend, runner.card, samples)

    cuda = runner.torch_device.type == "cuda"
    rows = [row for batch in batches for row in batch.samples]
    with full_float32(), torch.inference_mode():
        started = time.perf_counter()
        mels = [inputs_of(torch.from_numpy(row).to(runner.torch_device)) for row in rows]
        if cuda:
            torch.cuda.synchronize()
        frontend_s = time.perf_counter() - started
        started = time.perf_counter()
        for mel in mels:
            runner._score(mel)  # ends on .cpu(): synchronised
        network_s = time.perf_counter() - started
    return {"frontend": _rate(frontend_s, audio_s, n_ok), "network": _rate(network_s, audio_s, n_ok)}


def agreement(results: list[dict], rows: list[list[dict]]) -> dict:
    """File-level agreement of every other result with the first one (the given model on its first device),
    from their end-to-end rows: verdicts that differ, and the largest |Δ mean_leak_prob|."""
    reference = results[0]
    first = {row["file"]: row for row in rows[0] if row["status"] == "ok"}
    pairs = []
    for other, other_rows in zip(results[1:], rows[1:]):
        theirs = {row["file"]: row for row in other_rows if row["status"] == "ok"}
        common = sorted(set(first) & set(theirs))
        pairs.append({"with": f"{other['backend']}/{other['device']}", "files": len(common),
                      "verdict_disagreements": sum(first[f]["verdict"] != theirs[f]["verdict"] for f in common),
                      "max_abs_delta_mean_leak_prob": max(
                          (abs(first[f]["mean_leak_prob"] - theirs[f]["mean_leak_prob"]) for f in common),
                          default=0.0)})
    return {"reference": f"{reference['backend']}/{reference['device']}", "pairs": pairs}
