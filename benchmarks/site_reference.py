"""A prototype of the one lever that moved held-out-site F1 a long way (README, "How good is it on a new site?"):
judge each recording against its own site's usual sound. Writes a copy of a dataset file in which every short
segment's log-mel has its site's reference subtracted, bin by bin: the median, over the site's recordings, of each
recording's median log-mel (the baseline's feature, `LeakData.file_mel_medians`). No label is used, only other
recordings from the same sensor, so a held-out site's reference comes from its own (unlabelled) recordings, as a
deployed logger's would come from its earlier nights. Not a `leak train` setting yet: a model trained on such a
copy expects the same subtraction at scoring time, which export and predict do not do.
With --by recording each recording is its own reference (its own median log-mel, bin by bin): per-recording
spectral normalisation, the limit of PCEN's slow gain control, for comparison.

    python benchmarks/site_reference.py DATA.h5 OUT.h5 [--by site|recording]    # then leak train --data OUT.h5
"""

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np

from leakhunter.training.data import LeakData


def site_references(data: LeakData, by: str = "site") -> tuple[np.ndarray, dict[str, int]]:
    """[files, n_mels] each file's reference (its site's, or with by="recording" its own median log-mel), and
    the number of recordings behind each reference."""
    medians = data.file_mel_medians(data.subset(np.arange(len(data.file_labels)))).astype(np.float64)
    groups = np.asarray(data.groups) if by == "site" else np.arange(len(medians)).astype(str)
    references, counts = np.zeros_like(medians), {}
    for group in np.unique(groups):
        at = groups == group
        references[at] = np.median(medians[at], axis=0)
        counts[str(group)] = int(at.sum())
    return references, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--by", choices=("site", "recording"), default="site")
    args = parser.parse_args()
    data = LeakData(args.data, "binary")
    references, counts = site_references(data, args.by)
    data.close()
    shutil.copyfile(args.data, args.out)
    with h5py.File(args.out, "r+") as h5:
        mel = h5["short/mel"]
        owner = h5["short/file_index"][...]
        for start in range(0, len(owner), 65_536):  # bounded memory for any dataset size
            rows = slice(start, start + 65_536)
            mel[rows] = (mel[rows].astype(np.float32) - references[owner[rows]][:, :, None]).astype(np.float16)
        h5.attrs["reference"] = f"each short log-mel minus its {args.by}'s median of file median log-mels"
    print(f"{args.out}: {len(counts)} {args.by}s, {min(counts.values())}-{max(counts.values())} recordings each")


if __name__ == "__main__":
    main()
