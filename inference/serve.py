"""`leak serve`: batch scoring over HTTP around the one scoring engine (inference.engine.ScoringEngine).

Uploads (POST /v1/score) are spooled to disk, never held in memory, and scored together with whatever other
uploads are waiting, so concurrent clients share the engine's batches; folder jobs (inference.jobs) run through
`leak predict`'s batch runner. Either way the rows are predict's rows. Every limit answers before any work is
taken on: 413 (too big, by Content-Length before the body is read, or while a chunked body streams in), 415 (not
a recording), 503 with Retry-After (queue full, or not ready yet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

import leakhunter
from leakhunter.devices import parse_device
from leakhunter.errors import InputError, LeakhunterError
from leakhunter.inference.engine import ScoringEngine, upload_name
from leakhunter.inference.jobs import JobError, JobStore, Turns, client_record
from leakhunter.inference.scorer import RecordingDecoder
from leakhunter.meta import check_meta_missing
from leakhunter.reference import SENSOR_FIELD
from leakhunter.sources import AUDIO_SUFFIXES

log = logging.getLogger("leakhunter.serve")

# What an upload's Content-Type says it is; application/octet-stream leaves it to the `name`'s suffix.
MEDIA_SUFFIXES = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav",
                  "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg", "application/ogg": ".ogg",
                  "audio/mpeg": ".mp3", "audio/mp3": ".mp3"}
UPLOADS_PER_TURN = 64  # uploads scored together in one engine call
RETRY_AFTER_S = 2
MAX_JOB_BYTES = 1 << 20  # a job request is a short JSON document
IDLE_CHECK_S = 1.0  # an idle server looks this often for decoding workers that died, and replaces them


@dataclass
class ServeSettings:
    model: Path
    device: str = "auto"
    workers: int = 2
    file_timeout: float = 60.0  # below request_timeout: a hanging file holds the engine until then
    threshold: float | None = None
    vote_fraction: float | None = None
    channel: str | None = None
    batch_rows: int | None = None
    sensitivity: str | None = None  # the card's operating point to score at (not with threshold)
    meta_missing: str = "score"  # a fusion model's meta field unknown: score it as unknown, or fail the row
    reference: Path | None = None  # a reference model's table of sensor references (leak reference build)
    data_root: Path | None = None
    jobs_dir: Path | None = None  # default: <data_root>/.leakhunter-jobs
    max_upload_mb: float = 200.0
    max_queue: int = 32  # uploads admitted at once (being received, waiting or being scored)
    max_jobs: int = 16  # folder jobs queued or running
    keep_jobs: int = 1000  # finished jobs remembered (the newest); older records are removed, their tables kept
    request_timeout: float = 300.0  # seconds an upload may wait for its row
    receive_timeout: float = 30.0  # seconds an upload's body may send nothing (a stalled link holds a slot)
    decoder_class: type[RecordingDecoder] = RecordingDecoder  # as predict(): importable by the worker processes

    def __post_init__(self):
        parse_device(self.device)
        check_meta_missing(self.meta_missing)
        if self.sensitivity is not None and self.threshold is not None:
            raise InputError(f"--sensitivity {self.sensitivity} and --threshold {self.threshold:g} both choose the "
                             f"threshold: give one of them")
        for name in ("workers", "max_queue", "max_jobs", "keep_jobs"):
            if getattr(self, name) < (0 if name == "workers" else 1):
                raise InputError(f"--{name.replace('_', '-')} must be >= {0 if name == 'workers' else 1}")
        if self.max_upload_mb <= 0 or self.request_timeout <= 0 or self.receive_timeout <= 0:
            raise InputError("--max-upload-mb, --request-timeout and --receive-timeout must be > 0")
        if not 0 < self.file_timeout < self.request_timeout:
            raise InputError(f"--file-timeout ({self.file_timeout:g} s) must be above 0 and below --request-timeout "
                             f"({self.request_timeout:g} s): a hanging file holds the engine until its timeout, and "
                             f"its client must get its `timeout` row, not a 504")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise InputError(f"--data-root {self.data_root}: not a folder")
        if self.jobs_dir is not None and self.data_root is None:
            raise InputError("--jobs-dir needs --data-root: jobs read and write under the data root only")
        if self.data_root is not None and self.jobs_dir is None:
            self.jobs_dir = Path(self.data_root) / ".leakhunter-jobs"


class ServeError(LeakhunterError, RuntimeError):
    """The server cannot serve: a warm-up that failed, a model that failed on a batch of uploads."""


SPOOL_PREFIX = "leakhunter-serve-"  # + the server's pid: a killed server's spool is found and removed by the next


def remove_dead_spools(folder: Path | None = None) -> None:
    """Remove the upload spools of servers that died without closing (SIGKILL, OOM): their pid is gone. A spool
    of a live process (or of a pid reused since) is left alone."""
    for spool in Path(folder or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = spool.name[len(SPOOL_PREFIX):].split("-")[0]
        if not pid.isdigit() or not spool.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(spool, ignore_errors=True)
            log.info("removed %s, the upload spool of a server that is gone", spool)
        except OSError:  # another user's live process
            continue


@dataclass
class _Upload:
    path: Path  # the spool file, alone in its own folder
    name: str
    future: Future
    fields: dict[str, str]  # given with the upload (query parameters): a fusion model's meta, a sensor_id


class Service:
    """The engine, the uploads waiting for it, the folder jobs, and whether all of it is ready."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.engine: ScoringEngine | None = None
        self.not_ready = "loading the model"  # None once ready
        self.fatal: Exception | None = None
        self.turns = Turns()
        self.jobs = JobStore(settings.data_root, settings.jobs_dir, settings.max_jobs, settings.keep_jobs)
        remove_dead_spools()
        self.spool = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-"))
        self._admitted = 0
        self._pending: list[_Upload] = []
        self._changed = threading.Condition()
        self._closing = False
        self._threads: list[threading.Thread] = []

    # ---- life --------------------------------------------------------------------------------------------
    def start(self, on_fatal=None) -> None:
        """Load and warm up in the background (healthz answers meanwhile; readyz says 503 until it is done)."""
        def load() -> None:
            try:
                self._load()
            except Exception as error:  # noqa: BLE001 - the server stops with this error (cli maps it)
                log.error("cannot serve %s: %s", self.settings.model, error)
                self.fatal, self.not_ready = error, f"failed to load: {error}"
                if on_fatal is not None:
                    on_fatal()

        self._thread(load, "leakhunter-load")

    def _load(self) -> None:
        settings = self.settings
        self.engine = ScoringEngine(settings.model, settings.device, workers=settings.workers,
                                    file_timeout=settings.file_timeout, threshold=settings.threshold,
                                    vote_fraction=settings.vote_fraction, channel=settings.channel,
                                    batch_rows=settings.batch_rows, decoder_class=settings.decoder_class,
                                    sensitivity=settings.sensitivity, meta_missing=settings.meta_missing,
                                    reference=settings.reference)
        self.not_ready = "warming up"
        warm = self._warm_up()
        if warm["status"] != "ok":
            raise ServeError(f"the warm-up recording was not scored: {warm['status']} {warm['message']}")
        self._thread(self._score_uploads, "leakhunter-uploads")
        params = {"model": str(settings.model), "device": settings.device, "workers": settings.workers,
                  "file_timeout": settings.file_timeout, "served": True}
        self._thread(lambda: self.jobs.run_jobs(self.engine, self.turns, params), "leakhunter-jobs")
        self.not_ready = None
        log.info("ready: %s on %s (%s), %d decoding worker(s)", settings.model, self.engine.runner.device,
                 self.engine.runner.backend, settings.workers)
        stopped = self.engine.scorer.card.stopped_by()
        if stopped:
            log.warning("%s: %s", settings.model, stopped)

    def _warm_up(self) -> dict:
        """Score a few seconds of quiet noise through the whole path (workers, model on its device)."""
        card = self.engine.card
        rate = card.frontend.sample_rate
        seconds = 2 * card.segmentation.long_samples / rate
        noise = 0.01 * np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32)
        path = self.spool / "warm-up.wav"
        soundfile.write(path, noise, rate)
        # a meta model's warm-up has the usual meta (so a --meta-missing fail server starts), a reference model's
        # is a recording of the table's first sensor
        meta, reference = self.engine.meta, self.engine.reference
        fields = ({path: meta.spec.usual()} if meta is not None else
                  {path: {SENSOR_FIELD: min(reference.references)}} if reference is not None else None)
        try:
            with self.turns.turn():
                return next(self.engine.score_uploads({path: path.name}, fields))[1].row
        finally:
            path.unlink(missing_ok=True)

    def _thread(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop taking work; a running job stops between two rows and is queued again for the next start."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self.jobs.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.engine is not None:
            self.engine.close()
        if not any(thread.is_alive() for thread in self._threads if thread.name == "leakhunter-jobs"):
            self.jobs.release()  # else the process's exit frees the folder: a job thread may still save there
        shutil.rmtree(self.spool, ignore_errors=True)

    def readiness(self, workers: bool = True) -> str | None:
        """None when ready; else why not (the body of readyz's 503). Work is taken on without looking at the
        workers (`workers=False`): a worker that a file just crashed is being replaced, and that file's
        neighbours must not get 503s for it."""
        if self.not_ready is not None:
            return self.not_ready
        requested, runner = parse_device(self.settings.device), self.engine.runner
        stopped = [thread.name for thread in self._threads[1:] if not thread.is_alive()]
        if stopped and not self._closing:
            return f"{', '.join(stopped)} stopped (see the log)"
        if requested.kind == "cuda" and not runner.device.startswith("cuda"):
            return f"{self.settings.device} was asked for, but scoring runs on {runner.device}"
        pool = self.engine.pool
        if workers and pool is not None and pool.alive() < pool.size:
            return f"{pool.alive()} of {pool.size} decoding workers alive"
        return None

    # ---- uploads -----------------------------------------------------------------------------------------
    def admit(self) -> bool:
        with self._changed:
            if self._admitted >= self.settings.max_queue:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._changed:
            self._admitted -= 1

    def submit(self, path: Path, name: str, fields: dict[str, str] | None = None) -> Future:
        upload = _Upload(path, name, Future(), fields or {})
        with self._changed:
            self._pending.append(upload)
            self._changed.notify_all()
        return upload.future

    def _score_uploads(self) -> None:
        """The uploads thread: whatever uploads wait when its turn of the engine comes are scored together (taken
        then, not before queueing for it: an upload that came while a job's chunk ran waits for that chunk only)."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closing or self._pending, timeout=IDLE_CHECK_S)
                if self._closing:
                    return
            with self.turns.turn():  # the engine and its pool are touched in a turn only
                with self._changed:
                    taken, self._pending = self._pending[:UPLOADS_PER_TURN], self._pending[UPLOADS_PER_TURN:]
                # Only now: an upload whose client gave up (504) while the engine was busy is not scored.
                live = {upload.path: upload for upload in taken if upload.future.set_running_or_notify_cancel()}
                try:
                    if not live and self.engine.pool is not None:
                        self.engine.pool.replace_dead()
                    elif live:
                        for spooled, result in self.engine.score_uploads({p: u.name for p, u in live.items()},
                                                                         {p: u.fields for p, u in live.items()}):
                            live[spooled].future.set_result(result.row)
                except Exception as error:  # noqa: BLE001 - the model failed (or no worker starts): a 500 saying why
                    log.error("scoring uploads failed: %s", _named(str(error), live, None))
                    for spooled, upload in live.items():
                        if not upload.future.done():
                            upload.future.set_exception(ServeError(_named(str(error), live, spooled)))


def _named(message: str, uploads: dict, own: Path | None) -> str:
    """A message with spool paths replaced: by each upload's name for the log, and for a client by its own
    upload's name only (`own`); another client's upload is "another upload"."""
    for spooled, upload in uploads.items():
        message = message.replace(str(spooled), upload.name if own in (None, spooled) else "another upload")
    return message


class JobRequest(BaseModel):
    """POST /v1/jobs: paths relative to the server's data root (files, folders, glob patterns, manifest CSVs)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(min_length=1)
    out: str
    retry_failed: bool = True


def refuse_declared(request: Request, limit: int, message: str) -> None:
    """A 413 before reading anything when the request's Content-Length is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, message)


async def limited_chunks(request: Request, limit: int, message: str, idle_s: float) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, with a running count: a 413 once it passes `limit` bytes, whatever it
    declared (a chunked upload declares nothing); a 408 once `idle_s` seconds pass without a byte, so a stalled
    link (a logger on a dropped cellular connection) frees its --max-queue slot instead of holding it for ever;
    a client that went away mid-body is one log line, not an ASGI traceback."""
    size, chunks = 0, request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(408, f"no byte of the body for --receive-timeout {idle_s:g} s after {size} bytes; "
                                     "send it again") from None
        except ClientDisconnect:
            log.info("%s %s: the client went away after %d bytes of its body", request.method, request.url.path, size)
            raise HTTPException(400, "the client went away before its body arrived") from None
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, message)
        yield chunk


