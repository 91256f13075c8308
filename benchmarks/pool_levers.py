"""The README's lever table from finished `benchmarks/levers.sh` runs under CV: for each lever, every corpus
seed's held-out files pooled (counts from each run's cv.json), the mean of the runs' pooled AUCs, and the
baseline pooled the same way. Reads only; levers.sh calls it last, and it can be rerun on its own:

    python benchmarks/pool_levers.py OUT K SEED... --levers "none small small+relative" [--train-seed N] [--batch-size N]
"""

import argparse
import json
import re
from pathlib import Path


def counts(report: dict) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one pooled file-level report."""
    tp = round(report["file_recall"] * report["n_leak"])
    return tp, round((1 - report["file_specificity"]) * (report["n_files"] - report["n_leak"])), report["n_leak"] - tp


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def run_name(lever: str, k: str, train_seed: str | None, batch_size: str | None = None) -> str:
    """levers.sh's run directory name: `all` spelt out, + and , as _, -bsN for a batch size, -tsN for a training
    seed, -cvK."""
    name = re.sub(r"(^|\+)all$", r"\1gain+tilt+mix+mask", lever)
    return (re.sub("[+,]", "_", name) + (f"-bs{batch_size}" if batch_size else "")
            + (f"-ts{train_seed}" if train_seed else "") + f"-cv{k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("k")
    parser.add_argument("seeds", nargs="+")
    parser.add_argument("--levers", required=True)
    parser.add_argument("--train-seed", default=None)
    parser.add_argument("--batch-size", default=None)
    args = parser.parse_args()
    print("| lever | held-out-site F1, pooled over folds and seeds | mean AUC | baseline, pooled | seeds |")
    print("|---|---|---|---|---|")
    for lever in args.levers.split():
        name = run_name(lever, args.k, args.train_seed, args.batch_size)
        runs = [args.out / f"seed{seed}" / "runs" / name / "cv.json" for seed in args.seeds]
        done = [json.loads(path.read_text()) for path in runs if path.is_file()]
        if not done:
            print(f"| {lever} | no finished run | | | |")
            continue
        cnn = [sum(c) for c in zip(*(counts(cv["pooled"]) for cv in done))]
        base = [sum(c) for c in zip(*(counts(cv["baseline"]["pooled"]) for cv in done))]
        aucs = [cv["pooled"]["file_auc"] for cv in done if cv["pooled"]["file_auc"] is not None]  # null: one class
        auc = f"{sum(aucs) / len(aucs):.3f}" if aucs else "n/a"
        print(f"| {lever} | {f1(*cnn):.3f} | {auc} | {f1(*base):.3f} | {len(done)} of {len(args.seeds)} |")


if __name__ == "__main__":
    main()
