"""The Python side of benchmarks/gpu_check.sh: everything on the GPU that a CPU-only machine cannot check.

1. environment: torch, CUDA, devices, onnxruntime and its providers (onnxruntime-gpu present or not);
2. a model: a small synthetic corpus → `leak data build` → `leak train --epochs 2` → `leak export`;
3. golden-set parity against torch fp32 on CPU: torch fp32 and AMP on CUDA, onnxruntime's CUDA provider
   (with the options it really applied), AMP vs fp32 on one device (`amp_parity`): max |ΔP(LEAK)| and verdict
   flips, which must be 0;
4. the front-end's precision on the GPU (float64 and float32 DFT against float64 on CPU, in dB) and its cost;
5. DDP with 2 ranks (torchrun, 1 epoch) when there are 2 GPUs;
6. × real time of `leak predict` on CPU and on GPU, same files, both backends, and whether verdicts agree.

Settings (environment): GPU_CHECK_ALLOW_CPU=1 runs without CUDA (CUDA parts print "no CUDA: skipped"),
GPU_CHECK_FILES (200) 10-s files for the throughput table, GPU_CHECK_WORKERS (the CLI's default) for
`leak predict --workers`, GPU_CHECK_WORKDIR (a new temporary folder) for everything written, GPU_CHECK_MODEL
(a trained best.pth with its exported best.onnx beside it, and GPU_CHECK_DATA its dataset file) to check that
model instead of building one (the tests do, to save the training).
Exit status: 0 passed, 1 a check failed, 2 no CUDA (without GPU_CHECK_ALLOW_CPU), 3 incomplete (CUDA present
but onnxruntime-gpu missing, so the onnxruntime CUDA rows could not run).
"""

from __future__ import annotations

import csv
import importlib.metadata
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SKIPPED_NO_CUDA = "no CUDA: skipped"
LEAK = [sys.executable, "-m", "leakhunter.cli"]


class Checks:
    """What passed, failed or was skipped; decides the exit status."""

    def __init__(self):
        self.failures: list[str] = []
        self.incomplete: list[str] = []

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAILED: {what}")


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  " + " | ".join(str(cell).ljust(w) for cell, w in zip(line, widths)), flush=True)


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(checks: Checks) -> tuple[bool, bool]:
    """Prints the report; returns (torch has CUDA, onnxruntime has a CUDA provider)."""
    import onnxruntime
    import torch

    import leakhunter

    section("environment")
    cuda = torch.cuda.is_available()
    print(f"python {sys.version.split()[0]} ({sys.executable}); leakhunter {leakhunter.__version__}")
    print(f"torch {torch.__version__} (built for CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    print(f"torch.cuda.is_available(): {cuda}; device_count: {torch.cuda.device_count() if cuda else 0}")
    for index in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
              f"{props.major}.{props.minor}, bf16 {torch.cuda.is_bf16_supported()}")
    providers = onnxruntime.get_available_providers()
    packages = {name: installed(name) for name in ("onnxruntime", "onnxruntime-gpu")}
    found = ", ".join(f"{name} {version}" for name, version in packages.items() if version) or "none found"
    print(f"onnxruntime {onnxruntime.__version__} (packages: {found}); providers: {', '.join(providers)}")
    ort_cuda = "CUDAExecutionProvider" in providers
    if packages["onnxruntime"] and packages["onnxruntime-gpu"]:
        print("  note: onnxruntime and onnxruntime-gpu are both installed; they share one folder and the last "
              "installed wins (install only onnxruntime-gpu on a GPU box)")
    if not ort_cuda:
        print("  onnxruntime has no CUDAExecutionProvider: onnxruntime-gpu (the `gpu` extra: pip uninstall -y "
              "onnxruntime && pip install '.[gpu]') is not installed in this environment, so `leak predict --device cuda` on an .onnx "
              "refuses to run and the onnxruntime CUDA rows below are skipped")
        if cuda:
            checks.incomplete.append("onnxruntime-gpu missing: the onnxruntime CUDA execution provider was not checked")
    return cuda, ort_cuda


def run_cli(args: list[str], what: str, env: dict | None = None) -> tuple[float, str]:
    """Runs a leak command (or any command), prints its wall time; raises with its output when it fails."""
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    print(f"  {what}: {wall:.1f} s", flush=True)
    return wall, result.stdout + result.stderr


