"""Worker processes that survive their tasks: a file that crashes its decoder or hangs past the timeout
costs one row, never the batch (BirdNET's issue #339: four corrupt files cost 6,550 good ones).

A WorkerPool is long-lived (a CLI run, or a server's lifetime): each worker runs `setup(*args)` once and
then `work(state, task, emit)` per task; `emit(value)` streams partial results (a long recording's pieces)
back while the task runs, so nothing has to hold a whole recording. Torch-free.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait

from leakhunter.errors import LeakhunterError

MAX_EMITTED_PER_CALL = 2


@dataclass(frozen=True)
class WorkerFailure:
    """Why a task produced no result: `timeout`, `worker_crash`, or `error` (an exception in work())."""

    reason: str
    detail: str


@dataclass(frozen=True)
class PoolEvent:
    """What a task did: `emitted` a partial result, is `done` (payload: its result or a WorkerFailure)."""

    task_id: int
    task: object
    kind: str  # "emitted" or "done"
    payload: object


class SetupError(LeakhunterError, RuntimeError):
    """A worker could not start (e.g. the model cannot be loaded): nothing can be scored."""


@contextmanager
def _ctrl_c_ignored():
    """SIGINT ignored while a worker is spawned: the ignore survives exec, so a Ctrl-C in the worker's first
    second (imports, unpickling) prints no traceback. Only the main thread may set a handler (a service starts
    workers from others, where the terminal's Ctrl-C is not theirs to take)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _serve(setup, setup_args, work, connection, worker_id) -> None:
    """A worker's life; it ends quietly when its parent has gone (a pipe broken by a SIGTERM'd run), and leaves
    Ctrl-C (sent to the whole process group) to the parent, which stops the run and then the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _work_loop(setup, setup_args, work, connection)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return


def _work_loop(setup, setup_args, work, connection) -> None:
    try:
        state = setup(*setup_args)
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which stops the run
        connection.send(("setup_failed", None, f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", None, None))
    while True:
        try:
            item = connection.recv()
        except EOFError:
            return
        if item is None:
            return
        task_id, task = item
        connection.send(("started", task_id, None))
        try:
            result = work(state, task, lambda value, task_id=task_id: connection.send(("emitted", task_id, value)))
        except Exception as error:  # noqa: BLE001 - one task's failure is that task's row
            result = WorkerFailure("error", f"{type(error).__name__}: {error}")
        connection.send(("done", task_id, result))


class _Worker:
    """One process and its own pipe: killing it can only break that pipe, never another worker's."""

    def __init__(self, context, worker_id, setup, setup_args, work):
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(setup, setup_args, work, child, worker_id),
                                       daemon=True, name=f"leakhunter-worker-{worker_id}")
        with _ctrl_c_ignored():  # also while the spawned interpreter starts, before _serve ignores it itself
            self.process.start()
        child.close()
        self.task_id: int | None = None
        self.started: float | None = None
        self.ready = False

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.connection.send(None)
            except OSError:
                pass

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()

    def close(self) -> None:
        self.connection.close()


