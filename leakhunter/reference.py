"""Judging a recording against its sensor's usual sound (a card's `reference: "sensor"`).

Every sensor colours what it hears (pipe resonances, mounting, gain, its street's background), so a model that
reads absolute spectra learns the training sensors and fails on a new one (README, "How good is it on a new
site?"). A reference model instead sees each log-mel minus its sensor's **reference**: the median, over the
sensor's recordings, of each recording's median log-mel, bin by bin. No label goes into it. In training each
sensor's reference comes from its recordings in the dataset (training/data.py); in deployment from a sensor's
earlier, mostly leak-free nights, kept in a reference table that `leak reference build` writes and
`leak predict --reference` reads. A recording's sensor is its `sensor_id` field where one is given (a manifest's
column, a `leak serve` upload's query parameter), else the `sensor_id` of its logger name
`sensor_id~recording_id~timestamp~gain_db`.

This module is torch-free but for `build_reference_table`, which runs the model's own front-end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from leakhunter.card import FrontendConfig, ModelCard, SegmentationConfig, compare_configs
from leakhunter.errors import InputError
from leakhunter.files import write_atomic
from leakhunter.mel import lowest_input_rate
from leakhunter.meta import RecordingFields
from leakhunter.sources import LOGGER_GRAMMAR, logger_fields

TABLE_FORMAT = "leakhunter-reference-table"
TABLE_VERSION = 1
FEW_RECORDINGS = 5  # a reference from fewer recordings is one night's mood, not the sensor's usual sound


def thin_sensors(recordings: dict[str, int]) -> str | None:
    """A warning naming the sensors with fewer than FEW_RECORDINGS recordings behind their reference, or None."""
    thin = sorted(sensor for sensor, n in recordings.items() if n < FEW_RECORDINGS)
    if not thin:
        return None
    return (f"{len(thin)} of {len(recordings)} sensors ({sum(recordings[s] for s in thin)} files) have fewer than "
            f"{FEW_RECORDINGS} recordings behind their reference ({', '.join(thin[:5])}{' ...' if len(thin) > 5 else ''})"
            f": their reference is mostly the recordings themselves")


def require_reference_model(card: ModelCard, model, table=None) -> None:
    """A reference table belongs to a model trained with --reference sensor only."""
    if card.reference is None:
        raise ReferenceError(f"{'--reference ' + str(table) + ': ' if table is not None else ''}{model} takes no "
                             f"sensor reference (only a model trained with --reference sensor does)")


class ReferenceError(InputError):
    """A reference table that cannot be used with this model; the message names the file and the reason."""


def recording_median(log_mel: np.ndarray) -> np.ndarray:
    """A recording's median log-mel [n_mels] over all frames of its short segments [n_short, n_mels, frames]."""
    log_mel = np.asarray(log_mel)
    return np.median(log_mel.transpose(0, 2, 1).reshape(-1, log_mel.shape[1]), axis=0)


def samples_median(frontend, samples: np.ndarray) -> np.ndarray:
    """The median log-mel [n_mels] of a recording's samples at the card's rate, through a FrontEnd (torch)."""
    import torch

    with torch.inference_mode():
        shorts = frontend.short_segments(torch.from_numpy(np.ascontiguousarray(samples, np.float32))[None])[0]
    return recording_median(shorts.numpy()).astype(np.float32)


def sensor_references(medians: np.ndarray, sensors) -> dict[str, np.ndarray]:
    """Each sensor's reference [n_mels]: the median of its recordings' median log-mels [files, n_mels]."""
    sensors = np.asarray(sensors).astype(str)
    medians = np.asarray(medians, np.float64)
    return {str(sensor): np.median(medians[sensors == sensor], axis=0).astype(np.float32)
            for sensor in np.unique(sensors)}


SENSOR_FIELD = "sensor_id"
NO_SENSOR = f"neither a manifest {SENSOR_FIELD} column nor a name {LOGGER_GRAMMAR}.wav"


