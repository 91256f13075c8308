"""End-to-end scoring speed of `leak predict` (DESIGN §8, §10; issue 6), ratios measured in one run.

On a folder of 60 synthetic 10-s recordings at 8 kHz (decoded, resampled to 4096 Hz, segmented, scored,
voted, one CSV row each), for both presets, both backends (exported .onnx via onnxruntime, .pth via
torch) and workers = 0 (decoding inline), 1 and 2 (spawned decoding processes; the model stays in the
calling process):

- end to end: audio seconds scored / wall seconds of the whole `predict(...)` call, startup included
  (the model load and the decoding workers' start);
- steady state: the same rate with startup left out, from the times the rows arrive (`on_row`): the audio
  of rows 2..N over the time from the first row to the last;
- the speed-up over a reference pipeline written the obvious way (soundfile + librosa/soxr resampling,
  one `librosa.feature.melspectrogram` + `power_to_db` call per short segment, the torch model on the
  file's segments as one batch, mean per long segment, vote), timed in turns with leakhunter;
- where the time goes (decode + resample, front-end, network, model load, writing rows, the rest) inline;
- the network's FLOPs per audio-second and the fraction of this CPU's float32 matmul FLOP/s the scoring
  achieves (the matmul is timed in turns with each measurement, so both see the same machine load);
- what one busy neighbouring process does to each backend (this machine is shared).

Models are trained for 2 epochs on a small synthetic dataset: their quality does not matter here, but
their scores feed the reference check (leakhunter and the reference must agree on every file).
"""

import functools
import subprocess
import sys
import time
import timeit
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch
from timing import best_of_interleaved
from torch.utils.flop_counter import FlopCounterMode

from leakhunter.audio import load_audio, open_audio
from leakhunter.card import ModelCard, input_shape
from leakhunter.export import export_model
from leakhunter.inference.engine import ScoringEngine
from leakhunter.inference.outputs import RowWriter
from leakhunter.inference.predict import predict
from leakhunter.inference.torch_runner import scoring_mels
from leakhunter.models import HalveRows, build_model
from leakhunter.segments import plan_segments
from leakhunter.synth import synth_corpus
from leakhunter.training.config import make_config
from leakhunter.training.dataset import build_dataset
from leakhunter.training.trainer import train

PRESETS = ("short", "long")
BACKENDS = ("onnx", "torch")
WORKERS = (0, 1, 2)
N_FILES, SECONDS, RATE_IN = 60, 10.0, 8000
MATMUL_N = 2048
# (preset, backend, workers) -> rates measured by test_predict_realtime; preset -> test_stage_breakdown_inline's.
RESULTS: dict[tuple[str, str, int], dict] = {}
STAGES: dict[str, dict] = {}


@functools.cache
def matmul_operands():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(MATMUL_N, MATMUL_N, generator=generator),
            torch.randn(MATMUL_N, MATMUL_N, generator=generator))


def matmul():
    torch.matmul(*matmul_operands())


def matmul_flops(seconds: float) -> float:
    return 2 * MATMUL_N ** 3 / seconds


