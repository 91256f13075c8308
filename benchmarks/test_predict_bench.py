"""End-to-end scoring speed of `leak predict` (DESIGN §8, §10; issue 6), ratios measured in one run.

On a folder of synthetic 10-s recordings at 8 kHz (decoded, resampled to 4096 Hz, segmented, scored,
voted), for both presets, both backends (exported .onnx via onnxruntime, .pth via torch) and
workers = 0 (inline), 1 and 2 (spawned worker processes, each loading the model):

- end to end: audio seconds scored / wall seconds of the whole `predict(...)` call, startup included
  (model load in the main process, and in every spawned worker);
- steady state: the same rate with startup left out, from the times the rows arrive (`on_row`): the audio
  of rows 2..N over the time from the first row to the last;
- the speed-up over a reference pipeline written the obvious way (soundfile + librosa/soxr resampling,
  one `librosa.feature.melspectrogram` + `power_to_db` call per short segment, the torch model on the
  file's segments as one batch, mean per long segment, vote), timed in turns with leakhunter;
- where the time goes (decode + resample, front-end, network, the rest) for the inline runs;
- the model's FLOPs per audio-second and the fraction of this CPU's float32 matmul FLOP/s the scoring
  achieves.

Models are trained for 2 epochs on a small synthetic dataset: their quality does not matter here, but
their scores feed the reference check (leakhunter and the reference must agree on every file).
"""

import time
import timeit
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.flop_counter import FlopCounterMode

from leakhunter.audio import load_audio, open_audio
from leakhunter.card import ModelCard, input_shape
from leakhunter.export import export_model
from leakhunter.inference.predict import FileScorer, predict
from leakhunter.inference.torch_runner import scoring_mels
from leakhunter.models import HalveRows, build_model
from leakhunter.segments import plan_segments
from leakhunter.training.config import make_config
from leakhunter.training.dataset import build_dataset
from leakhunter.training.synth import synth_corpus
from leakhunter.training.trainer import train

PRESETS = ("short", "long")
BACKENDS = ("onnx", "torch")
WORKERS = (0, 1, 2)
N_FILES, SECONDS, RATE_IN = 60, 10.0, 8000
MATMUL_N = 2048
# (preset, backend, workers) -> the measured rates, for the summary tests further down this file.
RESULTS: dict[tuple[str, str, int], dict] = {}
STAGES: dict[str, dict] = {}


