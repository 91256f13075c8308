"""Architecture registry and the scoring head: a card names an architecture, this builds it.

Weights reload without pickle (state_dict + card). `Scorer` turns a model's outputs into class
probabilities and P(LEAK) by the card's rule, so no consumer ever picks a column by index.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from leakhunter.card import ARCHITECTURE_PARAMS, CardError, ModelCard, input_shape

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class ModelInputs(NamedTuple):
    """A model's inputs, one typed value from the loader (training/data.py), the runners and the export graph:
    the mel [B, 1, n_mels, frames] every model takes, and a fusion model's features [B, F] and meta [B, n_meta]
    (None where the model has no such branch)."""

    mel: torch.Tensor | None
    features: torch.Tensor | None = None
    meta: torch.Tensor | None = None

    def args(self) -> tuple:
        """The model's positional arguments: trailing absent inputs left out, so LeakCNN is called with mel."""
        values = list(self)
        while len(values) > 1 and values[-1] is None:
            values.pop()
        return tuple(values)

    def to(self, device) -> ModelInputs:
        """On `device` (pinned first on CUDA: leakhunter.devices.to_device)."""
        from leakhunter.devices import to_device

        return ModelInputs(*(None if x is None else to_device(x, device) for x in self))


def register(name: str):
    def add(builder):
        REGISTRY[name] = builder
        return builder

    return add


class MelNormaliser(nn.Module):
    """Per-mel-bin (x - mean) / std from the training split: a recorded step, never baked into features."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # [B, 1, n_mels, frames]
        return (mel - self.mean[:, None]) / self.std[:, None]


class RelativeLevel(nn.Module):
    """Each input's log-mel minus its own mean over mel bins and frames: the network sees spectral shape, not
    level, so a site's sensor gain or logger setting cannot move its verdicts (`--level relative`)."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # [B, 1, n_mels, frames]
        return mel - mel.mean(dim=(2, 3), keepdim=True)


