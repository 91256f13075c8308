"""The verdict table: one row per input file, appended and flushed as it is produced (CSV or JSONL),
and read back by --resume, which never counts a half-written last line as done. Torch-free.

CSV text cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) are written
with a leading ' (OWASP's CSV-injection advice) and read back without it; numbers and JSONL are untouched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from leakhunter.errors import LeakhunterError
from leakhunter.files import write_atomic

BASE_COLUMNS = ("file", "status", "verdict", "leak_score", "mean_leak_prob", "max_long_prob", "n_long",
                "duration_s", "sample_rate_in", "resampled", "channels_in", "top_class")
# `sensitivity`: the card's operating point the threshold came from (`--sensitivity high`), empty otherwise.
TAIL_COLUMNS = ("threshold", "vote_fraction", "sensitivity", "model_sha256", "leakhunter_version", "size_bytes",
                "mtime", "message")
# Free-text columns: the only ones a formula could hide in (numbers such as -0.5 must stay numbers).
TEXT_COLUMNS = frozenset({"file", "status", "verdict", "top_class", "sensitivity", "model_sha256",
                          "leakhunter_version", "message", "meta_source", "meta_missing", "reference_sensor",
                          "reference_table"})
# A leading quote is escaped too, so that reading back can always drop exactly one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
# Statuses that say something about the run, not the file: --resume scores these files again.
RETRIED_STATUSES = frozenset({"timeout", "worker_crash", "error", "changed"})


class OutputError(LeakhunterError, ValueError):
    """An output file that --resume cannot continue (another format or other columns)."""


META_COLUMNS = ("meta_source", "meta_missing")
REFERENCE_COLUMNS = ("reference_sensor", "reference_table")


def columns_for(class_names, multiclass: bool, meta: bool = False, reference: bool = False) -> tuple[str, ...]:
    """The row's columns; a multiclass model adds its class probabilities p_<class>, a model with a meta input
    where its meta came from and which fields it lacked, a reference model whose sensor reference judged the
    recording and the table's digest."""
    probabilities = tuple(f"p_{name}" for name in class_names) if multiclass else ()
    return (BASE_COLUMNS + probabilities + (META_COLUMNS if meta else ()) + (REFERENCE_COLUMNS if reference else ())
            + TAIL_COLUMNS)


def resume_key(row: dict) -> tuple[str, ...]:
    """A file is done when the same path, size and mtime were scored by the same model with the same threshold,
    vote fraction and sensitivity (a resume with --threshold 0.7, or --sensitivity high, does not keep rows voted
    at 0.5, or named by another operating point even at the same threshold), and for a model with a meta input
    the same meta sources and missing fields (a resume with a --meta sidecar scores again what it now fills), and
    for a reference model the same sensor and table (a rebuilt table scores everything again)."""
    size = "" if row["size_bytes"] is None else str(row["size_bytes"])  # JSONL writes an unknown size as null
    return (str(row["file"]), size, _mtime_text(row["mtime"]), str(row["model_sha256"]),
            _number_text(row.get("threshold")), _number_text(row.get("vote_fraction")),
            str(row.get("sensitivity") or ""), str(row.get("meta_source") or ""), str(row.get("meta_missing") or ""),
            str(row.get("reference_sensor") or ""), str(row.get("reference_table") or ""))


def settings_of(key: tuple[str, ...]) -> tuple[str, ...]:
    """A resume key's scoring settings (model, threshold, vote, sensitivity, meta, reference): all but the file's
    path, size and mtime."""
    return key[3:]


def _number_text(value) -> str:
    return f"{float(value):.6g}" if value not in ("", None) else ""


def _mtime_text(value) -> str:
    return f"{float(value):.6f}" if value not in ("", None) else ""


