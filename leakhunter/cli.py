"""The `leak` command: thin typer wrappers that parse, call one library function, and print.

The training, inference and export packages are imported inside the commands, so `leak --help`
stays fast and a scoring box needs only what its own command uses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="leakhunter: find water-pipe leaks in acoustic recordings.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Make, build and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# Logs and CI are not terminals: give tables room rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def progress_bar(description: str) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=errors)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write OUT/<CLASS>/*.wav and OUT/manifest.csv into."),
    files_per_class: int = typer.Option(20, help="Recordings per class."),
    duration: float = typer.Option(10.0, help="Seconds per recording."),
    sample_rate: int = typer.Option(8000, help="Sample rate of the WAV files (Hz)."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
):
    """Write a synthetic labelled corpus (LEAK, NORMAL, QUIET, RANDOM, MECHANICAL) for demos and tests."""
    from leakhunter.training.synth import synth_corpus

    try:
        with progress_bar("synth") as bar:
            task = bar.add_task("synth", total=files_per_class * 5)
            corpus = synth_corpus(out, files_per_class=files_per_class, duration_s=duration,
                                  sample_rate=sample_rate, seed=seed,
                                  progress=lambda done, total: bar.update(task, completed=done))
    except ValueError as error:
        raise fail(str(error)) from None
    counts = ", ".join(f"{n} {label}" for label, n in corpus.counts.items())
    console.print(f"wrote {len(corpus.files)} recordings ({counts}) and {corpus.manifest}")


@data_app.command("build")
def data_build(
    source: Path = typer.Argument(..., help="A class-folder tree SRC/<CLASS>/*.wav or a manifest CSV."),
    output: Path = typer.Option(..., "--output", "-o", help="The HDF5 dataset file to write."),
    preset: str = typer.Option("short", help="Front-end and segmentation preset: short or long."),
    val: float = typer.Option(0.15, help="Fraction of files for validation."),
    test: float = typer.Option(0.15, help="Fraction of files for test."),
    workers: int = typer.Option(2, help="Decoding threads."),
    seed: int = typer.Option(0, help="Seed of the split."),
    channel: str = typer.Option("mean", help="Channel policy: mean, first, or a channel index."),
):
    """Decode, segment and featurise a labelled corpus into one HDF5 file, split by group."""
    from leakhunter.training.dataset import DatasetError, build_dataset
    from leakhunter.training.splits import SplitError

    try:
        with progress_bar("build") as bar:
            task = bar.add_task("build", total=None)
            report = build_dataset(source, output, preset_name=preset, val=val, test=test, workers=workers,
                                   seed=seed, channel=channel,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (DatasetError, SplitError, ValueError) as error:
        raise fail(str(error)) from None
    splits = ", ".join(f"{n} {name}" for name, n in report.files_per_split.items())
    console.print(f"wrote {report.output}: {report.n_files} files ({splits}), {report.hours:.2f} h, "
                  f"{report.n_long} long and {report.n_short} short segments, classes {', '.join(report.class_names)}")
    if report.skipped:
        console.print(f"[yellow]skipped {len(report.skipped)} file(s):[/]")
        for error in report.skipped:
            console.print(f"  {error}", highlight=False)


@data_app.command("check")
def data_check(dataset: Path = typer.Argument(..., help="A dataset file from `leak data build`.")):
    """Data health report: files per split and class, hours, groups, skipped files, problems. Exit 1 on problems."""
    from leakhunter.training.check import check_dataset
    from leakhunter.training.dataset import DatasetError
    from leakhunter.training.splits import SPLITS

    try:
        report = check_dataset(dataset)
    except DatasetError as error:
        raise fail(str(error)) from None
    table = Table(title=f"{report.path} (preset {report.preset})")
    for column in ("split", *report.class_names, "files", "hours", "groups", "short segments"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for code, name in enumerate(SPLITS):
        row = report.counts[code]
        table.add_row(name, *map(str, row), str(row.sum()), f"{report.hours[code]:.2f}", str(report.groups[code]),
                      str(report.short_segments[code]))
    console.print(table)
    for path, reason, detail in report.skipped:
        console.print(f"skipped {path}: {reason}: {detail}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for problem in report.problems:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False)
    if report.problems:
        raise typer.Exit(1)
    console.print("[green]no problems found[/]")


@data_app.command("files")
def data_files(
    dataset: Path = typer.Argument(..., help="A dataset file from `leak data build`."),
    split: str = typer.Option("test", help="train, val or test."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the manifest CSV here (default: stdout)."),
):
    """List one split's files as a manifest CSV (path,label): `leak predict` scores it as it is."""
    import csv

    from leakhunter.training.check import split_manifest
    from leakhunter.training.dataset import DatasetError

    try:
        rows = split_manifest(dataset, split)
    except (DatasetError, ValueError, OSError) as error:
        raise fail(f"{dataset}: {error}") from None
    handle = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(("path", "label"))
    writer.writerows(rows)
    if output:
        handle.close()
        console.print(f"wrote {len(rows)} {split} files to {output}")


