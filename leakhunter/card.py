"""The model card: the one self-description of a model (DESIGN §4).

Everything about a model (classes, where LEAK is, front-end, segmentation, vote) is read from here,
never from a file name, an index literal or a default. Validation names every disagreeing field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leakhunter.errors import InputError, LeakhunterError

SCHEMA_VERSION = 2  # the newest this leakhunter reads; each mode writes its own (Mode.schema_version)
STANDARD_CLASSES = ("LEAK", "NORMAL", "QUIET", "RANDOM", "MECHANICAL")
BINARY_CLASSES = ("NOLEAK", "LEAK")


@dataclass(frozen=True)
class Mode:
    """Everything that differs between modes, in one place: a new mode is one entry of MODES (and its code),
    not a test of the mode's name across the tree. Torch-free, like the card."""

    name: str
    leak_prob: str  # the card's P(LEAK) rule: "softmax" (at LEAK) or "mean_softmax_aux" (with the aux head)
    architecture: str  # what the trainer builds (leakhunter.models' registry)
    fixed_classes: tuple[str, ...] | None = None  # binary: NOLEAK/LEAK whatever the data's classes
    staged: bool = False  # trained as a list of stages (training/fusion.py), not one run
    schema_version: int = 1  # the card schema its cards are written in (fusion's `branches` came with 2)

    def class_names(self, dataset_classes) -> tuple[str, ...]:
        """The model's classes for a dataset's: the fixed pair, or the dataset's own."""
        return self.fixed_classes or tuple(dataset_classes)

    def class_index(self, label: str, class_names, leak_idx: int) -> int | None:
        """A recording's label as the model's class index (None: a label the model does not know). A model with
        fixed classes sees LEAK and everything else."""
        if self.fixed_classes:
            return leak_idx if label == "LEAK" else 1 - leak_idx
        return list(class_names).index(label) if label in class_names else None

    def class_problems(self, names: list[str]) -> list[str]:
        if self.fixed_classes and tuple(names) != self.fixed_classes:
            return [f"a {self.name} model has {list(self.fixed_classes)}, got {names} ({len(names)} classes)"]
        if len(names) < 2:
            return [f"a {self.name} model needs at least 2 classes, got {names}"]
        return []


MODES: dict[str, Mode] = {
    "binary": Mode("binary", "softmax", "leakcnn", fixed_classes=BINARY_CLASSES),
    "multiclass": Mode("multiclass", "mean_softmax_aux", "leakcnn"),
    "fusion": Mode("fusion", "softmax", "fusion", staged=True, schema_version=2),
}
LEAK_PROB_RULES = {name: mode.leak_prob for name, mode in MODES.items()}
# The architectures in leakhunter.models' registry and the constructor params a card may set, with
# bounds, kept here so that validating a card never imports torch (the ONNX scoring path runs without
# it) and an untrusted .pth cannot allocate huge layers. models.py checks its registry matches.
# A spec is ("int", low, high), ("ints", length, low, high), ("fraction",) for a float in [0, 1) or
# ("choice", value, ...).
ARCHITECTURE_PARAMS: dict[str, dict[str, tuple]] = {
    "leakcnn": {"channels": ("ints", 3, 1, 1024), "hidden": ("int", 1, 4096), "dropout": ("fraction",),
                "level": ("choice", "absolute", "relative")},
    # leakhunter/fusion.py: the mel branch takes leakcnn's params; prior is one weight per branch
    "fusion": {"branches": ("subset", "mel", "features", "meta"), "prior": ("weights",),
               "channels": ("ints", 3, 1, 1024), "hidden": ("int", 1, 4096), "dropout": ("fraction",),
               "level": ("choice", "absolute", "relative"), "branch_width": ("int", 1, 4096),
               "n_meta": ("int", 0, 4096)},
}
ARCHITECTURES = tuple(ARCHITECTURE_PARAMS)