def escape_formula(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unescape_formula(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def csv_row_line(row: dict, columns: tuple[str, ...]) -> str:
    """One CSV line of a row, text cells escaped against formula injection."""
    cells = [_cell(row.get(k)) for k in columns]
    return csv_line([escape_formula(cell) if k in TEXT_COLUMNS else cell for k, cell in zip(columns, cells)])


def json_record(row: dict, columns: tuple[str, ...]) -> dict:
    """A row as a JSON object: every column, in order (None where the row has no value, NaN included); a row
    read back from a CSV table gets its numbers, booleans and empty cells (None) back."""
    return {k: _json_value(k, row.get(k)) for k in columns}


def _json_value(column: str, value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if not isinstance(value, str) or column in ("message", "mtime"):  # text even when empty or numeric-looking
        return value
    if value == "":
        return None
    if column in TEXT_COLUMNS:
        return value
    if value in ("true", "false"):
        return value == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class RowWriter:
    """Appends rows to a .csv or .jsonl file; each row is one write of one whole line, then flushed."""

    def __init__(self, path: str | Path, columns: tuple[str, ...], append: bool):
        self.path = Path(path)
        self.columns = columns
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        # surrogateescape: a file name that is not UTF-8 (an SMB share's Latin-1) is written as its own bytes
        self.handle = open(self.path, "w" if fresh else "a", encoding="utf-8", errors="surrogateescape", newline="")
        if fresh and not self.jsonl:
            self._write_line(csv_line(self.columns))

    def _write_line(self, line: str) -> None:
        self.handle.write(line)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def write(self, row: dict) -> None:
        if self.jsonl:
            self._write_line(json.dumps(json_record(row, self.columns)) + "\n")
        else:
            self._write_line(csv_row_line(row, self.columns))

    def close(self) -> None:
        self.handle.close()


def read_table(path: str | Path, columns: tuple[str, ...]) -> tuple[str, list[tuple[dict, str]], int]:
    """(header line, [(row, its line as written)], bytes of whole lines) of an earlier output.

    The header is "" for JSONL (and for a missing or empty file); CSV text cells come back un-escaped.
    """
    path = Path(path)
    if not path.exists():
        return "", [], 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    text = complete.decode("utf-8", "surrogateescape")
    if path.suffix.lower() == ".jsonl":
        lines = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):  # a log or a list written as .jsonl is no table to continue
                raise OutputError(f"{path}: line {number} is not a JSON object of a row; not a table leak predict "
                                  f"wrote: write to another --out")
            if set(row) != set(columns):
                raise OutputError(f"{path}: its rows have other columns than this model's output; "
                                  f"write to another --out")
            lines.append((row, line + "\n"))
        return "", lines, len(complete)
    reader = csv.reader(io.StringIO(text))  # a whole reader: a quoted cell may hold a newline
    header = next(reader, None)
    if header is None:
        return "", [], 0
    if tuple(header) != columns:
        raise OutputError(f"{path}: its columns {header} differ from this model's {list(columns)}; "
                          f"write to another --out")
    records = list(reader)
    # half written: cut inside a quoted cell after a newline in it (an odd number of quotes: every quote this
    # writes comes in pairs), or with cells missing
    cut = bool(records) and (text.count('"') % 2 == 1 or len(records[-1]) != len(header))
    records = records[:-1] if cut else records
    for number, values in enumerate(records, start=2):
        if len(values) != len(header):
            raise OutputError(f"{path}: row {number} has {len(values)} cells where the header has {len(header)}; "
                              f"not a table leak predict wrote: write to another --out")
    lines = []
    for values in records:
        row = {k: unescape_formula(v) if k in TEXT_COLUMNS else v for k, v in zip(header, values)}
        lines.append((row, csv_row_line(row, columns)))  # the same line: cells read back are written as they were
    if cut:  # the whole rows' bytes: each is written back exactly as it was read
        complete = (csv_line(header) + "".join(line for _, line in lines)).encode("utf-8", "surrogateescape")
    return csv_line(header), lines, len(complete)


def prepare_resume(path: str | Path, columns: tuple[str, ...], keep: Callable[[dict], bool]) -> list[dict]:
    """Make an earlier output ready to be appended to, and return the rows it keeps.

    Drops a half-written last line, the rows `keep` refuses (files to be scored again) and all but the
    last row of any file listed twice, so that the finished table has exactly one row per file. When
    nothing but a half line goes, the file is truncated; otherwise it is rewritten atomically.
    """
    path = Path(path)
    header, lines, length = read_table(path, columns)
    last_of_file = {str(row["file"]): index for index, (row, _) in enumerate(lines)}
    kept = [(row, line) for index, (row, line) in enumerate(lines)
            if last_of_file[str(row["file"])] == index and keep(row)]
    if len(kept) == len(lines):
        if path.exists():
            os.truncate(path, length)
    else:
        write_atomic(path, header + "".join(line for _, line in kept))
    return [row for row, _ in kept]