def build_model(work: Path) -> tuple[Path, Path, Path]:
    """(data.h5, best.pth, best.onnx) trained and exported in `work`, or GPU_CHECK_MODEL's."""
    given = os.environ.get("GPU_CHECK_MODEL")
    if given:
        section(f"model: GPU_CHECK_MODEL={given}")
        checkpoint, data = Path(given), Path(os.environ.get("GPU_CHECK_DATA", ""))
        for path, what in ((checkpoint, "GPU_CHECK_MODEL"), (checkpoint.with_suffix(".onnx"), "its .onnx (leak export)"),
                           (data, "GPU_CHECK_DATA")):
            if not path.is_file():
                raise RuntimeError(f"{what}: {path} is not a file")
        return data, checkpoint, checkpoint.with_suffix(".onnx")
    section("model: synth → data build → train (2 epochs) → export")
    corpus, data, run = work / "corpus", work / "data.h5", work / "run"
    run_cli(LEAK + ["data", "synth", str(corpus), "--files-per-class", "8", "--duration", "4", "--seed", "1"],
            "leak data synth (40 files)")
    run_cli(LEAK + ["data", "build", str(corpus), "--output", str(data)], "leak data build")
    run_cli(LEAK + ["train", "--data", str(data), "--out", str(run), "--mode", "multiclass", "--epochs", "2",
                    "--device", "auto"], "leak train --epochs 2 --device auto")
    run_cli(LEAK + ["export", str(run / "best.pth")], "leak export (its own CPU parity check included)")
    return data, run / "best.pth", run / "best.onnx"


def parity(checkpoint: Path, onnx_path: Path, cuda: bool, ort_cuda: bool, checks: Checks):
    from leakhunter.export.parity import (
        FP32_TOLERANCE,
        amp_parity,
        compare,
        golden_recordings,
        real_data_dir,
        reference_scores,
    )
    from leakhunter.inference.onnx_card import read_onnx
    from leakhunter.inference.onnx_runner import CUDA, OnnxRunner, cuda_provider_options
    from leakhunter.inference.torch_runner import TorchRunner

    section("parity on the golden set (P(LEAK) per input; verdict flips must be 0)")
    reference_runner = TorchRunner(checkpoint, "cpu", amp=None)
    card = reference_runner.card
    recordings = golden_recordings(card, real_data_dir())
    sources = {s: sum(r.source == s for r in recordings) for s in ("synthetic", "real", "noise")}
    print(f"  golden set: {len(recordings)} recordings {sources}; reference: torch fp32 on CPU")
    reference = reference_scores(reference_runner, recordings)
    ort_cpu = OnnxRunner(read_onnx(onnx_path), "cpu")
    rows = []

    def add(name, result):
        tolerance = "flips only" if result.tolerance is None else f"{result.tolerance:g}"
        rows.append([name, f"{result.max_abs_leak_prob:.2e}", tolerance, str(len(result.verdict_flips)),
                     "ok" if result.passed else "FAILED"])
        if not result.passed:
            checks.fail(f"parity {name}: {result.failure()}")

    def skip(name, reason):
        rows.append([name, "-", "-", "-", reason])

    add("onnxruntime cpu vs torch cpu", compare(reference, ort_cpu, recordings, card, "ort-cpu", FP32_TOLERANCE))
    add("torch AMP vs fp32, cpu (bf16 autocast)", amp_parity(checkpoint, "cpu", recordings=recordings))
    if cuda:
        add("torch fp32 cuda vs torch cpu",
            compare(reference, TorchRunner(checkpoint, "cuda", amp=None), recordings, card, "torch-cuda-fp32",
                    FP32_TOLERANCE))
        amp_runner = TorchRunner(checkpoint, "cuda")
        add(f"torch AMP ({str(amp_runner.amp).removeprefix('torch.')}) cuda vs torch cpu",
            compare(reference, amp_runner, recordings, card, "torch-cuda-amp", None))
        add("torch AMP vs fp32, cuda (amp_parity)", amp_parity(checkpoint, "cuda", recordings=recordings))
    else:
        for name in ("torch fp32 cuda vs torch cpu", "torch AMP cuda vs torch cpu", "torch AMP vs fp32, cuda"):
            skip(name, SKIPPED_NO_CUDA)
    ort_names = ("onnxruntime cuda vs torch cpu", "onnxruntime cuda vs onnxruntime cpu")
    if cuda and ort_cuda:
        ort_gpu = OnnxRunner(read_onnx(onnx_path), "cuda")
        applied = ort_gpu.session.get_provider_options().get(CUDA, {})
        wrong = {key: (value, applied.get(key)) for key, value in cuda_provider_options().items()
                 if applied.get(key) != value}
        print(f"  onnxruntime CUDA provider options applied: "
              f"{ {key: applied.get(key) for key in cuda_provider_options()} }")
        if wrong:
            checks.fail(f"onnxruntime did not apply the chosen CUDA options (wanted, applied): {wrong}")
        add(ort_names[0], compare(reference, ort_gpu, recordings, card, "ort-cuda", FP32_TOLERANCE))
        add(ort_names[1], compare(reference_scores(ort_cpu, recordings), ort_gpu, recordings, card, "ort-cuda-vs-cpu",
                                  FP32_TOLERANCE))
    else:
        for name in ort_names:
            skip(name, SKIPPED_NO_CUDA if not cuda else "skipped: onnxruntime-gpu missing")
    table(["comparison", "max |ΔP(LEAK)|", "tolerance", "verdict flips", "status"], rows)
    return card, recordings


