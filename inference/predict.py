"""Batch scoring (`leak predict`): discovery, resume, the row writer and the timelines around the one scoring
engine (leakhunter.inference.engine: decoding in isolated workers, batches across files, the vote of
leakhunter.voting that training selected the model with).

Every input file gets exactly one row, bad files included; rows are written as they are produced; a
killed run resumes to the same table. No preprocessing option exists: everything comes from the card.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import leakhunter
from leakhunter.errors import InputError
from leakhunter.files import LockFile, write_atomic
from leakhunter.inference.engine import ScoringEngine
from leakhunter.inference.outputs import RETRIED_STATUSES, RowWriter, prepare_resume, resume_key, settings_of
from leakhunter.inference.scorer import RecordingDecoder

if TYPE_CHECKING:
    from leakhunter.inference.ray_engine import RayOptions
from leakhunter.sources import (
    AUDIO_SUFFIXES,
    Listings,
    check_output_name,
    find_audio,
    is_pattern,
    printable,
    read_manifest,
    refuse_replacing_inputs,
    resolved,
)


class PredictError(InputError):
    """Nothing to score (no inputs, an unreadable manifest): the message says what was looked at."""


def manifest_fields(inputs: list[str | Path]) -> dict[Path, dict[str, str]]:
    """The columns of every manifest among the inputs, by recording (resolved): a fusion model's meta or a
    reference model's sensor_id may be there. A recording listed again with another value of such a column is
    refused, naming both rows (sources.Listings; its label, group and split do not matter here)."""
    listed = Listings(ignored=("path", "label", "group", "split"))
    for item in inputs:
        if Path(item).suffix.lower() == ".csv" and Path(item).is_file():
            for row in read_manifest(item):
                listed.add(item, row)
    return listed.fields


@dataclass(frozen=True)
class FoundInputs:
    """The audio paths the inputs name (resolved, each once, in a stable order) and, one line each, the inputs
    that named none: a folder without audio, a pattern that matched no file, a manifest without rows. Among
    other inputs such a typo or an empty night's folder would otherwise add nothing and say nothing. `repeated`:
    one line per manifest that lists a recording more than once (a bad join or a concatenated export), which
    gets one row: the table then has fewer rows than the manifest."""
    paths: list[Path]
    empty: list[str]
    repeated: list[str] = field(default_factory=list)


def find_inputs(inputs: list[str | Path], names: list[str] | None = None) -> FoundInputs:
    """Files, folders (searched recursively for audio), glob patterns and manifest CSVs (a `path` column,
    relative to the manifest) → audio paths in a stable order, each once. `names`: how the messages call each
    input (a service's inputs as its client gave them, not as resolved under its data root)."""
    found: list[Path] = []
    empty: list[str] = []
    repeated: list[str] = []
    for item, name in zip(map(str, inputs), names or inputs):
        path = Path(item)
        if path.is_dir():
            named = find_audio(path)
            why = f"a folder with no audio files ({', '.join(AUDIO_SUFFIXES)})"
        elif path.suffix.lower() == ".csv" and path.is_file():
            named = [row.path for row in read_manifest(path)]
            why = "a manifest with no rows"
            repeat = repeated_note(named)
            if repeat:  # each caller says what becomes of them, as of an empty input
                repeated.append(f"{printable(str(name))}: {repeat}")
        elif is_pattern(item):  # audio files only, as in a folder: night/* beside its README or the table
            named = sorted(Path(p) for p in glob.glob(item, recursive=True)
                           if Path(p).suffix.lower() in AUDIO_SUFFIXES and Path(p).is_file())
            why = f"a pattern that matches no audio file ({', '.join(AUDIO_SUFFIXES)})"
        else:
            named, why = [path], ""  # a missing file still gets its row (status "missing")
        found += named
        if not named:
            empty.append(f"{printable(str(name))}: {why}")
    unique = list(dict.fromkeys(resolved(p) for p in found))
    if not unique:
        raise PredictError("no audio files to score: " + "; ".join(empty))
    return FoundInputs(unique, empty, repeated)


def repeated_note(listed: list[Path]) -> str:
    """What a manifest's paths list more than once (the same recording however spelt), named as listed; "" if
    nothing."""
    spelt: dict[Path, Path] = {}
    times = Counter()
    for path in listed:
        target = resolved(path)
        spelt.setdefault(target, path)
        times[target] += 1
    again = [target for target, n in times.items() if n > 1]
    if not again:
        return ""
    what = "a recording" if len(again) == 1 else f"{len(again)} recordings"
    return f"lists {what} more than once ({printable(spelt[again[0]].name)} {times[again[0]]} times)"


OUTPUT_SUFFIXES = (".csv", ".jsonl")  # what a table is written as (RowWriter): CSV, or one JSON object a line


def check_out(out: Path, inputs: list[str | Path], paths: list[Path], name: str | None = None) -> None:
    """A table is a .csv or .jsonl that does not replace what it scores: another suffix (an audio name above
    all), a listed recording or an input manifest (`--out night.csv` with night.csv as the input) is refused
    before anything is written. `name`: how messages call the table (a service's as its client gave it)."""
    check_output_name(out, "a table", OUTPUT_SUFFIXES, name)
    refuse_replacing_inputs(out, inputs, paths, name)


@dataclass
class PredictSummary:
    out: Path | None
    rows: list[dict]
    skipped: int  # already in the output (--resume)
    wall_s: float
    audio_s: float
    statuses: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    kept_statuses: Counter = field(default_factory=Counter)  # of the rows --resume kept from the earlier table
    empty_inputs: list[str] = field(default_factory=list)  # FoundInputs.empty: inputs that named no audio

    @property
    def exit_code(self) -> int:
        """Of the whole table, kept rows included: 0 all scored, 3 some files failed, 2 nothing could be scored."""
        table = self.statuses + self.kept_statuses
        failed = sum(n for status, n in table.items() if status != "ok")
        if failed and failed == sum(table.values()):
            return 2
        return 3 if failed else 0


def predict(inputs: list[str | Path], model: str | Path, out: str | Path | None = None, device: str = "auto",
            threshold: float | None = None, vote_fraction: float | None = None, workers: int | None = None,
            file_timeout: float | None = 600.0, resume: bool = False, timeline: bool = False,
            channel: str | int | None = None, on_row: Callable[[dict, int, int], None] | None = None,
            retry_failed: bool = True, batch_rows: int | None = None,
            decoder_class: type[RecordingDecoder] = RecordingDecoder, engine: str = "local",
            ray_options: RayOptions | None = None, sensitivity: str | None = None, meta: str | Path | None = None,
            meta_missing: str = "score", reference: str | Path | None = None,
            warn: Callable[[str], None] | None = None) -> PredictSummary:
    """Score every input file; rows go to `out` (.csv or .jsonl) as they are produced and are returned.

    resume: keep the rows already in `out` and score the rest; rows of files that timed out, crashed
    their worker or raised (RETRIED_STATUSES) are scored again unless retry_failed is False.
    decoder_class: a RecordingDecoder subclass (importable by worker processes) to decode with instead.
    engine: "local" (this process; workers default 2) or "ray" (actors on a Ray cluster, `ray_options`; workers
    per actor, default from its CPUs): the same rows either way.
    sensitivity: score at the card's operating point of that name (`high`, `balanced`, `low-false-alarm`) instead
    of its calibrated threshold; every row says which (`sensitivity` column). Not with `threshold`.
    meta, meta_missing: a fusion model's meta input: a sidecar CSV (path + fields), then the columns of the manifests
    among `inputs` (local engine), then the file names; "fail" refuses a recording with an unknown field.
    reference: a reference model's table of sensor references (`leak reference build`); a recording is judged
    against the reference of the sensor its logger name names (status no_reference when the table lacks it).
    warn: told, before anything is scored, of each input that named no audio (also in the summary) and of a
    model whose training run a health check stopped.
    """
    if timeline and out is None:
        raise PredictError("--timeline needs --out: the timeline is written beside the table, as "
                           "<out>.timeline.jsonl and <out>.timeline/*.png")
    if resume and out is None:
        raise PredictError("--resume needs --out: it continues an existing output file")
    if engine not in ("local", "ray"):
        raise PredictError(f"unknown engine {engine!r}: local or ray")
    if ray_options is not None and engine != "ray":
        raise PredictError("Ray options (--address, --actors, --cpus-per-actor, --gpus-per-actor, --files-per-batch) "
                           "need --engine ray")
    found = find_inputs(inputs)
    if out is not None:
        check_out(Path(out), inputs, found.paths)
    # the table's lock before the model loads: a busy table is refused at once, before any warning about it
    with table_lock(Path(out)) if out is not None else nullcontext():
        for line in found.empty if warn is not None else ():
            warn(f"{line}: nothing is scored from it")
        for line in found.repeated if warn is not None else ():
            warn(f"{line}; each gets one row")
        if out is not None and not resume and Path(out).is_file() and Path(out).stat().st_size and warn is not None:
            warn(f"{out}: the table there is replaced (--resume would continue it)")
        listed = manifest_fields(inputs)  # refused here, before any worker starts
        started = time.perf_counter()
        settings = dict(file_timeout=file_timeout, threshold=threshold, vote_fraction=vote_fraction, channel=channel,
                        timeline=timeline, batch_rows=batch_rows, decoder_class=decoder_class, sensitivity=sensitivity,
                        meta=meta, meta_missing=meta_missing, reference=reference)
        if engine == "ray":
            from leakhunter.inference.ray_engine import RayEngine

            scoring = RayEngine(model, device, ray_options, workers=workers, **settings)
        else:
            scoring = ScoringEngine(model, device, workers=2 if workers is None else workers, **settings)
        stopped = scoring.scorer.card.stopped_by()
        if stopped and warn is not None:
            warn(f"{model}: {stopped}")
        if scoring.request_fields:  # a manifest's columns: a fusion model's meta, a reference model's sensor_id
            scoring.fields.add_manifest(listed)
        with scoring:
            params = {"model": str(model), "device": device, "workers": scoring.workers, "file_timeout": file_timeout,
                      "inputs": [str(i) for i in inputs], "empty_inputs": found.empty,
                      "repeated_inputs": found.repeated}
            summary = score_batch(found.paths, scoring, out=out, resume=resume, retry_failed=retry_failed, warn=warn,
                                  on_row=on_row, params=params, started=started)
        summary.empty_inputs = found.empty
        return summary


def score_batch(paths: list[Path], engine: ScoringEngine, out: str | Path | None = None, resume: bool = False,
                retry_failed: bool = True, on_row: Callable[[dict, int, int], None] | None = None,
                params: dict | None = None, started: float | None = None,
                warn: Callable[[str], None] | None = None) -> PredictSummary:
    """The batch runner around an engine, shared by `leak predict` and the service's folder jobs: resume, the
    row writer, the timelines (when the engine's scorer makes them), params.json and the summary. The engine
    stays open (a service keeps one); stopping the iteration early (on_row raising) leaves a resumable table.
    The caller holds table_lock(out), so that no other run writes the table meanwhile. `warn`: told, before
    anything is scored, when a resume scores files again because the model or its settings changed, and when it
    keeps rows of other files that another model scored (the table then mixes models)."""
    out = Path(out) if out is not None else None
    started = time.perf_counter() if started is None else started
    scorer = engine.scorer
    keys = {str(path): resume_key(scorer.base_row(path) | engine.recording_columns(path)) for path in paths}
    done_keys: set = set()
    kept_rows: list[dict] = []
    timeline_done = set()
    if scorer.timeline and out is not None and resume:  # an ok row counts as done with its line and its PNG
        pngs = {str(path): _TimelineWriter.folder_of(out) / name for path, name in png_names(paths).items()}
        timeline_done = {file for file in _TimelineWriter.files_in(out) if file in pngs and pngs[file].exists()}
    model_sha = scorer.model_sha256
    resettled, foreign = Counter(), Counter()  # rows scored with other settings: of these files, of others
    if out is not None and resume and out.exists():
        def keep(row: dict) -> bool:  # a row stays unless its file is to be scored again
            failed = retry_failed and row["status"] in RETRIED_STATUSES
            no_timeline = scorer.timeline and row["status"] == "ok" and str(row["file"]) not in timeline_done
            mine = keys.get(str(row["file"]))
            if mine is None and str(row["model_sha256"]) != model_sha:
                foreign[str(row["model_sha256"])[:16]] += 1
            elif mine is not None and settings_of(mine) != settings_of(resume_key(row)):  # scored another way
                resettled[str(row["model_sha256"])[:16]] += 1
            return not failed and not no_timeline and (mine or resume_key(row)) == resume_key(row)

        kept_rows = prepare_resume(out, scorer.columns, keep)
        done_keys = {resume_key(row) for row in kept_rows}
    if warn is not None and resettled:
        others = [sha for sha in resettled if sha != model_sha[:16]]
        how = (f"by another model (model {', '.join(others)}) or with other settings" if others else
               "with other settings")
        warn(f"{out}: {sum(resettled.values())} row(s) of these files were scored {how} (threshold, vote fraction, "
             "sensitivity, meta or reference): --resume scores them again with this run's")
    if warn is not None and foreign:
        warn(f"{out}: keeps {sum(foreign.values())} row(s) of other files that another model scored (model "
             f"{', '.join(foreign)}; this one is {model_sha[:16]}): the table mixes models (model_sha256 column); "
             "write another --out to keep them apart")
    todo = [p for p in paths if keys[str(p)] not in done_keys]
    writer = RowWriter(out, scorer.columns, append=resume) if out is not None else None
    timelines = None
    if scorer.timeline and out is not None:
        scored_ok = {str(row["file"]) for row in kept_rows if row["status"] == "ok"}
        timelines = _TimelineWriter(out, paths, append=resume, keep_files=scored_ok)
    if out is not None:
        _write_params(out, engine, params or {})
    summary = PredictSummary(out=out, rows=[], skipped=len(paths) - len(todo), wall_s=0.0, audio_s=0.0,
                             kept_statuses=Counter(row["status"] for row in kept_rows if str(row["file"]) in keys))
    png_for = {path: timelines.png_path(path) for path in todo} if timelines is not None else None
    try:
        for done_count, result in enumerate(engine.score(todo, png_for), start=1):
            row = result.row
            if timelines is not None and result.timeline is not None:
                timelines.write(result.timeline)  # first: a row in the table implies its timeline line
            if writer is not None:
                writer.write(row)
            summary.rows.append(row)
            summary.statuses[row["status"]] += 1
            if row["status"] == "ok":
                summary.verdicts[row["verdict"]] += 1
                summary.audio_s += float(row["duration_s"])
            if on_row is not None:
                on_row(row, done_count, len(todo))
    finally:
        summary.wall_s = time.perf_counter() - started
        if writer is not None:
            writer.close()
    return summary


def table_lock(out: Path) -> LockFile:
    """The lock a table is written under (`<out>.lock` while a run writes it): a second `leak predict`, a
    second server's job or a job and a predict on one table are refused instead of interleaving their rows."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return LockFile(out.with_name(out.name + ".lock")).acquire(
            f"{out}: another run is writing this table now (leak predict, or a leak serve job); wait for it to "
            "finish, or write another --out")
    except OSError as error:  # a read-only folder, a file where a folder should be
        file = next((above for above in out.parents if above.exists() and not above.is_dir()), None)
        why = f"{file} is a file, not a folder" if file is not None else error.strerror or str(error)
        raise PredictError(f"{out}: cannot write a table there ({why})") from None


def _write_params(out: Path, engine: ScoringEngine, params: dict) -> None:
    """The run's parameters beside the output, so a table can always be traced to its model and settings."""
    scorer = engine.scorer
    used = (engine.run_params() if hasattr(engine, "run_params") else  # RayEngine says what it runs with
            {"backend": engine.runner.backend, "device_used": engine.runner.device,
             "batch_rows": engine.batcher.batch_rows, "workers": engine.workers})
    params = {**params, "model_sha256": scorer.model_sha256, **used,
              "threshold": scorer.threshold, "sensitivity": scorer.sensitivity, "vote_fraction": scorer.vote_fraction,
              "card_threshold": scorer.card.voting.threshold, "channel": scorer.channel,
              "card_channel": scorer.card.channel_policy, "leakhunter_version": leakhunter.__version__,
              "started": datetime.now(UTC).isoformat(timespec="seconds")}
    write_atomic(out.with_name(out.name + ".params.json"), json.dumps(params, indent=2))


PNG_NAME_BYTES = 241  # a file name is at most 255 bytes, and a PNG is written as a temporary `.<name>.XXXXXXXX.tmp`


def png_names(paths: list[Path]) -> dict[Path, str]:
    """A timeline PNG name per input, unique and readable: the path below the inputs' common folder with
    its separators as "__" (night1/a.wav → night1__a.wav.png); a short hash of the full path is added
    where two names would still collide, and where a name would be too long for the file system (deep folders,
    long names), which then keeps the end of the recording's own name."""
    if not paths:
        return {}
    common = Path(os.path.commonpath([str(path.parent) for path in paths]))
    names = {path: "__".join(path.relative_to(common).parts) for path in paths}
    counts = Counter(names.values())
    chosen = {}
    for path, name in names.items():
        tag = hashlib.sha1(os.fsencode(path)).hexdigest()[:8]
        if len(os.fsencode(name)) + len(".png") > PNG_NAME_BYTES:
            tail = os.fsencode(path.name)[-(PNG_NAME_BYTES - len(f"{tag}..png")):]
            name = f"{tag}.{tail.decode('utf-8', 'ignore').lstrip('.')}"  # a cut multi-byte character dropped
        elif counts[name] > 1:
            name = f"{name}.{tag}"
        chosen[path] = name + ".png"
    return chosen


class _TimelineWriter:
    """`--timeline`: per-long-segment P(LEAK) as JSONL beside the output (one line per ok file), and a PNG per
    file, drawn by whoever scored it. On resume the JSONL is repaired like the table: a half-written last
    line and lines of files not kept as ok in the table are dropped, one line per file."""

    @staticmethod
    def jsonl_of(out: Path) -> Path:
        return out.with_name(out.stem + ".timeline.jsonl")

    @staticmethod
    def folder_of(out: Path) -> Path:
        return out.with_name(out.stem + ".timeline")

    @staticmethod
    def whole_lines(jsonl: Path) -> list[tuple[str, str]]:
        """(file, line) of every whole line (a half-written last one is not a line)."""
        if not jsonl.exists():
            return []
        data = jsonl.read_bytes()
        return [(str(json.loads(line)["file"]), line) for line in data[: data.rfind(b"\n") + 1].decode("utf-8")
                .split("\n") if line.strip()]

    @classmethod
    def files_in(cls, out: Path) -> set[str]:
        """The files the timeline JSONL beside `out` has a whole line for."""
        return {file for file, _ in cls.whole_lines(cls.jsonl_of(out))}

    def __init__(self, out: Path, paths: list[Path], append: bool, keep_files: set[str]):
        self.jsonl = self.jsonl_of(out)
        self.folder = self.folder_of(out)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names = png_names(paths)
        kept: dict[str, str] = {}
        for file, line in self.whole_lines(self.jsonl) if append else ():
            if file in keep_files:
                kept.pop(file, None)
                kept[file] = line + "\n"  # the latest line of a file wins
        write_atomic(self.jsonl, "".join(kept.values()))

    def png_path(self, path: Path) -> Path:
        return self.folder / self.names[path]

    def write(self, timeline: dict) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(timeline) + "\n")
