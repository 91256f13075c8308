"""Reference pipelines the benchmarks compare leakhunter with: what one would write without leakhunter."""

from pathlib import Path

import librosa
import numpy as np
import soundfile
import torch
from torch import nn

from leakhunter.card import ModelCard
from leakhunter.models import build_model


def torch_kernels_copy(fast: nn.Module) -> nn.Module:
    """The same network built from torch's stock layers (Conv2d 3×3, MaxPool2d (2, 1), AdaptiveAvgPool2d
    (16, 1)) with the same weights: the reference the rewrites must equal."""

    class Stock(nn.Module):
        def __init__(self):
            super().__init__()
            convs = [module for module in fast.features if isinstance(module, nn.Conv2d)]
            stock = []
            for conv in convs:
                copy = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
                copy.load_state_dict(conv.state_dict())
                stock.append(copy)
            self.level, self.normalise = fast.level, fast.normalise
            self.features = nn.Sequential(stock[0], nn.ReLU(), stock[1], nn.ReLU(), nn.MaxPool2d((2, 1)),
                                          stock[2], nn.ReLU(), nn.MaxPool2d((2, 1)),
                                          nn.AdaptiveAvgPool2d((16, 1)), nn.Flatten())
            self.embed, self.head, self.aux = fast.embed, fast.head, fast.aux

        def forward(self, mel):
            embedding = self.embed(self.features(self.normalise(self.level(mel))))
            return self.head(embedding), self.aux(embedding).squeeze(-1)

    return Stock()


class CompetentReference:
    """Scoring as a competent engineer would write it without leakhunter: one librosa mel spectrogram per file
    (each short segment's frames picked from it), the brief's network in torch's stock layers on all of a
    file's inputs at once, the card's P(LEAK) rule, long-segment means and the same vote."""

    def __init__(self, checkpoint: Path):
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.card = ModelCard.from_json(payload["card"])
        model = build_model(self.card)
        model.load_state_dict(payload["model"])
        self.model = torch_kernels_copy(model).eval()  # the brief's network in torch's stock layers

    def score_file(self, path: Path) -> dict:
        fe, seg = self.card.frontend, self.card.segmentation
        y, rate = soundfile.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if rate != fe.sample_rate:
            y = librosa.resample(y, orig_sr=rate, target_sr=fe.sample_rate)
        mel = librosa.power_to_db(librosa.feature.melspectrogram(
            y=y, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, win_length=fe.win_length,
            n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax, center=False, power=2.0), ref=1.0, amin=1e-10, top_db=None)
        n_long = 1 + (len(y) - seg.long_samples) // seg.long_hop
        n_short = (n_long - 1) * (seg.long_hop // seg.short_hop) + seg.shorts_per_long()
        frames = seg.frames_per_short(fe)
        step = seg.short_hop // fe.hop_length
        inputs = np.stack([mel[:, k * step: k * step + frames] for k in range(n_short)])[:, None]
        with torch.inference_mode():
            logits, aux = self.model(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
            probs = torch.softmax(logits, dim=-1)
            leak = probs[:, self.card.leak_idx]
            if self.card.leak_prob == "mean_softmax_aux":
                leak = 0.5 * (leak + torch.sigmoid(aux))
        leak = leak.numpy().astype(np.float64)
        first = np.arange(n_long) * (seg.long_hop // seg.short_hop)
        long_prob = np.array([leak[f: f + seg.shorts_per_long()].mean() for f in first])
        over = np.mean(long_prob >= self.card.voting.threshold)
        return {"file": str(path), "verdict": "LEAK" if over >= self.card.voting.vote_fraction else "NOLEAK",
                "mean_leak_prob": float(long_prob.mean())}
