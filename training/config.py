"""One typed training config: defaults < YAML file < LEAK_MODE < command-line flags.

num_classes, class_names and leak_idx are not in it: they are derived from the mode and the data,
so they cannot be set inconsistently. Unknown keys and out-of-range values are refused with a hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leakhunter.card import MODES, architecture_problems
from leakhunter.devices import parse_device
from leakhunter.errors import DeviceError, LeakhunterError

FUSION_BRANCHES = ("mel", "features", "meta")  # leakhunter/fusion.py
MEMORY_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>%|[kmgt]i?b?|b)?\s*$", re.IGNORECASE)
MEMORY_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
                "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


class ConfigError(LeakhunterError, ValueError):
    """A config key or value that cannot be used; the message says which and what would be accepted."""


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""
    out: str = ""
    mode: str = "multiclass"
    epochs: int = 60
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    schedule: str = "cosine"
    loss: str = "ce"
    focal_gamma: float = 2.0
    class_weight_cap: float = 3.0
    aux_weight: float = 0.5
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    keep_checkpoints: int = 3
    normalise: bool = True
    dropout: float = 0.25
    eval_batch_size: int = 16384
    strict: bool = False
    max_memory: str = "50%"  # bytes, "8GB", "512MiB" or a share of available RAM; bigger data is read from disk
    augment: str = ""  # comma list of gain, tilt, mix, mask (training/augment.py); "" = none
    channels: str = "32,64,128"  # the CNN's three convolution widths
    hidden: int = 256  # the CNN's embedding width
    level: str = "absolute"  # relative: each input minus its own mean log-mel (leakhunter/models.py RelativeLevel)
    branches: str = "mel,features"  # fusion: comma list of mel, features, meta (training/fusion.py)
    meta: str = ""  # fusion: the meta branch's fields, e.g. gain_db (manifest columns or the logger file name)
    fusion_prior: str = ""  # fusion: initial fusion weights, one per branch (default equal)
    reference: str = "none"  # sensor: each log-mel minus its sensor's reference (leakhunter/reference.py)

    def problems(self) -> list[str]:
        found = []
        if self.mode not in MODES:
            found.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        choices = {"schedule": ("cosine", "onecycle"), "loss": ("ce", "focal"), "reference": ("none", "sensor")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                found.append(f"{key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        try:
            parse_device(self.device)
        except DeviceError as error:
            found.append(str(error))
        positive = ("epochs", "batch_size", "lr", "patience", "keep_checkpoints", "eval_batch_size")
        found += [f"{key} must be > 0, got {getattr(self, key)!r}" for key in positive if getattr(self, key) <= 0]
        non_negative = ("weight_decay", "warmup_epochs", "focal_gamma", "aux_weight", "seed")
        found += [f"{key} must be >= 0, got {getattr(self, key)!r}" for key in non_negative if getattr(self, key) < 0]
        if self.class_weight_cap < 1:
            found.append(f"class_weight_cap must be >= 1 (a ratio), got {self.class_weight_cap!r}")
        if not 0 <= self.dropout < 1:
            found.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.data:
            found.append("data is required (a dataset file from `leak data build`)")
        try:
            parse_memory(self.max_memory)
        except ConfigError as error:
            found.append(str(error))
        from leakhunter.training.augment import parse_augment  # torch: imported only when validating

        try:
            parse_augment(self.augment)
        except ValueError as error:
            found.append(str(error))
        found += self.fusion_problems()
        if self.reference != "none" and self.mode in MODES and MODES[self.mode].staged:
            found.append(f"reference {self.reference!r} applies to binary and multiclass models; a fusion model's "
                         f"meta branch is how it knows its sensor")
        sizes = {key: value for key, value in self.architecture_params().items()
                 if key in ("channels", "hidden", "level")}
        found += [f"{key.removeprefix('architecture.params.')} {why}"
                  for key, why in architecture_problems({"name": "leakcnn", "params": sizes})]
        return found

    def branch_list(self) -> tuple[str, ...]:
        return tuple(b.strip() for b in str(self.branches).split(",") if b.strip())

    def prior_list(self) -> tuple[float, ...] | None:
        """--fusion-prior as numbers (None: equal weights); problems() has checked it."""
        return tuple(float(p) for p in str(self.fusion_prior).split(",")) if str(self.fusion_prior).strip() else None

    def fusion_problems(self) -> list[str]:
        """Branches, meta fields and prior: consistent with each other, and set only for --mode fusion."""
        defaults = TrainConfig()
        if self.mode not in MODES:
            return []  # problems() names the mode
        if not MODES[self.mode].staged:
            return [f"{key} applies to --mode fusion only, got {key}={getattr(self, key)!r} with mode {self.mode!r}"
                    for key in ("branches", "meta", "fusion_prior") if getattr(self, key) != getattr(defaults, key)]
        found, branches = [], self.branch_list()
        unknown = [b for b in branches if b not in FUSION_BRANCHES]
        if unknown or not branches or len(set(branches)) != len(branches):
            found.append(f"branches {self.branches!r} must be distinct names from {', '.join(FUSION_BRANCHES)}")
        if ("meta" in branches) != bool(str(self.meta).strip()):
            found.append("the meta branch needs its fields (--meta gain_db,...) and --meta needs the meta branch"
                         if "meta" in branches else f"meta {self.meta!r} is given but branches {self.branches!r} "
                                                    f"has no meta branch")
        if str(self.fusion_prior).strip():
            try:
                prior = self.prior_list()
            except ValueError:
                return found + [f"fusion_prior {self.fusion_prior!r} is not a comma list of numbers"]
            if len(prior) != len(branches) or min(prior) <= 0 or abs(sum(prior) - 1) > 1e-3:
                found.append(f"fusion_prior {self.fusion_prior!r} must be {len(branches)} positive weights summing "
                             f"to 1, one per branch ({', '.join(branches)})")
        return found

    def card_reference(self) -> str | None:
        """The card's `reference`: None for "none"."""
        return None if self.reference == "none" else self.reference

    def architecture_params(self) -> dict[str, Any]:
        """The card's architecture params: dropout, channels (three ints), hidden, and level when relative (so
        the cards of absolute-level models stay as they were)."""
        try:
            channels: Any = [int(width) for width in str(self.channels).strip("[]() ").split(",")]
        except ValueError:
            channels = self.channels  # not integers: architecture_problems names it
        params = {"dropout": self.dropout, "channels": channels, "hidden": self.hidden}
        return params | ({} if self.level == "absolute" else {"level": self.level})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def learning_settings(self) -> dict[str, Any]:
        """The settings that decide what a finished fold or stage learnt, for its resume key: not where the run
        writes, how strictly it is checked, its evaluation batch, nor how the data path is spelt (the key holds
        the data's fingerprint instead, so the same command from another folder reuses the finished work)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("data", "out", "strict", "eval_batch_size")}


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable), else total physical RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(text: str | int | float) -> int:
    """A memory size in bytes: 1000000, "8GB" (10**9), "512MiB" (2**20), or "50%" of available RAM."""
    match = MEMORY_SIZE.match(str(text))
    if not match:
        raise ConfigError(f"max_memory {text!r} is not a size: use bytes, a unit (8GB, 512MiB) or a share (50%)")
    number, unit = float(match["number"]), (match["unit"] or "").lower().removesuffix("b")
    if unit == "%":
        if not 0 < number <= 100:
            raise ConfigError(f"max_memory {text!r}: a share of available RAM must be in (0, 100] %")
        return int(available_memory() * number / 100)
    return int(number * MEMORY_UNITS[unit])


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: {value!r} is not a boolean")
    if kind in (int, float) and isinstance(value, bool):  # `epochs: true` is 1 to Python, a mistake to a person
        raise ConfigError(f"{key}: {value!r} is not a number")
    if kind is str and isinstance(value, (list, tuple)):  # a YAML list for a comma list (augment: [gain, mix])
        value = ",".join(str(item) for item in value)
    try:
        coerced = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {kind.__name__}") from None
    if kind is int and isinstance(value, float) and value != coerced:
        raise ConfigError(f"{key}: {value!r} is not an integer")
    return coerced


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A validated config from plain values (YAML, flags); unknown keys get a 'did you mean'."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    types = {"str": str, "int": int, "float": float, "bool": bool}
    clean = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        clean[key] = _coerce(key, value, types[fields[key].type])
    config = TrainConfig(**clean)
    problems = config.problems()
    if problems:
        raise ConfigError("invalid training config:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def resolve_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   environ: dict[str, str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then LEAK_MODE, then flags that were given (None means not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read the config ({error})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys to values, got {type(loaded).__name__}")
        values.update(loaded)
    environ = os.environ if environ is None else environ
    if environ.get("LEAK_MODE"):
        values["mode"] = environ["LEAK_MODE"].strip()
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_config(values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    from leakhunter.files import write_atomic  # the resolved config appears whole or not at all

    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
