"""The verdict table: one row per input file, appended and flushed as it is produced (CSV or JSONL),
and read back by --resume, which never counts a half-written last line as done. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

BASE_COLUMNS = ("file", "status", "verdict", "leak_score", "mean_leak_prob", "max_long_prob", "n_long",
                "duration_s", "sample_rate_in", "resampled", "channels_in", "top_class")
TAIL_COLUMNS = ("threshold", "vote_fraction", "model_sha256", "leakhunter_version", "size_bytes", "mtime",
                "message")


class OutputError(ValueError):
    """An output file that --resume cannot continue (another format or other columns)."""


def columns_for(class_names, multiclass: bool) -> tuple[str, ...]:
    """The row's columns; a multiclass model adds its class probabilities p_<class>."""
    probabilities = tuple(f"p_{name}" for name in class_names) if multiclass else ()
    return BASE_COLUMNS + probabilities + TAIL_COLUMNS


def resume_key(row: dict) -> tuple[str, str, str, str]:
    """A file is done when the same path, size and mtime were scored by the same model."""
    return (str(row["file"]), str(row["size_bytes"]), _mtime_text(row["mtime"]), str(row["model_sha256"]))


def _mtime_text(value) -> str:
    return f"{float(value):.6f}" if value not in ("", None) else ""


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class RowWriter:
    """Appends rows to a .csv or .jsonl file; each row is one write of one whole line, then flushed."""

    def __init__(self, path: str | Path, columns: tuple[str, ...], append: bool):
        self.path = Path(path)
        self.columns = columns
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self.handle = open(self.path, "w" if fresh else "a", encoding="utf-8", newline="")
        if fresh and not self.jsonl:
            self._write_line(self._csv_line(self.columns))

    def _csv_line(self, values) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def _write_line(self, line: str) -> None:
        self.handle.write(line)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def write(self, row: dict) -> None:
        if self.jsonl:
            record = {k: row.get(k) for k in self.columns}
            record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
            self._write_line(json.dumps(record) + "\n")
        else:
            self._write_line(self._csv_line([_cell(row.get(k)) for k in self.columns]))

    def close(self) -> None:
        self.handle.close()


def read_done(path: str | Path, columns: tuple[str, ...]) -> tuple[list[dict], int]:
    """Rows already complete in an earlier output, and how many bytes of it are whole lines.

    A last line without its newline (a run killed mid-write) is not a row; the caller truncates the
    file to the returned length before appending.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    text = complete.decode("utf-8")
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        for row in rows:
            if set(row) != set(columns):
                raise OutputError(f"{path}: its rows have other columns than this model's output; "
                                  f"write to another --out")
        return rows, len(complete)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return [], 0
    if tuple(header) != columns:
        raise OutputError(f"{path}: its columns {header} differ from this model's {list(columns)}; "
                          f"write to another --out")
    return [dict(zip(header, values)) for values in reader], len(complete)