async def read_at_most(request: Request, limit: int, message: str, idle_s: float) -> bytes:
    """A small body (a job request): refused by its Content-Length, or while it is read."""
    refuse_declared(request, limit, message)
    return b"".join([chunk async for chunk in limited_chunks(request, limit, message, idle_s)])


def _unavailable(reason: str) -> HTTPException:
    return HTTPException(503, reason, headers={"Retry-After": str(RETRY_AFTER_S)})


def upload_suffix(content_type: str | None, name: str | None) -> str:
    """The suffix an upload is spooled with, from its Content-Type and `name`; a 415 when neither says audio
    leakhunter reads, or when the two disagree."""
    media = (content_type or "").split(";")[0].strip().lower()
    name_suffix = Path(name).suffix.lower() if name else ""
    if name_suffix and name_suffix not in AUDIO_SUFFIXES:
        raise HTTPException(415, f"name {name!r}: not one of {', '.join(AUDIO_SUFFIXES)}")
    if media == "application/octet-stream" and name_suffix:
        return name_suffix
    if media not in MEDIA_SUFFIXES:
        raise HTTPException(415, f"Content-Type {media or '(none)'!r} is not audio leakhunter reads: send one of "
                                 f"{', '.join(sorted(set(MEDIA_SUFFIXES)))}, or application/octet-stream with "
                                 f"?name=<file name with its suffix>")
    if name_suffix and name_suffix != MEDIA_SUFFIXES[media]:
        raise HTTPException(415, f"Content-Type {media} does not match the name {name!r}")
    return MEDIA_SUFFIXES[media]