def sensor_of(path: str | os.PathLike, fields: dict[str, str] | None = None) -> str | None:
    """A recording's sensor id: its given `sensor_id` field (a manifest's column, an upload's query parameter)
    where not empty, else its logger name's; None without either."""
    given = str((fields or {}).get(SENSOR_FIELD) or "").strip()
    if given:
        return given
    named = logger_fields(path)
    return named[SENSOR_FIELD] if named else None


@dataclass(frozen=True)
class ReferenceTable:
    """Per sensor, its reference log-mel and how many recordings it came from, for one front-end."""

    frontend: FrontendConfig
    segmentation: SegmentationConfig
    channel_policy: str
    references: dict[str, np.ndarray]  # sensor id → float32 [n_mels]
    recordings: dict[str, int]  # sensor id → recordings behind its reference
    created: str = ""
    source: str = "reference table"
    digest: str = ""  # sha256 of the table file (first 16 hex digits): rows say which table judged them

    def check_model(self, card: ModelCard, model: str | os.PathLike, channel_policy: str) -> None:
        """A table made with another front-end, segmentation or channel (`channel_policy`: the one scoring
        decodes with) would shift every input: refused, naming both."""
        problems = compare_configs(card.frontend, self.frontend, str(model), self.source, "frontend")
        problems += compare_configs(card.segmentation, self.segmentation, str(model), self.source, "segmentation")
        if problems:
            raise ReferenceError(f"{self.source} was built for another front-end than {model}'s: "
                                 + "; ".join(f"{name}: {why}" for name, why in problems)
                                 + f" (rebuild it with leak reference build --model {model})")
        if self.channel_policy != channel_policy:
            raise ReferenceError(f"{self.source} was built from channel {self.channel_policy!r} of multichannel "
                                 f"recordings, this run decodes channel {channel_policy!r}: a reference of another "
                                 f"channel would shift every input (score with the card's channel, or rebuild the "
                                 f"table)")

    def lookup(self, path: str | os.PathLike, fields: dict[str, str] | None = None
               ) -> tuple[str | None, np.ndarray | None]:
        """(sensor id or None, its reference or None) for a recording and its given fields (sensor_of's)."""
        sensor = sensor_of(path, fields)
        return sensor, None if sensor is None else self.references.get(sensor)

    def columns(self, sensor: str | None) -> dict[str, str]:
        """A row's reference columns: the recording's sensor (lookup's; empty without one, and a sensor the
        table lacks is named on its no_reference row), and which table judged it."""
        return {"reference_sensor": sensor or "", "reference_table": self.digest}

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "created": self.created,
                "frontend": self.frontend.__dict__, "segmentation": self.segmentation.__dict__,
                "channel_policy": self.channel_policy,
                "sensors": {sensor: {"recordings": self.recordings[sensor],
                                     "log_mel": [round(float(v), 4) for v in self.references[sensor]]}
                            for sensor in sorted(self.references)}}

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceTable:
        path = Path(path)
        if not path.is_file():
            raise ReferenceError(f"--reference {path}: no such file (write one with leak reference build)")
        try:
            content = path.read_bytes()
            data = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ReferenceError(f"{path}: not a reference table (not JSON: {error})") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise ReferenceError(f"{path}: not a reference table (no \"format\": \"{TABLE_FORMAT}\")")
        if data.get("version") != TABLE_VERSION:
            raise ReferenceError(f"{path}: reference table version {data.get('version')!r}, this leakhunter reads "
                                 f"{TABLE_VERSION}")
        try:
            frontend = FrontendConfig(**data["frontend"])
            segmentation = SegmentationConfig(**data["segmentation"])
            problems = frontend.problems() or segmentation.problems(frontend)
            if problems:
                raise ValueError("; ".join(f"{name}: {why}" for name, why in problems))
            references, recordings = {}, {}
            for sensor, entry in data["sensors"].items():
                values = np.asarray(entry["log_mel"], np.float32)
                if values.shape != (frontend.n_mels,) or not np.isfinite(values).all():
                    raise ValueError(f"sensor {sensor!r}: log_mel must be {frontend.n_mels} finite numbers")
                if not isinstance(entry["recordings"], int) or entry["recordings"] < 1:
                    raise ValueError(f"sensor {sensor!r}: recordings must be a positive integer")
                references[str(sensor)], recordings[str(sensor)] = values, entry["recordings"]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ReferenceError(f"{path}: not a usable reference table ({type(error).__name__}: {error})") from None
        if not references:
            raise ReferenceError(f"{path}: the reference table has no sensors")
        return cls(frontend, segmentation, str(data.get("channel_policy", "mean")), references, recordings,
                   str(data.get("created", "")), str(path), hashlib.sha256(content).hexdigest()[:16])


