"""Worker processes that survive their tasks: a file that crashes its decoder or hangs past the timeout
costs one row, never the batch (BirdNET's issue #339: four corrupt files cost 6,550 good ones).

Each worker runs `setup(*args)` once (loading the model) and then `work(state, task)` per task.
Torch-free.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait


@dataclass(frozen=True)
class WorkerFailure:
    """Why a task produced no result: `timeout`, `worker_crash`, or `error` (an exception in work())."""

    reason: str
    detail: str


def _serve(setup, setup_args, work, connection, worker_id) -> None:
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
            result = work(state, task)
        except Exception as error:  # noqa: BLE001 - one task's failure is that task's row
            result = WorkerFailure("error", f"{type(error).__name__}: {error}")
        connection.send(("done", task_id, result))


class SetupError(RuntimeError):
    """A worker could not start (e.g. the model cannot be loaded): nothing can be scored."""


class _Worker:
    """One process and its own pipe: killing it can only break that pipe, never another worker's."""

    def __init__(self, context, worker_id, setup, setup_args, work):
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(setup, setup_args, work, child, worker_id),
                                       daemon=True, name=f"leakhunter-worker-{worker_id}")
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


def isolated_map(tasks: Iterable, work: Callable, setup: Callable, setup_args: tuple = (), workers: int = 2,
                 timeout: float | None = None) -> Iterator[tuple[object, object]]:
    """Yield (task, result or WorkerFailure) as tasks finish, in completion order.

    A worker that dies mid-task (segfault, os._exit, OOM kill) or runs past `timeout` seconds on one task
    is replaced; its task yields WorkerFailure. Stopping the iteration stops the workers.
    """
    context = multiprocessing.get_context("spawn")
    pending = deque(enumerate(tasks))
    by_id = dict(pending)
    pool: list[_Worker] = []
    spawned = 0

    def spawn():
        nonlocal spawned
        pool.append(_Worker(context, spawned, setup, setup_args, work))
        spawned += 1

    for _ in range(max(1, min(workers, len(pending)))):
        spawn()
    outstanding = len(pending)
    try:
        while outstanding:
            for worker in pool:
                if worker.ready and worker.task_id is None and pending:
                    worker.task_id, task = pending.popleft()
                    worker.started = None
                    try:
                        worker.connection.send((worker.task_id, task))
                    except OSError:
                        pass  # it died; found below, and the task is reported as its crash
            wait([w.connection for w in pool] + [w.process.sentinel for w in pool], timeout=0.05)
            for worker in list(pool):
                failure = None
                try:
                    while worker.connection.poll():
                        kind, task_id, payload = worker.connection.recv()
                        if kind == "setup_failed":
                            raise SetupError(payload)
                        if kind == "ready":
                            worker.ready = True
                        elif kind == "started":
                            worker.started = time.monotonic()
                        elif kind == "done" and task_id == worker.task_id:
                            worker.task_id = None
                            outstanding -= 1
                            yield by_id.pop(task_id), payload
                except (EOFError, OSError):
                    pass  # the process is gone; its sentinel says so below
                if worker.process.is_alive():
                    if (worker.task_id is not None and worker.started is not None and timeout is not None
                            and time.monotonic() - worker.started > timeout):
                        failure = WorkerFailure("timeout", f"no result after {timeout:g} s; the worker was stopped")
                    else:
                        continue
                elif not worker.ready:
                    raise SetupError(f"a worker process died while starting (exit code {worker.process.exitcode})")
                elif worker.task_id is not None:
                    failure = WorkerFailure("worker_crash", f"the worker process died (exit code "
                                                            f"{worker.process.exitcode}) while on this file")
                worker.kill()
                pool.remove(worker)
                if failure is not None:
                    outstanding -= 1
                    yield by_id.pop(worker.task_id), failure
                if pending or outstanding:
                    spawn()
    finally:
        for worker in pool:
            worker.stop()
        deadline = time.monotonic() + 5
        for worker in pool:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