@app.command("train")
def train(
    data: Path = typer.Option(None, help="Dataset file from `leak data build`."),
    out: Path = typer.Option(None, help="Run directory (default runs/<mode>-<time>)."),
    mode: str = typer.Option(None, help="binary or multiclass (also LEAK_MODE, or `mode:` in --config)."),
    config: Path = typer.Option(None, help="YAML file of training settings; flags override it."),
    resume: Path = typer.Option(None, help="Continue exactly from a run's checkpoints/last.pth."),
    epochs: int = typer.Option(None, help="Maximum epochs (default 60)."),
    batch_size: int = typer.Option(None, help="Inputs per step (default 2048)."),
    lr: float = typer.Option(None, help="Peak learning rate of AdamW (default 2e-3)."),
    loss: str = typer.Option(None, help="ce (class-weighted cross-entropy) or focal."),
    patience: int = typer.Option(None, help="Early-stopping patience in epochs (default 15)."),
    seed: int = typer.Option(None, help="Seed of initialisation and shuffling (default 0)."),
    device: str = typer.Option(None, help="auto, cpu or cuda."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (slow first epoch)."),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="Turn health warnings into failures."),
):
    """Train a model; writes best.pth, model_meta.json, checkpoints/, metrics.csv, config.yaml and plots."""
    from leakhunter.card import CardError
    from leakhunter.checkpoint import CheckpointError
    from leakhunter.training.config import ConfigError, TrainConfig, resolve_config
    from leakhunter.training.dataset import DatasetError
    from leakhunter.training.health import HealthFailure
    from leakhunter.training.trainer import train as run_training

    flags = {"data": None if data is None else str(data), "out": None if out is None else str(out), "mode": mode,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss, "patience": patience,
             "seed": seed, "device": device, "compile": compile, "strict": strict}
    try:
        if resume is None:
            settings = resolve_config(config, flags)
            console.print(f"config: {settings.to_dict()}", highlight=False)
            result = run_training(settings, log=lambda text: console.print(text, highlight=False, markup=False))
        else:
            if mode is None and os.environ.get("LEAK_MODE"):
                flags["mode"] = os.environ["LEAK_MODE"]
            result = run_training(TrainConfig(), resume=resume, overrides=flags,
                                  log=lambda text: console.print(text, highlight=False, markup=False))
    except HealthFailure as failure:
        errors.print(f"training stopped by health check {failure}", highlight=False, markup=False)
        raise typer.Exit(failure.exit_code) from None
    except (ConfigError, CardError, CheckpointError, DatasetError, FileExistsError) as error:
        raise fail(str(error)) from None
    console.print(f"best model: {result.run_dir / 'best.pth'} (epoch {result.best_epoch})")


@app.command("doctor")
def doctor(run_dir: Path = typer.Argument(..., help="A run directory from `leak train`.")):
    """Re-run the health checks (H001–H012) on a run; exit 1 when any check fails."""
    from leakhunter.checkpoint import CheckpointError
    from leakhunter.training.dataset import DatasetError
    from leakhunter.training.doctor import doctor as run_doctor

    try:
        monitor = run_doctor(run_dir)
    except (FileNotFoundError, CheckpointError, DatasetError) as error:
        raise fail(str(error)) from None
    for line in monitor.summary():
        console.print(line, highlight=False, markup=False)
    if monitor.status == "fail":
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    model: Path = typer.Argument(..., help="A best.pth."),
    data: Path = typer.Option(..., help="Dataset file with the same front-end and classes."),
    split: str = typer.Option("test", help="train, val or test."),
    threshold: float = typer.Option(None, help="Override the card's calibrated threshold."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    confusion_png: Path = typer.Option(None, help="Where to draw the confusion matrix (default beside the model)."),
):
    """File-level report of a model on one split: leak F1/precision/recall/specificity/AUC, confusion matrix."""
    from leakhunter.card import CardError
    from leakhunter.checkpoint import CheckpointError
    from leakhunter.training.dataset import DatasetError
    from leakhunter.training.evaluate import evaluate as run_evaluation, report_json

    png = confusion_png or model.with_name(f"confusion_{split}.png")
    try:
        report = run_evaluation(model, data, split=split, device=device, threshold=threshold, confusion_png=png)
    except (CardError, CheckpointError, DatasetError, ValueError) as error:
        raise fail(str(error)) from None
    if as_json:
        print(report_json(report))
        return
    table = Table(title=f"{model} on {split} of {data} ({report['n_files']} files, threshold {report['threshold']:.2f})")
    for column in ("file F1", "precision", "recall", "specificity", "AUC", "accuracy", "segment acc", "kappa"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{report[k]:.3f}" for k in ("file_f1", "file_precision", "file_recall", "file_specificity",
                                                 "file_auc", "file_accuracy", "segment_accuracy", "kappa")))
    console.print(table)
    confusion = Table(title="files: rows = truth, columns = prediction")
    confusion.add_column("")
    for name in report["class_names"]:
        confusion.add_column(name, justify="right")
    for name, row in zip(report["class_names"], report["confusion"]):
        confusion.add_row(name, *map(str, row))
    console.print(confusion)
    console.print(f"confusion matrix drawn to {png}")