def reference_table(card: ModelCard, table: str | os.PathLike | ReferenceTable | None, model,
                    channel_policy: str | None = None) -> ReferenceTable | None:
    """The table a reference model scores with (a path, or one loaded already): required for one, refused for any
    other model, and for one made with another front-end or channel policy (`channel_policy`: the one scoring
    decodes with, default the card's)."""
    if card.reference is None:
        if table is not None:
            require_reference_model(card, model, table)
        return None
    if table is None:
        raise ReferenceError(f"{model} judges each recording against its sensor's usual sound: give --reference "
                             f"TABLE (write one with `leak reference build RECORDINGS --model {model}` over each "
                             f"sensor's earlier, mostly leak-free recordings)")
    loaded = table if isinstance(table, ReferenceTable) else ReferenceTable.load(table)
    loaded.check_model(card, model, card.channel_policy if channel_policy is None else channel_policy)
    return loaded


def build_reference_table(recordings: Iterable[str | os.PathLike], card: ModelCard, workers: int = 2,
                          progress: Callable[[int, int], None] | None = None,
                          fields: RecordingFields | None = None):
    """Each sensor's reference from its recordings, through the model's own front-end (float32, as scoring
    computes it). Returns (table, skipped AudioErrors). `fields`: each recording's manifest columns, where a
    `sensor_id` column comes before the name. Recordings without a sensor id are refused before anything is
    decoded: a table keyed by nothing is useless."""
    from leakhunter.audio import AudioError, load_audio, read_many
    from leakhunter.frontend import FrontEnd

    paths = [Path(p) for p in recordings]
    if not paths:
        raise ReferenceError("no recordings to build a reference table from")
    fields = RecordingFields() if fields is None else fields
    sensor_by_path = {path: sensor_of(path, fields.merged(path)) for path in paths}
    unnamed = [str(p) for p, sensor in sensor_by_path.items() if sensor is None]
    if unnamed:
        raise ReferenceError(f"{len(unnamed)} recording(s) carry no sensor id, e.g. {unnamed[0]} ({NO_SENSOR})")
    frontend = FrontEnd(card.frontend, card.segmentation).eval()

    min_rate_in = lowest_input_rate(card.frontend)

    def median_of(path: Path) -> np.ndarray:
        audio = load_audio(path, card.frontend.sample_rate, card.channel_policy,
                           min_samples=card.segmentation.long_samples, min_rate_in=min_rate_in)
        return samples_median(frontend, audio.samples)

    medians, sensors, skipped = [], [], []
    for done, (path, result) in enumerate(read_many(paths, median_of, workers=workers), start=1):
        if isinstance(result, AudioError):
            skipped.append(result.with_traceback(None))
        else:
            medians.append(result)
            sensors.append(sensor_by_path[Path(path)])
        if progress:
            progress(done, len(paths))
    if not medians:
        raise ReferenceError(f"none of the {len(paths)} recordings could be used "
                             f"({', '.join(sorted({e.reason for e in skipped}))}). The first: {skipped[0]}")
    references = sensor_references(np.stack(medians), sensors)
    counts = {sensor: sensors.count(sensor) for sensor in references}
    table = ReferenceTable(card.frontend, card.segmentation, card.channel_policy, references, counts,
                           datetime.now(UTC).isoformat(timespec="seconds"))
    return table, skipped
