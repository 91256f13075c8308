"""What training minimises and how fast: capped inverse-frequency class weights, the loss (class-weighted CE or
focal on the head, plus the auxiliary leak-vs-rest BCE) and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def class_weights(targets: np.ndarray, n_classes: int, cap: float) -> tuple[torch.Tensor, bool, float]:
    """Inverse-frequency weights, the largest at most `cap` times the smallest, mean 1.

    Returns (weights, capped, the uncapped max/min ratio)."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    present = weights[weights > 0]
    raw_ratio = float(present.max() / present.min())
    weights = np.where(weights > 0, np.minimum(weights, cap * present.min()), 0.0)
    return torch.tensor(weights / weights[weights > 0].mean(), dtype=torch.float32), raw_ratio > cap, raw_ratio


class LeakLoss(nn.Module):
    """Class-weighted CE (or focal) on the head, plus aux_weight · BCE on the leak-vs-rest logit."""

    def __init__(self, weights: torch.Tensor, kind: str, gamma: float, aux_weight: float):
        super().__init__()
        self.register_buffer("weights", weights)
        self.kind, self.gamma, self.aux_weight = kind, gamma, aux_weight

    def forward(self, logits, aux, targets, is_leak):
        logits = logits.float()
        if self.kind == "focal":
            log_p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
            loss = -(self.weights[targets] * (1 - log_p.exp()) ** self.gamma * log_p).sum() / self.weights[targets].sum()
        else:
            loss = F.cross_entropy(logits, targets, weight=self.weights)
        if aux is not None:
            loss = loss + self.aux_weight * F.binary_cross_entropy_with_logits(aux.float(), is_leak.float())
        return loss


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0 (or a one-cycle: warm-up over 30 %, then cosine)."""
    warmup = max(1, int(0.3 * total)) if schedule == "onecycle" else warmup
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