def matmul_flops_now(repeat: int = 2) -> float:
    """float32 [n, n] @ [n, n] FLOP/s now (the fastest of `repeat`, after one warm-up)."""
    matmul()
    return matmul_flops(min(timeit.repeat(matmul, number=1, repeat=repeat)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """N_FILES recordings of 10 s at 8 kHz, every class alike (12 each), in recording order."""
    corpus = synth_corpus(tmp_path_factory.mktemp("predict_bench") / "corpus", files_per_class=N_FILES // 5,
                          duration_s=SECONDS, sample_rate=RATE_IN, seed=3)
    return sorted(corpus.files, key=lambda path: path.name.split("~")[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """preset -> (best.pth, best.onnx): a multiclass model trained 2 epochs on a small synthetic dataset
    (its own corpus, not the scored files), exported with the default (waveform-input fp32) graph."""
    root = tmp_path_factory.mktemp("predict_bench_models")
    corpus = synth_corpus(root / "corpus", files_per_class=16, duration_s=4.0, sample_rate=RATE_IN, seed=11)
    made = {}
    for name in PRESETS:
        data = build_dataset(corpus.root, root / f"{name}.h5", preset_name=name, val=0.2, test=0.25).output
        config = make_config({"data": str(data), "out": str(root / f"run-{name}"), "mode": "multiclass",
                              "epochs": 2, "batch_size": 256, "device": "cpu", "seed": 0})
        checkpoint = train(config, log=lambda text: None).run_dir / "best.pth"
        made[name] = checkpoint, Path(export_model(checkpoint).output)
    return made


def model_path(models, preset_name, backend):
    checkpoint, onnx = models[preset_name]
    return onnx if backend == "onnx" else checkpoint


def timed_predict(paths, model, workers, out=None):
    """One `predict` run: total wall time (everything a user waits for) and when each row arrived."""
    arrivals = []
    started = time.perf_counter()
    summary = predict(paths, model, out=out, device="cpu", workers=workers,
                      on_row=lambda row, done, total: arrivals.append((time.perf_counter(), row)))
    total_s = time.perf_counter() - started
    assert summary.statuses == {"ok": len(paths)}, summary.statuses
    steady_audio = sum(float(row["duration_s"]) for _, row in arrivals[1:])
    return {"total_s": total_s, "audio_s": summary.audio_s, "first_row_s": arrivals[0][0] - started,
            "steady_rt": steady_audio / (arrivals[-1][0] - arrivals[0][0])}


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset_name", PRESETS)
def test_predict_realtime(benchmark, report_ratio, files, models, tmp_path, preset_name, backend, workers):
    """`predict` over the folder with --out CSV, the fastest of 3 runs inline, 2 with workers (each run with
    its own startup); the matmul is timed just before each run."""
    model = model_path(models, preset_name, backend)
    runs, matmuls = [], []

    def run():
        runs.append(timed_predict(files, model, workers, out=tmp_path / f"scores-{len(runs)}.csv"))

    benchmark.pedantic(run, setup=lambda: matmuls.append(matmul_flops_now()), rounds=2 if workers else 3,
                       iterations=1)
    best = min(runs, key=lambda r: r["total_s"])
    end_to_end = best["audio_s"] / best["total_s"]
    # Startup: the wall time the steady rate does not account for (model loads, worker spawn and imports).
    startup_s = best["total_s"] - best["audio_s"] / best["steady_rt"]
    RESULTS[preset_name, backend, workers] = {"e2e_rt": end_to_end, "steady_rt": best["steady_rt"],
                                             "startup_s": startup_s, "matmul_flops": max(matmuls)}
    benchmark.extra_info.update(realtime=end_to_end, steady_realtime=best["steady_rt"], startup_s=startup_s)
    inline = RESULTS.get((preset_name, backend, 0))
    note = ""
    if workers and inline:  # the audio from which these workers beat an inline run, by the measured rates
        gain = 1 / inline["steady_rt"] - 1 / best["steady_rt"]
        note = (f"; beats inline from {(startup_s - inline['startup_s']) / gain / 3600:5.2f} h of audio" if gain > 0
                else "; never beats inline")
    report_ratio(f"predict {preset_name}/{backend}, workers={workers}",
                 f"{end_to_end:6.0f}x real time end to end, {best['steady_rt']:6.0f}x steady "
                 f"(startup ~{startup_s:4.2f} s; first row at {best['first_row_s']:4.2f} s){note}")


@pytest.mark.parametrize("preset_name", PRESETS)
def test_stage_breakdown_inline(benchmark, report_ratio, files, models, tmp_path, preset_name):
    """Where an inline (workers=0) run spends its time: decode + resample (open_audio iterated alone),
    the scoring call on ready samples (onnx: front-end and network in one graph; torch: each timed alone),
    model load, and the rest (long-segment means, vote, rows, glue) = the whole predict (no --out) minus
    those; and what --out adds: predict with --out minus without, and writing the run's rows alone with
    predict's RowWriter (each row flushed and fsynced)."""
    checkpoint, onnx = models[preset_name]
    onnx_scorer = ScoringEngine(onnx, device="cpu", workers=0)
    torch_scorer = ScoringEngine(checkpoint, device="cpu", workers=0)
    card = onnx_scorer.card
    long_samples = card.segmentation.long_samples

    def decode():
        for path in files:
            with open_audio(path, card.frontend.sample_rate, min_samples=long_samples) as stream:
                for _ in stream:
                    pass

    benchmark.pedantic(decode, rounds=1, iterations=1)
    samples = [load_audio(path, card.frontend.sample_rate, min_samples=long_samples).samples for path in files]
    torch_runner = torch_scorer.runner
    with torch.inference_mode():
        mels = [scoring_mels(torch_runner.frontend, card, torch.from_numpy(s)) for s in samples]

    def onnx_graph():
        for s in samples:
            onnx_scorer.runner.score_waveform(s)

    def torch_frontend():
        with torch.inference_mode():
            for s in samples:
                scoring_mels(torch_runner.frontend, card, torch.from_numpy(s))

    def torch_network():
        for mel in mels:
            torch_runner._score(mel)

    rows = predict(files, onnx, device="cpu", workers=0).rows

    def write_rows():  # what --out adds: predict's RowWriter (each row flushed and fsynced)
        writer = RowWriter(tmp_path / "scores.csv", onnx_scorer.scorer.columns, append=False)
        for row in rows:
            writer.write(row)
        writer.close()

    sides = [decode, onnx_graph, torch_frontend, torch_network,
             lambda: ScoringEngine(onnx, device="cpu", workers=0),
             lambda: ScoringEngine(checkpoint, device="cpu", workers=0),
             lambda: predict(files, onnx, device="cpu", workers=0),
             lambda: predict(files, checkpoint, device="cpu", workers=0), write_rows,
             lambda: predict(files, onnx, out=tmp_path / "scores-run.csv", device="cpu", workers=0),
             lambda: matmuls.append(matmul_flops_now())]  # timed in turns too; its own rate is kept
    matmuls = []
    times = best_of_interleaved(sides, 3)
    decode_s = min(benchmark.stats.stats.min, times[0])
    graph_s, frontend_s, network_s, load_onnx_s, load_torch_s, onnx_total, torch_total, write_s, onnx_out = times[1:-1]
    audio_s = N_FILES * SECONDS

    def share(part, whole):
        return f"{part:5.2f} s {100 * part / whole:3.0f}%"

    onnx_rest = onnx_total - decode_s - graph_s - load_onnx_s
    torch_rest = torch_total - decode_s - frontend_s - network_s - load_torch_s
    STAGES[preset_name] = {"onnx_graph_rt": audio_s / graph_s, "torch_network_rt": audio_s / network_s,
                           "matmul_flops": max(matmuls)}
    benchmark.extra_info.update(decode_s=decode_s, onnx_graph_s=graph_s, torch_frontend_s=frontend_s,
                                torch_network_s=network_s, onnx_predict_s=onnx_total, torch_predict_s=torch_total,
                                csv_rows_s=write_s, onnx_predict_out_s=onnx_out)
    report_ratio(f"stages {preset_name}/onnx inline ({onnx_total:.2f} s)",
                 f"decode+resample {share(decode_s, onnx_total)} ({audio_s / decode_s:5.0f}x rt), "
                 f"graph (front-end+network) {share(graph_s, onnx_total)} ({audio_s / graph_s:5.0f}x rt), "
                 f"load {share(load_onnx_s, onnx_total)}, rest {share(onnx_rest, onnx_total)}; "
                 f"--out CSV adds {onnx_out - onnx_total:5.2f} s to the run = {100 * (onnx_out / onnx_total - 1):3.0f}%"
                 f" (writing the rows alone {write_s:4.2f} s, {1000 * write_s / N_FILES:3.1f} ms/row)")
    report_ratio(f"stages {preset_name}/torch inline ({torch_total:.2f} s)",
                 f"decode+resample {share(decode_s, torch_total)}, front-end {share(frontend_s, torch_total)} "
                 f"({audio_s / frontend_s:5.0f}x rt), network {share(network_s, torch_total)} "
                 f"({audio_s / network_s:5.0f}x rt), load {share(load_torch_s, torch_total)}, "
                 f"rest {share(torch_rest, torch_total)}")


def reference_log_mel(y, frontend):
    """One short segment's features the obvious way: librosa melspectrogram + power_to_db."""
    mel = librosa.feature.melspectrogram(y=y, sr=frontend.sample_rate, n_fft=frontend.n_fft,
                                         hop_length=frontend.hop_length, win_length=frontend.win_length,
                                         n_mels=frontend.n_mels, fmin=frontend.fmin, fmax=frontend.fmax,
                                         center=False, power=2.0)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


class ReferencePipeline:
    """A per-window scoring script as one would write it without leakhunter (no frame reuse, no streaming).
    Each distinct short segment gets one librosa call; the `long` preset's inputs put a long segment's
    short-segment mels side by side."""

    def __init__(self, checkpoint):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.card = ModelCard.from_json(payload["card"])
        self.model = build_model(self.card)
        self.model.load_state_dict(payload["model"])
        self.model.eval()
        self.last: list[dict] = []

    def score_file(self, path):
        card = self.card
        fe, seg = card.frontend, card.segmentation
        y, rate = soundfile.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if rate != fe.sample_rate:
            y = librosa.resample(y, orig_sr=rate, target_sr=fe.sample_rate)  # soxr_hq, librosa's default
        long_starts = range(0, len(y) - seg.long_samples + 1, seg.long_hop)
        n_short = (len(long_starts) - 1) * (seg.long_hop // seg.short_hop) + seg.shorts_per_long()
        shorts = np.stack([reference_log_mel(y[i * seg.short_hop: i * seg.short_hop + seg.short_samples], fe)
                           for i in range(n_short)])  # [n_short, n_mels, frames]
        per_long = seg.shorts_per_long()
        first = [start // seg.short_hop for start in long_starts]
        if seg.unit == "short":
            inputs = shorts[:, None]
        else:
            inputs = np.stack([np.concatenate(list(shorts[f: f + per_long]), axis=-1) for f in first])[:, None]
        with torch.inference_mode():
            logits, aux = self.model(torch.from_numpy(np.ascontiguousarray(inputs)))
            probs = torch.softmax(logits, dim=-1)
            leak = probs[:, card.leak_idx]
            if card.leak_prob == "mean_softmax_aux":
                leak = 0.5 * (leak + torch.sigmoid(aux))
        leak = leak.numpy().astype(np.float64)
        long_prob = np.array([leak[f: f + per_long].mean() for f in first]) if seg.unit == "short" else leak
        over = np.mean(long_prob >= card.voting.threshold)
        return {"verdict": "LEAK" if over >= card.voting.vote_fraction else "NOLEAK",
                "mean_leak_prob": float(long_prob.mean()), "n_long": len(long_prob)}

    def __call__(self, paths):
        self.last = [self.score_file(path) for path in paths]


@pytest.mark.parametrize("preset_name", PRESETS)
def test_speedup_over_reference_pipeline(benchmark, report_ratio, files, models, preset_name):
    """The reference and leakhunter (inline onnx, inline torch, and the configuration with workers that was
    fastest above) on the same files without --out, timed in turns; the best of them is named. The
    reference must give leakhunter's verdicts."""
    checkpoint, onnx = models[preset_name]
    reference = ReferencePipeline(checkpoint)
    torch_rows = []
    benchmark.pedantic(predict, args=(files, onnx), kwargs={"device": "cpu", "workers": 0}, rounds=1, iterations=1)
    measured = {key[1:]: value for key, value in RESULTS.items() if key[0] == preset_name}
    sides = {"reference": lambda: reference(files),
             "onnx inline": lambda: predict(files, onnx, device="cpu", workers=0),
             "torch inline": lambda: torch_rows.append(predict(files, checkpoint, device="cpu", workers=0).rows)}
    with_workers = [key for key in measured if key[1]]
    if with_workers:  # the fastest configuration with worker processes above, timed here in turns too
        backend, workers = max(with_workers, key=lambda key: measured[key]["e2e_rt"])
        sides[f"{backend} workers={workers}"] = lambda: predict(files, model_path(models, preset_name, backend),
                                                                device="cpu", workers=workers)
    times = dict(zip(sides, best_of_interleaved(list(sides.values()), 2)))
    times["onnx inline"] = min(times["onnx inline"], benchmark.stats.stats.min)
    best_name = min((name for name in times if name != "reference"), key=times.get)
    times[f"best: {best_name}"] = times[best_name]

    theirs, ours = reference.last, torch_rows[-1]
    delta = max(abs(a["mean_leak_prob"] - float(b["mean_leak_prob"])) for a, b in zip(theirs, ours))
    agree = sum(a["verdict"] == b["verdict"] for a, b in zip(theirs, ours))
    assert [a["n_long"] for a in theirs] == [int(b["n_long"]) for b in ours]
    assert delta < 1e-2 and agree == N_FILES, (delta, agree)  # the README says: identical verdicts

    audio_s = N_FILES * SECONDS
    speedups = {name: times["reference"] / times[name] for name in times if name != "reference"}
    benchmark.extra_info.update(reference_realtime=audio_s / times["reference"], speedups=speedups,
                                max_abs_mean_leak_prob_delta=delta)
    report_ratio(f"reference pipeline {preset_name} (librosa per segment)",
                 f"{audio_s / times['reference']:6.0f}x real time; verdicts agree {agree}/{N_FILES}, "
                 f"max |d mean_leak_prob| {delta:.1e}")
    for name, speedup in speedups.items():
        report_ratio(f"  leakhunter {preset_name} {name}",
                     f"{audio_s / times[name]:6.0f}x real time = {speedup:5.1f}x the reference")
    if measured:  # a folder large enough that startup no longer counts: the best steady rate measured above
        steady = max(measured, key=lambda key: measured[key]["steady_rt"])
        rate = measured[steady]["steady_rt"]
        report_ratio(f"  leakhunter {preset_name} best steady: {steady[0]} workers={steady[1]}",
                     f"{rate:6.0f}x real time = {rate * times['reference'] / audio_s:5.1f}x the reference "
                     f"(steady rate from test_predict_realtime, startup excluded)")


def test_busy_neighbour(benchmark, report_ratio, files, models):
    """Inline scoring (short preset, 12 files) with and without one extra busy process (a Python spin loop
    started and stopped here): torch with its default intra-op threads, torch with one, onnxruntime."""
    checkpoint, onnx = models["short"]
    subset = files[:12]
    default_threads = torch.get_num_threads()

    def torch_with(threads):
        def run():
            torch.set_num_threads(threads)
            try:
                predict(subset, checkpoint, device="cpu", workers=0)
            finally:
                torch.set_num_threads(default_threads)
        return run

    sides = {f"torch {default_threads} threads": torch_with(default_threads), "torch 1 thread": torch_with(1),
             "onnx": lambda: predict(subset, onnx, device="cpu", workers=0)}
    benchmark.pedantic(sides["onnx"], rounds=1, iterations=1)
    alone = best_of_interleaved(list(sides.values()), 2)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = best_of_interleaved(list(sides.values()), 2)
    finally:
        neighbour.kill()
        neighbour.wait()
    audio_s = len(subset) * SECONDS
    for name, quiet_s, busy_s in zip(sides, alone, busy):
        report_ratio(f"busy neighbour: {name}",
                     f"{audio_s / quiet_s:6.0f}x real time alone, {audio_s / busy_s:6.0f}x beside one spinning "
                     f"process = {quiet_s / busy_s:5.2f}x")


CLI_RUN = """import sys, time
started = time.perf_counter()
from leakhunter.cli import app
try:
    app(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(f"@@ {time.perf_counter() - started} {'torch' in sys.modules} {code}")
"""


def fresh_process(arguments):
    """Wall seconds of a fresh interpreter running `arguments` (after `python`), and its stdout."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_fresh_process(benchmark, report_ratio, files, models, tmp_path, backend):
    """`leak predict FOLDER --workers 0 --out CSV` in a fresh process (short preset), as a user runs it:
    interpreter start and imports count. Compared with the same inline predict in this (warm) process,
    and with `import torch` alone in a fresh interpreter; says whether the run imported torch."""
    model = model_path(models, "short", backend)
    folder = files[0].parent.parent
    arguments = ["-c", CLI_RUN, "predict", str(folder), "--model", str(model), "--workers", "0", "--device", "cpu",
                 "--out", str(tmp_path / "scores.csv")]
    runs = []
    benchmark.pedantic(lambda: runs.append(fresh_process(arguments)), rounds=1, iterations=1)
    wall_s, stdout = runs[0]
    marker = next(line for line in stdout.splitlines() if line.startswith("@@ "))
    _, inside_s, imported_torch, code = marker.split()
    assert code == "0", stdout[-2000:]
    torch_import_s, _ = fresh_process(["-c", "import torch"])
    warm_s = timeit.timeit(lambda: predict(files, model, device="cpu", workers=0), number=1)
    audio_s = N_FILES * SECONDS
    report_ratio(f"leak predict, fresh process, short/{backend} inline",
                 f"{wall_s:5.2f} s = {audio_s / wall_s:5.0f}x real time (interpreter+imports+scoring; in a warm "
                 f"process {warm_s:4.2f} s = {audio_s / warm_s:5.0f}x); imports torch: {imported_torch} "
                 f"(`import torch` alone {torch_import_s:4.2f} s)")
    benchmark.extra_info.update(realtime=audio_s / wall_s, imports_torch=imported_torch == "True",
                                inside_s=float(inside_s))


def analytic_flops(model, shape):
    """2 x multiply-adds of LeakCNN's convolutions and linear layers for one input [1, n_mels, frames]
    (a 3x3 convolution on a width-1 map meets data in its middle column only, and runs as such)."""
    _, rows, width = shape
    macs = 0
    for layer in model.features:
        if isinstance(layer, torch.nn.Conv2d):
            macs += rows * width * layer.out_channels * layer.in_channels * 3 * (1 if width == 1 else 3)
        elif isinstance(layer, HalveRows):
            rows //= 2
    macs += sum(layer.in_features * layer.out_features for layer in (model.embed[1], model.head, model.aux)
                if layer is not None)
    return 2 * macs


def test_flops_and_matmul_fraction(benchmark, report_ratio, models):
    """FLOPs of the network per audio-second (FlopCounterMode, checked against the count by hand), this
    CPU's float32 matmul FLOP/s, and the fraction of it each configuration measured above achieved (against
    the matmul timed in turns with that configuration)."""
    benchmark.pedantic(matmul, rounds=5, iterations=1, warmup_rounds=1)
    report_ratio(f"float32 matmul {MATMUL_N}^2 x {MATMUL_N}^2 ({torch.get_num_threads()} threads)",
                 f"{matmul_flops(benchmark.stats.stats.min) / 1e9:6.1f} GFLOP/s now; during the predict runs "
                 + (", ".join(f"{r['matmul_flops'] / 1e9:.0f}" for r in RESULTS.values()) or "(not run)"))
    for preset_name in PRESETS:
        payload = torch.load(models[preset_name][0], map_location="cpu", weights_only=True)
        card = ModelCard.from_json(payload["card"])
        frontend, segmentation = card.frontend, card.segmentation
        model = build_model(card).eval()
        model.load_state_dict(payload["model"])
        shape = input_shape(frontend, segmentation)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros((1,) + shape))
        per_input = counter.get_total_flops()
        assert per_input == analytic_flops(model, shape), (per_input, analytic_flops(model, shape))
        plan = plan_segments(int(SECONDS * frontend.sample_rate), segmentation)
        n_inputs = plan.n_short if segmentation.unit == "short" else plan.n_long
        per_audio_s = per_input * n_inputs / SECONDS
        report_ratio(f"network FLOPs, {preset_name} preset",
                     f"{per_input / 1e6:6.2f} MFLOP per input [{', '.join(map(str, shape))}] x "
                     f"{n_inputs / SECONDS:4.1f} inputs/s = {per_audio_s / 1e6:6.1f} MFLOP per audio-second")
        for (name, backend, workers), result in RESULTS.items():
            if name != preset_name:
                continue
            achieved, steady = per_audio_s * result["e2e_rt"], per_audio_s * result["steady_rt"]
            report_ratio(f"  {preset_name}/{backend} workers={workers}",
                         f"{achieved / 1e9:6.2f} GFLOP/s end to end = {100 * achieved / result['matmul_flops']:5.1f}%"
                         f" of matmul ({result['matmul_flops'] / 1e9:.0f} GFLOP/s), "
                         f"steady {100 * steady / result['matmul_flops']:5.1f}%")
        stage = STAGES.get(preset_name)
        if stage:
            for label, key in (("onnx graph alone", "onnx_graph_rt"), ("torch network alone", "torch_network_rt")):
                achieved = per_audio_s * stage[key]
                report_ratio(f"  {preset_name}/{label}",
                             f"{achieved / 1e9:6.2f} GFLOP/s = {100 * achieved / stage['matmul_flops']:5.1f}% of "
                             f"matmul ({stage['matmul_flops'] / 1e9:.0f} GFLOP/s)")
