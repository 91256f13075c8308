"""Where recordings come from: the one list of audio suffixes, the one manifest reader and the one parser of
the logger naming grammar `sensor_id~recording_id~timestamp~gain_db`, shared by `leak data build` and
`leak predict` so the two accept the same files and read the same manifests."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leakhunter.errors import DatasetError, InputError, LeakhunterError

SPLITS = ("train", "val", "test")  # the split names a manifest may force (training.splits orders its codes by it)

# Every suffix that leakhunter.audio knows the container of (EXPECTED_FORMATS there).
AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")
def logger_name(sensor_id: str, recording_no: int, timestamp: str, gain_db: int | float) -> str:
    """A file name in the logger grammar that LOGGER_NAME reads back (synth writes its corpora with it)."""
    return f"{sensor_id}~R{recording_no:05d}~{timestamp}~{gain_db}.wav"


LOGGER_GRAMMAR = "sensor_id~recording_id~timestamp~gain_db"  # what LOGGER_NAME reads, as messages say it
LOGGER_NAME = re.compile(r"^(?P<sensor_id>[^~]+)~(?P<recording_id>[^~]+)~(?P<timestamp>[^~]+)~(?P<gain_db>[^~]+)$")


class ManifestError(LeakhunterError, ValueError):
    """A manifest CSV that cannot be read; the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class ManifestRow:
    path: Path  # resolved against the manifest's folder when relative
    line: int  # line number in the manifest, for messages
    fields: dict[str, str]  # every column, stripped, the path column included


