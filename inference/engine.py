"""The batched scoring engine: recordings are decoded in isolated worker processes (a crash or a hang costs
one row), their pieces of whole long segments are packed ACROSS files into batches of a few fixed shapes for
the one model in this process, and the results are routed back to their files.

Packing is exact: every scoring input (a short segment's mel, or a long segment's) depends only on its own
samples, so a piece scored at some offset of a packed row gives what it gives alone. Pieces start on the long
segment grid, with a gap wide enough that no input of one piece reaches into the next. Torch-free.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from leakhunter.audio import AudioError
from leakhunter.card import ModelCard
from leakhunter.errors import InputError, LeakhunterError
from leakhunter.inference.loader import load_runner, read_card
from leakhunter.inference.pool import WorkerFailure, WorkerPool
from leakhunter.inference.runner import Runner, long_segment_probs
from leakhunter.inference.scorer import (
    Decoded,
    DecodeTask,
    FileResult,
    Piece,
    PlotTask,
    RecordingDecoder,
    RecordingScorer,
    channel_policy,
    check_options,
    decode_in_worker,
    file_stamp,
    setup_decoder,
)
from leakhunter.meta import MetaResolver, MetaSpec, RecordingFields, check_meta_missing
from leakhunter.operating import deployed_threshold
from leakhunter.reference import SENSOR_FIELD, ReferenceTable, reference_table
from leakhunter.sources import LOGGER_GRAMMAR

NAME_MAX = 255  # bytes in a file name on the usual file systems: an upload is spooled under its name
PIECE_SECONDS = 60  # audio per piece: a long recording streams through in pieces of this many seconds
BATCH_ROWS = 4  # rows (each one piece long) per model call on CPU: ~240 s of audio, ~3,800 short segments
GPU_BATCH_ROWS = 32
QUIET_SECONDS = 0.5  # workers silent this long: score what is held rather than wait for a full batch


def upload_name(name: str | None) -> str:
    """An upload's name as a spool file name: a plain file name with its suffix, which says what the content
    must be (every check of open_audio applies to uploads too)."""
    if not name or Path(name).name != name or name in (".", "..") or "\x00" in name:
        raise InputError(f"an uploaded recording needs a plain file name with its suffix, got {name!r}")
    if len(os.fsencode(name)) > NAME_MAX:
        raise InputError(f"an uploaded recording's name is at most {NAME_MAX} bytes, got {len(os.fsencode(name))}: "
                         f"{name[:40]!r}...")
    return name


def meta_resolver(card: ModelCard, sidecar: str | Path | None, policy: str, model,
                  fields: RecordingFields) -> MetaResolver | None:
    """Where a fusion model's meta comes from at scoring time (`fields`: the engine's given fields); None for a
    model without a meta input."""
    check_meta_missing(policy)
    spec = (card.branches or {}).get("meta")
    if spec is None:
        if sidecar is not None:
            raise InputError(f"--meta {sidecar}: {model} takes no meta input (only a fusion model with a meta "
                             f"branch does)")
        return None
    if sidecar is not None and not Path(sidecar).is_file():
        raise InputError(f"--meta {sidecar}: no such file (a CSV with a path column and the model's meta fields "
                         f"{', '.join(spec['fields'])})")
    return MetaResolver(MetaSpec.from_dict(spec), fields, sidecar)


def recording_sources(card: ModelCard, model, meta: str | Path | None, meta_missing: str,
                      reference: str | Path | ReferenceTable | None, channel: str | int | None
                      ) -> tuple[RecordingFields, MetaResolver | None, ReferenceTable | None, tuple[str, ...]]:
    """Where both engines find a recording's per-recording input: (the store of given fields, a fusion model's
    meta resolver, a reference model's table, the fields a recording may be given besides its name: an upload's
    query parameters, a manifest's columns that count). A bad --meta, policy or table is refused here, before any
    worker or actor starts."""
    fields = RecordingFields()
    resolver = meta_resolver(card, meta, meta_missing, model, fields)
    table = reference_table(card, reference, model, channel_policy(card, channel))
    given = resolver.spec.fields if resolver is not None else (SENSOR_FIELD,) if table is not None else ()
    return fields, resolver, table, given


def recording_context(fields: RecordingFields, meta: MetaResolver | None, meta_missing: str,
                      reference: ReferenceTable | None, path: str | Path
                      ) -> tuple[np.ndarray | None, dict[str, str], tuple[str, str] | None]:
    """A recording's row for the model's per-recording input (a fusion model's meta, a reference model's sensor
    reference; None for other models), the row's columns about it, and why it is not scored (None: it is): a
    meta field unknown under --meta-missing fail, or a sensor the reference table does not know. The one place
    both engines (this one and Ray's) take them from, so rows and resume keys agree. `fields`: what was given
    for the recording besides its name (a manifest's columns, an upload's query parameters)."""
    context, columns, refused = None, {}, None
    if meta is not None:
        resolved = meta.resolve(path)
        context, columns = resolved.row, resolved.columns()
        if resolved.missing and meta_missing == "fail":
            refused = ("meta_missing", f"no usable value for {', '.join(resolved.missing)} (looked in "
                                       f"{'the --meta sidecar, ' if meta.sidecar else ''}the manifest's "
                                       f"columns and the file name)")
    if reference is not None:
        sensor, context = reference.lookup(path, fields.merged(path))
        columns = columns | reference.columns(sensor)
        if context is None:
            refused = ("no_reference", f"sensor {sensor} has no reference in {Path(reference.source).name}; add "
                                       f"its earlier recordings with leak reference build" if sensor else
                       f"no sensor id (neither a {SENSOR_FIELD} given, as a manifest column or a query parameter, "
                       f"nor a name {LOGGER_GRAMMAR}.wav), so no reference to judge it against")
    return context, columns, refused


class ScoringError(LeakhunterError, RuntimeError):
    """The model failed on a batch: the job stops (the files are not to blame), and --resume continues it."""


class _EngineFailure(Exception):
    """Carries an error of the engine out through a decoder's emit() call, past its per-file handling."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


@dataclass
class _Slot:
    """Where a piece sits in a batch (row, first long-segment slot) and what it is: no samples, so a batch in
    the scoring thread holds its audio once, in the batch array."""

    state: _FileState
    index: int  # the piece's position in its file
    n_long: int
    span: int  # samples
    row: int
    slot: int


class PieceBatcher:
    """Packs pieces, in arrival order, into rows of `row_slots` long segments (a piece goes to the last row, or
    opens the next one) and scores `batch_rows` rows per call."""

    def __init__(self, card: ModelCard, runner: Runner, piece_longs: int, batch_rows: int):
        seg = card.segmentation
        self.card, self.runner, self.batch_rows = card, runner, batch_rows
        # A piece of n long segments takes n + gap slots: the next piece's first input must not overlap it.
        self.gap = math.ceil(seg.long_samples / seg.long_hop) - 1
        self.row_slots = piece_longs + 1 + self.gap  # a padded tail may add one long segment to the last piece
        self.inputs_per_long = seg.long_hop // seg.short_hop if seg.unit == "short" else 1
        self.held: list[tuple[_FileState, Piece, int, int]] = []  # (state, piece, row, slot)
        self.next_free = [0]  # per row: first free slot
        # a per-recording input (meta, a sensor reference) is one row per recording: a row then holds pieces of
        # one recording only
        self.context_width = card.recording_input[1] if card.recording_input else 0
        self.row_owner: list[_FileState | None] = [None]

    def __len__(self) -> int:
        return len(self.held)

    def add(self, state: _FileState, piece: Piece) -> bool:
        """Place the piece; False when the batch is full (seal() first, then add again)."""
        if piece.n_long > self.row_slots:
            raise ValueError(f"{state.path}: a piece of {piece.n_long} long segments does not fit a row of "
                             f"{self.row_slots}; the decoder must cut shorter pieces")
        row = len(self.next_free) - 1
        other = self.context_width and self.row_owner[row] is not None and self.row_owner[row] is not state
        if other or self.next_free[row] + piece.n_long > self.row_slots:
            if len(self.next_free) == self.batch_rows:
                return False
            self.next_free.append(0)
            self.row_owner.append(None)
            row += 1
        self.row_owner[row] = state
        self.held.append((state, piece, row, self.next_free[row]))
        self.next_free[row] += piece.n_long + self.gap
        return True

    def seal(self) -> _Batch | None:
        """The held pieces as one array of a few fixed shapes (1, 2, 4 ... batch_rows rows of 1/8, 2/8 ...
        8/8 of a full row, so onnxruntime and a GPU do not re-plan per batch, and a small last batch does not
        pay for full rows); pieces of files that failed meanwhile are left out; the batcher is empty again."""
        held = [(state, piece, row, slot) for state, piece, row, slot in self.held if state.failure is None]
        self.held, self.next_free, owners, self.row_owner = [], [0], self.row_owner, [None]
        if not held:
            return None
        seg = self.card.segmentation
        rows = min(1 << max(row for _, _, row, _ in held).bit_length(), self.batch_rows)
        used = max(slot + piece.n_long for _, piece, _, slot in held)
        eighth = -(-self.row_slots // 8)
        slots = min(self.row_slots, -(-used // eighth) * eighth)
        samples = np.zeros((rows, (slots - 1) * seg.long_hop + seg.long_samples), np.float32)
        for _, piece, row, slot in held:
            samples[row, slot * seg.long_hop: slot * seg.long_hop + piece.samples.size] = piece.samples
        context = None
        if self.context_width:  # each row its recording's; an empty row's is NaN (a meta row's unknown)
            context = np.full((rows, self.context_width), np.nan, np.float32)
            for row, owner in enumerate(owners[:rows]):
                if owner is not None and owner.context is not None:
                    context[row] = owner.context
        return _Batch(samples, [_Slot(state, piece.index, piece.n_long, piece.samples.size, row, slot)
                                for state, piece, row, slot in held], context)

    def score(self, batch: _Batch) -> list[tuple[_Slot, np.ndarray, np.ndarray]]:
        """Each piece's P(LEAK) [n_long] and class probabilities [n_long, C] per long segment. Thread-safe:
        it touches nothing but the batch (the engine scores in a thread while the next batch fills)."""
        seg = self.card.segmentation
        probs, leak_prob = self.runner.score_rows(batch.samples, batch.context)  # [rows, n_inputs, C], [rows, n_inputs]
        scored = []
        for placed in batch.slots:
            first = placed.slot * self.inputs_per_long
            n_inputs = (placed.n_long - 1) * self.inputs_per_long + (seg.shorts_per_long() if seg.unit == "short" else 1)
            inputs = slice(first, first + n_inputs)
            scored.append((placed, long_segment_probs(self.card, placed.span, leak_prob[placed.row, inputs]),
                           long_segment_probs(self.card, placed.span, probs[placed.row, inputs])))
        return scored


@dataclass
class _Batch:
    samples: np.ndarray  # float32 [rows, samples]
    slots: list[_Slot]
    context: np.ndarray | None = None  # float32 [rows, width] for a model with a per-recording input


@dataclass
class _FileState:
    """A recording on its way: pieces scored so far, and what its decoder said at the end."""

    path: Path
    context: np.ndarray | None = None  # its per-recording input: a fusion model's meta, a sensor reference
    columns: dict = field(default_factory=dict)  # what the row says about it (meta_source, reference_sensor ...)
    pieces_seen: int = 0
    long_leak: dict = field(default_factory=dict)
    long_classes: dict = field(default_factory=dict)
    decoded: Decoded | None = None
    failure: tuple[str, str] | None = None
    stamp: dict = field(default_factory=dict)  # its size and mtime before it was read (file_stamp)

    def scored(self, index: int, leak: np.ndarray, classes: np.ndarray) -> None:
        self.long_leak[index], self.long_classes[index] = leak, classes

    def fail(self, reason: str, detail: str) -> None:
        self.failure = self.failure or (reason, detail)

    def decoded_as(self, decoded: Decoded, pieces_seen: int) -> None:
        """The decoder's last word; a recording with no piece, or pieces lost on the way, is not scored."""
        if decoded.n_pieces == 0:
            self.fail("too_short", "no whole long segment to score")
        elif pieces_seen != decoded.n_pieces:
            self.fail("error", f"the decoder announced {decoded.n_pieces} pieces but {pieces_seen} arrived")
        self.decoded = decoded

    @property
    def finished(self) -> bool:
        return self.failure is not None or (self.decoded is not None and len(self.long_leak) == self.decoded.n_pieces)

    def result(self, scorer: RecordingScorer) -> FileResult:
        if self.failure is not None:
            result = scorer.failed(self.path, *self.failure)
        else:
            order = sorted(self.long_leak)
            result = scorer.result(self.path, self.decoded, np.concatenate([self.long_leak[i] for i in order]),
                                   np.concatenate([self.long_classes[i] for i in order]))
        result.row.update(self.columns | self.stamp)
        return result


class ScoringEngine:
    """Scores recordings with one model held in this process; `workers` processes decode (0: decode here, no
    isolation). One batch is scored in a background thread while the next one fills, so decoding and the
    model overlap. Long-lived: score() may be called many times (a service keeps one engine)."""

    def __init__(self, model: str | Path, device: str = "auto", workers: int = 2, file_timeout: float | None = 600.0,
                 threshold: float | None = None, vote_fraction: float | None = None, channel: str | int | None = None,
                 timeline: bool = False, piece_seconds: float = PIECE_SECONDS, batch_rows: int | None = None,
                 threads: int | None = None, decoder_class: type[RecordingDecoder] = RecordingDecoder,
                 block_frames: int = 1 << 16, sensitivity: str | None = None, meta: str | Path | None = None,
                 meta_missing: str = "score", reference: str | Path | ReferenceTable | None = None):
        """`meta` (a sidecar CSV) and `meta_missing` ("score": unknown fields are NaN and the row says so; "fail":
        status meta_missing, no score) apply to a fusion model with a meta input (leakhunter/meta.py);
        `reference` (a table from `leak reference build`) to a reference model (leakhunter/reference.py), whose
        recordings of sensors the table does not know get status no_reference."""
        if batch_rows is not None and batch_rows < 1:
            raise InputError(f"batch_rows must be >= 1, got {batch_rows}")
        # all four before any worker starts (RecordingScorer checks threshold and vote again, after the pool)
        check_options(threshold, vote_fraction, workers, file_timeout)
        # The card first (cheap), so the decoding workers start while the model loads.
        card, _, _ = read_card(model)
        # manifests' columns and uploads' query parameters by recording, and what reads them
        self.fields, self.meta, self.reference, self.request_fields = recording_sources(
            card, model, meta, meta_missing, reference, channel)
        self.meta_missing = meta_missing
        deployed_threshold(card, threshold, sensitivity)  # a bad --sensitivity is refused before any worker starts
        piece_longs = max(1, int(piece_seconds * card.frontend.sample_rate) // card.segmentation.long_hop)
        # What the workers decode with; inline (workers=0) this process uses the same decoder.
        self.decoder = decoder_class(card.frontend, card.segmentation, channel_policy(card, channel), piece_longs,
                                     block_frames)
        self.workers = workers
        self.pool = (WorkerPool(setup_decoder, (self.decoder,), decode_in_worker, workers, file_timeout)
                     if workers > 0 else None)
        try:
            self.card, self.runner = load_runner(model, device, threads)
        except BaseException:
            self.close()
            raise
        self.scorer = RecordingScorer(self.card, self.runner.sha256, threshold, vote_fraction, channel, timeline,
                                      sensitivity)
        if batch_rows is None:
            batch_rows = GPU_BATCH_ROWS if self.runner.device.startswith("cuda") else BATCH_ROWS
        self.batcher = PieceBatcher(self.card, self.runner, piece_longs, batch_rows)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leakhunter-model")
        self._scoring: Future | None = None
        self._plot_failures: list[str] = []  # "<png>: why", of timelines a worker could not draw
        self._plotter = None  # inline (workers=0) timelines
        self._busy = False

    def __enter__(self) -> ScoringEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def score(self, paths: Iterable[str | Path], png_for: dict | None = None) -> Iterator[FileResult]:
        """One FileResult per path, in completion order; with `png_for` {path: png}, timeline PNGs are drawn
        (by the workers, off this loop)."""
        if self._busy:
            raise RuntimeError("this ScoringEngine is already scoring: finish or close that score() iteration "
                               "first (one engine scores one batch of files at a time)")
        self._busy = True
        paths = [Path(p) for p in paths]
        png_for = {Path(path): Path(png) for path, png in (png_for or {}).items()}
        finished = False
        try:
            if self.pool is None:
                yield from self._score_inline(paths, png_for)
            else:
                yield from self._score_in_workers(paths, png_for)
            finished = True
        finally:  # leave nothing behind for the next call, also when the caller stopped early (a cancelled job)
            self._busy = False
            self._collect(wait=True, routed=finished)
            self.batcher.seal()
            if not finished and self.pool is not None:
                self.pool.cancel()

    def score_file(self, source: str | Path | BinaryIO, name: str | None = None) -> FileResult:
        """One recording's result (decoded in the workers when there are any). `source` is a path, or a binary
        file-like object (an upload) that is spooled to a temporary file named `name` first, so every check
        of open_audio applies (the name's suffix says what the content must be); the row says `name`."""
        if isinstance(source, (str, Path)):
            return next(iter(self.score([source])))
        with tempfile.TemporaryDirectory(prefix="leakhunter-upload-") as folder:
            spooled = Path(folder) / upload_name(name)
            with open(spooled, "wb") as handle:
                shutil.copyfileobj(source, handle, 1 << 20)
            return next(self.score_uploads({spooled: name}))[1]

    def score_uploads(self, uploads: dict[Path, str], fields: dict[Path, dict[str, str]] | None = None
                      ) -> Iterator[tuple[Path, FileResult]]:
        """(spooled path, result) for recordings already spooled to disk, scored together (a service's concurrent
        uploads share batches); each row, message and timeline names the upload, and `mtime` (the spool file's) is
        left empty: it says nothing about the recording. `fields`: an upload's own fields (a fusion model's meta,
        a reference model's sensor_id), before any other source, forgotten once these uploads are scored."""
        given = {path: values for path, values in (fields or {}).items() if values}
        if given and not self.request_fields:
            raise InputError("this model takes no fields besides the recording (only a fusion model's meta "
                             "fields, or a reference model's sensor_id)")
        if given:
            self.fields.add_request(given)
        try:
            for result in self.score(uploads):
                spooled = Path(result.row["file"])
                message = upload_message(str(result.row.get("message") or ""), spooled, uploads[spooled])
                result.row.update(file=uploads[spooled], mtime=None, message=message)  # no spool paths
                if result.timeline is not None:
                    result.timeline["file"] = uploads[spooled]
                yield spooled, result
        finally:
            if given:
                self.fields.forget(given)

    # ---- batches: one scoring in the thread, one filling here ------------------------------------------
    def _add(self, state: _FileState, piece: Piece) -> None:
        state.pieces_seen += 1
        if state.failure is None and not self.batcher.add(state, piece):
            self._submit()
            if not self.batcher.add(state, piece):  # an empty batcher takes any piece that fits a row
                raise RuntimeError(f"{state.path}: piece {piece.index} was not placed in an empty batch")

    def _submit(self) -> None:
        """Seal the held pieces and score them in the thread (after the batch before has been routed)."""
        batch = self.batcher.seal()
        if batch is not None:
            self._collect(wait=True)
            self._scoring = self._thread.submit(self.batcher.score, batch)
            self._scoring.slots = batch.slots

    def _collect(self, wait: bool, routed: bool = True) -> None:
        """Hand the scored batch's results to their files (waiting for it when `wait`). A model that fails is
        not a property of the files: the job stops (a ScoringError naming the batch's files), resumable."""
        future = self._scoring
        if future is None or not (wait or future.done()):
            return
        self._scoring = None
        try:
            scored = future.result()
        except Exception as error:
            if not routed:
                return
            files = sorted({str(placed.state.path) for placed in future.slots})
            raise ScoringError(f"the model failed on a batch of {len(files)} file(s) ({', '.join(files[:3])}"
                               f"{' ...' if len(files) > 3 else ''}): {type(error).__name__}: {error}") from error
        if routed:
            for placed, leak, classes in scored:
                placed.state.scored(placed.index, leak, classes)

    def recording_context(self, path: Path) -> tuple[np.ndarray | None, dict[str, str], tuple[str, str] | None]:
        """This engine's `recording_context` of a recording (the function above); a refusal only for a file that
        is there: a missing or unreadable one gets the decoder's reason instead."""
        context, columns, refused = recording_context(self.fields, self.meta, self.meta_missing, self.reference, path)
        return context, columns, refused if refused is not None and path.is_file() else None

    def recording_columns(self, path: Path) -> dict[str, str]:
        """What a row says about its recording's per-recording input (score_batch's resume keys use it)."""
        return self.recording_context(path)[1]

    def _state(self, path: Path) -> _FileState:
        """A recording about to be scored, with its per-recording input for a model that takes one."""
        context, columns, refused = self.recording_context(path)
        state = _FileState(path, context, columns, stamp=file_stamp(path))
        if refused is not None:
            state.fail(*refused)
        return state

    # ---- the two loops -----------------------------------------------------------------------------------
    def _score_inline(self, paths: list[Path], png_for: dict | None) -> Iterator[FileResult]:
        waiting: list[_FileState] = []
        for path in paths:
            state = self._state(path)

            def emit(piece: Piece, state=state) -> None:
                try:
                    self._add(state, piece)
                except Exception as error:  # the engine's own failure, not the decoder's: it stops the job
                    raise _EngineFailure(error) from error

            try:
                if state.failure is None:  # a recording refused for its meta or reference is not decoded
                    state.decoded_as(self.decoder.decode(path, emit), state.pieces_seen)
            except AudioError as error:
                state.fail(error.reason, error.detail)
            except _EngineFailure as failure:
                raise failure.error from None
            except Exception as error:  # noqa: BLE001 - a decoder bug costs this file's row, as in a worker
                state.fail("error", f"{type(error).__name__}: {error}")
            waiting.append(state)
            self._collect(wait=False)
            yield from self._finished(waiting, png_for, drawn_here=True)
        self._submit()
        self._collect(wait=True)
        yield from self._finished(waiting, png_for, drawn_here=True)

    def _score_in_workers(self, paths: list[Path], png_for: dict | None) -> Iterator[FileResult]:
        queue, waiting, by_task = deque(paths), [], {}
        plots, quiet_since = 0, time.monotonic()
        in_flight = 2 * self.workers  # decode tasks queued per worker: enough to keep them busy, bounded
        while queue or by_task or waiting or plots:
            while queue and len(by_task) < in_flight:
                state = self._state(queue.popleft())
                if state.failure is None:  # a recording refused for its meta or reference is not decoded
                    by_task[self.pool.submit(DecodeTask(state.path))] = state
                waiting.append(state)
            if self.pool.outstanding:
                events = self.pool.events(timeout=0.01 if self._scoring is not None else 0.05)
            else:  # nothing decoding: only the batch in the thread is left to wait for
                events = []
                self._collect(wait=True)
            for event in events:
                if isinstance(event.task, PlotTask):
                    plots -= event.kind == "done"
                    if isinstance(event.payload, WorkerFailure):
                        self._plot_failures.append(f"{event.task.png.name}: {event.payload.reason}: "
                                                   f"{event.payload.detail}")
                    continue
                state = by_task[event.task_id]
                if event.kind == "emitted":
                    self._add(state, event.payload)
                    continue
                del by_task[event.task_id]
                if isinstance(event.payload, Decoded):
                    state.decoded_as(event.payload, state.pieces_seen)
                else:  # AudioError (the file), or WorkerFailure (timeout, worker_crash, error)
                    state.fail(event.payload.reason, event.payload.detail)
            # A batch is scored when it is full (in _add), when nothing is being decoded, or when the workers have
            # been quiet for a while (a slow or hanging file must not hold the rows of the others back).
            if events:
                quiet_since = time.monotonic()
            self._collect(wait=False)
            if len(self.batcher) and self._scoring is None and (
                    not by_task or time.monotonic() - quiet_since > QUIET_SECONDS):
                self._submit()
            stuck = [s for s in waiting if not s.finished]
            if stuck and not by_task and not queue and not len(self.batcher) and self._scoring is None:
                raise RuntimeError(f"{len(stuck)} file(s) can never finish (e.g. {stuck[0].path}): nothing is "
                                   f"decoding or scoring them; this is a bug")
            for result in self._finished(waiting, png_for, drawn_here=False):
                if result.plot is not None:
                    self.pool.submit(result.plot)
                    plots += 1
                yield result
        if self._plot_failures:
            warnings.warn(f"{len(self._plot_failures)} timeline PNG(s) could not be drawn (their rows are kept, and "
                          f"--resume draws them again), e.g. {self._plot_failures[0]}", RuntimeWarning, stacklevel=2)
            self._plot_failures = []

    def _finished(self, waiting: list[_FileState], png_for: dict | None, drawn_here: bool) -> Iterator[FileResult]:
        for state in [s for s in waiting if s.finished]:
            waiting.remove(state)
            result = state.result(self.scorer)
            png = (png_for or {}).get(state.path)
            if png is not None and result.timeline is not None:
                result.timeline["png"] = Path(png).name
                if drawn_here:
                    if self._plotter is None:
                        from leakhunter.inference.timeline import TimelinePlotter

                        self._plotter = TimelinePlotter()
                    try:
                        self._plotter.draw(result.timeline, png)
                    except Exception as error:  # noqa: BLE001 - a picture never costs the row
                        warnings.warn(f"{png}: the timeline could not be drawn ({error})", RuntimeWarning,
                                      stacklevel=2)
                else:
                    result.plot = PlotTask(result.timeline, Path(png))
            yield result


def upload_message(message: str, spooled: Path, name: str) -> str:
    """A row's message about an upload as its client may read it: the spool path becomes the upload's name, and
    whatever else names the upload's spool folder loses it (a path printed as bytes, where a name that is not
    ASCII is escaped, still holds the folder as it is)."""
    message = message.replace(str(spooled), name)
    return message.replace(str(spooled.parent) + os.sep, "").replace(str(spooled.parent), ".")