def frontend(card, recordings, cuda: bool, checks: Checks) -> None:
    import torch

    from leakhunter.export.parity import frontend_precision
    from leakhunter.frontend import FrontEnd
    from leakhunter.inference.torch_runner import full_float32, scoring_mels

    section("front-end precision (max |Δ dB| against the float64 DFT on CPU; contract 1e-3 dB)")
    rows = []
    variants = [("float32", "cpu")] + ([("float64", "cuda"), ("float32", "cuda")] if cuda else [])
    for dtype, device in variants:
        result = frontend_precision(card, recordings, dtype, device)
        by_source = ", ".join(f"{k} {v:.2e}" for k, v in result.max_abs_db_by_source.items())
        rows.append([result.variant, f"{result.max_abs_db:.2e}", by_source, "within" if result.passed else "MISSES"])
        if dtype == "float64" and not result.passed:  # the GPU scoring path itself
            checks.fail(f"front-end float64 on {device} misses the contract: {result.max_abs_db:.2e} dB")
    if not cuda:
        rows += [["float64 fft on cuda", "-", "-", SKIPPED_NO_CUDA], ["float32 fft on cuda", "-", "-", SKIPPED_NO_CUDA]]
    table(["variant", "max |Δ dB|", "by source", "contract"], rows)
    # What the float64 DFT costs: the front-end alone on 10 minutes of audio, per dtype and device.
    rows = []
    samples = torch.from_numpy(recordings[0].samples).repeat(math.ceil(600 * card.frontend.sample_rate
                                                                       / recordings[0].samples.size))
    for device in ["cpu"] + (["cuda"] if cuda else []):
        for dtype in ("float64", "float32"):
            module = FrontEnd(card.frontend, card.segmentation)
            module = (module.float() if dtype == "float32" else module).to(device)
            on_device = samples.to(device)
            timings = []
            with torch.inference_mode(), full_float32():
                for _ in range(3):
                    started = time.perf_counter()
                    scoring_mels(module, card, on_device)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    timings.append(time.perf_counter() - started)
            rows.append([device, dtype, f"{min(timings) * 1e3:.1f} ms", f"{600 / min(timings):,.0f}x"])
    if not cuda:
        rows.append(["cuda", "-", "-", SKIPPED_NO_CUDA])
    table(["device", "DFT dtype", "front-end, 10 min of audio (best of 3)", "x real time"], rows)


def ddp(data: Path, work: Path, cuda: bool, checks: Checks) -> None:
    import torch

    section("DDP (torchrun, 2 ranks, 1 epoch)")
    if not cuda:
        print(f"  {SKIPPED_NO_CUDA}")
        return
    if torch.cuda.device_count() < 2:
        print(f"  skipped: {torch.cuda.device_count()} GPU (DDP needs 2)")
        return
    try:
        _, output = run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "leakhunter.cli", "train", "--data", str(data), "--out", str(work / "ddp"),
                             "--mode", "multiclass", "--epochs", "1", "--device", "cuda"], "torchrun leak train")
        if not (work / "ddp" / "best.pth").is_file():
            checks.fail("DDP run ended without best.pth")
        else:
            print("  DDP: ok (best.pth written)")
    except RuntimeError as error:
        checks.fail(f"DDP: {error}")


SUMMARY = re.compile(r"in ([\d.,]+) s \(([\d.,]+)x real time\)")


