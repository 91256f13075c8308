"""Training throughput on CPU: the loader must serve inputs >= 10x faster than the training step uses them."""


import numpy as np
import pytest
import torch

from leakhunter.synth import synth_corpus
from leakhunter.training.config import make_config
from leakhunter.training.data import LeakData
from leakhunter.training.dataset import build_dataset
from leakhunter.training.trainer import Trainer

RATES: dict[str, float] = {}


@pytest.fixture(scope="module", params=["short", "long"])
def trainer(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"train-bench-{request.param}")
    corpus = synth_corpus(root / "corpus", files_per_class=20, duration_s=10.0, seed=2)
    data = build_dataset(corpus.root, root / "data.h5", preset_name=request.param).output
    config = make_config({"data": str(data), "out": str(root / "run"), "mode": "multiclass", "batch_size": 2048})
    return request.param, Trainer(config, log=lambda text: None)


def test_loader_inputs_per_second(benchmark, trainer):
    preset_name, t = trainer
    train = t.data.splits["train"]
    rows = np.random.default_rng(0).permutation(len(train))[:2048]
    benchmark(t.data.inputs, train, rows)
    RATES[f"loader-{preset_name}"] = 2048 / benchmark.stats.stats.min


def test_streamed_loader_inputs_per_second(benchmark, report_ratio, trainer):
    """The disk path (forced by a tiny budget), batches in its own epoch_order, every chunk read from the file
    once per epoch, against the in-memory path."""
    preset_name, t = trainer
    data = LeakData(t.config.data, t.config.mode, max_memory=1)
    train = data.splits["train"]
    batches = list(np.array_split(data.epoch_order(train, 0, 0), max(1, len(train) // 2048)))

    def one_epoch_from_disk():
        data._chunks.clear()  # a small dataset fits the chunk cache: every epoch reads from the file again
        return [data.inputs(train, rows) for rows in batches]

    benchmark(one_epoch_from_disk)
    rate = len(train) / benchmark.stats.stats.min
    memory_rate = RATES.get(f"loader-{preset_name}", float("nan"))
    report_ratio(f"loader, {preset_name} preset, streamed from disk",
                 f"{rate:9.0f} inputs/s = {rate / memory_rate:.2f}x the in-memory path")
    data.close()


def test_training_step_inputs_per_second(benchmark, report_ratio, trainer):
    preset_name, t = trainer
    train = t.data.splits["train"]
    rows = np.random.default_rng(0).permutation(len(train))[:2048]
    inputs = t.data.inputs(train, rows)
    targets = torch.from_numpy(train.targets[rows])
    is_leak = torch.from_numpy(train.is_leak[rows])
    t.model.train()

    def step():
        logits, aux = t.model(inputs)
        loss = t.criterion(logits, aux, targets, is_leak)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    step_rate = 2048 / benchmark.stats.stats.min
    loader_rate = RATES.get(f"loader-{preset_name}", float("nan"))
    benchmark.extra_info.update(train_inputs_per_s=step_rate, loader_over_step=loader_rate / step_rate)
    report_ratio(f"training ({preset_name} preset, batch 2048, CPU)",
                 f"{step_rate:8.0f} inputs/s; loader {loader_rate:9.0f} inputs/s = {loader_rate / step_rate:.0f}x the step")
