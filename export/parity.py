"""Parity of an exported model with the torch model it came from, on a fixed golden set of recordings.

The golden set is synthetic recordings of every class, the real hydrophone recordings when they are at
hand, and noise at three levels. Both sides score each recording end to end (front-end included) and
vote it with the card's rule, so a parity pass means the same P(LEAK) and the same file verdicts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leakhunter.audio import AudioError, load_audio
from leakhunter.card import STANDARD_CLASSES, ModelCard
from leakhunter.inference.runner import Runner, long_segment_probs
from leakhunter.voting import vote_files

# fp32 exports must match torch this closely (the float32 DFT and the rewrites cost about 1e-7).
FP32_TOLERANCE = 1e-4
GOLDEN_SECONDS = 8.0
GOLDEN_PER_CLASS = 2
NOISE_LEVELS = (0.3, 1e-2, 1e-4)
REAL_DATA_ENV = "LEAKHUNTER_REAL_DATA"


@dataclass(frozen=True)
class GoldenRecording:
    name: str
    source: str  # "synthetic", "real" or "noise"
    samples: np.ndarray  # float32 at the card's sample rate
    context: np.ndarray | None = None  # the per-recording input: a fusion model's meta row, a sensor reference


@dataclass(frozen=True)
class FileParity:
    name: str
    source: str
    n_inputs: int
    max_abs_leak_prob: float
    leak_score_torch: float
    leak_score_exported: float
    verdict_torch: bool
    verdict_exported: bool


@dataclass(frozen=True)
class ParityResult:
    """How one exported variant compares with torch on the golden set."""

    precision: str
    tolerance: float | None  # max |Δ leak_prob| allowed; None: reported only (fp16, int8)
    max_abs_leak_prob: float
    max_abs_probs: float
    mean_abs_leak_prob: float
    n_files: int
    n_inputs: int
    verdict_flips: list[str]
    files: list[FileParity] = field(repr=False)

    @property
    def passed(self) -> bool:
        within = self.tolerance is None or self.max_abs_leak_prob <= self.tolerance
        return within and not self.verdict_flips

    def failure(self) -> str:
        """Why it failed, with the numbers ("" when it passed)."""
        reasons = []
        if self.tolerance is not None and self.max_abs_leak_prob > self.tolerance:
            reasons.append(f"max |Δ leak_prob| {self.max_abs_leak_prob:.3g} exceeds {self.tolerance:g} "
                           f"({self.max_abs_leak_prob / self.tolerance:.3g}x the tolerance)")
        if self.verdict_flips:
            reasons.append(f"the file verdict flips on {len(self.verdict_flips)} of {self.n_files} golden "
                           f"recordings: {', '.join(self.verdict_flips)}")
        return f"{self.precision}: " + "; ".join(reasons) if reasons else ""

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def real_data_dir() -> Path | None:
    """The real recordings: $LEAKHUNTER_REAL_DATA, else ../shared/data/aghashahi-h1 beside the checkout."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "aghashahi-h1"
    folder = Path(os.environ.get(REAL_DATA_ENV, default))
    return folder if folder.is_dir() else None


def golden_recordings(card: ModelCard, real_data: Path | None = None) -> list[GoldenRecording]:
    """The same recordings every time: synthetic per class (fixed seed), real ones if given, noise."""
    from leakhunter.synth import synth_recording

    rate = card.frontend.sample_rate
    rng = np.random.default_rng(20250333)
    recordings = [GoldenRecording(f"synthetic-{label}-{i}", "synthetic", synth_recording(label, GOLDEN_SECONDS, rate, rng))
                  for label in STANDARD_CLASSES for i in range(GOLDEN_PER_CLASS)]
    if real_data is not None:
        for path in sorted(real_data.glob("*.wav")):
            try:
                audio = load_audio(path, rate, min_samples=card.segmentation.long_samples)
            except AudioError:
                continue  # a broken real file says nothing about parity
            recordings.append(GoldenRecording(f"real-{path.stem}", "real", audio.samples))
    n = round(GOLDEN_SECONDS * rate)
    recordings += [GoldenRecording(f"noise-{level:g}", "noise", (level * rng.standard_normal(n)).astype(np.float32))
                   for level in NOISE_LEVELS]
    return with_reference(card, with_meta(card, recordings))