def throughput(checkpoint: Path, onnx_path: Path, work: Path, cuda: bool, ort_cuda: bool, checks: Checks) -> None:
    from leakhunter.synth import synth_corpus

    n_files = int(os.environ.get("GPU_CHECK_FILES", "200"))
    workers = os.environ.get("GPU_CHECK_WORKERS")
    section(f"throughput: leak predict on the same 10-s files, CPU vs GPU"
            f"{'' if workers is None else f' (--workers {workers})'}")
    corpus = synth_corpus(work / "bench", files_per_class=max(1, math.ceil(n_files / 5)), duration_s=10.0,
                          sample_rate=8000, seed=5)
    files = sorted((work / "bench").rglob("*.wav"))
    audio_s = 10.0 * len(files)
    print(f"  {len(files)} files, {audio_s / 3600:.2f} h of audio ({corpus.root})")
    rows, verdicts = [], {}
    for model, backend, gpu_ok in ((checkpoint, "torch (.pth)", cuda), (onnx_path, "onnxruntime (.onnx)",
                                                                        cuda and ort_cuda)):
        for device in ("cpu", "cuda"):
            if device == "cuda" and not gpu_ok:
                rows.append([backend, device, "-", "-", "-", "-",
                             SKIPPED_NO_CUDA if not cuda else "skipped: onnxruntime-gpu missing"])
                continue
            out = work / f"scores-{model.suffix[1:]}-{device}.csv"
            args = LEAK + ["predict", str(work / "bench"), "--model", str(model), "--device", device,
                           "--out", str(out)]
            if workers is not None:
                args += ["--workers", workers]
            try:
                wall, output = run_cli(args, f"leak predict {model.name} --device {device}")
            except RuntimeError as error:
                checks.fail(str(error))
                continue
            with open(out, newline="") as handle:
                verdicts[(backend, device)] = {row["file"]: (row["status"], row["verdict"])
                                               for row in csv.DictReader(handle)}
            reported = SUMMARY.search(output)
            differ = "-"
            if device == "cuda" and (backend, "cpu") in verdicts:
                cpu_verdicts, gpu_verdicts = verdicts[(backend, "cpu")], verdicts[(backend, device)]
                flips = sorted(f for f in cpu_verdicts if gpu_verdicts.get(f) != cpu_verdicts[f])
                differ = str(len(flips))
                if flips:
                    checks.fail(f"{backend}: {len(flips)} file verdicts differ between CPU and GPU: {flips[:5]}")
            rows.append([backend, device, f"{wall:.1f} s", f"{audio_s / wall:,.0f}x",
                         reported[1] + " s" if reported else "?", reported[2] + "x" if reported else "?", differ])
    table(["backend", "device", "wall, end to end", "x real time, end to end", "predict's own wall",
           "predict's own x real time", "verdicts != CPU"], rows)


def guarded(checks: Checks, name: str, function, *args):
    """function(*args), or None with the error and its traceback reported as a failure of `name`."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - a GPU check reports everything it meets
        traceback.print_exc()
        checks.fail(f"{name}: {type(error).__name__}: {error}")
        return None


def main() -> int:
    allow_cpu = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"
    work = Path(os.environ.get("GPU_CHECK_WORKDIR") or tempfile.mkdtemp(prefix="leakhunter-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    checks = Checks()
    started = time.perf_counter()
    cuda, ort_cuda = environment(checks)
    if not cuda and not allow_cpu:
        print("\nno CUDA here: this is the GPU check. Run it on a machine with an NVIDIA GPU, or set "
              "GPU_CHECK_ALLOW_CPU=1 to run its CPU part.")
        return 2
    print(f"work folder: {work}")
    try:
        data, checkpoint, onnx_path = build_model(work)
    except RuntimeError as error:
        checks.fail(str(error))
    else:  # one section's crash is reported and the next one still runs
        golden = guarded(checks, "parity", parity, checkpoint, onnx_path, cuda, ort_cuda, checks)
        if golden is not None:
            guarded(checks, "front-end", frontend, *golden, cuda, checks)
        guarded(checks, "DDP", ddp, data, work, cuda, checks)
        guarded(checks, "throughput", throughput, checkpoint, onnx_path, work, cuda, ort_cuda, checks)
    section(f"summary ({time.perf_counter() - started:.0f} s)")
    if checks.failures:
        print("GPU CHECK: FAILED\n" + "\n".join(f"  - {failure}" for failure in checks.failures))
        return 1
    if checks.incomplete:
        print("GPU CHECK: INCOMPLETE\n" + "\n".join(f"  - {reason}" for reason in checks.incomplete))
        return 3
    print("GPU CHECK: PASSED" + ("" if cuda else f" (CPU only: the CUDA parts say \"{SKIPPED_NO_CUDA}\")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