def _param_problem(value: Any, spec: tuple) -> str | None:
    """What is wrong with one architecture param against its spec, or None."""
    def is_int(item):
        return isinstance(item, int) and not isinstance(item, bool)

    kind = spec[0]
    if kind == "int":
        low, high = spec[1:]
        return None if is_int(value) and low <= value <= high else f"must be an integer in [{low}, {high}], got {value!r:.60}"
    if kind == "ints":
        length, low, high = spec[1:]
        if isinstance(value, (list, tuple)) and len(value) == length and all(is_int(v) and low <= v <= high for v in value):
            return None
        return f"must be {length} integers in [{low}, {high}], got {value!r:.60}"
    if kind == "choice":
        return None if value in spec[1:] else f"must be one of {', '.join(spec[1:])}, got {value!r:.60}"
    if kind == "subset":
        if isinstance(value, (list, tuple)) and value and len(set(value)) == len(value) and set(value) <= set(spec[1:]):
            return None
        return f"must be a non-empty list of distinct names from {', '.join(spec[1:])}, got {value!r:.60}"
    if kind == "weights":
        if (isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               and v > 0 for v in value)
                and abs(sum(value) - 1.0) < 1e-3):
            return None
        return f"must be positive numbers summing to 1, got {value!r:.60}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0
    return None if ok else f"must be a number in [0, 1), got {value!r:.60}"


def architecture_problems(architecture: Any) -> list[tuple[str, str]]:
    """The card's architecture: a registered name and only that architecture's params, within bounds."""
    if not isinstance(architecture, dict):
        return [("architecture", f"must be an object with name and params, got {type(architecture).__name__}")]
    name = architecture.get("name")
    if name not in ARCHITECTURE_PARAMS:
        return [("architecture.name", f"{name!r} is not registered; known: {', '.join(ARCHITECTURES)}")]
    params = architecture.get("params", {})
    if not isinstance(params, dict):
        return [("architecture.params", f"must be an object, got {type(params).__name__}")]
    allowed = ARCHITECTURE_PARAMS[name]
    found = []
    for key, value in params.items():
        if key not in allowed:
            found.append((f"architecture.params.{key}", f"is not a parameter of {name}; known: {', '.join(allowed)}"))
        elif (problem := _param_problem(value, allowed[key])) is not None:
            found.append((f"architecture.params.{key}", problem))
    return found
# How a model judges a recording against its sensor's usual sound (leakhunter/reference.py): "sensor" subtracts the
# sensor's reference log-mel (the median over its recordings of each recording's median log-mel) from every
# log-mel after the front-end, in training and at scoring time. Cards from before this field read as None.
REFERENCES = ("sensor",)
CHANNEL_POLICIES = ("mean", "first")  # or a channel index as text: leakhunter.audio.parse_channel_policy's values
# The named thresholds a card may carry (leakhunter.operating chooses them; `leak predict --sensitivity NAME`).
OPERATING_POINTS = ("high", "balanced", "low-false-alarm")
_POINT_FRACTIONS = ("recall", "specificity", "precision", "f1")
_POINT_KEYS = frozenset({"target", "threshold", "reason", "false_alarms_per_100", "n_files", "n_leak",
                         *_POINT_FRACTIONS})


def operating_point_problems(points: Any) -> list[tuple[str, str]]:
    """The card's operating points: known names, each a threshold in [0, 1] with its file-level rates, or an
    unavailable point (threshold null) that says why."""
    if points is None:
        return []
    if not isinstance(points, dict):
        return [("operating_points", f"must be an object of named points, got {type(points).__name__}")]
    found = []
    for name, point in points.items():
        where = f"operating_points.{name}"
        if name not in OPERATING_POINTS:
            found.append((where, f"is not a known operating point; known: {', '.join(OPERATING_POINTS)}"))
            continue
        if not isinstance(point, dict):
            found.append((where, f"must be an object, got {type(point).__name__}"))
            continue
        found += [(f"{where}.{key}", "unknown field") for key in sorted(set(point) - _POINT_KEYS)]
        threshold = point.get("threshold")
        if threshold is None:
            if not (isinstance(point.get("reason"), str) and point["reason"]):
                found.append((f"{where}.reason", "an unavailable point (threshold null) must say why"))
        elif not _number_in(threshold, 0.0, 1.0):
            found.append((f"{where}.threshold", f"must be in [0, 1] or null, got {threshold!r:.60}"))
        for key in _POINT_FRACTIONS:
            if point.get(key) is not None and not _number_in(point[key], 0.0, 1.0):
                found.append((f"{where}.{key}", f"must be in [0, 1] or null, got {point[key]!r:.60}"))
        if point.get("false_alarms_per_100") is not None and not _number_in(point["false_alarms_per_100"], 0.0, 100.0):
            found.append((f"{where}.false_alarms_per_100", f"must be in [0, 100] or null, "
                                                           f"got {point['false_alarms_per_100']!r:.60}"))
        for key in ("n_files", "n_leak"):
            value = point.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                found.append((f"{where}.{key}", f"must be a count (an integer >= 0), got {value!r:.60}"))
    return found


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