@app.command("predict")
def predict(
    inputs: list[str] = typer.Argument(..., help="Audio files, folders, glob patterns or manifest CSVs (a `path` column)."),
    model: Path = typer.Option(..., help="A model: .onnx (onnxruntime, no torch needed) or .pth (torch)."),
    out: Path = typer.Option(None, help="Verdict table, .csv or .jsonl, one row per input file, written as produced."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (falls back to CPU with one warning)."),
    threshold: float = typer.Option(None, help="Override the card's calibrated P(LEAK) threshold (the rows say so)."),
    vote_fraction: float = typer.Option(None, help="Override the share of long segments that makes a LEAK."),
    workers: int = typer.Option(2, help="Worker processes (0: score in this process, no crash isolation)."),
    file_timeout: float = typer.Option(600.0, help="Seconds one file may take before it is given up as `timeout`."),
    resume: bool = typer.Option(False, "--resume", help="Skip files already in --out (same path, size, mtime, model)."),
    timeline: bool = typer.Option(False, "--timeline", help="Also write per-long-segment P(LEAK) (JSONL) and a PNG per file."),
    channel: str = typer.Option("mean", help="Channel policy for multichannel files: mean, first or an index."),
):
    """Score recordings: LEAK when at least half the long segments reach the threshold. Exit 0 all scored,
    3 some files failed, 2 nothing could be scored."""
    import time as clock

    from rich.progress import Progress

    from leakhunter.inference.predict import PredictError, predict as run_predict
    from leakhunter.inference.outputs import OutputError
    from leakhunter.card import CardError
    from leakhunter.checkpoint import CheckpointError
    from leakhunter.inference.onnx_card import ModelLoadError
    from leakhunter.inference.pool import SetupError

    started = clock.perf_counter()
    audio = {"s": 0.0}
    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=errors) as bar:
        task = bar.add_task("scoring", total=None, rate="")

        def advance(row, done, total):
            if row["status"] == "ok":
                audio["s"] += float(row["duration_s"])
            wall = max(1e-9, clock.perf_counter() - started)
            bar.update(task, completed=done, total=total,
                       rate=f"{done / wall:6.1f} files/s {audio['s'] / wall:7.0f}x real time")

        try:
            summary = run_predict(inputs, model, out=out, device=device, threshold=threshold,
                                  vote_fraction=vote_fraction, workers=workers, file_timeout=file_timeout,
                                  resume=resume, timeline=timeline, channel=channel, on_row=advance)
        except (PredictError, OutputError, CardError, CheckpointError, ModelLoadError, SetupError) as error:
            raise fail(str(error)) from None
    if out is None:
        table = Table(title=f"{len(summary.rows)} file(s) scored with {model}")
        for column in ("file", "status", "verdict", "leak_score", "mean_leak_prob", "top_class"):
            table.add_column(column)
        for row in summary.rows[:200]:
            table.add_row(Path(row["file"]).name, row["status"], row.get("verdict") or "",
                          f"{row['leak_score']:.2f}" if row.get("leak_score") is not None else "",
                          f"{row['mean_leak_prob']:.3f}" if row.get("mean_leak_prob") is not None else "",
                          row.get("top_class") or row.get("message", ""))
        console.print(table)
    hours = summary.audio_s / 3600
    speed = summary.audio_s / max(summary.wall_s, 1e-9)
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(summary.verdicts.items())) or "none"
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    console.print(f"scored {hours:.2f} h of audio in {summary.wall_s:.1f} s ({speed:.0f}x real time); "
                  f"verdicts: {verdicts}; files: {statuses}"
                  + (f"; {summary.skipped} already in {out}" if summary.skipped else "")
                  + (f"; table: {out}" if out else ""), highlight=False)
    raise typer.Exit(summary.exit_code)


