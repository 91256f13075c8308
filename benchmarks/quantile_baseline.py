"""A probe kept for the README (How good is it on a new site?): does a file hold leak evidence beyond its median
log-mel? The baseline (logistic regression on each file's median log-mel, training/baseline.py) is refitted on
other per-bin statistics of the same frames (low and high percentiles: the quiet moments between traffic and
transients, where a steady leak stands out most) and cross-validated exactly as `leak train --cv 5` judges the
baseline: grouped folds over the training and validation sites, each fold's threshold chosen on the others'
held-out predictions, files pooled over the folds and the corpora given.

    python benchmarks/quantile_baseline.py /tmp/leakhunter-levers/seed{0,1,2}/data.h5 [--reference none]
"""

import argparse

import numpy as np

from leakhunter.training.cv import baseline_verdicts, deal_folds, file_report
from leakhunter.training.data import LeakData

STATISTICS = {"median": ("p50",), "10th percentile": ("p10",), "25th percentile": ("p25",),
              "median + 10th": ("p50", "p10"), "median + 10th + 90th": ("p50", "p10", "p90"),
              "10th, 25th, median, 75th, 90th": ("p10", "p25", "p50", "p75", "p90"),
              "median + standard deviation": ("p50", "std")}


def file_frames(data: LeakData) -> list[np.ndarray]:
    """Every file's frames [frames, n_mels] in dB (minus its sensor's reference when the data serves one)."""
    mels = data._short_mels(np.arange(len(data.short_file_index))).float().numpy()  # [shorts, n_mels, frames]
    order = np.argsort(data.short_file_index, kind="stable")
    bounds = np.searchsorted(data.short_file_index[order], np.arange(len(data.paths) + 1))
    return [mels[order[a:b]].transpose(0, 2, 1).reshape(-1, mels.shape[1]) for a, b in zip(bounds, bounds[1:])]


def statistic(frames: np.ndarray, name: str) -> np.ndarray:
    return frames.std(axis=0) if name == "std" else np.percentile(frames, int(name[1:]), axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="Dataset files of `sites` corpora (benchmarks/levers.sh builds them).")
    parser.add_argument("--reference", default="sensor", choices=("sensor", "none"))
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    pooled = {name: [] for name in STATISTICS}
    for path in args.data:
        data = LeakData(path, "binary", reference=None if args.reference == "none" else args.reference)
        folds = deal_folds(data, args.folds, 0)
        frames = file_frames(data)
        for name, parts in STATISTICS.items():
            features = np.array([np.concatenate([statistic(f, part) for part in parts]) for f in frames])
            pooled[name].append([np.concatenate(parts) for parts in baseline_verdicts(data, folds, features)])
            report = file_report(*pooled[name][-1])
            print(f"{path}: {name}: F1 {report['file_f1']:.3f} AUC {report['file_auc']:.3f} "
                  f"({report['n_files']} files)", flush=True)
    print(f"\n| per-bin statistic (reference {args.reference}) | held-out-site F1, pooled | per corpus | AUC, mean |")
    print("|---|---|---|---|")
    for name, runs in pooled.items():
        pooled_report = file_report(*(np.concatenate(parts) for parts in zip(*runs)))
        each = [file_report(*run) for run in runs]
        per_corpus = " ".join(f"{report['file_f1']:.3f}" for report in each)
        print(f"| {name} | {pooled_report['file_f1']:.3f} | {per_corpus} | "
              f"{np.mean([report['file_auc'] for report in each]):.3f} |")


if __name__ == "__main__":
    main()
