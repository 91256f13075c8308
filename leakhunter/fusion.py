"""Fusion models (DESIGN §9): branches that each see a recording differently, combined by learnable weights.

Each branch is an encoder with its own head giving class logits; the fused logits are the branches' logits
weighted by softmax(fusion_logits), a parameter initialised from the prior (never fixed constants: fixed
0.3 scaled one branch's gradient by 0.3 in the predecessor). The fused model returns (logits, None) like
LeakCNN, so the card's P(LEAK) rule (softmax) and every consumer stay as they are. Branch names are the
module names, so a branch's tensors are `<branch>.*` and its head's `<branch>.head.*`: stage 1 transfers
and freezes every `<branch>.*` tensor but the head's.
"""

from __future__ import annotations

import torch
from torch import nn

from leakhunter.frontend import FEATURE_NAMES
from leakhunter.models import LeakCNN, ModelInputs, register

BRANCHES = ("mel", "features", "meta")


class Standardise(nn.Module):
    """(x - mean) / std per column, statistics of the training split (buffers, so they travel with weights)."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureBranch(nn.Module):
    """An MLP over the front-end's engineered features of the same input (band powers, centroid, ...)."""

    def __init__(self, n_classes: int, width: int, dropout: float):
        super().__init__()
        self.normalise = Standardise(len(FEATURE_NAMES))
        self.encoder = nn.Sequential(nn.Linear(len(FEATURE_NAMES), width), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.normalise(features)))


class MetaBranch(nn.Module):
    """An MLP over per-file metadata [B, n_meta] where NaN is unknown: standardised values (0 where unknown)
    beside the unknown-mask, so a missing field is a value the model has seen. In training, each field of
    each row is hidden with probability `meta_dropout` (leakhunter/meta.py: columns of one field together)."""

    def __init__(self, n_classes: int, n_meta: int, width: int, meta_dropout: float = 0.2):
        super().__init__()
        self.normalise = Standardise(n_meta)
        self.register_buffer("column_field", torch.arange(n_meta))
        self.meta_dropout = meta_dropout
        self.encoder = nn.Sequential(nn.Linear(2 * n_meta, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        unknown = torch.isnan(meta)
        if self.training and self.meta_dropout > 0:
            n_fields = int(self.column_field.max()) + 1 if len(self.column_field) else 0
            hidden = torch.rand(meta.shape[0], n_fields, device=meta.device) < self.meta_dropout
            unknown = unknown | hidden[:, self.column_field]
        known = torch.where(unknown, torch.zeros_like(meta), meta)  # NaN never reaches arithmetic (nor its gradient)
        values = torch.where(unknown, torch.zeros_like(meta), self.normalise(known))
        return self.head(self.encoder(torch.cat([values, unknown.to(values.dtype)], dim=-1)))


@register("fusion")
class FusionNet(nn.Module):
    """Branches `mel` (LeakCNN, aux head off), `features` and `meta`, fused by learnable weights.

    forward(mel, features, meta) takes the inputs of its branches in BRANCHES order (None for absent ones)."""

    def __init__(self, n_classes: int, aux_head: bool, n_mels: int = 32, branches=BRANCHES, prior=None,
                 channels=(32, 64, 128), hidden: int = 256, dropout: float = 0.25, level: str = "absolute",
                 branch_width: int = 64, n_meta: int = 0):
        super().__init__()
        if aux_head:
            raise ValueError("a fusion model has no auxiliary head: its P(LEAK) is the fused softmax")
        self.branch_names = tuple(b for b in BRANCHES if b in branches)
        if "mel" in self.branch_names:
            self.mel = LeakCNN(n_classes, False, n_mels, channels, hidden, dropout, level)
        if "features" in self.branch_names:
            self.features = FeatureBranch(n_classes, branch_width, dropout)
        if "meta" in self.branch_names:
            self.meta = MetaBranch(n_classes, n_meta, branch_width)
        prior = torch.full((len(self.branch_names),), 1.0 / len(self.branch_names)) if prior is None \
            else torch.tensor([float(p) for p in prior])
        self.fusion_logits = nn.Parameter(prior.log())
        self.aux = None

    @property
    def head(self) -> nn.Linear:
        """Every branch head has one output per class; the checks that read a model's head read the first."""
        return getattr(self, self.branch_names[0]).head

    @property
    def normalise(self):
        """The mel branch's per-bin normaliser (the trainer fills it from the training statistics), if any."""
        return self.mel.normalise if "mel" in self.branch_names else None

    def fusion_weights(self) -> torch.Tensor:
        return torch.softmax(self.fusion_logits, dim=0)

    def branch_logits(self, mel=None, features=None, meta=None) -> list[torch.Tensor]:
        inputs = {"mel": mel, "features": features, "meta": meta}
        outputs = []
        for name in self.branch_names:
            branch = getattr(self, name)
            outputs.append(branch(inputs[name])[0] if name == "mel" else branch(inputs[name]))
        return outputs

    def alone(self, name: str) -> nn.Module:
        """This model as if it were its branch `name` alone (same inputs; for per-branch metrics)."""
        return BranchAlone(self, self.branch_names.index(name))

    def forward(self, mel=None, features=None, meta=None):
        logits = torch.stack([x.float() for x in self.branch_logits(mel, features, meta)])  # [K, B, C]
        return (self.fusion_weights()[:, None, None] * logits).sum(dim=0), None


class BranchAlone(nn.Module):
    """One branch of a FusionNet, answering like a model: (its logits, None)."""

    def __init__(self, net: FusionNet, index: int):
        super().__init__()
        self.net, self.index = net, index

    def forward(self, mel=None, features=None, meta=None):
        return self.net.branch_logits(mel, features, meta)[self.index].float(), None


def recording_inputs(frontend, samples: torch.Tensor, n_meta: int, meta=None) -> tuple:
    """A fusion model's inputs for one recording's samples [T] (whole long segments): mel [S, 1, n_mels, f],
    features [S, 14] and, with a meta branch, its encoded meta row [n_meta] (None or NaN: unknown) repeated
    per input. The front-end computes both from the same STFT, as the dataset build did."""
    mel, features = frontend.short_segments(samples[None], with_features=True)
    if not n_meta:
        return ModelInputs(mel[0][:, None], features[0])
    row = torch.full((n_meta,), float("nan")) if meta is None else torch.as_tensor(meta, dtype=torch.float32)
    return ModelInputs(mel[0][:, None], features[0], row.to(mel.device).expand(mel.shape[1], n_meta))
