"""`leak data`: make, build and check datasets (thin wrappers, as in leakhunter/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from leakhunter.cli_support import command, console, progress_bar, warn

data_app = typer.Typer(name="data", help="Make, build and check datasets.", no_args_is_help=True)


@command(data_app, "synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write OUT/<CLASS>/*.wav and OUT/manifest.csv into."),
    files_per_class: int = typer.Option(20, min=1, help="Recordings per class."),
    duration: float = typer.Option(10.0, help="Seconds per recording."),
    sample_rate: int = typer.Option(8000, min=4000, help="Sample rate of the WAV files (Hz)."),
    seed: int = typer.Option(0, min=0, help="Same seed, same bytes."),
    scenario: str = typer.Option("classes", help="classes: five easy classes, for plumbing tests; sites: recorded "
                                                 "at --sites sites that each colour their sound (pipe resonances, "
                                                 "sensor, gain, background, leak SNR down to -10 dB); gain-confound: "
                                                 "LEAK and NORMAL told apart only by level minus the recorder gain "
                                                 "in the file name (a corpus that needs fusion)."),
    sites: int = typer.Option(None, min=1, max=999,
                              help="Sites of the sites scenario (default 12); the sensor id is the site."),
    leak_band: str = typer.Option(None, help="Where the sites scenario's leaks and sensors sit: low (default; "
                                             "leaks and sensors to 1.8 kHz) or high (leaks to 2.5-3.5 kHz, sensors "
                                             "to 3.8 kHz, for the wide preset; needs "
                                             "--sample-rate 8000 or more)."),
):
    """Write a synthetic labelled corpus (by scenario: five classes, or LEAK and NORMAL) for demos and tests."""
    from leakhunter.synth import synth_corpus

    with progress_bar("synth") as bar:
        task = bar.add_task("synth", total=None)
        corpus = synth_corpus(out, files_per_class=files_per_class, duration_s=duration,
                              sample_rate=sample_rate, seed=seed, scenario=scenario, sites=sites, leak_band=leak_band,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    from leakhunter.sources import find_audio, resolved

    counts = ", ".join(f"{n} {label}" for label, n in corpus.counts.items())
    where = f" at {len(corpus.sites)} sites (knobs in {corpus.root / 'sites.csv'})" if corpus.sites else ""
    console.print(f"wrote {len(corpus.files)} recordings ({counts}){where} and {corpus.manifest}")
    written = {resolved(path) for path in corpus.files}
    others = [path for path in find_audio(corpus.root) if resolved(path) not in written]
    if others:  # a corpus written over an earlier one: its files stay, and a build of the folder takes both
        warn(f"{out} holds {len(others)} other recording{'s' if len(others) != 1 else ''} besides these (an "
             f"earlier corpus? e.g. {others[0].relative_to(corpus.root)}): `leak data build {out}` would take them "
             f"too; build from {corpus.manifest}, or write into an empty folder")


@command(data_app, "build")
def data_build(
    source: Path = typer.Argument(..., help="A class-folder tree SRC/<CLASS>/*.wav or a manifest CSV."),
    output: Path = typer.Option(..., "--output", "-o", help="The HDF5 dataset file to write."),
    preset: str = typer.Option("short", help="Front-end and segmentation preset: short, long or wide."),
    val: float = typer.Option(0.15, help="Fraction of files for validation."),
    test: float = typer.Option(0.15, help="Fraction of files for test."),
    workers: int = typer.Option(2, help="Decoding threads."),
    seed: int = typer.Option(0, help="Seed of the split."),
    channel: str = typer.Option("mean", help="Channel policy: mean, first, or a channel index."),
    max_skipped_fraction: float = typer.Option(
        0.05, help="Fail (keeping any previous output) when more than this fraction of the files is skipped."),
    group_column: str = typer.Option(None, help="The manifest column that names each file's group (e.g. site), "
                                                "instead of group (else sensor_id, else the logger name)."),
):
    """Decode, segment and featurise a labelled corpus into one HDF5 file, split by group."""
    from leakhunter.training.dataset import build_dataset

    with progress_bar("build") as bar:
        task = bar.add_task("build", total=None)
        report = build_dataset(source, output, preset_name=preset, val=val, test=test, workers=workers,
                               seed=seed, channel=channel, max_skipped_fraction=max_skipped_fraction,
                               group_column=group_column,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    splits = ", ".join(f"{n} {name}" for name, n in report.files_per_split.items())
    console.print(f"wrote {report.output}: {report.n_files} files ({splits}), {report.hours:.2f} h, "
                  f"{report.n_long} long and {report.n_short} short segments, classes {', '.join(report.class_names)}; "
                  f"preset {report.preset}")
    if report.skipped:
        console.print(f"[yellow]{report.skipped_summary()}[/]", highlight=False)
        for error in report.skipped:
            console.print(f"  {error}", highlight=False)
    for warning in report.warnings():
        warn(warning)


@command(data_app, "check")
def data_check(dataset: Path = typer.Argument(..., help="A dataset file from `leak data build`.")):
    """Data health report: files per split and class, hours, groups, skipped files, problems. Exit 1 on problems."""
    from leakhunter.training.check import check_dataset
    from leakhunter.training.splits import SPLITS

    report = check_dataset(dataset)
    table = Table(title=f"{report.path} (preset {report.preset})")
    for column in ("split", *report.class_names, "files", "hours", "groups", "short segments"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for code, name in enumerate(SPLITS):
        row = report.counts[code]
        table.add_row(name, *map(str, row), str(row.sum()), f"{report.hours[code]:.2f}", str(report.groups[code]),
                      str(report.short_segments[code]))
    console.print(table)
    for path, reason, detail in report.skipped:
        console.print(f"skipped {path}: {reason}: {detail}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for problem in report.problems:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False)
    if report.problems:
        raise typer.Exit(1)
    console.print("[green]no problems found[/]")


@command(data_app, "files")
def data_files(
    dataset: Path = typer.Argument(..., help="A dataset file from `leak data build`."),
    split: str = typer.Option("test", help="train, val or test."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the manifest CSV here (default: stdout)."),
):
    """List one split's files as a manifest CSV (path, label, group and the columns the dataset's own manifest
    gave, e.g. sensor_id): `leak predict`, `leak eval` and `leak reference build` read it as it is."""
    import csv
    import io

    from leakhunter.files import write_atomic
    from leakhunter.sources import check_output_name
    from leakhunter.training.check import split_manifest

    if output is not None:  # not over the dataset, nor a half-written manifest on a failure
        check_output_name(output, "a manifest", (".csv",), f"-o {output}")
    rows = split_manifest(dataset, split)
    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["path", "label", "group"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if output is None:
        sys.stdout.write(text.getvalue())
        return
    write_atomic(output, text.getvalue())
    console.print(f"wrote {len(rows)} {split} files to {output}")