class CardError(LeakhunterError, ValueError):
    """A card (or a card against something else) that does not hold together.

    `problems` lists (field, what is wrong); the message names every one of them.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "model card"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {name}: {why}" for name, why in self.problems)
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class FrontendConfig:
    """STFT → mel → log parameters; the feature is librosa's melspectrogram + power_to_db."""

    sample_rate: int = 4096
    n_fft: int = 512
    hop_length: int = 128
    win_length: int = 512
    window: str = "hann"
    n_mels: int = 32
    fmin: float = 0.0
    fmax: float = 2048.0
    power: float = 2.0
    log: str = "db"
    center: bool = False

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                found.append((f"frontend.{name}", f"must be a positive integer, got {getattr(self, name)!r}"))
        if found:
            return found
        if self.win_length > self.n_fft:
            found.append(("frontend.win_length", f"{self.win_length} exceeds n_fft {self.n_fft}"))
        if self.window != "hann":
            found.append(("frontend.window", f"only 'hann' is supported, got {self.window!r}"))
        if self.power != 2.0:
            found.append(("frontend.power", f"only 2.0 (power spectrum) is supported, got {self.power!r}"))
        if self.log != "db":
            found.append(("frontend.log", f"only 'db' (power_to_db, ref=1, amin=1e-10) is supported, got {self.log!r}"))
        if self.center:
            found.append(("frontend.center", "must be false: segments are framed without padding"))
        nyquist = self.sample_rate / 2
        if not 0 <= self.fmin < self.fmax <= nyquist:
            found.append(("frontend.fmin/fmax", f"need 0 <= fmin < fmax <= {nyquist:g} (Nyquist), got {self.fmin:g}/{self.fmax:g}"))
        return found


