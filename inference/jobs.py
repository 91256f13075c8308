"""Folder jobs of `leak serve`: `leak predict` on folders under the server's data root, run by the one batch
runner (inference.predict.score_batch), with the rows, resume and bad-file handling of the CLI.

A job is a JSON file in the jobs folder, rewritten on every change of state, so a server that restarts finds
its queued and running jobs and resumes them from their output tables. Jobs run one at a time; each takes
turns with the uploads for the engine, a chunk of files per turn, so an upload never waits for a whole job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from leakhunter.errors import InputError, LeakhunterError
from leakhunter.files import LockFile, write_atomic
from leakhunter.inference.engine import ScoringEngine
from leakhunter.inference.outputs import json_record, read_table
from leakhunter.inference.predict import check_out, find_inputs, manifest_fields, score_batch, table_lock
from leakhunter.sources import printable

ACTIVE_STATES = ("queued", "running")
MAX_JOB_INPUTS = 1000  # files, folders, patterns or manifests per job: discovery is bounded, cancel comes soon
CHUNK_FILES = 64  # files per turn: an upload waits at most for this many files of a job
CHUNK_BYTES = 64 << 20  # ... or this much audio (long recordings)

log = logging.getLogger("leakhunter.serve")


class JobError(LeakhunterError, ValueError):
    """A job request the server refuses; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class JobCancelled(Exception):
    """Raised between two rows of a job whose cancel was asked for: its table stays resumable."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def client_record(row: dict, columns: tuple[str, ...]) -> dict:
    """A row as JSON for an HTTP client: a file name that is not UTF-8 as \\x escapes (JSON responses are UTF-8)."""
    return {key: printable(value) if isinstance(value, str) else value
            for key, value in json_record(row, columns).items()}


class Turns:
    """The engine scores one set of files at a time: uploads and job chunks take turns in the order they asked."""

    def __init__(self):
        self._changed = threading.Condition()
        self._waiting: deque[object] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        me = object()
        with self._changed:
            self._waiting.append(me)
            self._changed.wait_for(lambda: self._waiting[0] is me)
        try:
            yield
        finally:
            with self._changed:
                self._waiting.popleft()
                self._changed.notify_all()


class _JobEngine:
    """score_batch's view of the service's engine for one job: chunks of files, each scored in its own turn."""

    def __init__(self, engine: ScoringEngine, turns: Turns):
        self._engine, self._turns = engine, turns

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def score(self, paths: list[Path], png_for: dict | None = None):
        for chunk in _chunks(paths):
            with self._turns.turn():
                yield from self._engine.score(chunk, png_for)


def _chunks(paths: list[Path]) -> Iterator[list[Path]]:
    chunk, size = [], 0
    for path in paths:
        try:
            size += path.stat().st_size
        except OSError:
            pass  # a missing file still gets its row from the engine
        chunk.append(path)
        if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class Job:
    """What was asked (inputs, out: relative to the data root) and where it stands."""

    id: str
    seq: int  # submission order: jobs run oldest first, also after a restart
    inputs: list[str]
    out: str
    retry_failed: bool = True
    state: str = "queued"
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    total: int | None = None  # files found
    skipped: int = 0  # already in the table (resumed)
    scored: int = 0  # scored in this run
    statuses: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    audio_s: float = 0.0
    exit_code: int | None = None  # as `leak predict`'s: 0 all scored, 3 some files failed, 2 none could be
    empty_inputs: list[str] = field(default_factory=list)  # inputs that named no audio, one line each
    repeated_inputs: list[str] = field(default_factory=list)  # manifests that list a recording twice, one line each
    cancel_asked: bool = field(default=False, repr=False)

    def public(self) -> dict:
        data = asdict(self)
        data.pop("cancel_asked")
        data["done"] = self.skipped + self.scored
        return data


class JobStore:
    """The jobs of one server: validated against the data root, persisted in `folder`, run by run_jobs()."""

    def __init__(self, data_root: Path | None, folder: Path | None, max_jobs: int, keep_jobs: int = 1000):
        self.data_root = data_root.resolve() if data_root is not None else None
        self.folder, self.max_jobs, self.keep_jobs = folder, max_jobs, keep_jobs
        self._lock = threading.Condition()
        self.jobs: dict[str, Job] = {}
        self._folder_lock: LockFile | None = None
        if self.folder is not None:
            try:  # one server per jobs folder: two would run every job at once into one table
                self.folder.mkdir(parents=True, exist_ok=True)
                self._folder_lock = LockFile(self.folder / ".lock").acquire(
                    f"{self.folder}: another leak serve keeps its jobs here; stop it, or start this one with "
                    "its own --jobs-dir")
            except OSError as error:  # a read-only data root
                raise InputError(f"{self.folder}: cannot keep the jobs there ({error.strerror or error}); "
                                 "start the server with a writable --jobs-dir") from None
            for saved in sorted(self.folder.glob("*.json")):
                try:
                    job = Job(**{k: v for k, v in json.loads(saved.read_text()).items() if k != "done"})
                except (ValueError, TypeError) as error:
                    log.error("%s: not a job file, left alone (%s)", saved, error)
                    continue
                if job.state == "running":  # the server stopped under it: it resumes from its table, unless
                    job.state = "cancelled" if job.cancel_asked else "queued"  # its client had cancelled it
                    job.finished = _now() if job.cancel_asked else None
                self.jobs[job.id] = job
        self._forget_old()
        self._stopping = False

    def under_root(self, relative: str) -> Path:
        """A path of a request, inside the data root (after `..` and symlinks), or a 403."""
        if self.data_root is None:
            raise JobError("folder jobs are off: start the server with --data-root", 403)
        if "\x00" in relative:
            raise JobError(f"{relative!r}: a path cannot hold a NUL byte", 422)
        try:  # symlinks followed even where the file is yet to be written (an out through a link leads out)
            inside = (self.data_root / relative).resolve()
        except (RuntimeError, OSError):  # a symlink loop
            raise JobError(f"{relative}: a symlink loop", 422) from None
        if not inside.is_relative_to(self.data_root):
            raise JobError(f"{relative}: outside the data root", 403)
        return inside

    def for_client(self, text: str) -> str:
        """A message as a client may read it: paths under the data root relative to it, as requests give them."""
        if self.data_root is None:
            return text
        root = re.escape(str(self.data_root))  # the root itself (an input ".") is "."; /data/x is no prefix of /data/xy
        return re.sub(f"{root}(?=[:;,'\"\\s)]|$)", ".", re.sub(f"{root}{re.escape(os.sep)}", "", text))

    def submit(self, inputs: list[str], out: str, retry_failed: bool) -> Job:
        inputs = list(dict.fromkeys(inputs))  # the same folder listed 60,000 times is one folder
        if len(inputs) > MAX_JOB_INPUTS:
            raise JobError(f"inputs: {len(inputs)} where a job takes at most {MAX_JOB_INPUTS}; list the files in "
                           "a manifest CSV and give that", 422)
        roots = [self.under_root(item) for item in inputs]
        out_path = self.under_root(out)
        if not inputs:
            raise JobError("a job needs at least one input (files, folders or glob patterns under the data root)", 422)
        try:  # predict's rule, before the job is queued: a .csv or .jsonl that is none of the inputs
            check_out(out_path, roots, [], out)
        except InputError as error:
            raise JobError(f"out: {error}", 422) from None
        with self._lock:
            active = [job for job in self.jobs.values() if job.state in ACTIVE_STATES]
            if any(self.under_root(job.out) == out_path for job in active):
                raise JobError(f"out: another job is writing {out}; wait for it or cancel it", 409)
            if len(active) >= self.max_jobs:
                raise JobError(f"{len(active)} jobs are queued or running (--max-jobs {self.max_jobs})", 503)
            seq = max((job.seq for job in self.jobs.values()), default=0) + 1
            job = Job(id=uuid.uuid4().hex[:12], seq=seq, inputs=list(inputs), out=out, retry_failed=retry_failed)
            self.jobs[job.id] = job
            self._save(job)
            self._lock.notify_all()
        return job

    def listed(self) -> list[Job]:
        """Every remembered job, oldest first: a copy taken under the lock (a job submitted or forgotten meanwhile
        would change the dict under a request thread's iteration)."""
        with self._lock:
            return sorted(self.jobs.values(), key=lambda job: job.seq)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id}", 404)
        return job

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once, a running one between two rows; its table stays resumable (post
        the job again to continue it). A finished job is a 409: there is nothing left to cancel."""
        job = self.get(job_id)
        with self._lock:
            if job.state not in ACTIVE_STATES:
                raise JobError(f"job {job_id} is {job.state} already: nothing to cancel", 409)
            if job.state == "queued":
                job.state, job.finished = "cancelled", _now()
                self._save(job)
                self._forget_old()
            elif job.state == "running":
                job.cancel_asked = True
                self._save_or_log(job)
        return job

    def rows(self, job_id: str, columns: tuple[str, ...], offset: int, limit: int) -> dict:
        """The rows in the job's table so far, as JSON records (CSV cells are text, as stored)."""
        _, lines, _ = read_table(self.under_root(self.get(job_id).out), columns)
        return {"total": len(lines), "offset": offset,
                "rows": [client_record(row, columns) for row, _ in lines[offset: offset + limit]]}

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()  # a running job stops between two rows (a client's cancel still wins)

    def release(self) -> None:
        """After stop() and the job thread's end: the jobs folder is free for the next server."""
        if self._folder_lock is not None:
            self._folder_lock.release()

    def run_jobs(self, engine: ScoringEngine, turns: Turns, params: dict) -> None:
        """The job thread: one job at a time, oldest first, until stop(). `params` go to each table's
        params.json (the served model and settings)."""
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._next() is not None)
                if self._stopping:
                    return
                job = self._next()
                job.state, job.started, job.cancel_asked = "running", _now(), False
                self._save_or_log(job)
            self._run(job, engine, turns, params)

    def _next(self) -> Job | None:
        queued = [job for job in self.jobs.values() if job.state == "queued"]
        return min(queued, key=lambda job: job.seq) if queued else None

    def _run(self, job: Job, engine: ScoringEngine, turns: Turns, params: dict) -> None:
        def progress(row: dict, done: int, total: int) -> None:
            # New dicts, not updates: a request thread may be turning this job into JSON right now.
            job.scored, job.skipped = done, job.total - total  # total: the files left to score
            job.statuses = {**job.statuses, row["status"]: job.statuses.get(row["status"], 0) + 1}
            if row["status"] == "ok":
                job.verdicts = {**job.verdicts, row["verdict"]: job.verdicts.get(row["verdict"], 0) + 1}
                job.audio_s += float(row["duration_s"])
            if job.cancel_asked or self._stopping:
                raise JobCancelled

        job.scored, job.statuses, job.verdicts, job.audio_s, job.error = 0, {}, {}, 0.0, None
        state, error_text, outcome = "failed", None, None
        try:
            roots, out = [self.under_root(item) for item in job.inputs], self.under_root(job.out)
            found = find_inputs(roots, names=job.inputs)
            paths, job.empty_inputs, job.repeated_inputs = found.paths, found.empty, found.repeated
            check_out(out, roots, paths, job.out)
            outside = [path for path in paths if not path.is_relative_to(self.data_root)]
            if outside:  # named in the server's log only: where a link leads is no client's business
                log.warning("job %s: %d file(s) lead outside the data root, e.g. %s", job.id, len(outside),
                            printable(str(outside[0])))
                raise JobError(f"{len(outside)} file(s) named by {', '.join(map(printable, job.inputs))} lead "
                               "outside the data root (a symlink, or a manifest row with ..); the server's log "
                               "names them", 403)
            job.total = len(paths)
            # a listed manifest's columns (a fusion model's meta, a sensor_id), as in `leak predict`, for this job
            listed = manifest_fields(roots)  # conflicting rows refused
            listed = listed if engine.request_fields else {}
            if listed:
                engine.fields.add_manifest(listed)
            try:
                with table_lock(out):
                    summary = score_batch(paths, _JobEngine(engine, turns), out=out, resume=True,
                                          retry_failed=job.retry_failed, on_row=progress,
                                          warn=lambda text: log.warning("job %s: %s", job.id, self.for_client(text)),
                                          params={**params, "job": job.id, "inputs": job.inputs,
                                                  "empty_inputs": found.empty,
                                                  "repeated_inputs": found.repeated})
            finally:
                if listed:
                    engine.fields.forget(listed)
            state, outcome = "done", (summary.skipped, summary.exit_code)
        except JobCancelled:  # asked for, or the server is stopping: then the next start resumes it
            state = "queued" if self._stopping and not job.cancel_asked else "cancelled"
            if state == "queued":
                log.info("job %s stops with the server after %d rows; the next start resumes it", job.id, job.scored)
        except Exception as error:  # noqa: BLE001 - a job's failure is that job's state; the server goes on
            if self._stopping:  # the engine closed under it: not the job's fault, the next start resumes it
                state = "cancelled" if job.cancel_asked else "queued"
                log.warning("job %s stopped with the server (%s)%s", job.id, error,
                            "" if job.cancel_asked else "; the next start resumes it")
            elif isinstance(error, OSError):  # a table the server cannot write: the job's, said in one line
                log.error("job %s failed: %s", job.id, error)
                error_text = self.for_client(str(error))
            else:
                if not isinstance(error, LeakhunterError):
                    log.exception("job %s failed", job.id)
                error_text = self.for_client(str(error) if isinstance(error, LeakhunterError)
                                             else f"{type(error).__name__}: {error}")
        with self._lock:  # state and finish time change together: _forget_old must never see one without the other
            job.state, job.error = state, error_text
            if outcome is not None:
                job.skipped, job.exit_code = outcome
            job.finished = _now() if state != "queued" else None
            self._save_or_log(job)
            self._forget_old()

    def _forget_old(self) -> None:
        """Keep the newest `keep_jobs` finished jobs; older ones leave memory and the jobs folder (their tables
        stay), so a server that runs a job a minute for a year neither grows nor lists them all."""
        finished = sorted((job for job in self.jobs.values() if job.state not in ACTIVE_STATES and job.finished),
                          key=lambda job: (job.finished, job.seq), reverse=True)
        for job in finished[self.keep_jobs:]:
            del self.jobs[job.id]
            if self.folder is not None:
                try:
                    (self.folder / f"{job.id}.json").unlink(missing_ok=True)
                except OSError as error:  # read-only or gone: it is forgotten in memory all the same
                    log.error("job %s: cannot remove its record (%s)", job.id, error)

    def _save_or_log(self, job: Job) -> None:
        """In the jobs thread: a full disk must not end it; the state stays in memory and in the log."""
        try:
            self._save(job)
        except OSError as error:
            log.error("job %s: cannot save its state (%s)", job.id, error)

    def _save(self, job: Job) -> None:
        if self.folder is not None:
            # and a client's cancel of a running job: a server stopped before the job's next row must not run
            # it again at its next start
            write_atomic(self.folder / f"{job.id}.json",
                         json.dumps(job.public() | {"cancel_asked": job.cancel_asked}, indent=2))
