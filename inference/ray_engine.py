"""`leak predict --engine ray`: the one scoring engine on a Ray cluster (Ray Data actors), for fleets one box cannot
score in a night.

The driver discovers the inputs and applies --resume (leakhunter.inference.predict.score_batch, as for local
scoring); only paths travel. Each actor holds one long-lived ScoringEngine (its own isolated decoding workers, the
model loaded once from bytes shipped through the object store and checked by sha256), scores a batch of paths on
the shared filesystem and sends back the rows (and timelines) as JSON, which the driver writes with the project's
row writer as they arrive. A file that crashes or hangs a decoding worker costs its row inside the actor; an actor
that dies on a batch is replaced and the batch retried, and a batch that kills its actor every time gets
`worker_crash` rows, so the job goes on. `ray` is imported only when a RayEngine is made (the `ray` extra).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import leakhunter
from leakhunter.errors import InputError, LeakhunterError
from leakhunter.files import write_atomic
from leakhunter.inference.engine import ScoringEngine, recording_context, recording_sources
from leakhunter.inference.loader import read_card
from leakhunter.inference.scorer import FileResult, RecordingDecoder, RecordingScorer, check_options, file_stamp

FILES_PER_BATCH = 32  # per actor call (fewer where actors would idle): the engine packs pieces across them
SEND_SECONDS = 0.5  # an actor sends the rows it has at least this often, so the table grows while a batch runs
BATCH_RETRIES = 2  # a batch whose actor died is tried again on a fresh actor this many times
CPUS_PER_DECODER = 3  # the model needs about twice the CPU decoding does (README, "Scoring recordings")


class RayEngineError(LeakhunterError, RuntimeError):
    """The Ray job cannot go on (an actor cannot start, the model failed, the cluster is gone): --resume continues."""

    exit_code = 2


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to score. actors None: as many as the cluster's CPUs (and GPUs) hold at the start."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    files_per_batch: int = FILES_PER_BATCH

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise InputError(f"--actors must be at least 1, got {self.actors}")
        if not self.cpus_per_actor > 0:
            raise InputError(f"--cpus-per-actor must be more than 0, got {self.cpus_per_actor:g}")
        if not self.gpus_per_actor >= 0:
            raise InputError(f"--gpus-per-actor must be 0 or more, got {self.gpus_per_actor:g}")
        if self.gpus_per_actor > 1 and self.gpus_per_actor != int(self.gpus_per_actor):
            raise InputError(f"--gpus-per-actor above 1 must be a whole number, got {self.gpus_per_actor:g}")
        host, _, port = (self.address or "").removeprefix("ray://").rpartition(":")
        if self.address not in (None, "auto", "local") and not (host and port.isdigit()):
            raise InputError(f"--address {self.address}: expected host:port (a node of the cluster, e.g. head:6379) "
                             f"or ray://host:port (Ray Client, e.g. ray://head:10001)")
        if self.files_per_batch < 1:
            raise InputError(f"--files-per-batch must be at least 1, got {self.files_per_batch}")

    @property
    def model_threads(self) -> int:
        """onnxruntime/torch threads per actor: its CPUs (Ray does not stop a process using more)."""
        return max(1, int(self.cpus_per_actor))

    @property
    def decoding_workers(self) -> int:
        """Default decoding processes per actor: one per CPUS_PER_DECODER CPUs, at least one (crash isolation)."""
        return max(1, math.ceil(self.cpus_per_actor / CPUS_PER_DECODER))


def import_ray():
    """ray and ray.data, or a ModuleNotFoundError naming `ray` (the CLI then names the extra to install)."""
    try:
        import ray
        import ray.data  # noqa: F401 - pandas and pyarrow come with ray[data]
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("ray", "pyarrow", "pandas"):
            raise
        raise ModuleNotFoundError(f"--engine ray needs ray[data] ({error})", name="ray") from error
    return ray


def materialise_model(data: bytes, suffix: str, sha256: str) -> Path:
    """The shipped model as a file on this node (one per model, shared by the node's actors), checked by sha256."""
    path = Path(tempfile.gettempdir()) / "leakhunter-models" / f"{sha256}{suffix}"
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RayEngineError(f"the model bytes that reached {socket.gethostname()} do not have the driver's "
                             f"sha256 {sha256[:12]}...")
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        write_atomic(path, data)
    return path


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A RayEngineError at once when nothing answers at `address` (host:port or ray://host:port)."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RayEngineError(f"no Ray cluster answers at --address {address} ({error}): is `ray start --head` "
                             f"running there, and is the port open from here?") from None


class ScoringActor:
    """One Ray actor: a ScoringEngine made once from the shipped model; each call scores a batch of paths."""

    def __init__(self, model: list, suffix: str, sha256: str, version: str, engine_options: dict,
                 reference_digest: str | None = None):
        import ray

        if leakhunter.__version__ != version:
            raise RayEngineError(f"{socket.gethostname()} runs leakhunter {leakhunter.__version__}, the driver "
                                 f"{version}: install the same version on every node")
        path = materialise_model(ray.get(model[0]), suffix, sha256)
        self.engine = ScoringEngine(path, **engine_options)
        if self.engine.scorer.model_sha256 != sha256:
            raise RayEngineError(f"the model loaded on {socket.gethostname()} has sha256 "
                                 f"{self.engine.scorer.model_sha256[:12]}..., the driver's {sha256[:12]}...")
        table = self.engine.reference  # read from this node's mount: it must be the driver's table
        if (table.digest if table is not None else None) != reference_digest:
            raise RayEngineError(f"the reference table {engine_options.get('reference')} on "
                                 f"{socket.gethostname()} is not the driver's (sha256 {table.digest if table else None}"
                                 f" against {reference_digest}): every node must see the same file")

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The batch's results, sent back at least every SEND_SECONDS rather than at its end: each send is one JSON
        object in one row of one block (JSON keeps the rows' None, float and text exact)."""
        paths = [str(path) for path in batch["path"]]
        png_for = {path: str(png) for path, png in zip(paths, batch["png"]) if png}
        given = {path: json.loads(fields) for path, fields in zip(paths, batch["fields"]) if fields != "{}"}
        self.engine.fields.add_manifest(given)  # the driver's manifest columns: meta, sensor_id
        host, held, sent = socket.gethostname(), [], time.monotonic()
        try:
            folders = {str(Path(png).parent) for png in png_for.values()}
            unseen = [folder for folder in folders if not Path(folder).is_dir()]
            if unseen:
                raise RayEngineError(f"the timeline folder {unseen[0]} is not there: with --timeline, --out must be "
                                     f"on the filesystem every node shares (the actors draw the PNGs)")
            for result in self.engine.score(paths, png_for):
                held.append({"row": result.row, "timeline": result.timeline})
                if time.monotonic() - sent > SEND_SECONDS:
                    yield self._send(host, held)
                    held, sent = [], time.monotonic()
        except Exception as error:  # noqa: BLE001 - not a file's fault (the model failed): the driver stops the job
            yield self._send(host, held, failure=f"{type(error).__name__}: {error}")
            return
        finally:
            self.engine.fields.forget(given)
        if held:
            yield self._send(host, held)

    @staticmethod
    def _send(host: str, results: list[dict], failure: str | None = None) -> dict[str, np.ndarray]:
        return {"sent": np.array([json.dumps({"host": host, "results": results, "failure": failure})], dtype=object)}

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class RayEngine:
    """The surface of ScoringEngine that score_batch uses (.scorer, .score(), run_params()), scoring on Ray actors.
    Ray is started (or joined) at the first score() with work to do and left (stopped when started here) at close().
    Rows come back in completion order."""

    def __init__(self, model: str | Path, device: str = "auto", options: RayOptions | None = None,
                 workers: int | None = None, file_timeout: float | None = 600.0, threshold: float | None = None,
                 vote_fraction: float | None = None, channel: str | int | None = None, timeline: bool = False,
                 batch_rows: int | None = None, decoder_class: type[RecordingDecoder] = RecordingDecoder,
                 sensitivity: str | None = None, meta: str | Path | None = None, meta_missing: str = "score",
                 reference: str | Path | None = None):
        self.options = options or RayOptions()
        check_options(threshold, vote_fraction, workers, file_timeout)
        if workers is not None and workers < 1:
            raise InputError("--engine ray needs at least one decoding worker per actor (--workers 1 or more): "
                             "a file that crashes its decoder must cost its row, not the actor")
        if device.startswith("cuda") and self.options.gpus_per_actor == 0:
            raise InputError(f"--device {device} with --engine ray needs --gpus-per-actor (Ray gives an actor a "
                             f"GPU only when it asks for one)")
        if device == "cpu" and self.options.gpus_per_actor > 0:
            raise InputError("--gpus-per-actor with --device cpu would hold GPUs the actors never use")
        if batch_rows is not None and batch_rows < 1:
            raise InputError(f"batch_rows must be >= 1, got {batch_rows}")
        self.ray = import_ray()
        if not self.ray.is_initialized():
            check_reachable(self.options.address or os.environ.get("RAY_ADDRESS"))  # Ray retries for minutes
        self.model = Path(model)
        card, sha256, self.backend = read_card(self.model)  # no model session on the driver
        # a bad --meta, policy or reference table: refused here, not in an actor; manifests' columns are shipped
        # with each batch to the actors
        self.fields, self.meta, self.reference, self.request_fields = recording_sources(
            card, self.model, meta, meta_missing, reference, channel)
        self.scorer = RecordingScorer(card, sha256, threshold, vote_fraction, channel, timeline, sensitivity)
        # An actor without a GPU of its own scores on CPU, even on a node that has one (Ray did not give it one).
        self.device, self.batch_rows = device if self.options.gpus_per_actor else "cpu", batch_rows
        self.workers = self.options.decoding_workers if workers is None else workers
        self.engine_options = {"device": self.device, "workers": self.workers, "file_timeout": file_timeout,
                               "threshold": threshold, "vote_fraction": vote_fraction, "channel": channel,
                               "timeline": timeline, "batch_rows": batch_rows, "sensitivity": sensitivity,
                               "meta": None if meta is None else Path(meta).resolve(), "meta_missing": meta_missing,
                               "reference": None if reference is None else Path(reference).resolve(),
                               "threads": self.options.model_threads, "decoder_class": decoder_class}
        self._started_ray = False
        self._model_ref = None
        self.actors: int | None = self.options.actors

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._model_ref = None
        if self._started_ray:
            self.ray.shutdown()  # a local Ray started here stops; a cluster is only left
            self._started_ray = False

    def recording_columns(self, path: str | Path) -> dict[str, str]:
        """What an actor's row will say about the recording's meta and sensor reference (for resume keys)."""
        return recording_context(self.fields, self.meta, "score", self.reference, path)[1]

    def run_params(self) -> dict:
        """What params.json records about this engine (the actors resolve `auto` and batch_rows themselves)."""
        return {"engine": "ray", "backend": self.backend, "device_used": f"{self.device} (per actor)",
                "batch_rows": self.batch_rows, "workers": self.workers, "ray_address": self.options.address,
                "actors": self.actors, "cpus_per_actor": self.options.cpus_per_actor,
                "gpus_per_actor": self.options.gpus_per_actor, "model_threads": self.options.model_threads,
                "files_per_batch": self.options.files_per_batch}

    def score(self, paths: Iterable[str | Path], png_for: dict | None = None,
              files_per_batch: int | None = None) -> Iterator[FileResult]:
        """One FileResult per path, as the actors finish their batches; with `png_for` {path: png} the actors draw
        the timeline PNGs (on the shared filesystem) before their rows come back."""
        paths = [Path(p) for p in paths]
        if not paths:
            return
        # Absolute: an actor's working folder is where `ray start` ran, not the driver's.
        png_for = {Path(path): str(Path(png).resolve()) for path, png in (png_for or {}).items()}
        dataset = self._dataset([{"path": str(p), "png": png_for.get(p, ""),
                                  "fields": json.dumps(self.fields.merged(p)) if self.request_fields else "{}"}
                                 for p in paths], files_per_batch)
        pending = {str(path): path for path in paths}
        # resume compares the driver's view of a file, whatever a node's mount says, taken before any actor reads it
        stamps = {str(path): file_stamp(path) for path in paths}
        try:
            for record in dataset.iter_rows():
                sent = json.loads(record["sent"])
                for result in sent["results"]:
                    if pending.pop(str(result["row"]["file"]), None) is not None:  # a retried batch answers again
                        yield self._checked(result, sent["host"], stamps[str(result["row"]["file"])])
                if sent["failure"] is not None:
                    raise RayEngineError(f"an actor on {sent['host']} failed: {sent['failure']}; the job stopped "
                                         f"(rows written so far are kept: --resume continues it)")
        except self.ray.exceptions.RayError as error:
            lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else type(error).__name__  # the cause is last (an actor's init error)
            raise RayEngineError(f"the Ray job failed ({type(error).__name__}: {reason}); rows written so far "
                                 f"are kept") from error
        if len(pending) > 1 and (files_per_batch or self.options.files_per_batch) > 1:
            # A batch killed its actor every time: one file per batch now, so only the file to blame pays for it.
            yield from self.score(list(pending.values()), png_for, files_per_batch=1)
            return
        for path in pending.values():  # their batch killed its actor every time it was tried
            yield self._failed(path, "worker_crash", f"the Ray actor scoring this file's batch died each of the "
                                                     f"{BATCH_RETRIES + 1} time(s) it was tried (out of memory, a "
                                                     f"node lost, a crash in the actor); --resume scores it again")

    def _failed(self, path: str | Path, reason: str, detail: str) -> FileResult:
        """A row the driver writes itself, with the columns an actor's row would have (the resume keys use them)."""
        result = self.scorer.failed(path, reason, detail)
        result.row.update(self.recording_columns(path))
        return result

    def _checked(self, result: dict, host: str, stamp: dict) -> FileResult:
        """The row with the driver's `stamp` of its file. A file the driver sees but the actor's node does not is a
        mount problem, not a missing file: `error` (scored again on --resume), naming the node."""
        row = result["row"]
        if stamp["size_bytes"] != "":
            row.update(stamp)
        if row["status"] == "missing" and Path(row["file"]).exists():
            return self._failed(row["file"], "error", f"not found on the Ray node {host}, though the driver sees "
                                                      f"it: mount the inputs at the same path on every node")
        return FileResult(row, result["timeline"])

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            # No address: RAY_ADDRESS, else a cluster `ray start` began on this machine, else a local Ray.
            ray.init(address=self.options.address, logging_level=logging.ERROR, include_dashboard=False)
            self._started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # leakhunter's own bar counts rows
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if self.actors is None:  # as many as fit now (an autoscaling cluster: say --actors)
            resources = ray.cluster_resources()
            fit = {"CPU": self.options.cpus_per_actor, "GPU": self.options.gpus_per_actor}
            self.actors = min(int(resources.get(kind, 0) // need) for kind, need in fit.items() if need)
            if self.actors < 1:
                raise RayEngineError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
                                     f"{resources.get('GPU', 0):g} GPUs: not one actor of {fit['CPU']:g} CPUs and "
                                     f"{fit['GPU']:g} GPUs fits (--cpus-per-actor, --gpus-per-actor; or --actors "
                                     f"for a cluster that scales up)")
        if self._model_ref is None:
            self._model_ref = ray.put(self.model.read_bytes())  # shipped once; each actor checks its sha256

    def _dataset(self, items: list[dict], files_per_batch: int | None = None):
        self._connect()
        ray = self.ray
        most = files_per_batch or self.options.files_per_batch
        size = max(1, min(most, math.ceil(len(items) / self.actors)))  # no actor idles
        inputs = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / size)))
        with warnings.catch_warnings():  # max_task_retries has no named parameter yet (ray pinned in the extra)
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            dataset = inputs.map_batches(
                ScoringActor, batch_size=size,
                # One batch at a time per actor: an actor that dies takes no queued batch down with it.
                compute=ray.data.ActorPoolStrategy(size=min(self.actors, math.ceil(len(items) / size)),
                                                   max_tasks_in_flight_per_actor=1),
                num_cpus=self.options.cpus_per_actor, num_gpus=self.options.gpus_per_actor or None,
                fn_constructor_kwargs={"model": [self._model_ref], "suffix": self.model.suffix.lower(),
                                       "sha256": self.scorer.model_sha256, "version": leakhunter.__version__,
                                       "engine_options": self.engine_options,
                                       "reference_digest": self.reference.digest if self.reference else None},
                max_task_retries=BATCH_RETRIES)  # Ray Data's default is for ever: a poisoned batch would never end
        dataset.context.max_errored_blocks = -1  # a batch that kills its actor every time: worker_crash rows
        dataset.context.target_max_block_size = 1  # each send of an actor is a block, read while its batch runs
        return dataset