def upload_fields(request: Request, engine) -> dict[str, str]:
    """An upload's fields for a model that takes some (a fusion model's meta fields, a reference model's
    sensor_id): every query parameter but `name`, each one of the model's fields, once, not empty. Any other
    model takes no query parameter but `name`: a `?threshold=0.1` a client believes in would be ignored, its
    verdicts at the server's threshold (which `leak serve --threshold` or `--sensitivity` sets)."""
    fields = engine.request_fields
    given = [(key, value) for key, value in request.query_params.multi_items() if key != "name"]
    if not fields:
        if given:
            raise HTTPException(422, f"query parameters {', '.join(sorted({key for key, _ in given}))}: this model "
                                     "takes none but `name` (its threshold and operating point are the server's: "
                                     "leak serve --threshold or --sensitivity)")
        return {}
    keys = [key for key, _ in given]
    problems = [f"{', '.join(names)}: {why}" for names, why in (
        (sorted(set(keys) - set(fields)), "not one of the model's fields"),
        (sorted({key for key in keys if keys.count(key) > 1}), "given more than once"),
        (sorted({key for key, value in given if not value.strip()}), "empty (leave a field out when it is unknown)"))
        if names]
    if problems:
        raise HTTPException(422, f"query parameters {'; '.join(problems)} (the model's fields: "
                                 f"{', '.join(fields)}; and `name`)")
    return dict(given)