def best_of_interleaved(functions, repeat):
    """The fastest of `repeat` runs of each function, taken in turns (A, B, A, B ...) so that a change in
    the machine's load during the measurement hits every side alike."""
    times = [[] for _ in functions]
    for _ in range(repeat):
        for function, taken in zip(functions, times):
            taken.append(timeit.timeit(function, number=1))
    return [min(taken) for taken in times]


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
    first_s = arrivals[0][0] - started
    steady_audio = sum(float(row["duration_s"]) for _, row in arrivals[1:])
    return {"total_s": total_s, "audio_s": summary.audio_s, "first_row_s": first_s,
            "steady_rt": steady_audio / (arrivals[-1][0] - arrivals[0][0]), "rows": summary.rows}


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset_name", PRESETS)
def test_predict_realtime(benchmark, report_ratio, files, models, tmp_path, preset_name, backend, workers):
    """`predict` over the folder, the faster of two runs (each with its own startup)."""
    model = model_path(models, preset_name, backend)
    runs = []

    def run():
        runs.append(timed_predict(files, model, workers, out=tmp_path / f"scores-{len(runs)}.csv"))

    benchmark.pedantic(run, rounds=2, iterations=1)
    best = min(runs, key=lambda r: r["total_s"])
    end_to_end = best["audio_s"] / best["total_s"]
    # Startup: the wall time the steady rate does not account for (model loads, worker spawn and imports).
    startup_s = best["total_s"] - best["audio_s"] / best["steady_rt"]
    RESULTS[preset_name, backend, workers] = {"e2e_rt": end_to_end, "steady_rt": best["steady_rt"],
                                             "startup_s": startup_s, "total_s": best["total_s"]}
    benchmark.extra_info.update(realtime=end_to_end, steady_realtime=best["steady_rt"], startup_s=startup_s)
    inline = RESULTS.get((preset_name, backend, 0))
    note = ""
    if workers and inline:  # the audio from which these workers beat an inline run, by both measured rates
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
    model load, and the rest (long-segment means, vote, rows) = the whole predict (no --out) minus those;
    writing the rows to a CSV (each row flushed and fsynced) = predict with --out minus predict without."""
    checkpoint, onnx = models[preset_name]
    onnx_scorer, torch_scorer = FileScorer(onnx, device="cpu"), FileScorer(checkpoint, device="cpu")
    card = onnx_scorer.card
    long_samples = card.segmentation.long_samples

    def decode():
        for path in files:
            with open_audio(path, card.frontend.sample_rate, min_samples=long_samples) as stream:
                for _ in stream:
                    pass

    benchmark.pedantic(decode, rounds=1, iterations=1)
    decode_s = benchmark.stats.stats.min
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

    def load_onnx():
        FileScorer(onnx, device="cpu")

    def load_torch():
        FileScorer(checkpoint, device="cpu")

    sides = [decode, onnx_graph, torch_frontend, torch_network, load_onnx, load_torch,
             lambda: predict(files, onnx, device="cpu", workers=0),
             lambda: predict(files, checkpoint, device="cpu", workers=0),
             lambda: predict(files, onnx, out=tmp_path / "scores.csv", device="cpu", workers=0)]
    times = best_of_interleaved(sides, 2)
    decode_s = min(decode_s, times[0])
    graph_s, frontend_s, network_s, load_onnx_s, load_torch_s, onnx_total, torch_total, onnx_out = times[1:]
    write_s = onnx_out - onnx_total
    audio_s = N_FILES * SECONDS

    def share(part, whole):
        return f"{part:5.2f} s {100 * part / whole:3.0f}%"

    onnx_rest = onnx_total - decode_s - graph_s - load_onnx_s
    torch_rest = torch_total - decode_s - frontend_s - network_s - load_torch_s
    STAGES[preset_name] = {"onnx_graph_rt": audio_s / graph_s, "torch_network_rt": audio_s / network_s}
    benchmark.extra_info.update(decode_s=decode_s, onnx_graph_s=graph_s, torch_frontend_s=frontend_s,
                                torch_network_s=network_s, onnx_predict_s=onnx_total, torch_predict_s=torch_total,
                                csv_rows_s=write_s)
    report_ratio(f"stages {preset_name}/onnx inline ({onnx_total:.2f} s)",
                 f"decode+resample {share(decode_s, onnx_total)} ({audio_s / decode_s:5.0f}x rt), "
                 f"graph (front-end+network) {share(graph_s, onnx_total)} ({audio_s / graph_s:5.0f}x rt), "
                 f"load {share(load_onnx_s, onnx_total)}, rest {share(onnx_rest, onnx_total)}; "
                 f"--out CSV adds {write_s:5.2f} s ({1000 * write_s / N_FILES:4.1f} ms/row, "
                 f"{100 * write_s / onnx_out:3.0f}% of that run)")
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
    """A per-window scoring script as one would write it without leakhunter (no frame reuse, no streaming)."""

    def __init__(self, checkpoint):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.card = ModelCard.from_json(payload["card"])
        self.model = build_model(self.card)
        self.model.load_state_dict(payload["model"])
        self.model.eval()

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
                           for i in range(n_short)])  # [n_short, n_mels, frames]: one call per short segment
        per_long = seg.shorts_per_long()
        first = [start // seg.short_hop for start in long_starts]
        if seg.unit == "short":
            inputs = shorts[:, None]
        else:  # one [n_mels, shorts_per_long * frames] matrix per long segment, short segments side by side
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
        return [self.score_file(path) for path in paths]


@pytest.mark.parametrize("preset_name", PRESETS)
def test_speedup_over_reference_pipeline(benchmark, report_ratio, files, models, preset_name):
    """The reference and leakhunter (inline onnx, inline torch, and the best configuration measured above)
    on the same files, timed in turns; the reference must give leakhunter's verdicts."""
    checkpoint, onnx = models[preset_name]
    reference = ReferencePipeline(checkpoint)
    theirs = benchmark.pedantic(reference, args=(files,), rounds=1, iterations=1)
    ours = predict(files, checkpoint, device="cpu", workers=0).rows
    delta = max(abs(a["mean_leak_prob"] - float(b["mean_leak_prob"])) for a, b in zip(theirs, ours))
    agree = sum(a["verdict"] == b["verdict"] for a, b in zip(theirs, ours))
    assert [a["n_long"] for a in theirs] == [int(b["n_long"]) for b in ours]
    assert delta < 1e-2 and agree >= N_FILES - 1, (delta, agree)

    measured = {key[1:]: value for key, value in RESULTS.items() if key[0] == preset_name}
    best = max(measured, key=lambda key: measured[key]["e2e_rt"]) if measured else ("onnx", 0)
    sides = {"reference": lambda: reference(files),
             "onnx inline": lambda: predict(files, onnx, device="cpu", workers=0),
             "torch inline": lambda: predict(files, checkpoint, device="cpu", workers=0)}
    best_name = f"best: {best[0]} workers={best[1]}"
    if best[1] != 0:
        sides[best_name] = lambda: predict(files, model_path(models, preset_name, best[0]), device="cpu",
                                           workers=best[1])
    else:
        best_name = f"best: {best[0]} inline"
    times = dict(zip(sides, best_of_interleaved(list(sides.values()), 2)))
    times["reference"] = min(times["reference"], benchmark.stats.stats.min)
    if best_name not in times:
        times[best_name] = times[f"{best[0]} inline"]
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
                     f"(steady rate from test_predict_realtime; startup excluded)")


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
    """FLOPs of the network per audio-second (FlopCounterMode, checked against the count by hand), the
    float32 matmul FLOP/s of this CPU, and the fraction of it each measured configuration achieves."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    benchmark.pedantic(torch.matmul, args=(a, b), rounds=5, iterations=1, warmup_rounds=1)
    matmul_flops = 2 * MATMUL_N ** 3 / benchmark.stats.stats.min
    report_ratio(f"float32 matmul {MATMUL_N}^2 x {MATMUL_N}^2 ({torch.get_num_threads()} threads)",
                 f"{matmul_flops / 1e9:6.1f} GFLOP/s")
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
            achieved = per_audio_s * result["e2e_rt"]
            steady = per_audio_s * result["steady_rt"]
            report_ratio(f"  {preset_name}/{backend} workers={workers}: FLOP/s",
                         f"{achieved / 1e9:6.2f} GFLOP/s = {100 * achieved / matmul_flops:5.2f}% of matmul end to end, "
                         f"{100 * steady / matmul_flops:5.2f}% steady")
        stage = STAGES.get(preset_name)
        if stage:
            for label, key in (("onnx graph alone", "onnx_graph_rt"), ("torch network alone", "torch_network_rt")):
                achieved = per_audio_s * stage[key]
                report_ratio(f"  {preset_name}/{label}: FLOP/s",
                             f"{achieved / 1e9:6.2f} GFLOP/s = {100 * achieved / matmul_flops:5.2f}% of matmul")
