"""How `leak eval` prints its report (training/evaluate.py makes it): rich tables of the file metrics, the
confusion matrix, the groups, the operating points on these files and the files that could not be scored; and
how `leak predict` prints its rows (without --out) and its summary line."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

GROUPS_SHOWN = 40  # groups printed; --json has them all
FAILED_SHOWN = 20


def number(value, digits: int = 3) -> str:
    """A metric as text; n/a where it does not exist on these files (None or NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def eval_tables(report: dict) -> list[Table | str]:
    """The report as tables and lines, in reading order."""
    where = f"{report['split']} of {report['data']}" if report["split"] else report["data"]
    main = Table(title=f"{report['model']} on {where} ({report['n_files']} files, {report['n_leak']} LEAK, "
                       f"threshold {report['threshold']:.2f}; scored from {report['scored_by']})")
    columns = {"file F1": "file_f1", "precision": "file_precision", "recall": "file_recall",
               "specificity": "file_specificity", "false alarms /100": "false_alarms_per_100", "AUC": "file_auc",
               "accuracy": "file_accuracy", "segment acc": "segment_accuracy", "kappa": "kappa"}
    for column in columns:
        main.add_column(column, justify="right")
    main.add_row(*(number(report[key], 1 if key == "false_alarms_per_100" else 3) for key in columns.values()))
    parts: list[Table | str] = [main]
    confusion = Table(title="files: rows = truth, columns = prediction")
    confusion.add_column("")
    for name in report["class_names"]:
        confusion.add_column(name, justify="right")
    for name, row in zip(report["class_names"], report["confusion"]):
        confusion.add_row(name, *map(str, row))
    parts += [confusion, _groups(report), *_points(report), *_branches(report)]
    if report.get("baseline"):
        base = report["baseline"]
        parts.append(f"baseline ({base['model']}, threshold {base['threshold']:.2f}): file F1 "
                     f"{number(base['file_f1'])}, AUC {number(base['file_auc'])}")
    failed = report["failed_files"]
    if failed:
        parts.append(f"{len(failed)} file(s) could not be scored and are left out of every number above:")
        parts += [f"  {row['file']}: {row['status']}: {row['message']}" for row in failed[:FAILED_SHOWN]]
        if len(failed) > FAILED_SHOWN:
            parts.append(f"  ... and {len(failed) - FAILED_SHOWN} more (--json lists them all)")
    return parts


def _groups(report: dict) -> Table:
    groups = report["groups"]
    table = Table(title=f"per group ({len(groups)}; from {report['group_from']})"
                        + (f", the first {GROUPS_SHOWN}" if len(groups) > GROUPS_SHOWN else ""))
    for column in ("group", "files", "LEAK", "LEAK verdicts", "recall", "specificity", "false alarms /100"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for name, group in list(groups.items())[:GROUPS_SHOWN]:
        table.add_row(name, str(group["n_files"]), str(group["n_leak"]), str(group["leak_verdicts"]),
                      number(group["recall"]), number(group["specificity"]),
                      number(group["false_alarms_per_100"], 1))
    return table


def _branches(report: dict) -> list[Table]:
    """A fusion model's branches alone on the same files (threshold and vote of the card), with their weights."""
    if not report.get("branches"):
        return []
    table = Table(title="each fusion branch alone on these files (the fused model is the first table)")
    for column in ("branch", "fusion weight", "file F1", "AUC", "kappa"):
        table.add_column(column, justify="left" if column == "branch" else "right")
    for row in report["branches"]:
        table.add_row(row["branch"], number(row["weight"]), number(row["file_f1"]), number(row["file_auc"]),
                      number(row["kappa"]))
    return [table]


def _points(report: dict) -> list[Table | str]:
    points = report["operating_points"]
    if not points:
        return ["operating points: none in this model's card"]
    table = Table(title="the card's operating points on these files (calibrated value in brackets)")
    for column in ("sensitivity", "threshold", "target", "recall", "specificity", "precision", "false alarms /100"):
        table.add_column(column, justify="left" if column in ("sensitivity", "target") else "right")
    for name, point in points.items():
        if point["threshold"] is None:
            table.add_row(name, "-", f"unavailable: {point['reason']}", "", "", "", "")
            continue
        calibrated = point["calibrated"]
        cells = [f"{number(point[key], digits)} ({number(calibrated[key], digits)})"
                 for key, digits in (("recall", 3), ("specificity", 3), ("precision", 3),
                                     ("false_alarms_per_100", 1))]
        table.add_row(name, f"{point['threshold']:.2f}", point.get("target") or "", *cells)
    return [table]


def predict_table(rows: list[dict], model) -> Table:
    """The first 200 rows of `leak predict` without --out."""
    table = Table(title=f"{len(rows)} file(s) scored with {model}")
    for column in ("file", "status", "verdict", "leak_score", "mean_leak_prob", "top_class or message"):
        table.add_column(column)
    for row in rows[:200]:
        table.add_row(Path(row["file"]).name, row["status"], row.get("verdict") or "",
                      f"{row['leak_score']:.2f}" if row.get("leak_score") is not None else "",
                      f"{row['mean_leak_prob']:.3f}" if row.get("mean_leak_prob") is not None else "",
                      row.get("top_class") or row.get("message", ""))
    return table


def predict_line(summary, out) -> str:
    """`leak predict`'s last line: hours, speed, verdicts, statuses, what --resume kept, where the table is."""
    speed = summary.audio_s / max(summary.wall_s, 1e-9)
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(summary.verdicts.items())) or "none"
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items()))
    kept_failed = sum(n for status, n in summary.kept_statuses.items() if status != "ok")
    return (f"scored {summary.audio_s / 3600:.2f} h of audio in {summary.wall_s:.1f} s ({speed:.0f}x real time); "
            f"verdicts: {verdicts}; files: {statuses}"
            + (f"; {summary.skipped} already in {out}" if summary.skipped else "")
            + (f" ({kept_failed} of them failed)" if kept_failed else "")
            + (f"; table: {out}" if out else ""))