def create_app(service: Service, on_fatal=None) -> FastAPI:
    settings = service.settings
    max_bytes = int(settings.max_upload_mb * (1 << 20))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start(on_fatal)
        yield
        await asyncio.to_thread(service.close)

    app = FastAPI(title="leakhunter", version=leakhunter.__version__, lifespan=lifespan,
                  description="Batch scoring of pipe recordings: the rows of `leak predict`, over HTTP.")

    def require_ready() -> None:
        reason = service.readiness(workers=False)
        if reason is not None:
            raise _unavailable(f"not ready: {reason}")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        reason = service.readiness()
        if reason is not None:
            raise HTTPException(503, f"not ready: {reason}")
        runner = service.engine.runner
        return {"ready": True, "device": runner.device, "backend": runner.backend, "workers": settings.workers}

    @app.get("/v1/model")
    def model() -> dict:
        require_ready()
        engine = service.engine
        return {"path": str(settings.model), "sha256": engine.runner.sha256, "backend": engine.runner.backend,
                "device": engine.runner.device, "threshold": engine.scorer.threshold,
                "sensitivity": engine.scorer.sensitivity, "vote_fraction": engine.scorer.vote_fraction, "channel": engine.scorer.channel,
                "columns": list(engine.scorer.columns), "card": engine.card.to_dict()}

    @app.post("/v1/score")
    async def score(request: Request, name: str | None = Query(None, description="the recording's file name")):
        require_ready()
        fields = upload_fields(request, service.engine)
        suffix = upload_suffix(request.headers.get("content-type"), name)
        refuse_declared(request, max_bytes, f"upload of {request.headers.get('content-length')} bytes is over "
                                            f"--max-upload-mb {settings.max_upload_mb:g}")
        if not service.admit():
            raise _unavailable(f"{settings.max_queue} uploads are being scored (--max-queue); retry later")
        folder = None
        try:
            folder = Path(tempfile.mkdtemp(dir=service.spool))
            name = upload_name(name or f"upload{suffix}")
            with open(folder / name, "wb") as handle:
                async for chunk in limited_chunks(request, max_bytes, f"upload is over --max-upload-mb "
                                                                      f"{settings.max_upload_mb:g}",
                                                  settings.receive_timeout):
                    handle.write(chunk)
            future = service.submit(folder / name, name, fields)
            try:
                row = await asyncio.wait_for(asyncio.wrap_future(future), settings.request_timeout)
            except TimeoutError:
                raise HTTPException(504, f"{name}: no row within --request-timeout "
                                         f"{settings.request_timeout:g} s") from None
            except LeakhunterError as error:
                raise HTTPException(500, f"{name}: {error}") from error
            return client_record(row, service.engine.scorer.columns)
        except InputError as error:
            raise HTTPException(422, str(error)) from error
        finally:
            service.release()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def job_call(call, *args):
        try:
            return call(*args)
        except JobError as error:
            raise (_unavailable(str(error)) if error.status == 503 else HTTPException(error.status, str(error))) \
                from error
        except LeakhunterError as error:  # e.g. a table at `out` with another model's columns
            raise HTTPException(409, service.jobs.for_client(str(error))) from error

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request) -> dict:
        """The body is JSON whatever its Content-Type says (`curl -d` sends a form type)."""
        require_ready()
        body = await read_at_most(request, MAX_JOB_BYTES, "a job request is at most 1 MB of JSON",
                                  settings.receive_timeout)
        try:
            job = JobRequest.model_validate_json(body)
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False)) from None
        return job_call(service.jobs.submit, job.inputs, job.out, job.retry_failed).public()

    @app.get("/v1/jobs")
    def list_jobs() -> dict:
        return {"jobs": [job.public() for job in service.jobs.listed()]}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        return job_call(service.jobs.get, job_id).public()

    @app.get("/v1/jobs/{job_id}/rows")
    def job_rows(job_id: str, offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)) -> dict:
        require_ready()
        return job_call(service.jobs.rows, job_id, service.engine.scorer.columns, offset, limit)

    @app.delete("/v1/jobs/{job_id}", status_code=202)
    def cancel_job(job_id: str) -> dict:
        return job_call(service.jobs.cancel, job_id).public()

    return app


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the service until interrupted; a model that cannot be loaded stops it with that error."""
    import uvicorn

    if not Path(settings.model).is_file():
        raise InputError(f"{settings.model}: no such model file")
    if not log.handlers:  # uvicorn's format, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
    log.setLevel(log_level.upper())
    listening = bind_port(host, port)  # before the model loads: a port in use is one line and exit 2
    try:
        service = Service(settings)
    except BaseException:
        for sock in listening:
            sock.close()
        raise
    server: uvicorn.Server | None = None

    def stop() -> None:
        server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(service, on_fatal=stop), host=host, port=port,
                                           log_level=log_level, timeout_graceful_shutdown=10))
    server.run(sockets=listening)
    if service.fatal is not None:
        raise service.fatal


def bind_port(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, bound as asyncio binds them for uvicorn (one per address the host resolves to:
    `localhost` is 127.0.0.1 and ::1; IPv6 ones v6-only); a port another process holds, or a host this
    machine does not have, is an InputError, where uvicorn logged a bind error, exited 3 and logged "ready"."""
    bound: list[socket.socket] = []
    try:
        addresses = {(family, address) for family, _, _, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
        for family, address in sorted(addresses, key=str):
            sock = socket.socket(family, socket.SOCK_STREAM)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as error:
        for sock in bound:
            sock.close()
        raise InputError(f"{host}:{port}: cannot listen there ({error.strerror or error}); is another server on "
                         "it? Choose another --port") from None
    return bound