class WorkerPool:
    """`workers` isolated processes fed from a queue of tasks. A worker that dies mid-task (segfault,
    os._exit, OOM kill) or goes `timeout` seconds on one task without a result or a partial result is
    replaced, and its task ends with a WorkerFailure; every other task goes on. Use as a context manager,
    or call close()."""

    def __init__(self, setup: Callable, setup_args: tuple, work: Callable, workers: int = 2,
                 timeout: float | None = None):
        self._context = multiprocessing.get_context("spawn")
        self._setup, self._setup_args, self._work = setup, setup_args, work
        self.size, self.timeout = max(1, workers), timeout
        self._workers: list[_Worker] = []
        self._queue: list[tuple[int, object]] = []  # FIFO of (task_id, task) not yet sent
        self._tasks: dict[int, object] = {}  # every task not yet done
        self._next_id = 0
        self._spawned = 0
        for _ in range(self.size):
            self._spawn()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet done (queued or running)."""
        return len(self._tasks)

    def alive(self) -> int:
        """Worker processes running now (a service's readiness probe asks from another thread: read-only)."""
        return sum(worker.process.is_alive() for worker in list(self._workers))

    def replace_dead(self) -> int:
        """Replace idle workers that died (an OOM kill between jobs): events() only looks while tasks run, and a
        service that waits for work must not stay short of workers. Returns how many were replaced."""
        idle = [w for w in self._workers if w.task_id is None]
        for worker in idle:  # a worker's "ready" waits unread until a task comes: read it now
            try:
                while not worker.ready and worker.connection.poll():
                    worker.ready = worker.connection.recv()[0] == "ready"
            except (EOFError, OSError):
                pass
        dead = [w for w in idle if w.ready and not w.process.is_alive()]  # died starting: events() says why
        for worker in dead:
            worker.kill()
            self._workers.remove(worker)
        replaced = self.size - len(self._workers)
        while len(self._workers) < self.size:  # also those a failed start removed
            self._spawn()
        return replaced

    def submit(self, task) -> int:
        task_id, self._next_id = self._next_id, self._next_id + 1
        self._queue.append((task_id, task))
        self._tasks[task_id] = task
        self._dispatch()
        return task_id

    def events(self, timeout: float = 0.05) -> list[PoolEvent]:
        """What happened since the last call, waiting up to `timeout` seconds for the first thing to happen.
        Raises SetupError when a worker cannot start (the next call starts another: a pool never shrinks)."""
        while len(self._workers) < self.size:  # one removed by a failed start last time
            self._spawn()
        self._dispatch()
        if not self._tasks:
            return []
        wait([w.connection for w in self._workers] + [w.process.sentinel for w in self._workers], timeout=timeout)
        found: list[PoolEvent] = []
        for worker in list(self._workers):
            emitted = 0
            try:
                # A few partial results per worker per call: a fast decoder cannot flood this process, and
                # every worker's timeout is looked at often.
                while emitted < MAX_EMITTED_PER_CALL and worker.connection.poll():
                    kind, task_id, payload = worker.connection.recv()
                    if kind == "setup_failed":
                        worker.kill()
                        self._workers.remove(worker)
                        raise SetupError(payload)
                    if kind == "ready":
                        worker.ready = True
                    elif kind == "started":
                        worker.started = time.monotonic()
                    elif task_id == worker.task_id and kind in ("emitted", "done"):
                        found.append(PoolEvent(task_id, self._tasks[task_id], kind, payload))
                        if kind == "emitted":  # progress: the timeout counts time without any
                            worker.started = time.monotonic()
                            emitted += 1
                        else:
                            del self._tasks[task_id]
                            worker.task_id = None
            except (EOFError, OSError):
                pass  # the process is gone; its sentinel says so below
            alive = worker.process.is_alive()  # asked once: a worker dying between two asks lost its task's row
            failure = self._failure(worker, alive)
            if failure is not None or not alive:
                task_id = worker.task_id
                worker.kill()
                self._workers.remove(worker)
                if failure is not None:
                    found.append(PoolEvent(task_id, self._tasks.pop(task_id), "done", failure))
                self._spawn()
        self._dispatch()
        return found

    def _failure(self, worker: _Worker, alive: bool) -> WorkerFailure | None:
        if alive:
            if (worker.task_id is not None and worker.started is not None and self.timeout is not None
                    and time.monotonic() - worker.started > self.timeout):
                return WorkerFailure("timeout", f"no result after {self.timeout:g} s; the worker was stopped")
            return None
        if not worker.ready:
            worker.kill()
            self._workers.remove(worker)
            raise SetupError(f"a worker process died while starting (exit code {worker.process.exitcode})")
        if worker.task_id is not None:
            return WorkerFailure("worker_crash", f"the worker process died (exit code {worker.process.exitcode}) "
                                                 f"while on this file")
        return None

    def _spawn(self) -> None:
        self._workers.append(_Worker(self._context, self._spawned, self._setup, self._setup_args, self._work))
        self._spawned += 1

    def _dispatch(self) -> None:
        for worker in self._workers:
            if worker.ready and worker.task_id is None and self._queue:
                worker.task_id, task = self._queue.pop(0)
                worker.started = time.monotonic()  # the timeout runs from here, even if "started" never came
                try:
                    worker.connection.send((worker.task_id, task))
                except OSError:
                    pass  # it died; events() finds out, and the task is reported as its crash

    def cancel(self) -> None:
        """Drop every task not yet done: queued ones are forgotten, running ones end with their worker (which is
        replaced). The pool stays usable, e.g. after a caller stopped reading a batch's results."""
        self._queue.clear()
        for worker in [w for w in self._workers if w.task_id is not None]:
            worker.kill()
            self._workers.remove(worker)
            self._spawn()
        self._tasks.clear()

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        deadline = time.monotonic() + 5
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
            worker.close()
        self._workers.clear()
