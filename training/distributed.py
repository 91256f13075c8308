"""The distributed path of training (torchrun): the device a rank binds, the process group's life, and the
agreement points that make a failure on one rank stop every rank instead of hanging the others in a collective.

Every collective here is entered by all ranks at the same point of the loop (same step, same epoch), so
all ranks reach the same decision from the same numbers and leave together.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass

import torch
from torch import distributed as dist

from leakhunter.devices import pick_device, rank_device
from leakhunter.errors import LeakhunterError
from leakhunter.training.health import Finding, HealthFailure


@dataclass(frozen=True)
class Launch:
    """Where this process sits: torchrun's RANK, WORLD_SIZE and LOCAL_RANK; (0, 1, 0) without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


class RankFailed(LeakhunterError, RuntimeError):
    """Another rank stopped with an error that is not a health check; this rank stops with it."""

    exit_code = 1


def launch_from_env(environ=os.environ) -> Launch:
    world = int(environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Launch()
    return Launch(int(environ.get("RANK", "0")), world, int(environ.get("LOCAL_RANK", "0")))


def training_device(requested: str, launch: Launch) -> torch.device:
    """One process: pick_device. Under torchrun: cuda:LOCAL_RANK or cpu (leakhunter.devices.rank_device)."""
    if launch.world == 1:
        return pick_device(requested)
    available = torch.cuda.is_available()
    return torch.device(rank_device(requested, launch.local_rank, available,
                                    torch.cuda.device_count() if available else 0))


def start_group(launch: Launch, device: torch.device) -> bool:
    """Join the process group: nccl on this rank's GPU (bound before init), gloo on CPU.

    Returns True when this call created the group, so the caller that created it destroys it."""
    if launch.world == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def end_group(created: bool) -> None:
    """Destroy the group this process created (on every exit path: a clean exit, a failure, an error)."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier(device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def together(action, launch: Launch, device: torch.device, record=None):
    """Run `action` on this rank, then agree with every rank whether any rank failed.

    No rank fails alone: all ranks raise the failure of the lowest failing rank. A health failure is relayed
    as the same finding ("rank k failed: ...", so every rank exits 100 + its number) and recorded with
    `record` (the HealthMonitor's add, so rank 0's health.json names it); any other error as RankFailed.
    One tiny all-reduce (and host read) per call: used at setup, per epoch and at the end, never per step."""
    failure = None
    try:
        result = action()
    except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
        failure, result = error, None
    if launch.world > 1:
        flag = torch.tensor([launch.world - launch.rank if failure is not None else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        highest = int(flag.item())
        first = launch.world - highest if highest else None
        if first is not None:
            box = [_describe(failure) if launch.rank == first else None]
            dist.broadcast_object_list(box, src=first, device=device)
            if launch.rank != first:
                failure = _relayed(box[0], first, record)
    if failure is not None:
        raise failure
    return result


def _describe(error: BaseException):
    if isinstance(error, HealthFailure):
        return error.finding
    return f"{type(error).__name__}: {error}"


def _relayed(described, rank: int, record) -> Exception:
    if not isinstance(described, Finding):
        return RankFailed(f"rank {rank} stopped with {described}; this rank stopped with it")
    finding = Finding(described.code, "fail", described.when, f"rank {rank} failed: {described.message}")
    if record is not None:
        try:
            record([finding])
        except HealthFailure as error:
            return error
    return HealthFailure(finding)


def share(value, launch: Launch, device: torch.device, src: int = 0):
    """Rank `src`'s value on every rank (a small picklable object, once per epoch)."""
    if launch.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


class StepLosses:
    """Each step's training loss on the host, with as few host syncs as the device allows.

    CPU: every step's loss is read at once (a host read is free there), so a non-finite loss stops the run
    before that step's update. CUDA: the loss is copied to pinned memory without blocking and read one step
    later (`lag` 1), so the host never waits for the GPU inside a step; the run stops before the next step's
    update. Under DDP each rank puts its loss into its own slot of a `world`-vector and one all-reduce (SUM:
    every slot has one contributor, so it arrives exactly) gives every rank every rank's loss: all ranks see
    a NaN on any rank at the same step and stop together. The total is summed on the host in step order, so a
    one-process CPU run adds exactly what it added before (bit-identical train_loss)."""

    def __init__(self, device: torch.device, launch: Launch, lag: int | None = None):
        self.device, self.launch = device, launch
        self.lag = (1 if device.type == "cuda" else 0) if lag is None else lag
        self.pending: deque = deque()
        self.total, self.seen = 0.0, 0

    def push(self, step: int, loss: torch.Tensor, n: int) -> None:
        values = loss.detach().float().reshape(1)
        if self.launch.world > 1:
            values = torch.zeros(self.launch.world, dtype=torch.float32, device=self.device)
            values[self.launch.rank] = loss.detach().float()
            dist.all_reduce(values)
        event = None
        if self.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = host
        self.pending.append((step, n, values, event))

    def settle(self, final: bool = False) -> tuple[int, int, float] | None:
        """Read the losses that are due; (step, rank, value) of the first non-finite one, else None."""
        keep = 0 if final else self.lag
        while len(self.pending) > keep:
            step, n, values, event = self.pending.popleft()
            if event is not None:
                event.synchronize()
            losses = values.tolist()
            for rank, value in enumerate(losses):
                if not math.isfinite(value):
                    self.pending.clear()
                    return step, rank, value
            self.total += (losses[0] if len(losses) == 1 else sum(losses) / len(losses)) * n
            self.seen += n
        return None

    @property
    def mean(self) -> float:
        """The epoch's mean training loss (under DDP: over all ranks' inputs)."""
        return self.total / max(1, self.seen)
