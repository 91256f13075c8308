"""DDP on CPU (gloo): each rank's device, pinned copies, and a failure on one rank stopping every rank.

The GPU half (nccl, cuda:LOCAL_RANK, pinned non-blocking copies, the one-step-late loss read) runs the same
code with device-dependent branches that CPU tests reach only through the pure functions below."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from leakhunter.devices import rank_device, to_device
from leakhunter.errors import DeviceError
from leakhunter.training.distributed import Launch, StepLosses, launch_from_env

# ---- which device a rank binds (pure: no GPU needed) -------------------------------------------------

@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_each_rank_binds_the_gpu_of_its_local_rank(requested):
    assert [rank_device(requested, rank, True, 4) for rank in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_cpu_ranks_stay_on_cpu():
    assert rank_device("cpu", 1, True, 2) == "cpu"  # asked for CPU on a GPU machine: gloo on CPU
    assert rank_device("auto", 3, False, 0) == "cpu"


def test_refused_combinations_say_why():
    with pytest.raises(DeviceError, match="cuda:1 cannot be used under torchrun.*CUDA_VISIBLE_DEVICES"):
        rank_device("cuda:1", 0, True, 2)
    with pytest.raises(DeviceError, match="LOCAL_RANK 2 has no GPU of its own: this machine has 2"):
        rank_device("auto", 2, True, 2)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        rank_device("cuda", 0, False, 0)
    with pytest.raises(DeviceError, match="not one of auto, cpu, cuda"):
        rank_device("tpu", 0, True, 1)


def test_launch_is_read_from_torchrun_environment():
    assert launch_from_env({}) == Launch(0, 1, 0)
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) == Launch(0, 1, 0)
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)


# ---- pinned copies ---------------------------------------------------------------------------------

def test_to_device_is_a_no_op_on_cpu():
    batch = torch.randn(4, 1, 8, 1)
    moved = to_device(batch, torch.device("cpu"))
    assert moved is batch and not moved.is_pinned()


# ---- the per-step loss read --------------------------------------------------------------------------

def test_step_losses_read_each_step_at_once_on_cpu_and_sum_as_before():
    losses = StepLosses(torch.device("cpu"), Launch())
    values, total = [0.7, 0.3, 0.1], 0.0
    for step, value in enumerate(values):
        losses.push(step, torch.tensor(value), 10)
        assert losses.settle() is None and not losses.pending  # read in the same step, before its update
        total += float(torch.tensor(value)) * 10
    assert losses.mean == total / 30  # the same float additions in the same order as before


def test_a_late_read_names_the_first_bad_step():
    losses = StepLosses(torch.device("cpu"), Launch(), lag=1)  # as on CUDA: one step late
    losses.push(0, torch.tensor(0.5), 4)
    assert losses.settle() is None and len(losses.pending) == 1
    losses.push(1, torch.tensor(float("nan")), 4)
    assert losses.settle() is None  # step 0 was fine; step 1 is not read yet
    losses.push(2, torch.tensor(float("inf")), 4)
    step, rank, value = losses.settle()
    assert (step, rank) == (1, 0) and math.isnan(value)
    assert losses.settle(final=True) is None and losses.mean == 0.5


# ---- a failure on one rank stops both (two real processes, gloo) --------------------------------------

def _run_ranks(script: str, args: list[str], tmp_path, timeout: float = 120):
    """Start 2 ranks as torchrun would (without torchrun, which would kill a hanging rank and hide it);
    every rank must exit on its own within `timeout`. Returns [(status, stdout + stderr)] by rank.

    As under torchrun, the rendezvous store is hosted outside the ranks (TORCHELASTIC_USE_AGENT_STORE): when
    rank 0 hosted it, rank 0 exiting first aborted rank 1's teardown about once in 25 runs (SIGABRT,
    "terminate called without an active exception"), a race torchrun's agent store does not have."""
    path = tmp_path / "rank_script.py"
    path.write_text(textwrap.dedent(script))
    store = torch.distributed.TCPStore("127.0.0.1", 0, world_size=2, is_master=True, wait_for_workers=False)
    processes = []
    for rank in range(2):
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        processes.append(subprocess.Popen([sys.executable, str(path), *args], env=environment, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline, results = time.monotonic() + timeout, []
    try:
        for rank, process in enumerate(processes):
            try:
                output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} still running after {timeout} s: it hangs")
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        del store  # the "agent" outlives every rank
    return results


AGREEMENT = """
import os, sys
import torch
from leakhunter.training.distributed import RankFailed, launch_from_env, together
from leakhunter.training.health import HealthFailure, HealthMonitor, fail

launch = launch_from_env()
torch.distributed.init_process_group("gloo")
monitor = HealthMonitor(log=lambda text: None)
failing = int(sys.argv[1])

def action():
    if launch.rank == failing and sys.argv[2] == "health":
        monitor.add([fail("H010", "epoch 3", "diverged on this rank only")])
    if launch.rank == failing:
        raise OSError("disk full")
    return "ok"

try:
    together(action, launch, torch.device("cpu"), monitor.add)
    print("no failure")
except HealthFailure as error:
    print("health", error.exit_code, error.finding.message, [f.message for f in monitor.findings])
except (OSError, RankFailed) as error:
    print(type(error).__name__, error)
torch.distributed.barrier()  # both ranks reach the same next collective: nobody is left waiting
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_a_health_failure_on_one_rank_is_raised_on_every_rank(tmp_path):
    results = _run_ranks(AGREEMENT, ["1", "health"], tmp_path, timeout=60)
    assert [status for status, _ in results] == [0, 0], results
    assert "health 110 rank 1 failed: diverged on this rank only" in results[0][1]
    assert "['rank 1 failed: diverged on this rank only']" in results[0][1]  # rank 0 recorded it (health.json)
    assert "health 110 diverged on this rank only" in results[1][1]


@pytest.mark.slow
def test_another_error_on_one_rank_stops_every_rank(tmp_path):
    results = _run_ranks(AGREEMENT, ["0", "error"], tmp_path, timeout=60)
    assert [status for status, _ in results] == [0, 0], results
    assert "OSError disk full" in results[0][1]
    assert "RankFailed rank 0 stopped with OSError: disk full" in results[1][1]


TRAIN_WITH_A_FAULT_ON_RANK_1 = """
import os, sys
import leakhunter.training.trainer as trainer_module
from leakhunter.training.health import fail

fault = sys.argv[1]
if os.environ["RANK"] == "1" and fault == "nan":  # rank 1's second training step: a NaN loss there only
    original, calls = trainer_module.LeakLoss.forward, {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss = original(self, *args)
        return loss * float("nan") if calls["n"] == 2 else loss

    trainer_module.LeakLoss.forward = poisoned
if os.environ["RANK"] == "1" and fault == "finding":  # a per-epoch finding that fails on rank 1 only
    findings = trainer_module.epoch_findings
    trainer_module.epoch_findings = lambda *a, **k: findings(*a, **k) + [fail("H010", "epoch 1", "rank-local divergence")]

from leakhunter.training.__main__ import main  # torchrun's entry point
main(sys.argv[2:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault, status, message", [
    ("nan", 112, "step 2 on rank 1: training loss nan; the batch's files: "),
    ("finding", 110, "rank-local divergence"),
])
def test_a_failure_on_rank_1_stops_both_ranks_with_the_same_status(fault, status, message, training_dataset,
                                                                   tmp_path):
    out = tmp_path / "run"
    args = [fault, "--data", str(training_dataset), "--out", str(out), "--mode", "binary", "--epochs", "2",
            "--batch-size", "256"]
    results = _run_ranks(TRAIN_WITH_A_FAULT_ON_RANK_1, args, tmp_path, timeout=120)
    assert [code for code, _ in results] == [status, status], [output[-12000:] for _, output in results]
    for _, output in results:
        assert message in " ".join(output.split())
    health = json.loads((out / "health.json").read_text())
    assert health["status"] == "fail" and health["findings"][-1]["code"] == f"H{status - 100:03d}"
    assert message.split(";")[0] in health["findings"][-1]["message"]
    if fault == "nan":  # stopped within epoch 1, before any checkpoint
        assert not list((out / "checkpoints").glob("*.pth"))