@dataclass(frozen=True)
class SegmentationConfig:
    """Two-stage windowing in samples: long segments vote, short segments are scored.

    unit "short": one CNN input per short segment; "long": one per long segment, the short segments'
    mel frames stacked over time. tail "drop" ignores a last partial long segment, "pad" zero-pads it.
    """

    long_samples: int = 1024
    long_hop: int = 512
    short_samples: int = 512
    short_hop: int = 256
    unit: str = "short"
    tail: str = "drop"

    def problems(self, frontend: FrontendConfig) -> list[tuple[str, str]]:
        found = []
        for name in ("long_samples", "long_hop", "short_samples", "short_hop"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                found.append((f"segmentation.{name}", f"must be a positive integer, got {getattr(self, name)!r}"))
        if found:
            return found
        if self.unit not in ("short", "long"):
            found.append(("segmentation.unit", f"must be 'short' or 'long', got {self.unit!r}"))
        if self.tail not in ("drop", "pad"):
            found.append(("segmentation.tail", f"must be 'drop' or 'pad', got {self.tail!r}"))
        if self.short_samples < frontend.n_fft:
            found.append(("segmentation.short_samples", f"{self.short_samples} is shorter than one STFT frame (n_fft {frontend.n_fft})"))
        if (self.short_samples - frontend.n_fft) % frontend.hop_length:
            found.append(("segmentation.short_samples", f"short_samples - n_fft must be a multiple of hop_length {frontend.hop_length}"))
        if self.short_hop % frontend.hop_length:
            found.append(("segmentation.short_hop", f"{self.short_hop} must be a multiple of hop_length {frontend.hop_length} so frames are shared"))
        if self.long_samples < self.short_samples:
            found.append(("segmentation.long_samples", f"{self.long_samples} is shorter than short_samples {self.short_samples}"))
        elif (self.long_samples - self.short_samples) % self.short_hop:
            found.append(("segmentation.long_samples", f"long_samples - short_samples must be a multiple of short_hop {self.short_hop}"))
        if self.long_hop % self.short_hop:
            found.append(("segmentation.long_hop", f"{self.long_hop} must be a multiple of short_hop {self.short_hop} so short segments are shared"))
        return found

    def frames_per_short(self, frontend: FrontendConfig) -> int:
        return 1 + (self.short_samples - frontend.n_fft) // frontend.hop_length

    def shorts_per_long(self) -> int:
        return 1 + (self.long_samples - self.short_samples) // self.short_hop


PRESETS: dict[str, tuple[FrontendConfig, SegmentationConfig]] = {
    # the brief's LeakCNNMulti: one [1, 32, 1] input per short segment, averaged per long segment
    "short": (FrontendConfig(), SegmentationConfig()),
    # Ma et al. 2025: one mel matrix [1, 32, 15] per long segment
    "long": (FrontendConfig(), SegmentationConfig(long_samples=4096, long_hop=2048, unit="long")),
    # the `short` preset's windows in time, at twice the rate and twice the bands: leak energy up to 4096 Hz,
    # for sensors whose leak sits above the `short` preset's 2048 Hz (recordings of 8 kHz and more)
    "wide": (FrontendConfig(sample_rate=8192, n_fft=1024, hop_length=256, win_length=1024, n_mels=64, fmax=4096.0),
             SegmentationConfig(long_samples=2048, long_hop=1024, short_samples=1024, short_hop=512)),
}


def preset(name: str) -> tuple[FrontendConfig, SegmentationConfig]:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_name(frontend: FrontendConfig, segmentation: SegmentationConfig) -> str | None:
    """The preset a front-end and segmentation are (under either tail rule); None for a custom one."""
    for name, (preset_frontend, preset_segmentation) in PRESETS.items():
        if frontend == preset_frontend and dataclasses.replace(segmentation, tail=preset_segmentation.tail) == (
                preset_segmentation):
            return name
    return None


def input_shape(frontend: FrontendConfig, segmentation: SegmentationConfig) -> tuple[int, int, int]:
    """The CNN's per-input shape [channels, n_mels, frames]."""
    frames = segmentation.frames_per_short(frontend)
    if segmentation.unit == "long":
        frames *= segmentation.shorts_per_long()
    return (1, frontend.n_mels, frames)


@dataclass(frozen=True)
class VotingConfig:
    """File verdict: LEAK when at least vote_fraction of long segments have P(LEAK) >= threshold."""

    rule: str = "frac_vote"
    threshold: float = 0.5
    vote_fraction: float = 0.5

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.rule != "frac_vote":
            found.append(("voting.rule", f"only 'frac_vote' is supported, got {self.rule!r}"))
        for name in ("threshold", "vote_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                found.append((f"voting.{name}", f"must be in [0, 1], got {value!r}"))
        return found


def stopped_by(training: dict | None) -> str:
    """For the best.pth of a run a health check stopped (a card's training.stopped_by, written by the trainer):
    what stopped it, in one phrase; "" for a finished run's model."""
    stopped = (training or {}).get("stopped_by")
    if not stopped:
        return ""
    if stopped.get("when") == "end":  # every epoch trained, then a check at the end failed (e.g. under --strict)
        return (f"its run failed health check {stopped.get('code')} at its end ({stopped.get('message')}): these "
                f"are the weights of its epoch {stopped.get('epoch', '?')}, which the run did not accept"
                + (f"; {stopped['finish']}" if stopped.get("finish") else ""))
    return (f"its run was stopped by health check {stopped.get('code')} at {stopped.get('when')} "
            f"({stopped.get('message')}): these are the weights of its epoch {stopped.get('epoch', '?')}, not a "
            f"finished run's" + (f"; to finish it: {stopped['finish']}" if stopped.get("finish") else ""))


@dataclass(frozen=True)
class ModelCard:
    mode: str
    class_names: tuple[str, ...]
    leak_idx: int
    leak_prob: str
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    voting: VotingConfig = field(default_factory=VotingConfig)
    architecture: dict[str, Any] = field(default_factory=lambda: {"name": "leakcnn", "params": {}})
    name: str = "leakhunter-model"
    created: str = ""
    leakhunter_version: str = ""
    git_commit: str = ""
    schema_version: int = 1  # for_mode writes the mode's (Mode.schema_version)
    branches: dict[str, Any] | None = None
    normalisation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    # How multichannel recordings were mixed into the training data ("mean", "first" or a channel index as
    # text): predict mixes the same way unless told otherwise. Cards from before this field read as "mean",
    # the only policy there was, so schema_version 1 still holds.
    channel_policy: str = "mean"
    # Named thresholds chosen on labelled files (leakhunter.operating.operating_points): {name: {threshold, target,
    # recall, specificity, precision, f1, false_alarms_per_100, n_files, n_leak}}, or {name: {threshold: null,
    # reason}} where unreachable. Cards from before this field have none (None), so schema_version 1 still holds.
    operating_points: dict[str, dict[str, Any]] | None = None
    reference: str | None = None  # None, or one of REFERENCES: the graph then takes a per-recording `reference`

    @classmethod
    def for_mode(cls, mode: str, class_names, **kwargs) -> ModelCard:
        """The card with leak_idx and leak_prob derived from the mode and classes, so they cannot disagree."""
        class_names = tuple(class_names)
        leak_idx = class_names.index("LEAK") if "LEAK" in class_names else -1
        if mode in MODES:
            kwargs.setdefault("schema_version", MODES[mode].schema_version)
        card = cls(mode=mode, class_names=class_names, leak_idx=leak_idx,
                   leak_prob=LEAK_PROB_RULES.get(mode, ""), **kwargs)
        card.validate()
        return card

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.schema_version not in range(1, SCHEMA_VERSION + 1):
            found.append(("schema_version", f"{self.schema_version!r} is not supported (this leakhunter reads 1 to "
                                            f"{SCHEMA_VERSION})"))
        elif self.mode in MODES and self.schema_version != MODES[self.mode].schema_version:
            found.append(("schema_version", f"a {self.mode} card is schema {MODES[self.mode].schema_version}, got "
                                            f"{self.schema_version}"))
        if self.mode not in MODES:
            found.append(("mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}"))
        names = list(self.class_names)
        if len(set(names)) != len(names):
            found.append(("class_names", f"repeats a name: {names}"))
        if "LEAK" not in names:
            found.append(("class_names", f"must contain 'LEAK', got {names}"))
        elif self.leak_idx != names.index("LEAK"):
            found.append(("leak_idx", f"{self.leak_idx!r} but class_names.index('LEAK') is {names.index('LEAK')} in {names}"))
        if self.mode in MODES:
            found += [("class_names", problem) for problem in MODES[self.mode].class_problems(names)]
        if self.mode in LEAK_PROB_RULES and self.leak_prob != LEAK_PROB_RULES[self.mode]:
            found.append(("leak_prob", f"a {self.mode} model forms P(LEAK) by {LEAK_PROB_RULES[self.mode]!r}, got {self.leak_prob!r}"))
        found += architecture_problems(self.architecture)
        found += self._fusion_problems()
        frontend_problems = self.frontend.problems()
        found += frontend_problems
        if not frontend_problems:
            found += self.segmentation.problems(self.frontend)
        found += self.voting.problems()
        if not (isinstance(self.channel_policy, str) and (self.channel_policy in CHANNEL_POLICIES
                                                          or self.channel_policy.isdigit())):
            found.append(("channel_policy", f"must be 'mean', 'first' or a channel index such as '0', "
                                            f"got {self.channel_policy!r}"))
        found += operating_point_problems(self.operating_points)
        if self.reference is not None and self.reference not in REFERENCES:
            found.append(("reference", f"must be null or one of {', '.join(REFERENCES)}, got {self.reference!r}"))
        elif self.reference is not None and self.branches is not None:
            found.append(("reference", "a fusion model takes no sensor reference (its meta branch knows the sensor)"))
        return found

    @property
    def meta_columns(self) -> tuple[str, ...]:
        """The columns of a fusion model's meta input (leakhunter/meta.py), () for a model without one."""
        return tuple(((self.branches or {}).get("meta") or {}).get("columns", ()))

    def stopped_by(self) -> str:
        """What stopped this model's training run ("" for a finished run's): the function stopped_by above."""
        return stopped_by(self.training)

    @property
    def recording_input(self) -> tuple[str, int] | None:
        """The graph's per-recording input beside the waveform, (name, width): a fusion model's `meta` or a
        reference model's `reference` (its sensor's log-mel, n_mels wide); None for a model with neither."""
        if self.meta_columns:
            return "meta", len(self.meta_columns)
        if self.reference is not None:
            return "reference", self.frontend.n_mels
        return None

    def _fusion_problems(self) -> list[tuple[str, str]]:
        """A mode's own architecture; a fusion card and only a fusion card has `branches`, and they agree."""
        name = (self.architecture or {}).get("name")
        if self.mode in MODES and name in ARCHITECTURE_PARAMS and name != MODES[self.mode].architecture:
            return [("architecture.name", f"a {self.mode} model cannot have architecture {name!r}")]
        is_fusion = name == "fusion"
        if not is_fusion:
            return [] if self.branches is None else [("branches", f"only fusion models have branches, this is {self.mode}")]
        params = self.architecture.get("params", {})
        branches, prior = params.get("branches", []), params.get("prior")
        found = []
        if prior is not None and isinstance(branches, list) and len(prior) != len(branches):
            found.append(("architecture.params.prior", f"{len(prior)} weights for {len(branches)} branches {branches}"))
        if not isinstance(self.branches, dict) or self.branches.get("names") is None:
            return found + [("branches", "a fusion card lists its branches and their inputs")]
        meta = self.branches.get("meta")
        if "meta" in branches and (not isinstance(meta, dict) or len(meta.get("columns", [])) != params.get("n_meta")):
            found.append(("branches.meta", f"the meta branch takes {params.get('n_meta')} columns but the card "
                                           f"lists {None if not isinstance(meta, dict) else meta.get('columns')}"))
        return found

    def validate(self, source: str = "model card") -> ModelCard:
        problems = self.problems()
        if problems:
            raise CardError(problems, source)
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Parse and validate; unknown or missing fields are problems, not silently ignored."""
        if not isinstance(data, dict):
            raise CardError([("card", f"must be a JSON object, got {type(data).__name__}")], source)
        problems = []
        known = {f.name for f in dataclasses.fields(cls)}
        problems += [(key, "unknown field") for key in sorted(set(data) - known)]
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        problems += [(key, "missing") for key in sorted(required - set(data))]
        parts = {}
        for key, part_cls in (("frontend", FrontendConfig), ("segmentation", SegmentationConfig), ("voting", VotingConfig)):
            if key in data:
                parts[key], part_problems = _parse_part(part_cls, data[key], key)
                problems += part_problems
        if problems:
            raise CardError(problems, source)
        values = {key: value for key, value in data.items() if key in known}
        values.update(parts)
        values["class_names"] = tuple(values["class_names"])
        return cls(**values).validate(source)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CardError([("card", f"not valid JSON: {err}")], source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """A card from a JSON file such as model_meta.json."""
        path = Path(path)
        return cls.from_json(path.read_text(encoding="utf-8"), source=str(path))


def _parse_part(part_cls, data, prefix: str):
    if not isinstance(data, dict):
        return None, [(prefix, f"must be an object, got {type(data).__name__}")]
    known = {f.name for f in dataclasses.fields(part_cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        return None, [(f"{prefix}.{key}", "unknown field") for key in unknown]
    return part_cls(**data), []


def compare_configs(ours, theirs, our_name: str, their_name: str, prefix: str) -> list[tuple[str, str]]:
    """Field-by-field differences between two config dataclasses, each naming both sides."""
    return [
        (f"{prefix}.{f.name}", f"{our_name} has {getattr(ours, f.name)!r}, {their_name} has {getattr(theirs, f.name)!r}")
        for f in dataclasses.fields(ours)
        if getattr(ours, f.name) != getattr(theirs, f.name)
    ]