def is_audio(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_SUFFIXES


def find_audio(folder: str | os.PathLike) -> list[Path]:
    """Audio files under a folder, recursively, in a stable (sorted) order; hidden files left out. A symlink
    that leads nowhere (dangling, a loop) is kept, so it gets its row (`missing`) instead of vanishing."""
    return sorted(path for path in Path(folder).rglob("*")
                  if is_audio(path) and not path.name.startswith(".") and (path.is_file() or path.is_symlink()))


def is_pattern(item: str | os.PathLike) -> bool:
    """Whether an input is a glob pattern (`night/*.wav`) rather than a path."""
    return any(char in str(item) for char in "*?[")


def printable(text: str) -> str:
    """Text as valid UTF-8: the bytes of a file name that is not UTF-8 (read with surrogate escapes) as \\x
    escapes (`caf\\xe9.wav`), for places that must be UTF-8 (an HDF5 string, an HTTP response)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def resolved(path: str | os.PathLike) -> Path:
    """The absolute path with symlinks resolved, for a file that exists; else the absolute path as given, so a
    row names the dangling symlink or loop the user listed (not where it points) and a loop is no traceback."""
    try:
        return Path(path).resolve(strict=True)
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


HDF5_SUFFIXES = (".h5", ".hdf5")  # a dataset file's names (leak data build writes one, eval and train read it)


def check_output_name(out: Path, kind: str, suffixes: tuple[str, ...], name: str | None = None) -> None:
    """An output is named for what it is: under another suffix it would replace the file of that name (a
    recording called scores.wav, the model a picture is named after, the manifest a dataset is written over), so
    that is refused before anything is read or written, and so is a folder. `name`: how messages call it."""
    name = name or str(out)
    if Path(out).is_dir():
        raise InputError(f"{name}: a folder, where {kind} would be written; name a file in it")
    suffix = Path(out).suffix.lower()
    if suffix not in suffixes:
        why = "an audio file's name" if suffix in AUDIO_SUFFIXES else f"not {Path(out).suffix or 'a suffix'}"
        raise InputError(f"{name}: {kind} is written as {' or '.join(suffixes)} ({why})")


def refuse_replacing_inputs(out: Path, inputs: list[str | os.PathLike], paths: list[Path],
                            name: str | None = None) -> None:
    """An output (a table, a reference table) that would replace one of the inputs (a manifest) or a listed
    recording is refused before anything is written."""
    target = resolved(out)
    if target in {resolved(item) for item in inputs} or target in set(paths):
        raise InputError(f"{name or out} is one of the inputs, and the table would replace it; write another --out")


def logger_fields(path: str | os.PathLike) -> dict[str, str] | None:
    """The fields of a logger-named file (`S01~R0001~20261120T023000~12.wav`), or None for any other name."""
    match = LOGGER_NAME.match(Path(path).stem)
    return match.groupdict() if match else None


def group_from_name(path: str | os.PathLike) -> str:
    """The sensor id of a logger-named file, else the file itself (its own group)."""
    fields = logger_fields(path)
    return fields["sensor_id"] if fields else str(path)


NAMED_COLUMNS = ("path", "label", "group", "split", "sensor_id")  # the columns leakhunter itself reads by name


def read_manifest(manifest: str | os.PathLike, required: tuple[str, ...] = ("path",)) -> list[ManifestRow]:
    """Rows of a manifest CSV (UTF-8, a BOM allowed) with every `required` column present and non-empty. Column
    names are stripped of spaces, as values are; a column named like one leakhunter reads but for case (`Sensor_ID`)
    is refused rather than silently ignored."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames:
                reader.fieldnames = [c.strip() if c is not None else c for c in reader.fieldnames]
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            misnamed = [c for c in columns if c not in NAMED_COLUMNS and c.lower() in NAMED_COLUMNS]
            if misnamed:
                raise ManifestError(f"{manifest}: column {misnamed[0]!r} would be ignored: leakhunter reads "
                                    f"{misnamed[0].lower()!r} (its column names are lower case)")
            missing = [c for c in required if c not in columns]
            if missing:
                raise ManifestError(f"{manifest}: manifest lacks column(s) {', '.join(missing)}; has {columns}")
            rows = []
            for line, raw in enumerate(reader, start=2):
                fields = {k: (v or "").strip() for k, v in raw.items() if k is not None}
                empty = [c for c in required if not fields.get(c)]
                if empty:
                    if not any(fields.values()):
                        continue  # a blank line
                    raise ManifestError(f"{manifest}:{line}: empty {', '.join(empty)}")
                path = Path(fields["path"])
                rows.append(ManifestRow(path if path.is_absolute() else manifest.parent / path, line, fields))
    except UnicodeDecodeError as error:
        raise ManifestError(f"{manifest}: not a UTF-8 text CSV ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise ManifestError(f"{manifest}: not a readable CSV ({error})") from None
    return rows


class Listings:
    """Each recording's manifest fields, once, by resolved path in first-listed order: a recording listed again (in
    the same manifest or another) with another non-empty value of a column not `ignored` is refused, naming both
    rows (either could decide its label, sensor or meta); listed again alike, its rows merge."""

    def __init__(self, ignored: tuple[str, ...] = ("path",)):
        self.ignored = ignored
        self.fields: dict[Path, dict[str, str]] = {}
        self.where: dict[Path, str] = {}  # the first row that listed it, for messages

    def add(self, manifest: str | os.PathLike, row: ManifestRow) -> None:
        path, here = resolved(row.path), f"{manifest}:{row.line}"
        known = self.fields.setdefault(path, {})
        clash = sorted(k for k, v in row.fields.items() if k not in self.ignored and v and known.get(k, v) != v)
        if clash:
            raise ManifestError(f"{path} is listed at {self.where[path]} and at {here} with different "
                                f"{', '.join(clash)} ({known[clash[0]]!r} and {row.fields[clash[0]]!r})")
        known.update({k: v for k, v in row.fields.items() if v})
        self.where.setdefault(path, here)


@dataclass(frozen=True)
class SourceFile:
    """A labelled recording as a manifest or a class folder lists it (`leak data build`, `leak eval`)."""
    path: Path
    label: str
    group: str
    split: str | None = None  # forced by the manifest
    meta: dict[str, str] = field(default_factory=dict)
    group_from: str = ""  # where its group came from: "group column", "sensor_id column", "logger name", "file"


def find_sources(source: str | os.PathLike, group_column: str | None = None) -> list[SourceFile]:
    """A manifest CSV (path,label[,group][,split], extra columns kept) or a tree SRC/<CLASS>/**/*.wav.
    `group_column`: the manifest column that names each file's group (a `site`, a `pipe`) instead of `group`."""
    source = Path(source)
    if group_column is not None:
        group_column = group_column.strip()
        if group_column in ("", "path", "label", "split"):
            raise DatasetError(f"--group-column {group_column!r}: name a manifest column that says each file's site "
                               f"or sensor (path, label and split mean something else)")
    if source.is_file():
        return _read_manifest(source, group_column)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such file or folder")
    if group_column:
        raise DatasetError(f"{source}: --group-column {group_column} names a manifest column, and this is a folder "
                           f"of class folders (their files are grouped by logger name)")
    files = []
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += [SourceFile(resolved(path), class_dir.name.upper(), group_from_name(path),
                             group_from=_name_group_from(path)) for path in find_audio(class_dir)]
    if not files:
        raise DatasetError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under class folders "
                           f"{source}/<CLASS>/")
    return files


NEGATED_LEAK = re.compile(r"(^|[\W_])(NO|NOT|NON|WITHOUT)([\W_]|$)|^NO[NT]?LEAK|LEAK[\W_]*FREE")


def leak_like_labels_warning(counts: dict[str, int]) -> str | None:
    """Labels (with their file counts) that read as a leak but are not `LEAK` (`LEAK (CONFIRMED)`, `SUSPECTED
    LEAK`): a binary model trains them as NOLEAK and a multiclass one as a class of their own, silently. A label
    that negates it (`NO LEAK`, `NOLEAK`, `NON-LEAK`, `NOT A LEAK`, `LEAK-FREE`, `BACKGROUND (NO LEAK)`) is
    not named."""
    named = [f"{label!r} ({n} file{'s' if n != 1 else ''})" for label, n in counts.items()
             if "LEAK" in label.upper() and label.upper() != "LEAK" and not NEGATED_LEAK.search(label.upper())]
    if not named:
        return None
    return (f"label{'s' if len(named) > 1 else ''} {', '.join(named)} read{'' if len(named) > 1 else 's'} as a leak "
            f"but {'are' if len(named) > 1 else 'is'} not LEAK: a binary model trains "
            f"{'them' if len(named) > 1 else 'it'} as NOLEAK, a multiclass one as a class of its own; relabel LEAK "
            f"where it is one")


def lone_groups_warning(groups: list[str], metas: list[dict[str, str]], why: str = "") -> str | None:
    """When at least half the files are alone in their group: splits and --cv then cannot keep a site's recordings
    together, and every validation figure mixes sites. Names the manifest columns that could be the site (2 or
    more values, each shared by 2 files on average), e.g. a `site` column that is not called `group`. `why`: how
    the groups came to be single files, where the caller knows."""
    sizes = Counter(groups)
    lone, total = sum(1 for group in groups if sizes[group] == 1), len(groups)
    if total < 4 or 2 * lone < total:
        return None
    columns = sorted({key for meta in metas for key in meta})
    values = {key: {meta[key] for meta in metas if meta.get(key)} for key in columns}
    candidates = [f"{key} ({len(seen)} values)" for key, seen in values.items() if 2 <= len(seen) <= total // 2]
    return (f"{lone} of {total} files are each alone in their group{f' ({why})' if why else ''}: "
            f"splits and --cv cannot keep one site's recordings together, so validation and the cross-validated "
            f"estimate mix sites and come out optimistic; "
            + (f"a column that could name the site: {', '.join(candidates)}; build with --group-column NAME"
               if candidates else "list the recordings in a manifest with a group column (each one's site or sensor)"))


def _name_group_from(path: Path) -> str:
    return "logger name" if logger_fields(path) else "file"


def _read_manifest(manifest: Path, group_column: str | None = None) -> list[SourceFile]:
    listed = Listings()
    for row in read_manifest(manifest, required=("path", "label", *([group_column] if group_column else []))):
        listed.add(manifest, row)
    files = []
    for path, fields in listed.fields.items():
        split = fields.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{listed.where[path]}: split {split!r} is not one of {', '.join(SPLITS)}")
        column = next((name for name in ((group_column,) if group_column else ("group", "sensor_id"))
                       if fields.get(name)), None)
        group = fields[column] if column else group_from_name(path)
        meta = {k: v for k, v in fields.items() if k not in ("path", "label", "group", "split")}
        files.append(SourceFile(path, fields["label"].upper(), group, split, meta,
                                f"{column} column" if column else _name_group_from(path)))
    if not files:
        raise DatasetError(f"{manifest}: manifest has no rows")
    return files
