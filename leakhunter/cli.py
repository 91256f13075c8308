"""The `leak` command: thin typer wrappers that parse, call one library function, and print.

The training, inference and export packages are imported inside the commands, so `leak --help`
stays fast and a scoring box needs only what its own command uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from leakhunter.cli_data import data_app
from leakhunter.cli_reference import reference_app
from leakhunter.cli_support import command, console, errors, fail, stopped_by_signal, warn
from leakhunter.files import not_a_model_file

app = typer.Typer(help="leakhunter: find water-pipe leaks in acoustic recordings.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_app)
app.add_typer(reference_app)


@command(app, "train")
def train(
    data: Path = typer.Option(None, help="Dataset file from `leak data build`."),
    out: Path = typer.Option(None, help="Run directory (default runs/<mode>-<time>)."),
    mode: str = typer.Option(None, help="binary, multiclass or fusion (also LEAK_MODE, or `mode:` in --config)."),
    config: Path = typer.Option(None, help="YAML file of training settings; flags override it."),
    resume: Path = typer.Option(None, help="Continue exactly from a run's checkpoints/last.pth."),
    cv: int = typer.Option(None, help="Grouped K-fold cross-validation over the training and validation files "
                                      "(every epoch of each fold), then the final model on all of them with the "
                                      "chosen epochs and threshold; rerun the same command to finish a stopped one."),
    epochs: int = typer.Option(None, help="Maximum epochs (default 60)."),
    batch_size: int = typer.Option(None, help="Inputs per step (default 2048)."),
    lr: float = typer.Option(None, help="Peak learning rate of AdamW (default 2e-3)."),
    loss: str = typer.Option(None, help="ce (class-weighted cross-entropy) or focal."),
    patience: int = typer.Option(None, help="Early-stopping patience in epochs (default 15)."),
    seed: int = typer.Option(None, help="Seed of initialisation and shuffling (default 0)."),
    device: str = typer.Option(None, help="auto, cpu or cuda."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (slow first epoch)."),
    strict: bool = typer.Option(None, "--strict/--no-strict", help="Turn health warnings into failures."),
    max_memory: str = typer.Option(None, help="RAM for the dataset: bytes, 8GB, 512MiB or a share of available "
                                              "RAM (default 50%); a bigger /short/mel is read from disk in chunks."),
    augment: str = typer.Option(None, help="Training-time augmentation, a comma list of gain, tilt, mix, mask "
                                           "(default none; validation, test and predict never augment)."),
    channels: str = typer.Option(None, help="The CNN's three convolution widths (default 32,64,128)."),
    hidden: int = typer.Option(None, help="The CNN's embedding width (default 256)."),
    level: str = typer.Option(None, help="absolute (default) or relative: each input minus its own mean "
                                         "log-mel, so gain and logger level cannot move a verdict."),
    reference: str = typer.Option(None, help="none (default) or sensor: each log-mel minus its sensor's usual one "
                                             "(the median of its recordings' median log-mels; the sensor from a "
                                             "manifest's sensor_id column, else the logger file name), so a new "
                                             "site is judged against itself; scoring "
                                             "then needs a table from leak reference build."),
    branches: str = typer.Option(None, help="--mode fusion: comma list of mel, features, meta (default "
                                            "mel,features)."),
    meta: str = typer.Option(None, help="--mode fusion: the meta branch's fields, e.g. gain_db (manifest columns, "
                                        "else the logger file name sensor~recording~timestamp~gain_db)."),
    fusion_prior: str = typer.Option(None, help="--mode fusion: initial fusion weights, one per branch, e.g. 0.7,0.3 "
                                                "(default equal); they are learned."),
):
    """Train a model; writes best.pth, model_meta.json, checkpoints/, metrics.csv, config.yaml and plots."""
    from leakhunter.card import MODES
    from leakhunter.training.config import TrainConfig, resolve_config
    from leakhunter.training.trainer import train as run_training

    flags = {"data": None if data is None else str(data), "out": None if out is None else str(out), "mode": mode,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "loss": loss, "patience": patience,
             "seed": seed, "device": device, "compile": compile, "strict": strict, "max_memory": max_memory,
             "augment": augment, "channels": channels, "hidden": hidden, "level": level, "branches": branches,
             "meta": meta, "fusion_prior": fusion_prior, "reference": reference}
    log = lambda text: console.print(text, highlight=False, markup=False)  # noqa: E731
    if cv is not None and resume is not None:
        raise fail("--cv and --resume do not combine: rerun the --cv command with the same --out to finish its folds")
    if resume is None:
        settings = resolve_config(config, flags)
        console.print(f"config: {settings.to_dict()}", highlight=False)
        if MODES[settings.mode].staged:
            if cv is not None:
                raise fail(f"--cv does not take --mode {settings.mode} yet: train it on the dataset's splits")
            from leakhunter.training.fusion import train_fusion

            result = train_fusion(settings, log=log)
        elif cv is not None:
            from leakhunter.training.cv import cross_validate

            result = cross_validate(settings, cv, log=log)
        else:
            result = run_training(settings, log=log)
    else:
        asked = mode or os.environ.get("LEAK_MODE", "") or staged_mode_of(resume)
        if asked in MODES and MODES[asked].staged:
            raise fail(f"--resume does not take a {asked} run: rerun the same `leak train --mode {asked}` command "
                       f"with the same --out; finished stages are skipped and an interrupted one resumes")
        if mode is None and os.environ.get("LEAK_MODE"):
            flags["mode"] = os.environ["LEAK_MODE"]
        result = run_training(TrainConfig(), resume=resume, overrides=flags, log=log)
    console.print(f"best model: {result.run_dir / 'best.pth'} (epoch {result.best_epoch})")


def staged_mode_of(checkpoint: Path) -> str:
    """The mode of a fusion stage's checkpoint (its run directory says stages/), else "" (checked as a resume)."""
    if checkpoint.parent.parent.parent.name != "stages" or not checkpoint.is_file():
        return ""
    from leakhunter.checkpoint import card_of, load_checkpoint
    from leakhunter.errors import LeakhunterError

    try:
        return card_of(load_checkpoint(checkpoint), checkpoint).mode
    except LeakhunterError:
        return ""  # the resume itself says what is wrong with the file


