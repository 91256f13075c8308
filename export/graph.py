"""What goes into an ONNX file: the card's front-end, segmentation and P(LEAK) rule around the network,
so a deployment needs nothing but onnxruntime, plus exact rewrites of LeakCNN that make the graph faster.

Every rewrite here is exact in real arithmetic; export checks the result against the torch path anyway.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from leakhunter.card import ModelCard, input_shape
from leakhunter.frontend import FrontEnd, frame_signal
from leakhunter.fusion import FusionNet
from leakhunter.inference.onnx_card import INPUT_KINDS
from leakhunter.models import HalveRows, LeakCNN, ModelInputs, PoolTo16Rows, Scorer
from leakhunter.segments import frame_stride


class FoldedLeakCNN(nn.Module):
    """LeakCNN rewritten for inference on one input shape, with the same outputs (logits, aux logit).

    - Layers become the plain ones onnxruntime runs fastest (measured 3x at batch 1024): on a width-1
      map (the `short` preset's [1, 32, 1]) a 3×3 convolution with padding 1 only ever multiplies its
      middle column with data, so it becomes a 3×1 Conv2d; a (2, 1) row halving becomes MaxPool2d.
    - The (16, 1) adaptive average pool over the last map [C, h, w] is a fixed linear map: a mean over
      the w columns, then each of the 16 output rows averages a run of the h rows (for h = 8 it repeats
      each row twice). The rows part folds into the Linear after it, which shrinks from C·16 to C·h inputs.
    - Dropout is the identity at inference and goes.
    """

    def __init__(self, model: LeakCNN, mel_shape: tuple[int, int, int]):
        super().__init__()
        *convolutions, pool, flatten = model.features
        if not isinstance(pool, (nn.AdaptiveAvgPool2d, PoolTo16Rows)) or not isinstance(flatten, nn.Flatten):
            raise ValueError(f"LeakCNN's features should end in a (16, 1) pool and Flatten, got {pool}, {flatten}")
        width = mel_shape[-1]
        self.level, self.normalise = model.level, model.normalise
        self.features = nn.Sequential(*(plain_layer(layer, width) for layer in convolutions))
        with torch.no_grad():
            channels, height, _ = self.features(torch.zeros(1, *mel_shape)).shape[1:]
        linear = next(layer for layer in model.embed if isinstance(layer, nn.Linear))
        out_rows = linear.in_features // channels
        rows = adaptive_rows(height, out_rows)  # [out_rows, height]
        weight = linear.weight.detach().double().reshape(linear.out_features, channels, out_rows) @ rows
        self.embed = nn.Linear(channels * height, linear.out_features)
        with torch.no_grad():
            self.embed.weight.copy_(weight.reshape(linear.out_features, channels * height))
            self.embed.bias.copy_(linear.bias)
        self.head, self.aux = model.head, model.aux

    def forward(self, mel: torch.Tensor):
        maps = self.features(self.normalise(self.level(mel)))  # [B, C, h, w]
        embedding = torch.relu(self.embed(maps.mean(dim=-1).flatten(1)))
        aux = self.aux(embedding).squeeze(-1) if self.aux is not None else None
        return self.head(embedding), aux


def plain_layer(layer: nn.Module, width: int) -> nn.Module:
    """The standard torch layer computing what `layer` computes on maps of this width."""
    if isinstance(layer, HalveRows):
        return nn.MaxPool2d((2, 1))
    if not isinstance(layer, nn.Conv2d):
        return layer
    (kernel_h, kernel_w), (pad_h, pad_w) = layer.kernel_size, _pair(layer.padding)
    narrow = width == 1 and layer.stride[1] == 1 and layer.dilation[1] == 1 and 2 * pad_w == kernel_w - 1
    columns = slice(pad_w, pad_w + 1) if narrow else slice(None)
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, (kernel_h, 1 if narrow else kernel_w),
                      stride=layer.stride, padding=(pad_h, 0 if narrow else pad_w), dilation=layer.dilation,
                      groups=layer.groups, bias=layer.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(layer.weight[:, :, :, columns])
        if layer.bias is not None:
            plain.bias.copy_(layer.bias)
    return plain


def adaptive_rows(height: int, out_rows: int) -> torch.Tensor:
    """AdaptiveAvgPool's row map [out_rows, height]: row i averages rows floor(i·h/o) .. ceil((i+1)·h/o)."""
    rows = torch.zeros(out_rows, height, dtype=torch.float64)
    for i in range(out_rows):
        start, end = (i * height) // out_rows, -(-(i + 1) * height // out_rows)
        rows[i, start:end] = 1.0 / (end - start)
    return rows


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class HalfPrecision(nn.Module):
    """The network in float16 between float32 mels and float32 outputs: the front-end (whose power
    values overflow float16), the dB scale and the softmax stay in float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, mel: torch.Tensor):
        logits, aux = self.model(mel.half())
        return logits.float(), aux.float() if aux is not None else None


def scorer_for_export(model: nn.Module, card: ModelCard, fp16: bool = False) -> Scorer:
    """The card's P(LEAK) rule around the fastest exact form of a copy of the model (LeakCNN folded)."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, LeakCNN):
        model = FoldedLeakCNN(model, input_shape(card.frontend, card.segmentation))
    elif isinstance(model, FusionNet) and "mel" in model.branch_names:  # its mel branch is a LeakCNN
        model.mel = FoldedLeakCNN(model.mel, input_shape(card.frontend, card.segmentation))
    return Scorer(HalfPrecision(model) if fp16 else model, card).eval()


class WaveformScorer(nn.Module):
    """[batch, samples] recordings at the card's rate → (probs [n, C], leak_prob [n]): one row per scoring
    input (short segment for unit "short", long segment for "long"), recording by recording.

    The segments are those of leakhunter.segments.plan_segments, written as shape arithmetic so the
    exporter keeps `samples` dynamic: tail "pad" zero-pads long_hop - 1 samples, which turns the drop
    rule's floor into the pad rule's ceiling. Needs samples >= long_samples. The STFT is the front-end's
    dft="matmul" path with its DFT and |.|² in float64, as in training (a float32 DFT missed the stored
    features by up to 6.7e-3 dB in quiet mel bins; see FrontEnd._matmul_power); mel and dB are float32.
    """

    def __init__(self, scorer: Scorer, card: ModelCard):
        super().__init__()
        self.card = card
        self.frontend = FrontEnd(card.frontend, card.segmentation, dft="matmul")  # float64 DFT: no .float()
        self.scorer = scorer

    def segments_span(self, waveform: torch.Tensor) -> torch.Tensor:
        """The samples the segments cover: padded by the tail rule, cut after the last short segment."""
        seg = self.card.segmentation
        if seg.tail == "pad":
            waveform = nn.functional.pad(waveform, (0, seg.long_hop - 1))
        n_long = 1 + (waveform.shape[-1] - seg.long_samples) // seg.long_hop
        n_short = (n_long - 1) * (seg.long_hop // seg.short_hop) + seg.shorts_per_long()
        return waveform[:, : (n_short - 1) * seg.short_hop + seg.short_samples]

    def forward(self, waveform: torch.Tensor, reference: torch.Tensor | None = None):
        """`reference` [B, n_mels]: a reference model's sensor reference per recording, subtracted from every
        log-mel of the recording (leakhunter/reference.py)."""
        cfg, seg = self.card.frontend, self.card.segmentation
        waveform = self.segments_span(waveform)
        stride = frame_stride(cfg, seg)
        mel = self.frontend.log_mel(self.frontend.power_frames(waveform, stride))  # [B, n_mels, frames]
        if reference is not None:
            mel = mel - reference[:, :, None]
        frames, step = seg.frames_per_short(cfg), seg.short_hop // stride
        # one frame per short segment (`short`, `wide`): a reshape, where unfold would export as a gather
        shorts = mel.unsqueeze(-1) if frames == step == 1 else mel.unfold(-1, frames, step)  # [B, n_mels, S, f]
        if seg.unit == "short":
            inputs = shorts.permute(0, 2, 1, 3)  # [B, S, n_mels, f]
        else:
            longs = shorts.unfold(2, seg.shorts_per_long(), seg.long_hop // seg.short_hop)  # [B, n_mels, L, f, spl]
            inputs = longs.permute(0, 2, 1, 4, 3).flatten(-2)  # [B, L, n_mels, spl·f], shorts stacked over time
        return self.scorer(inputs.reshape(-1, 1, *inputs.shape[-2:]))


class FusionWaveformScorer(WaveformScorer):
    """A fusion model's graph: waveform [batch, samples] (+ meta [batch, n_meta], one row per recording, NaN
    unknown) → (probs [n, C], leak_prob [n]) per short segment. The mel and the engineered features come from
    one STFT (the features' power is the short segment's frame, their samples the segment's own), as
    FrontEnd.short_segments computes them for the dataset; each recording's meta row goes to all its inputs."""

    def forward(self, waveform: torch.Tensor, meta: torch.Tensor | None = None):
        cfg, seg = self.card.frontend, self.card.segmentation
        waveform = self.segments_span(waveform)
        stride = frame_stride(cfg, seg)
        power = self.frontend.power_frames(waveform, stride)  # [B, bins, frames]
        frames, step = seg.frames_per_short(cfg), seg.short_hop // stride
        if frames != 1 or step != 1:
            raise ValueError("a fusion graph takes one STFT frame per short segment (the `short` or `wide` preset)")
        mel = self.frontend.log_mel(power).transpose(1, 2)  # [B, S, n_mels]
        features = self.frontend._features(power.transpose(1, 2), frame_signal(waveform, seg.short_samples,
                                                                               seg.short_hop))  # [B, S, F]
        if meta is not None:
            meta = meta[:, None, :].expand(-1, mel.shape[1], -1).reshape(-1, meta.shape[-1])
        return self.scorer(*ModelInputs(mel.reshape(-1, 1, mel.shape[-1], 1), features.reshape(-1, features.shape[-1]),
                                        meta))


def graph_module(model: nn.Module, card: ModelCard, input: str, fp16: bool = False) -> nn.Module:
    """The module that is exported for `input` ("waveform" or "mel"); the model itself is not changed."""
    if input not in INPUT_KINDS:
        raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)}, got {input!r}")
    scorer = scorer_for_export(model, card, fp16)
    if isinstance(model, FusionNet):
        return FusionWaveformScorer(scorer, card).eval()
    return WaveformScorer(scorer, card).eval() if input == "waveform" else scorer


def graph_inputs(card: ModelCard, input: str) -> list[str]:
    """The graph's input names: the scoring input, and the per-recording input of a model that takes one
    (`meta` for a fusion model with a meta branch, `reference` for a reference model)."""
    return [input] + ([card.recording_input[0]] if card.recording_input else [])


def network_scope(input: str) -> str:
    """Where the network sits in graph_module's module tree (the exporter records it per ONNX node)."""
    return "scorer.model" if input == "waveform" else "model"
