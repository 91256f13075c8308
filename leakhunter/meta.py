"""Per-file metadata for a fusion model's `meta` branch: which fields, how they are encoded, where they come from.

A field is numeric when nine in ten of its training values parse as numbers (standardised by the training mean
and std inside the model; the others count as unknown) and categorical otherwise (one-hot over the training vocabulary; an unseen value is unknown).
A missing value is NaN in every column of its field: the model sees a mask, and meta dropout in training
teaches it what unknown means. Fields that name the split groups or raw times are refused: a model keyed on
them learns the sensor, not the leak.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from leakhunter.errors import InputError
from leakhunter.sources import logger_fields, resolved

REFUSED_FIELDS = {
    "sensor_id": "it names the split group: the model would learn sensors, not leaks",
    "recording_id": "it identifies single recordings: nothing learned from it carries to a new one",
    "timestamp": "a raw time identifies recordings; derive a field such as hour or season instead",
    "group": "it names the split group: the model would learn sensors, not leaks",
    "path": "it identifies single recordings", "label": "it is the answer", "split": "it is how the files were dealt",
}


NUMERIC_SHARE = 0.9  # a field is numeric when this share of its training values are numbers (the rest: unknown)


def file_meta(path: str | os.PathLike, fields: dict[str, str] | None = None) -> dict[str, str]:
    """A file's metadata: the given fields (a manifest's or a sidecar's columns) over those of its logger
    name `sensor_id~recording_id~timestamp~gain_db` (empty values count as missing)."""
    given = {k: v for k, v in (fields or {}).items() if str(v).strip()}  # an empty cell falls back to the name
    return {k: v for k, v in (logger_fields(path) or {}).items() if str(v).strip()} | given


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class MetaSpec:
    """The meta fields a model takes and how each becomes input columns; stored in the card."""

    fields: tuple[str, ...]
    numeric: dict[str, tuple[float, float]]  # field → (training mean, std)
    categories: dict[str, tuple[str, ...]]  # field → training vocabulary, in column order

    @classmethod
    def fit(cls, fields: tuple[str, ...], training_meta: list[dict[str, str]]) -> MetaSpec:
        """Numeric or categorical per field, from the training files' values; refuses what cannot be learned."""
        for field in fields:
            if field in REFUSED_FIELDS:
                raise InputError(f"meta field {field!r} is refused: {REFUSED_FIELDS[field]}")
            present = [m[field] for m in training_meta if field in m]
            if not present:
                raise InputError(f"meta field {field!r} has no value in any training file (known fields: "
                                 f"{', '.join(sorted({k for m in training_meta for k in m})) or 'none'})")
        numeric, categories = {}, {}
        for field in fields:
            present = [m[field] for m in training_meta if field in m]
            values = [v for v in map(_number, present) if v is not None]
            if len(values) >= NUMERIC_SHARE * len(present):  # a stray "n/a" is a missing number, not a category
                std = float(np.std(values))
                numeric[field] = (float(np.mean(values)), std if std > 1e-6 else 1.0)  # constant: no division by ~0
            else:
                categories[field] = tuple(sorted(set(present)))
        return cls(tuple(fields), numeric, categories)

    @property
    def columns(self) -> tuple[str, ...]:
        """Input column names: a numeric field's own name, `field=value` per category."""
        names = []
        for field in self.fields:
            names += [field] if field in self.numeric else [f"{field}={v}" for v in self.categories[field]]
        return tuple(names)

    def column_fields(self) -> np.ndarray:
        """The field number of each input column (meta dropout hides a whole field at once)."""
        return np.array([i for i, field in enumerate(self.fields)
                         for _ in ([0] if field in self.numeric else self.categories[field])], np.int64)

    def standardisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and std the model subtracts and divides by (one-hot columns pass unchanged)."""
        mean, std = [], []
        for field in self.fields:
            pair = self.numeric.get(field)
            width = 1 if pair else len(self.categories[field])
            mean += [pair[0] if pair else 0.0] * width
            std += [pair[1] if pair else 1.0] * width
        return np.array(mean, np.float32), np.array(std, np.float32)

    def encode(self, meta: dict[str, str]) -> np.ndarray:
        """One file's raw input row [n_columns] float32: numbers as they are, one-hot, NaN where unknown."""
        row = []
        for field in self.fields:
            value = meta.get(field)
            if field in self.numeric:
                number = None if value is None else _number(value)
                row.append(math.nan if number is None else number)
            else:
                vocabulary = self.categories[field]
                row += ([math.nan] * len(vocabulary) if value not in vocabulary
                        else [float(value == v) for v in vocabulary])
        return np.array(row, np.float32)

    def usual(self) -> dict[str, str]:
        """A typical recording's values: each number at its training mean, each category its first value."""
        return {f: str(self.numeric[f][0]) if f in self.numeric else self.categories[f][0] for f in self.fields}

    def to_dict(self) -> dict:
        return {"fields": list(self.fields), "columns": list(self.columns),
                "numeric": {k: list(v) for k, v in self.numeric.items()},
                "categories": {k: list(v) for k, v in self.categories.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> MetaSpec:
        return cls(tuple(data["fields"]), {k: (float(v[0]), float(v[1])) for k, v in data["numeric"].items()},
                   {k: tuple(v) for k, v in data["categories"].items()})


def parse_fields(text: str) -> tuple[str, ...]:
    """`--meta gain_db,pipe` → ("gain_db", "pipe"); duplicates refused."""
    fields = tuple(f.strip() for f in str(text).split(",") if f.strip())
    if len(set(fields)) != len(fields):
        raise InputError(f"--meta repeats a field: {text!r}")
    return fields


META_MISSING_POLICIES = ("score", "fail")


def check_meta_missing(policy: str) -> str:
    """`--meta-missing` as given, refused unless it is one of META_MISSING_POLICIES."""
    if policy not in META_MISSING_POLICIES:
        raise InputError(f"--meta-missing must be one of {', '.join(META_MISSING_POLICIES)}, got {policy!r}")
    return policy


@dataclass(frozen=True)
class FileMeta:
    """One recording's meta at scoring time: the encoded row, where its values came from, what was missing."""

    row: np.ndarray  # [n_columns] float32, NaN unknown
    source: str  # "request", "sidecar", "manifest", "name", "+"-joined where fields came from several; "none"
    missing: tuple[str, ...]  # the model's fields it sees as unknown: nobody gave them, or an unusable value

    def columns(self) -> dict[str, str]:
        return {"meta_source": self.source, "meta_missing": ",".join(self.missing)}


class RecordingFields:
    """Fields given for recordings besides their names, by resolved path: the columns of the manifest that listed
    them and a `leak serve` upload's own (its query parameters). A fusion model's meta and a reference model's
    `sensor_id` are read here before the logger name. One store per engine, shared by its readers; thread-safe
    (a server's uploads and its folder jobs add, read and forget at once)."""

    def __init__(self):
        self.manifest: dict[str, dict[str, str]] = {}
        self.request: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def add_manifest(self, fields_by_path: dict) -> None:
        with self._lock:
            self.manifest.update({_key(path): fields for path, fields in fields_by_path.items()})

    def add_request(self, fields_by_path: dict) -> None:
        with self._lock:
            self.request.update({_key(path): fields for path, fields in fields_by_path.items()})

    def forget(self, paths) -> None:
        """Drop the request and manifest fields given for these recordings: a server's, once they are scored."""
        with self._lock:
            for key in map(_key, paths):
                self.request.pop(key, None)
                self.manifest.pop(key, None)

    def given(self, path: str | os.PathLike) -> tuple[dict[str, str], dict[str, str]]:
        """(the request's fields, the manifest's fields) of a recording, empty where none were given."""
        key = _key(path)
        with self._lock:
            return self.request.get(key, {}), self.manifest.get(key, {})

    def merged(self, path: str | os.PathLike) -> dict[str, str]:
        """A recording's given fields, the request's over the manifest's (empty values count as missing)."""
        request, manifest = self.given(path)
        return {k: v for k, v in manifest.items() if str(v).strip()} | {k: v for k, v in request.items()
                                                                       if str(v).strip()}


class MetaResolver:
    """Each recording's values for a fusion model's meta fields: for a `leak serve` upload the request's own
    fields first, then the `--meta` sidecar CSV (a `path` column, paths relative to it), then the columns of the
    manifest that listed the recording, then its logger name."""

    def __init__(self, spec: MetaSpec, fields: RecordingFields, sidecar: str | os.PathLike | None = None):
        from leakhunter.sources import read_manifest

        self.spec = spec
        self.sidecar = {} if sidecar is None else {_key(row.path): row.fields
                                                   for row in read_manifest(sidecar, required=("path",))}
        self.fields = fields  # the engine's: what manifests and uploads gave

    def resolve(self, path: str | os.PathLike) -> FileMeta:
        values, sources = {}, []
        request, manifest = self.fields.given(path)
        for source, fields in (("request", request), ("sidecar", self.sidecar.get(_key(path), {})),
                               ("manifest", manifest), ("name", logger_fields(path) or {})):
            found = {f: str(fields[f]).strip() for f in self.spec.fields
                     if f not in values and str(fields.get(f, "")).strip()}
            if found:
                values.update(found)
                sources.append(source)
        row, fields_of = self.spec.encode(values), self.spec.column_fields()
        missing = tuple(f for i, f in enumerate(self.spec.fields) if np.isnan(row[fields_of == i]).all())
        return FileMeta(row, "+".join(sources) or "none", missing)


def _key(path) -> str:
    return str(resolved(path))