def with_reference(card: ModelCard, recordings: list[GoldenRecording]) -> list[GoldenRecording]:
    """For a reference model, each recording twice: judged against its own median log-mel (a realistic
    reference, so inputs sit near 0 dB as in training) and against a flat -40 dB one (inputs far from it)."""
    if card.reference is None:
        return recordings
    from leakhunter.frontend import FrontEnd
    from leakhunter.reference import samples_median

    frontend = FrontEnd(card.frontend, card.segmentation).eval()
    flat = np.full(card.frontend.n_mels, -40.0, np.float32)
    return [GoldenRecording(f"{r.name}/{name}", r.source, r.samples, reference) for r in recordings
            for name, reference in (("reference-own", samples_median(frontend, r.samples)), ("reference-flat", flat))]


def with_meta(card: ModelCard, recordings: list[GoldenRecording]) -> list[GoldenRecording]:
    """For a model with a meta input, each recording three times: its meta as trained (the training means, the
    first category), missing (NaN), and shifted (numbers two standard deviations up, the last category)."""
    spec = (card.branches or {}).get("meta")
    if not spec:
        return recordings
    from leakhunter.meta import MetaSpec

    spec = MetaSpec.from_dict(spec)
    usual = spec.usual()
    shifted = {f: str(spec.numeric[f][0] + 2 * spec.numeric[f][1]) if f in spec.numeric else spec.categories[f][-1]
               for f in spec.fields}
    variants = {"meta-usual": spec.encode(usual), "meta-missing": spec.encode({}), "meta-shifted": spec.encode(shifted)}
    return [GoldenRecording(f"{r.name}/{variant}", r.source, r.samples, row)
            for r in recordings for variant, row in variants.items()]


def reference_scores(runner: Runner, recordings: list[GoldenRecording]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probs, leak_prob) per recording; torch's scores are made once and compared with every variant."""
    return [runner.score_waveform(recording.samples, recording.context) for recording in recordings]


def compare(reference: list[tuple[np.ndarray, np.ndarray]], exported: Runner, recordings: list[GoldenRecording],
            card: ModelCard, precision: str, tolerance: float | None) -> ParityResult:
    """Score the golden set with the exported runner and compare inputs, long segments and verdicts."""
    files, deltas, prob_deltas = [], [], []
    for recording, (ref_probs, ref_leak) in zip(recordings, reference):
        probs, leak = exported.score_waveform(recording.samples, recording.context)
        if probs.shape != ref_probs.shape:
            raise ValueError(f"{recording.name}: the exported graph made {probs.shape[0]} scoring inputs, "
                             f"torch made {ref_probs.shape[0]}")
        delta = np.abs(leak.astype(np.float64) - ref_leak)
        deltas.append(delta)
        prob_deltas.append(np.abs(probs.astype(np.float64) - ref_probs).max())
        torch_vote, exported_vote = (_vote(card, recording.samples.size, values) for values in (ref_leak, leak))
        files.append(FileParity(recording.name, recording.source, int(leak.size), float(delta.max()),
                                float(torch_vote.leak_score[0]), float(exported_vote.leak_score[0]),
                                bool(torch_vote.verdict[0]), bool(exported_vote.verdict[0])))
    every = np.concatenate(deltas)
    return ParityResult(
        precision=precision, tolerance=tolerance, max_abs_leak_prob=float(every.max()),
        max_abs_probs=float(max(prob_deltas)), mean_abs_leak_prob=float(every.mean()), n_files=len(files),
        n_inputs=int(every.size), verdict_flips=[f.name for f in files if f.verdict_torch != f.verdict_exported],
        files=files)


