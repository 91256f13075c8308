"""A prototype kept for the README's comparison (How good is it on a new site?): each recording judged against its
own median log-mel instead of its sensor's usual one (`leak train --reference sensor`). Writes a copy of a dataset
file in which every short segment's log-mel has its own recording's median log-mel subtracted, bin by bin:
per-recording spectral normalisation, the limit of PCEN's slow gain control. It normalises a steady leak away with
the background (measured: about the F1 of calling every file a leak), which is why it is not a setting.

    python benchmarks/own_reference.py DATA.h5 OUT.h5        # then leak train --data OUT.h5
"""

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np

from leakhunter.training.data import LeakData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    data = LeakData(args.data, "binary")
    medians = data.file_mel_medians(data.subset(np.arange(len(data.paths))))  # in dataset file order
    data.close()
    shutil.copyfile(args.data, args.out)
    with h5py.File(args.out, "r+") as h5:
        mel = h5["short/mel"]
        owner = h5["short/file_index"][...]
        for start in range(0, len(owner), 65_536):  # bounded memory for any dataset size
            rows = slice(start, start + 65_536)
            mel[rows] = (mel[rows].astype(np.float32) - medians[owner[rows]][:, :, None]).astype(np.float16)
        h5.attrs["reference"] = "each short log-mel minus its own recording's median log-mel"
    print(f"{args.out}: {len(medians)} recordings, each its own reference")


if __name__ == "__main__":
    main()