@app.command("info")
def info(
    model: Path = typer.Argument(..., help="A model file: .onnx, .pth, or a card JSON (model_meta.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON, with the file's facts under \"file\"."),
):
    """Print and validate a model's card; for ONNX also its inputs, outputs, opset, size and sha256.
    Exit 1 when the card is invalid or contradicts the graph or the weights."""
    from leakhunter.inference import describe_model

    if not model.is_file():
        raise fail(f"{model}: no such file")
    try:
        described = describe_model(model)
    except ValueError as error:  # CardError, ModelLoadError, CheckpointError
        raise fail(str(error), code=1) from None
    if as_json:
        print(json.dumps(described, indent=2))
        return
    facts = described.pop("file")
    table = Table(title=f"{model} ({facts['format']})", show_header=False)
    for key, value in described.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
    table = Table(show_header=False)
    for key, value in facts.items():
        if key in ("inputs", "outputs"):
            value = ", ".join(f"{tensor['name']} {tensor['dtype']} {tensor['shape']}" for tensor in value)
        if key not in ("path", "format"):
            table.add_row(key, str(value))
    console.print(table)


@app.command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="A best.pth from `leak train`."),
    output: Path = typer.Option(None, "--output", "-o", help="The .onnx to write (default: beside the checkpoint)."),
    input_kind: str = typer.Option("waveform", "--input", help="Graph input: waveform (front-end inside, needs "
                                                              "only onnxruntime) or mel."),
    opset: int = typer.Option(18, help="ONNX opset, 18 or newer."),
    fp16: bool = typer.Option(False, "--fp16", help="Float16 network (front-end stays float32)."),
    int8: bool = typer.Option(False, "--int8", help="Dynamic int8 quantisation of the network's dense layers."),
):
    """Export to one .onnx file carrying the model card; kept only when it scores the golden recordings
    like torch (fp32: |Δ P(LEAK)| <= 1e-4, same verdicts). Writes <model>.parity.json beside it."""
    from leakhunter.export import ExportError, export_model

    if not checkpoint.is_file():
        raise fail(f"{checkpoint}: no such file")
    try:
        report = export_model(checkpoint, output, input=input_kind, opset=opset, fp16=fp16, int8=int8)
    except ExportError as error:
        if error.report is not None:
            console.print(parity_table(error.report))
        raise fail(str(error), code=1) from None
    except ValueError as error:  # CardError, CheckpointError, options
        raise fail(str(error), code=1) from None
    console.print(parity_table(report))
    console.print(f"wrote {report.output} ({report.size_bytes / 1e6:.2f} MB, {report.input} input, {report.precision}, "
                  f"sha256 {report.sha256[:16]}…) and {report.parity_report} in {report.seconds:.1f} s", highlight=False)


def parity_table(report) -> Table:
    golden = ", ".join(f"{n} {source}" for source, n in report.golden.items())
    table = Table(title=f"parity with torch on {golden} recordings")
    for column in ("precision", "max |Δ leak_prob|", "mean |Δ leak_prob|", "max |Δ probs|", "allowed", "inputs",
                   "verdict flips", "result"):
        table.add_column(column, justify="left" if column in ("precision", "verdict flips", "result") else "right")
    for result in report.parity:
        table.add_row(result.precision, f"{result.max_abs_leak_prob:.2e}", f"{result.mean_abs_leak_prob:.2e}",
                      f"{result.max_abs_probs:.2e}", f"{result.tolerance:g}" if result.tolerance is not None else "-",
                      str(result.n_inputs), f"{len(result.verdict_flips)} of {result.n_files}",
                      "[green]pass[/]" if result.passed else "[bold red]FAIL[/]")
    return table


def main() -> None:  # pragma: no cover - console-script shim
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m leakhunter.cli`
    main()
