"""LeakCNN's exact rewrites for width-1 maps (the `short` preset's [1, 32, 1] input) against torch's own
kernels on the same weights: the README's training and inference speed-ups come from here."""

import pytest
import torch
from reference import torch_kernels_copy
from timing import best_of_interleaved

from leakhunter.card import STANDARD_CLASSES, ModelCard
from leakhunter.models import build_model

BATCH = 2048


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    fast = build_model(ModelCard.for_mode("multiclass", STANDARD_CLASSES))
    return fast, torch_kernels_copy(fast)


def test_width1_rewrites_vs_torch_kernels(benchmark, report_ratio, networks):
    fast, stock = networks
    inputs = torch.randn(BATCH, 1, 32, 1)
    fast.eval(), stock.eval()
    with torch.inference_mode():
        difference = (fast(inputs)[0] - stock(inputs)[0]).abs().max().item()
    assert difference <= 1e-5, difference  # the same function, not an approximation

    def train_step(network):
        network.train()
        torch.manual_seed(1)  # the same dropout mask on both sides
        logits, aux = network(inputs)
        (logits.square().mean() + aux.square().mean()).backward()
        network.zero_grad(set_to_none=True)

    def infer(network):
        network.eval()
        with torch.inference_mode():
            network(inputs)

    benchmark.pedantic(train_step, args=(fast,), rounds=3, warmup_rounds=1)
    fast_train, stock_train, fast_infer, stock_infer = best_of_interleaved(
        [lambda: train_step(fast), lambda: train_step(stock), lambda: infer(fast), lambda: infer(stock)], 3,
        warmup=True)
    benchmark.extra_info.update(train_speedup=stock_train / fast_train, infer_speedup=stock_infer / fast_infer)
    report_ratio("LeakCNN width-1 rewrites vs torch kernels, train step",
                 f"{stock_train / fast_train:5.1f}x ({BATCH / fast_train:,.0f} vs {BATCH / stock_train:,.0f} inputs/s)")
    report_ratio("LeakCNN width-1 rewrites vs torch kernels, inference",
                 f"{stock_infer / fast_infer:5.1f}x ({BATCH / fast_infer:,.0f} vs {BATCH / stock_infer:,.0f} inputs/s)")