def _vote(card: ModelCard, n_samples: int, leak_prob: np.ndarray):
    long_probs = long_segment_probs(card, n_samples, leak_prob)
    return vote_files(long_probs, np.zeros(long_probs.size, dtype=np.int64), 1, card.voting.threshold,
                      card.voting.vote_fraction)


# The front-end's contract (DESIGN §3): every dB value within this of librosa's float64 maths.
FRONTEND_CONTRACT_DB = 1e-3


@dataclass(frozen=True)
class FrontendPrecision:
    """How far one front-end variant (DFT dtype, device) lands from the float64 CPU front-end, in dB, over
    every CNN input value of the golden set (the float64 path itself is ~2e-5 dB from librosa)."""

    variant: str  # e.g. "float32 fft on cpu"
    max_abs_db: float
    max_abs_db_by_source: dict[str, float]
    worst: str  # the recording with the largest error
    n_files: int
    n_values: int
    contract_db: float = FRONTEND_CONTRACT_DB

    @property
    def passed(self) -> bool:
        return self.max_abs_db <= self.contract_db

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def frontend_precision(card: ModelCard, recordings: list[GoldenRecording], dtype: str = "float32",
                       device: str = "cpu", dft: str = "fft") -> FrontendPrecision:
    """Max |Δ dB| of the card's front-end with its DFT in `dtype` on `device` against the float64 DFT on CPU.

    Run on CPU, float32 vs float64 measures the rounding of a float32 DFT (the same IEEE arithmetic a GPU
    does with TF32 off, up to summation order); on CUDA it measures the GPU path itself. Both sides make the
    CNN inputs the torch runner makes (`scoring_mels`), under the runner's `full_float32` scope.
    """
    import torch

    from leakhunter.frontend import FrontEnd
    from leakhunter.inference.torch_runner import full_float32, scoring_mels

    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    reference = FrontEnd(card.frontend, card.segmentation)
    variant = FrontEnd(card.frontend, card.segmentation, dft=dft)
    variant = (variant.float() if dtype == "float32" else variant).to(device)  # .float(): the DFT's buffers
    worst, by_source, n_values = ("", -1.0), {}, 0
    with torch.inference_mode(), full_float32():
        for recording in recordings:
            samples = torch.from_numpy(recording.samples)
            expected = scoring_mels(reference, card, samples).double()
            got = scoring_mels(variant, card, samples.to(device)).double().cpu()
            error = float((got - expected).abs().max())
            n_values += expected.numel()
            by_source[recording.source] = max(by_source.get(recording.source, 0.0), error)
            worst = max(worst, (recording.name, error), key=lambda item: item[1])
    return FrontendPrecision(variant=f"{dtype} {dft} on {device}", max_abs_db=worst[1],
                             max_abs_db_by_source=by_source, worst=worst[0], n_files=len(recordings),
                             n_values=n_values)


def amp_parity(checkpoint: str | Path, device: str = "auto", amp_dtype=None, real_data: Path | None = None,
               recordings: list[GoldenRecording] | None = None) -> ParityResult:
    """The torch runner with autocast on the network against the same runner in full float32, on the same
    device and golden set: max |Δ P(LEAK)| (reported) and file verdict flips (ParityResult.passed: none).

    amp_dtype None takes what scoring uses there (bf16, else fp16, on CUDA); on CPU, where scoring uses no
    AMP, bf16 autocast on CPU exercises the same code path.
    """
    import torch

    from leakhunter.devices import autocast_dtype
    from leakhunter.inference.torch_runner import TorchRunner

    reference = TorchRunner(checkpoint, device, amp=None)
    dtype = amp_dtype or autocast_dtype(reference.torch_device) or torch.bfloat16
    mixed = TorchRunner(checkpoint, device, amp=dtype)
    if recordings is None:
        recordings = golden_recordings(reference.card, real_data)
    precision = f"amp-{str(dtype).removeprefix('torch.')} on {reference.device}"
    return compare(reference_scores(reference, recordings), mixed, recordings, reference.card, precision, None)