@command(app, "doctor")
def doctor(run_dir: Path = typer.Argument(..., help="A run directory from `leak train`.")):
    """Re-run the health checks (H001–H017, a fusion run stage by stage) on a run; exit 1 when any check fails."""
    from leakhunter.training.doctor import doctor as run_doctor

    monitor = run_doctor(run_dir)
    for line in monitor.summary():
        console.print(line, highlight=False, markup=False)
    if monitor.status == "fail":
        raise typer.Exit(1)


@command(app, "eval")
def evaluate(
    model: Path = typer.Argument(..., help="A model: best.pth or an exported .onnx."),
    data: Path = typer.Option(..., help="Labelled recordings: a dataset file (.h5, with --split), a manifest CSV "
                                        "(path, label, optional group) or class folders SRC/<CLASS>/**/*.wav."),
    split: str = typer.Option(None, help="train, val or test of a dataset file (default test); a manifest or "
                                         "class folders are evaluated whole."),
    threshold: float = typer.Option(None, help="Override the card's calibrated threshold."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: int = typer.Option(2, help="Decoding worker processes where recordings are scored (0: in this process)."),
    reference: Path = typer.Option(None, help="A reference model scored on recordings (an .onnx, or a manifest or "
                                              "folders): its table of sensor references (leak reference build)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    group_column: str = typer.Option(None, help="A manifest's column that names each file's group for the per-group "
                                                "table (e.g. site), instead of group (else sensor_id, else the logger "
                                                "name)."),
    confusion_png: Path = typer.Option(None, help="Where to draw the confusion matrix (default beside the model)."),
    roc_png: Path = typer.Option(None, help="Where to draw the ROC curve (default beside the model)."),
    pr_png: Path = typer.Option(None, help="Where to draw the precision-recall curve (default beside the model)."),
):
    """File-level report of a model on labelled recordings: leak F1/precision/recall/specificity/AUC, false alarms
    per 100 non-LEAK recordings, confusion matrix, per group, the card's operating points; ROC and PR curves.
    Exit 3 when some recordings could not be scored (listed, and left out of every metric)."""
    import math

    from leakhunter.eval_tables import eval_tables
    from leakhunter.training.eval_sources import is_dataset
    from leakhunter.training.evaluate import auc_missing_reason, default_png, report_json
    from leakhunter.training.evaluate import evaluate as run_evaluation

    if split is not None and data.exists() and not is_dataset(data):
        raise fail(f"--split {split}: {data} is evaluated whole (a manifest or class folders); --split chooses a "
                   f"split of a dataset file")
    split = split or "test"

    given = {"confusion_png": confusion_png, "roc_png": roc_png, "pr_png": pr_png}
    if can_draw():
        pngs = {key: path or default_png(model, data, split, key.removesuffix("_png")) for key, path in given.items()}
    elif any(given.values()):  # refused before any recording is scored
        raise fail(f"--{next(k for k, v in given.items() if v).replace('_', '-')}: pictures need matplotlib, which "
                   f"the scoring install leaves out (pip install 'leakhunter[train]')")
    else:  # the scoring install evaluates, and draws nothing
        pngs = dict.fromkeys(given)
    report = run_evaluation(model, data, split=split, device=device, threshold=threshold, workers=workers,
                            reference=reference, group_column=group_column, **pngs)
    if as_json:
        print(report_json(report))
    else:
        for part in eval_tables(report):
            console.print(part, highlight=False, markup=False)
        if not math.isfinite(report["file_auc"]):
            console.print(f"AUC n/a: {auc_missing_reason(report) or 'undefined on these files'}", highlight=False)
        drawn = [report[key] for key in pngs if key in report]
        console.print(f"drawn: {', '.join(drawn)}" if drawn else "no pictures: they need matplotlib, which the "
                      "scoring install leaves out (pip install 'leakhunter[train]')", highlight=False, markup=False)
    if report.get("failed_files"):
        raise typer.Exit(3)  # as predict: some recordings could not be scored


def can_draw() -> bool:
    """Whether matplotlib imports here (the training extra has it; the scoring install does not)."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@command(app, "predict")
def predict(
    inputs: list[str] = typer.Argument(..., help="Audio files, folders, glob patterns or manifest CSVs (a `path` column)."),
    model: Path = typer.Option(..., help="A model: .onnx (onnxruntime, no torch needed) or .pth (torch)."),
    out: Path = typer.Option(None, help="Verdict table, .csv or .jsonl, one row per input file, written as produced."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (cuda is strict: exit 2 without CUDA; "
                                            "auto takes the GPU when there is one)."),
    threshold: float = typer.Option(None, help="Override the card's calibrated P(LEAK) threshold (the rows say so)."),
    sensitivity: str = typer.Option(None, help="Score at one of the card's operating points instead: high (recall "
                                               ">= 0.95 on validation), balanced (best F1) or low-false-alarm "
                                               "(specificity >= 0.98); each row says which. Not with --threshold."),
    vote_fraction: float = typer.Option(None, help="Override the share of long segments that makes a LEAK."),
    meta: Path = typer.Option(None, help="A fusion model's meta fields per recording: a CSV with a path column "
                                         "(relative to it) and the fields; before manifest columns and file names."),
    meta_missing: str = typer.Option("score", help="A fusion model's meta field unknown for a recording: score "
                                                   "(NaN, the row's meta_missing says so) or fail (status "
                                                   "meta_missing, exit 3)."),
    reference: Path = typer.Option(None, help="A reference model's table of sensor references (leak reference "
                                              "build); each recording is judged against its sensor: a manifest's "
                                              "sensor_id column, else its logger name's (status no_reference when "
                                              "the table lacks it)."),
    workers: int = typer.Option(None, help="Decoding worker processes (default 2; 0: decode in this process, no crash "
                                           "isolation). With --engine ray: per actor, default one per 3 of its CPUs."),
    batch_rows: int = typer.Option(None, help="Rows of 60 s of audio per model call (default 4 on CPU, 32 on GPU)."),
    file_timeout: float = typer.Option(600.0, help="Seconds one file may go without progress before it is given up "
                                                   "as `timeout`."),
    resume: bool = typer.Option(False, "--resume", help="Skip files already in --out (same path, size, mtime, model)."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed",
                                      help="On --resume, score files whose row is timeout, worker_crash, error or changed again."),
    timeline: bool = typer.Option(False, "--timeline", help="Also write per-long-segment P(LEAK) (JSONL) and a PNG per "
                                                           "file beside --out (needs --out)."),
    channel: str = typer.Option(None, help="Channel policy for multichannel files: mean, first or an index "
                                           "(default: the card's, as the model was trained; the rows say so otherwise)."),
    engine: str = typer.Option("local", help="local (this machine) or ray (actors on a Ray cluster; the inputs on a "
                                             "filesystem every node mounts at the same path): the same table."),
    address: str = typer.Option(None, help="--engine ray: the cluster (ray://head:10001, or head:6379 on a node); "
                                           "default RAY_ADDRESS, else a `ray start` cluster here, else a local Ray."),
    actors: int = typer.Option(None, help="--engine ray: scoring actors (default: as many as the cluster's CPUs, and "
                                          "GPUs with --gpus-per-actor, hold)."),
    cpus_per_actor: float = typer.Option(None, help="--engine ray: CPUs per actor, its model threads (default 1)."),
    gpus_per_actor: float = typer.Option(None, help="--engine ray: GPUs per actor, e.g. 0.25 (default 0)."),
    files_per_batch: int = typer.Option(None, help="--engine ray: files per actor call (default 32; fewer when "
                                                   "actors would idle). Rows come back at least every 0.5 s."),
):
    """Score recordings: LEAK when at least half the long segments reach the threshold. Exit 0 all scored,
    3 some files failed, 2 nothing could be scored."""
    import time as clock

    from rich.progress import Progress

    from leakhunter.inference.predict import predict as run_predict
    from leakhunter.inference.ray_engine import RayOptions

    ray_settings = {key: value for key, value in dict(address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                                                      gpus_per_actor=gpus_per_actor,
                                                      files_per_batch=files_per_batch).items() if value is not None}
    if engine not in ("local", "ray"):
        raise fail(f"--engine {engine}: expected local or ray")
    if ray_settings and engine != "ray":
        flags = ", ".join("--" + key.replace("_", "-") for key in ray_settings)
        raise fail(f"{flags} need{'s' if len(ray_settings) == 1 else ''} --engine ray")
    ray_options = RayOptions(**ray_settings) if engine == "ray" else None

    started = clock.perf_counter()
    audio = {"s": 0.0}
    bar_columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TimeRemainingColumn())
    with stopped_by_signal() as interrupted, Progress(*bar_columns, console=errors, transient=True) as bar:
        task = bar.add_task("scoring", total=None, rate="")

        def advance(row, done, total):
            if row["status"] == "ok":
                audio["s"] += float(row["duration_s"])
            wall = max(1e-9, clock.perf_counter() - started)
            bar.update(task, completed=done, total=total,
                       rate=f"{done / wall:6.1f} files/s {audio['s'] / wall:7.0f}x real time")

        summary = run_predict(inputs, model, out=out, device=device, threshold=threshold, sensitivity=sensitivity,
                              vote_fraction=vote_fraction, workers=workers, file_timeout=file_timeout,
                              resume=resume, timeline=timeline, channel=channel, on_row=advance,
                              retry_failed=retry_failed, batch_rows=batch_rows, engine=engine,
                              ray_options=ray_options, meta=meta, meta_missing=meta_missing, reference=reference,
                              warn=warn)
    if interrupted.signal is not None:
        kept = (f"the rows written so far stay in {out}; rerun the same command with --resume to score the rest"
                if out is not None else "no table was asked for (--out), so nothing is kept")
        raise fail(f"interrupted ({interrupted.signal}): {kept}", 128 + interrupted.number)
    from leakhunter.eval_tables import predict_line, predict_table

    if out is None:
        console.print(predict_table(summary.rows, model))
    console.print(predict_line(summary, out), highlight=False)
    raise typer.Exit(summary.exit_code)


@command(app, "bench")
def bench(
    model: Path = typer.Argument(..., help="A model: .onnx (with a .pth of the same stem beside it, torch is "
                                           "timed too and the verdicts compared) or .pth."),
    inputs: list[str] = typer.Argument(None, help="Audio files, folders, globs or manifests "
                                                  "(default: a generated set)."),
    device: str = typer.Option("auto", help="auto (cpu, plus cuda where available), cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    files: int = typer.Option(60, help="Recordings in the generated set (no INPUTS)."),
    seconds: float = typer.Option(10.0, help="Seconds per generated recording (8 kHz)."),
    workers: int = typer.Option(2, help="Decoding workers of the end-to-end run (one with 0 is always timed too)."),
    reference: Path = typer.Option(None, help="A reference model's table of sensor references (leak reference "
                                              "build): your recordings are judged by sensor as leak predict judges "
                                              "them; the generated ones are all taken as the table's first sensor."),
):
    """Time decoding, the model (front-end and network apart for a .pth), voting and `leak predict` end to end,
    per backend and device: × real time, files/s, peak RSS, and the file-level agreement between backends."""
    from leakhunter.inference.bench import bench as run_bench

    report = run_bench(model, inputs=inputs or None, device=device, files=files, seconds=seconds, workers=workers,
                       log=lambda text: errors.print(text, highlight=False, markup=False), reference=reference)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    labels = {"decode": "decode + resample", "model": "model (score_rows)", "frontend": "  front-end alone",
              "network": "  network alone", "voting": "voting"}
    for result in report["results"]:
        table = Table(title=f"{result['backend']} on {result['device']} ({Path(result['model']).name}): peak RSS "
                            f"{result['peak_rss_mb']:.0f} MB, decoding workers "
                            f"{result['workers_peak_rss_mb']:.0f} MB each")
        for column in ("stage", "seconds", "× real time", "files/s"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        timed = [(labels[name], stage) for name, stage in result["stages"].items()]
        timed += [(f"end to end, {name}", stage) for name, stage in result["end_to_end"].items()]
        for label, stage in timed:
            table.add_row(label, f"{stage['seconds']:.3f}", f"{stage['x_real_time']:,.0f}",
                          f"{stage['files_per_s']:,.1f}")
        for name, stage in result["end_to_end"].items():
            table.add_row(f"engine start-up, {name}", f"{stage['engine_startup_s']:.3f}", "", "")
        console.print(table)
    agreement = report["agreement"]
    for pair in agreement["pairs"]:
        console.print(f"agreement {agreement['reference']} vs {pair['with']}: {pair['verdict_disagreements']} of "
                      f"{pair['files']} verdicts differ, max |Δ mean_leak_prob| "
                      f"{pair['max_abs_delta_mean_leak_prob']:.2e}",
                      highlight=False)
    if not agreement["pairs"]:
        console.print(f"agreement: only {agreement['reference']} timed (no second backend or device to compare)",
                      highlight=False)
    source = "generated" if report["generated"] else "given"
    console.print(f"audio: {report['audio_s'] / 3600:.2f} h in {report['files']} {source} files", highlight=False)
    for failed in report["results"][0]["failed_files"]:  # timed without them: named, with why
        console.print(f"not timed: {failed['file']} ({failed['status']})", highlight=False, markup=False)


@command(app, "serve")
def serve(
    model: Path = typer.Option(..., help="The model to serve: .onnx (no torch needed) or .pth."),
    host: str = typer.Option("127.0.0.1", envvar="LEAK_SERVE_HOST", help="Address to listen on (the Docker "
                                                                         "image sets 0.0.0.0)."),
    port: int = typer.Option(8000, envvar="LEAK_SERVE_PORT", help="Port to listen on."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (cuda is strict: exit 2 without CUDA)."),
    workers: int = typer.Option(2, help="Decoding worker processes (0: decode in the server, no isolation)."),
    data_root: Path = typer.Option(None, help="Folder jobs (POST /v1/jobs) read and write under this folder only; "
                                              "without it, folder jobs are off (403)."),
    jobs_dir: Path = typer.Option(None, help="Where jobs are kept, so a restart resumes them (default: "
                                             "<data-root>/.leakhunter-jobs)."),
    max_upload_mb: float = typer.Option(200.0, help="Largest upload; a larger one gets 413."),
    max_queue: int = typer.Option(32, help="Uploads taken on at once; more get 503 with Retry-After."),
    max_jobs: int = typer.Option(16, help="Folder jobs queued or running; more get 503 with Retry-After."),
    keep_jobs: int = typer.Option(1000, help="Finished jobs remembered, the newest; older ones are forgotten "
                                             "(their records removed from --jobs-dir, their tables kept)."),
    request_timeout: float = typer.Option(300.0, help="Seconds an upload may wait for its row (then 504)."),
    receive_timeout: float = typer.Option(30.0, help="Seconds an upload's body may send nothing (then 408 and its "
                                                     "--max-queue slot is free again)."),
    file_timeout: float = typer.Option(60.0, help="Seconds one file may go without progress (then `timeout`); below "
                                                  "--request-timeout."),
    threshold: float = typer.Option(None, help="Override the card's P(LEAK) threshold (the rows say so)."),
    sensitivity: str = typer.Option(None, help="Score at the card's operating point of this name (high, balanced, "
                                               "low-false-alarm); the rows say so. Not with --threshold."),
    vote_fraction: float = typer.Option(None, help="Override the share of long segments that makes a LEAK."),
    channel: str = typer.Option(None, help="Channel policy for multichannel files (default: the card's)."),
    batch_rows: int = typer.Option(None, help="Rows of 60 s of audio per model call (default 4 on CPU, 32 on GPU)."),
    meta_missing: str = typer.Option("score", help="A fusion model's meta field unknown for a recording: score "
                                                   "(NaN, the row's meta_missing says so) or fail (status "
                                                   "meta_missing, no score)."),
    reference: Path = typer.Option(None, help="A reference model's table of sensor references (leak reference "
                                              "build); an upload is judged against its sensor_id query parameter, "
                                              "else its logger name's sensor."),
    log_level: str = typer.Option("info", help="uvicorn's log level: critical, error, warning, info, debug."),
):
    """Serve batch scoring over HTTP: POST audio to /v1/score for its row, POST /v1/jobs for folders under
    --data-root; /healthz, /readyz, /v1/model. Rows are `leak predict`'s."""
    from leakhunter.inference.serve import ServeSettings
    from leakhunter.inference.serve import serve as run_server

    settings = ServeSettings(model=model, device=device, workers=workers, file_timeout=file_timeout,
                             threshold=threshold, sensitivity=sensitivity, vote_fraction=vote_fraction,
                             channel=channel, batch_rows=batch_rows, meta_missing=meta_missing, reference=reference,
                             data_root=data_root, jobs_dir=jobs_dir, max_upload_mb=max_upload_mb, max_queue=max_queue,
                             max_jobs=max_jobs, keep_jobs=keep_jobs, request_timeout=request_timeout,
                             receive_timeout=receive_timeout)
    run_server(settings, host=host, port=port, log_level=log_level)


@command(app, "info", 1)
def info(
    model: Path = typer.Argument(..., help="A model file: .onnx, .pth, or a card JSON (model_meta.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the card as JSON, with the file's facts under \"file\"."),
):
    """Print and validate a model's card; for ONNX also its inputs, outputs, opset, size and sha256.
    Exit 1 when the card is invalid or contradicts the graph or the weights."""
    from leakhunter.card import stopped_by
    from leakhunter.inference import describe_model
    from leakhunter.inference.describe import card_rows

    if not model.is_file():
        raise fail(not_a_model_file(model))
    described = describe_model(model)
    stopped = stopped_by(described.get("training"))
    if stopped:  # on stderr: --json's stdout stays one JSON object
        warn(f"{model}: {stopped}")
    if as_json:
        print(json.dumps(described, indent=2))
        return
    facts = described.pop("file")
    table = Table(title=f"{model} ({facts['format']})", show_header=False)
    for key, text in card_rows(described):
        table.add_row(key, text)
    console.print(table)
    table = Table(show_header=False)
    for key, value in facts.items():
        if key in ("inputs", "outputs"):
            value = ", ".join(f"{tensor['name']} {tensor['dtype']} {tensor['shape']}" for tensor in value)
        if key not in ("path", "format"):
            table.add_row(key, str(value))
    console.print(table)


@command(app, "export")  # bad input 2; a refused export (parity) 1, below
def export(
    checkpoint: Path = typer.Argument(..., help="A best.pth from `leak train`."),
    output: Path = typer.Option(None, "--output", "-o", help="The .onnx to write (default: beside the checkpoint)."),
    input_kind: str = typer.Option("waveform", "--input", help="Graph input: waveform (front-end inside, needs "
                                                              "only onnxruntime) or mel."),
    opset: int = typer.Option(18, help="ONNX opset, 18 or newer."),
    fp16: bool = typer.Option(False, "--fp16", help="Float16 network (the DFT stays float64; mel, dB and softmax float32)."),
    int8: bool = typer.Option(False, "--int8", help="Dynamic int8 quantisation of the network's dense layers."),
    allow_stopped: bool = typer.Option(False, "--allow-stopped", help="Export the best.pth of a run a health check "
                                                                      "stopped (refused otherwise)."),
):
    """Export to one .onnx file carrying the model card; kept only when it scores the golden recordings
    like torch (fp32: |Δ P(LEAK)| <= 1e-4, same verdicts). Writes <model>.parity.json beside it."""
    from leakhunter.export import ExportError, export_model

    if not checkpoint.is_file():
        raise fail(not_a_model_file(checkpoint, ("best.pth",)))
    try:
        report = export_model(checkpoint, output, input=input_kind, opset=opset, fp16=fp16, int8=int8,
                              allow_stopped=allow_stopped)
    except ExportError as error:
        if error.report is not None:
            console.print(parity_table(error.report))
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
