"""The dataset file in memory, as model inputs and targets per split.

The HDF5 arrays are read once; batches are sliced by index (no per-sample Python), so the loader
serves hundreds of thousands of inputs per second and never bounds the training step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from leakhunter.card import BINARY_CLASSES, CardError, ModelCard, compare_configs
from leakhunter.segments import long_segment_inputs
from leakhunter.training.dataset import DatasetError, dataset_configs
from leakhunter.training.splits import SPLITS


@dataclass
class SplitData:
    """One split's scoring inputs (short or long segments) with their targets and file links."""

    name: str
    input_index: np.ndarray  # [N] short (unit short) or long (unit long) segment indices
    targets: np.ndarray  # [N] class index in the model's class_names
    is_leak: np.ndarray  # [N] bool
    input_file: np.ndarray  # [N] position (0..F-1) of each input's file
    file_index: np.ndarray  # [F] dataset file indices of this split, ascending
    file_is_leak: np.ndarray  # [F] bool
    file_targets: np.ndarray  # [F] class index in the model's class_names
    long_file: np.ndarray  # [L] position (0..F-1) of each long segment's file
    long_first_input: np.ndarray  # [L] unit short: first input of each long segment; unit long: arange(L)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.input_index)


class LeakData:
    """All splits of one dataset file, mapped onto a mode's class names."""

    def __init__(self, path: str | Path, mode: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such dataset file")
        with h5py.File(self.path, "r") as h5:
            self.frontend, self.segmentation, self.dataset_classes = dataset_configs(h5)
            self.mel = torch.from_numpy(h5["short/mel"][...])  # float16 [N_short, n_mels, frames]
            files = {k: h5["files"][k][...] for k in ("label", "split", "long_start", "long_count", "sha256")}
            self.paths = list(h5["files/path"].asstr()[...])
            self.groups = list(h5["files/group"].asstr()[...])
            self.long_short_start = h5["long/short_start"][...]
            self.long_file_index = h5["long/file_index"][...]
            self.short_file_index = h5["short/file_index"][...]
        self.mode = mode
        self.shas = [sha.decode() for sha in files["sha256"]]
        self.split_codes = files["split"]
        self.class_names = BINARY_CLASSES if mode == "binary" else self.dataset_classes
        leak = self.dataset_classes.index("LEAK")
        file_is_leak = files["label"] == leak
        file_targets = file_is_leak.astype(np.int64) if mode == "binary" else files["label"].astype(np.int64)
        self.shorts_per_long = self.segmentation.shorts_per_long()
        self.fingerprint = hashlib.sha256(
            files["sha256"].tobytes() + files["split"].tobytes() + json.dumps(self.frontend.__dict__).encode()
            + json.dumps(self.segmentation.__dict__).encode()).hexdigest()[:16]
        self.splits = {name: self._split(code, name, files["split"], file_is_leak, file_targets)
                       for code, name in enumerate(SPLITS)}

    def _split(self, code, name, split, file_is_leak, file_targets) -> SplitData:
        files = np.flatnonzero(split == code)
        position = np.full(len(split), -1)
        position[files] = np.arange(len(files))
        longs = np.flatnonzero(np.isin(self.long_file_index, files))
        if self.segmentation.unit == "short":
            inputs = np.flatnonzero(np.isin(self.short_file_index, files))
            input_position = np.full(len(self.short_file_index), -1)
            input_position[inputs] = np.arange(len(inputs))
            input_file = self.short_file_index[inputs]
            long_first_input = input_position[self.long_short_start[longs]]
        else:
            inputs, input_file, long_first_input = longs, self.long_file_index[longs], np.arange(len(longs))
        return SplitData(
            name=name, input_index=inputs, targets=file_targets[input_file], is_leak=file_is_leak[input_file],
            input_file=position[input_file],
            file_index=files, file_is_leak=file_is_leak[files], file_targets=file_targets[files],
            long_file=position[self.long_file_index[longs]], long_first_input=long_first_input,
            paths=[self.paths[f] for f in files],
        )

    def inputs(self, split: SplitData, rows: np.ndarray) -> torch.Tensor:
        """Model inputs [b, 1, n_mels, frames] (float32) for rows of a split."""
        index = split.input_index[rows]
        if self.segmentation.unit == "short":
            batch = self.mel[torch.from_numpy(index)]
        else:
            batch = long_segment_inputs(self.mel, self.long_short_start[index], self.shorts_per_long)
        return batch.float().unsqueeze(1)

    def mel_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-mel-bin mean and std over the training split's distinct short segments."""
        train = self.splits["train"]
        shorts = (train.input_index if self.segmentation.unit == "short"
                  else np.flatnonzero(np.isin(self.short_file_index, train.file_index)))
        mel = self.mel[torch.from_numpy(shorts)].double()  # [n, n_mels, frames]
        mean = mel.mean(dim=(0, 2))
        std = mel.std(dim=(0, 2)).clamp(min=1e-3)
        return mean.float().numpy(), std.float().numpy()

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Files per class in each split, by the model's class names."""
        return {name: {cls: int((split.file_targets == c).sum()) for c, cls in enumerate(self.class_names)}
                for name, split in self.splits.items()}

    def check_card(self, card: ModelCard, source: str) -> None:
        """A card whose front-end, segmentation or classes disagree with this data is refused, naming both."""
        problems = compare_configs(card.frontend, self.frontend, source, str(self.path), "frontend")
        problems += compare_configs(card.segmentation, self.segmentation, source, str(self.path), "segmentation")
        if card.mode == "binary":
            if "LEAK" not in self.dataset_classes:
                problems.append(("class_names", f"{self.path} has no LEAK class for a binary model"))
        elif tuple(card.class_names) != tuple(self.dataset_classes):
            problems.append(("class_names", f"{source} has {list(card.class_names)}, {self.path} has "
                                            f"{list(self.dataset_classes)}"))
        if problems:
            raise CardError(problems, f"{source} against {self.path}")