class Conv3x3(nn.Conv2d):
    """A 3×3 convolution (padding 1); on a width-1 map only the middle column ever meets data, so that
    case runs as a 1-D convolution: the same function and gradients, 3x faster to train on CPU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 1:
            return nn.functional.conv1d(x.squeeze(-1), self.weight[:, :, :, 1], self.bias, padding=1).unsqueeze(-1)
        return super().forward(x)


class HalveRows(nn.Module):
    """MaxPool2d((2, 1)) on an even number of rows, as a reshape and max (torch's CPU kernel is slow here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, rows, width = x.shape
        if rows % 2:
            return nn.functional.max_pool2d(x, (2, 1))
        return x.reshape(batch, channels, rows // 2, 2, width).amax(dim=3)


class PoolTo16Rows(nn.Module):
    """AdaptiveAvgPool2d((16, 1)): with rows dividing 16 it averages the width and repeats each row,
    which is what the adaptive pool computes, without its slow CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[2]
        if 16 % rows:
            return nn.functional.adaptive_avg_pool2d(x, (16, 1))
        return x.mean(dim=3, keepdim=True).repeat_interleave(16 // rows, dim=2)


@register("leakcnn")
class LeakCNN(nn.Module):
    """The brief's LeakCNNMulti: three 3×3 convolutions, two (2,1) max pools, a (16,1) adaptive average
    pool, 256 hidden. Its state_dict is the brief's; the layers above only compute it faster.

    Outputs class logits [B, n_classes] and, with `aux_head`, one leak-vs-rest logit [B].
    Works for any [1, n_mels, frames] input (the `short` preset's [1, 32, 1], the `long` one's [1, 32, 15], the
    `wide` one's [1, 64, 1]).
    """

    def __init__(self, n_classes: int, aux_head: bool, n_mels: int = 32, channels=(32, 64, 128),
                 hidden: int = 256, dropout: float = 0.25, level: str = "absolute"):
        super().__init__()
        c1, c2, c3 = channels
        self.level = RelativeLevel() if level == "relative" else nn.Identity()
        self.normalise = MelNormaliser(n_mels)
        self.features = nn.Sequential(
            Conv3x3(1, c1), nn.ReLU(),
            Conv3x3(c1, c2), nn.ReLU(), HalveRows(),
            Conv3x3(c2, c3), nn.ReLU(), HalveRows(),
            PoolTo16Rows(), nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3 * 16, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, n_classes)
        self.aux = nn.Linear(hidden, 1) if aux_head else None

    def forward(self, mel: torch.Tensor):
        embedding = self.embed(self.features(self.normalise(self.level(mel))))
        aux = self.aux(embedding).squeeze(-1) if self.aux is not None else None
        return self.head(embedding), aux


def check_registry() -> None:
    """card.ARCHITECTURE_PARAMS (validated without torch) must list exactly the registry and only params
    each constructor takes; a mismatch is a programming error, caught before any card reaches a builder."""
    import leakhunter.fusion  # noqa: F401  (registers "fusion"; it builds on LeakCNN, so it imports this module)

    if set(REGISTRY) != set(ARCHITECTURE_PARAMS):
        raise RuntimeError(f"card.ARCHITECTURE_PARAMS lists {sorted(ARCHITECTURE_PARAMS)}, the registry {sorted(REGISTRY)}")
    for name, builder in REGISTRY.items():
        accepted = set(inspect.signature(builder).parameters)
        if not set(ARCHITECTURE_PARAMS[name]) <= accepted:
            raise RuntimeError(f"{name} does not take {sorted(set(ARCHITECTURE_PARAMS[name]) - accepted)}")


def build_model(card: ModelCard) -> nn.Module:
    """The card's architecture with a head of len(class_names) and, for multiclass, the aux head."""
    name = card.architecture["name"]
    check_registry()
    builder = REGISTRY[name]
    return builder(n_classes=len(card.class_names), aux_head=card.leak_prob == "mean_softmax_aux",
                   n_mels=card.frontend.n_mels, **card.architecture.get("params", {}))


def check_weights(card: ModelCard, state_dict: dict, source: str) -> None:
    """A card that contradicts its weights (head size vs class_names, aux head vs rule) is refused."""
    problems = []
    for name, head in state_dict.items():  # LeakCNN's `head.weight`, a fusion branch's `<branch>.head.weight`
        if (name == "head.weight" or name.endswith(".head.weight")) and head.shape[0] != len(card.class_names):
            problems.append(("class_names", f"card lists {len(card.class_names)} classes {list(card.class_names)} "
                                            f"but the weights' {name.removesuffix('.weight')} has {head.shape[0]} "
                                            f"outputs"))
    has_aux = "aux.weight" in state_dict
    if has_aux != (card.leak_prob == "mean_softmax_aux"):
        problems.append(("leak_prob", f"card says {card.leak_prob!r} but the weights "
                                      f"{'have' if has_aux else 'have no'} auxiliary leak head"))
    if problems:
        raise CardError(problems, source)


def load_model(card: ModelCard, state_dict: dict, source: str = "checkpoint") -> nn.Module:
    check_weights(card, state_dict, source)
    model = build_model(card)
    model.load_state_dict(state_dict)
    return model.eval()


class Scorer(nn.Module):
    """Model + the card's P(LEAK) rule: the model's inputs (mel [B, 1, n_mels, frames]; a fusion model's
    mel, features, meta) → (probs [B, C], leak_prob [B])."""

    def __init__(self, model: nn.Module, card: ModelCard):
        super().__init__()
        self.model = model
        self.leak_idx = card.leak_idx
        self.rule = card.leak_prob
        self.input_shape = input_shape(card.frontend, card.segmentation)

    def forward(self, mel: torch.Tensor, features: torch.Tensor | None = None, meta: torch.Tensor | None = None):
        return self.combine(*self.model(*ModelInputs(mel, features, meta).args()))

    def combine(self, logits: torch.Tensor, aux: torch.Tensor | None):
        """The card's rule from raw outputs (training computes its loss from the same outputs)."""
        probs = torch.softmax(logits.float(), dim=-1)
        leak_prob = probs[:, self.leak_idx]
        if self.rule == "mean_softmax_aux":
            leak_prob = 0.5 * (leak_prob + torch.sigmoid(aux.float()))
        return probs, leak_prob


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
