"""`leak reference`: the sensor reference tables a reference model scores with (leakhunter/reference.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from leakhunter.cli_support import command, console, errors, fail, progress_bar, warn

reference_app = typer.Typer(name="reference", help="Sensor reference tables for models trained with "
                                                   "--reference sensor.", no_args_is_help=True)


@command(reference_app, "build")
def reference_build(
    inputs: list[str] = typer.Argument(..., help="Each sensor's earlier, mostly leak-free recordings: files, folders, "
                                                 "glob patterns or manifest CSVs; the sensor is a manifest's "
                                                 "sensor_id column, else the name's (sensor~recording~time~gain)."),
    model: Path = typer.Option(..., help="The reference model the table is for (.pth or .onnx): its front-end, "
                                         "segmentation and channel policy."),
    out: Path = typer.Option(..., "--out", "-o", help="The table to write (JSON)."),
    workers: int = typer.Option(2, help="Decoding threads."),
):
    """Each sensor's reference log-mel: the median over its recordings of each recording's median log-mel,
    through the model's own front-end. Recordings that cannot be decoded are listed and left out."""
    from leakhunter.inference.loader import read_card
    from leakhunter.inference.predict import find_inputs, manifest_fields
    from leakhunter.meta import RecordingFields
    from leakhunter.reference import build_reference_table, require_reference_model, thin_sensors
    from leakhunter.sources import check_output_name, is_pattern, refuse_replacing_inputs

    check_output_name(out, "a reference table", (".json",), f"--out {out}")  # a .csv name reads as a manifest
    refuse_replacing_inputs(out, [item for item in inputs if not is_pattern(item)], [], f"--out {out}")
    card, _, _ = read_card(model)
    require_reference_model(card, model)
    absent = [item for item in inputs if not is_pattern(item) and not Path(item).exists()]
    if absent:  # a table is built from what exists; a typo would otherwise read as "no sensor id"
        raise fail(f"{absent[0]}: no such file or folder")
    found = find_inputs(inputs)
    for line in found.empty:
        warn(f"{line}: no recording is taken from it")
    for line in found.repeated:
        warn(f"{line}; each counts once")
    paths = found.paths
    fields = RecordingFields()
    fields.add_manifest(manifest_fields(inputs))
    with progress_bar("reference") as bar:
        task = bar.add_task("reference", total=len(paths))
        table, skipped = build_reference_table(paths, card, workers,
                                               lambda done, total: bar.update(task, completed=done, total=total), fields)
    table.save(out)
    shown = Table("sensor", "recordings", "reference (dB, lowest..highest bin)")
    for sensor in sorted(table.references):
        values = table.references[sensor]
        shown.add_row(sensor, str(table.recordings[sensor]), f"{values.min():.1f}..{values.max():.1f}")
    console.print(shown)
    for error in skipped:
        errors.print(f"skipped {error.path}: {error.reason} ({error.detail})", highlight=False, markup=False)
    thin = thin_sensors(table.recordings)
    if thin:
        warn(thin)
    console.print(f"wrote {out}: {len(table.references)} sensor(s) from {sum(table.recordings.values())} "
                  f"recording(s)", highlight=False)
