"""The dataset file as model inputs and targets per split, in memory or streamed from disk.

When /short/mel fits the memory budget it is read once and batches are sliced by index (no per-sample
Python), so the loader serves hundreds of thousands of inputs per second. A bigger file stays open and
each batch reads the whole HDF5 chunks it needs (contiguous reads, a few kept in an LRU); `epoch_order`
then shuffles chunk-sized runs of rows within a buffer so a batch touches few chunks. Both paths give
the same inputs for the same rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from leakhunter.card import MODES, CardError, ModelCard, compare_configs, preset_name
from leakhunter.meta import file_meta
from leakhunter.models import ModelInputs, RelativeLevel
from leakhunter.reference import recording_median, sensor_of, sensor_references
from leakhunter.segments import long_segment_inputs
from leakhunter.training.config import parse_memory
from leakhunter.training.dataset import DatasetError, dataset_configs, file_metas, open_dataset
from leakhunter.training.splits import SPLITS

DEFAULT_BUDGET = "50%"           # of available RAM, when no max_memory is given
STATISTICS_CHUNK_BYTES = 64 << 20  # float64 working set of one mel_statistics chunk
CHUNK_CACHE_BYTES = 64 << 20     # chunks the streamed path keeps decoded: a shuffle buffer's chunks stay in it
BUFFER_BLOCKS = 8                # streamed epoch_order: runs of one HDF5 chunk, shuffled together in a buffer


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

    def __init__(self, path: str | Path, mode: str, max_memory: str | int | None = None,
                 log: Callable[[str], None] | None = None, streamed: bool | None = None,
                 split_files: dict[str, np.ndarray] | None = None, reference: str | None = None):
        """`streamed` forces the loading path (a resumed run keeps its run's, so its shuffle order is the same);
        None chooses by the memory budget. `split_files` (split name → dataset file indices) replaces the
        file's own split, for a cross-validation fold or a final model (training/cv.py); a file may then sit
        in two splits (a final model's in-sample validation), and the dataset's split codes still describe it.
        `reference` "sensor" serves every log-mel minus its sensor's reference (leakhunter/reference.py), from
        the first read on: statistics, the baseline and batches all see what a reference model sees."""
        self.path = Path(path)
        self.budget = parse_memory(DEFAULT_BUDGET if max_memory is None else max_memory)
        self._h5: h5py.File | None = None
        self._chunks: dict[int, np.ndarray] = {}  # LRU of whole HDF5 chunks, streamed path only
        with open_dataset(self.path) as h5:
            self.frontend, self.segmentation, self.dataset_classes = dataset_configs(h5)
            mel = h5["short/mel"]
            self.mel_bytes = mel.size * mel.dtype.itemsize
            self.streamed = self.mel_bytes > self.budget if streamed is None else bool(streamed)
            self.chunk_rows = mel.chunks[0] if mel.chunks else 4096
            self.mel = None if self.streamed else torch.from_numpy(mel[...])  # float16 [N_short, n_mels, frames]
            files = {k: h5["files"][k][...] for k in ("label", "split", "long_start", "long_count", "sha256")}
            self.paths = list(h5["files/path"].asstr()[...])
            self.groups = list(h5["files/group"].asstr()[...])
            self.long_short_start = h5["long/short_start"][...]
            self.long_file_index = h5["long/file_index"][...]
            self.short_file_index = h5["short/file_index"][...]
            self.channel_policy = str(h5.attrs.get("channel_policy", "mean"))  # the card records it for predict
            self.meta_json = file_metas(h5)
        self.mode = mode
        self.shas = [sha.decode() for sha in files["sha256"]]
        self.split_codes = files["split"]
        self.class_names = MODES[mode].class_names(self.dataset_classes)
        leak_idx = self.class_names.index("LEAK")
        file_is_leak = files["label"] == self.dataset_classes.index("LEAK")
        file_targets = np.array([MODES[mode].class_index(self.dataset_classes[label], self.class_names, leak_idx)
                                 for label in files["label"]], np.int64)
        self.shorts_per_long = self.segmentation.shorts_per_long()
        self.fingerprint = hashlib.sha256(
            files["sha256"].tobytes() + files["split"].tobytes() + json.dumps(self.frontend.__dict__).encode()
            + json.dumps(self.segmentation.__dict__).encode()).hexdigest()[:16]
        # what else the build decided, for the resume keys of --cv folds and fusion stages: a dataset rebuilt
        # from the same files and split with other labels, another channel mix or other meta is other data
        self.content_fingerprint = hashlib.sha256(
            self.fingerprint.encode() + files["label"].tobytes() + json.dumps(
                [self.channel_policy, list(self.dataset_classes), self.meta_json]).encode()).hexdigest()[:16]
        self.planned = split_files is not None  # a cross-validation fold or final model (training/cv.py)
        if split_files is None:
            split_files = {name: np.flatnonzero(files["split"] == code) for code, name in enumerate(SPLITS)}
        else:
            self.split_codes = plan_codes(split_files, len(self.paths))
            self.fingerprint = hashlib.sha256(self.fingerprint.encode() + b"".join(
                np.asarray(split_files[name], np.int64).tobytes() + b"|" for name in SPLITS)).hexdigest()[:16]
        # [all files], by dataset index: the dataset's class, LEAK or not, the model's target
        self.file_labels, self.file_is_leak, self.file_targets = files["label"], file_is_leak, file_targets
        self.splits = {name: self.subset(split_files[name], name) for name in SPLITS}
        self.branches: tuple[str, ...] = ()  # a fusion model's branches (use_branches); () serves mel alone
        self.features: torch.Tensor | None = None
        self.meta_rows: torch.Tensor | None = None
        self.reference = reference
        self.file_references: np.ndarray | None = None  # [n_files, n_mels] each file's sensor reference
        if reference is not None:
            self._use_references()
        sizes = f"dataset {_gb(self.mel_bytes)} {'>' if self.streamed else '<='} budget {_gb(self.budget)}"
        self.loading = f"{sizes}: {'reading from disk in chunks' if self.streamed else 'read into memory'}"
        if log is not None:
            log(self.loading)

    def _use_references(self) -> None:
        """Each sensor's reference from its own files' median log-mels (no label used), subtracted from every
        short segment: once in memory, or per chunk as the streamed path reads it. A file's sensor is found as
        scoring finds it (file_sensors; a file without one is its own, and H017 fails such a run)."""
        if self.reference != "sensor":
            raise DatasetError(f"{self.path}: unknown reference {self.reference!r} (known: sensor)")
        medians = self.file_mel_medians(self.subset(np.arange(len(self.paths))))
        sensors = [sensor or path for sensor, path in zip(self.file_sensors(), self.paths)]
        by_sensor = sensor_references(medians, sensors)
        self.file_references = np.stack([by_sensor[sensor] for sensor in sensors])
        self.close()  # read before the references existed; a streamed LeakData stays unopened until its next read
        if self.mel is not None:
            for start in range(0, len(self.mel), 65_536):  # in place, in blocks: no float32 copy of the whole set
                rows = slice(start, start + 65_536)
                self.mel[rows] = self._referenced(self.mel[rows], self.short_file_index[rows])

    def _referenced(self, mels: torch.Tensor, owners: np.ndarray) -> torch.Tensor:
        """Short-segment mels [n, n_mels, frames] (float16) minus their files' references, back in float16."""
        references = torch.from_numpy(self.file_references[owners])[:, :, None]
        return (mels.float() - references).to(mels.dtype)

    def close(self) -> None:
        """Close the file the streamed path keeps open (a no-op in memory)."""
        self._chunks.clear()
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def _mel_file(self) -> h5py.Dataset:
        if self._h5 is None:  # opened lazily, so a LeakData can cross a fork before its first read
            self._h5 = h5py.File(self.path, "r")
        return self._h5["short/mel"]

    def _short_mels(self, shorts: np.ndarray) -> torch.Tensor:
        """float16 mels of short segments `shorts` (ascending, distinct), from memory or by file-ordered spans."""
        if not self.streamed:
            return self.mel[torch.from_numpy(shorts)]
        dataset = self._mel_file()
        out = np.empty((len(shorts), *dataset.shape[1:]), dtype=dataset.dtype)
        chunk_of = shorts // self.chunk_rows
        breaks = np.flatnonzero(np.diff(chunk_of)) + 1
        for first, stop in zip(np.r_[0, breaks].astype(int), np.r_[breaks, len(shorts)].astype(int)):
            if stop > first:
                chunk = int(chunk_of[first])
                out[first:stop] = self._chunk(dataset, chunk)[shorts[first:stop] - chunk * self.chunk_rows]
        return torch.from_numpy(out)

    def _chunk(self, dataset: h5py.Dataset, chunk: int) -> np.ndarray:
        """One HDF5 chunk of /short/mel, read whole (one contiguous read) and kept in a small LRU."""
        if chunk in self._chunks:
            self._chunks[chunk] = self._chunks.pop(chunk)
            return self._chunks[chunk]
        values = dataset[chunk * self.chunk_rows:(chunk + 1) * self.chunk_rows]
        if self.file_references is not None:
            owners = self.short_file_index[chunk * self.chunk_rows:chunk * self.chunk_rows + len(values)]
            values = self._referenced(torch.from_numpy(values), owners).numpy()
        self._chunks[chunk] = values
        while len(self._chunks) > 1 and sum(v.nbytes for v in self._chunks.values()) > CHUNK_CACHE_BYTES:
            self._chunks.pop(next(iter(self._chunks)))
        return values

    def subset(self, files, name: str = "subset") -> SplitData:
        """The scoring inputs of any set of dataset files (a split, a fold), in ascending file order."""
        files = np.unique(np.asarray(files, np.int64))
        file_is_leak, file_targets = self.file_is_leak, self.file_targets
        position = np.full(len(self.paths), -1)
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
            if self.streamed:
                needed, where = np.unique(index, return_inverse=True)
                batch = self._short_mels(needed)[torch.from_numpy(where.reshape(-1))]
            else:
                batch = self.mel[torch.from_numpy(index)]
        else:
            starts = self.long_short_start[index]
            if self.streamed:  # the distinct shorts of the batch's long segments, each run kept whole
                needed = np.unique(starts[:, None] + np.arange(self.shorts_per_long)[None, :])
                batch = long_segment_inputs(self._short_mels(needed), np.searchsorted(needed, starts),
                                            self.shorts_per_long)
            else:
                batch = long_segment_inputs(self.mel, starts, self.shorts_per_long)
        return batch.float().unsqueeze(1)

    def file_sensors(self) -> list[str | None]:
        """Each dataset file's sensor id: its manifest's sensor_id column, else its logger name's (None without
        either), as a reference table is keyed and looked up at scoring."""
        return [sensor_of(path, json.loads(meta)) for path, meta in zip(self.paths, self.meta_json)]

    def file_meta(self, file: int) -> dict[str, str]:
        """One dataset file's metadata: its manifest columns over its logger-name fields (leakhunter/meta.py)."""
        return file_meta(self.paths[file], json.loads(self.meta_json[file]))

    def use_branches(self, branches: tuple[str, ...], meta_rows: np.ndarray | None = None) -> None:
        """Serve a fusion model's inputs from now on: `batch` gives (mel, features, meta), None where the model
        has no such branch. `meta_rows` is every dataset file's encoded meta row [n_files, n_meta] (NaN unknown)."""
        if self.segmentation.unit != "short":
            raise DatasetError(f"{self.path}: fusion models take the `short` unit's inputs (the engineered "
                               f"features are per short segment); this dataset was built with the "
                               f"`{self.segmentation.unit}` unit")
        self.branches = tuple(branches)
        if "features" in branches:
            with h5py.File(self.path, "r") as h5:
                self.features = torch.from_numpy(h5["short/features"][...].astype(np.float32))
        if "meta" in branches:
            self.meta_rows = torch.from_numpy(np.asarray(meta_rows, np.float32))

    def batch(self, split: SplitData, rows: np.ndarray) -> ModelInputs:
        """The model's inputs for rows of a split: the mel, and a fusion model's features and meta
        (leakhunter/fusion.py), None where it has no such branch."""
        if not self.branches:
            return ModelInputs(self.inputs(split, rows))
        mel = self.inputs(split, rows) if "mel" in self.branches else None
        features = self.features[torch.from_numpy(split.input_index[rows])] if "features" in self.branches else None
        files = split.file_index[split.input_file[rows]]
        meta = self.meta_rows[torch.from_numpy(files)] if "meta" in self.branches else None
        return ModelInputs(mel, features, meta)

    def epoch_order(self, split: SplitData, seed: int, epoch: int) -> np.ndarray:
        """The training order of an epoch's rows, a function of (seed, epoch) and the loading path.

        In memory: a plain permutation (unchanged, so runs and resumes stay bit-identical). Streamed: runs
        of one HDF5 chunk's rows in shuffled order, BUFFER_BLOCKS runs at a time shuffled together, so a
        batch reads a few spans from the chunk cache instead of thousands of scattered rows."""
        rng = np.random.default_rng([seed, epoch])
        if not self.streamed:
            return rng.permutation(len(split))
        block = max(1, self.chunk_rows if self.segmentation.unit == "short" else
                    self.chunk_rows // self.shorts_per_long)
        blocks = [np.arange(start, min(start + block, len(split))) for start in range(0, len(split), block)]
        shuffled = [blocks[b] for b in rng.permutation(len(blocks))]
        buffers = [np.concatenate(shuffled[i:i + BUFFER_BLOCKS]) for i in range(0, len(shuffled), BUFFER_BLOCKS)]
        return np.concatenate([rng.permutation(buffer) for buffer in buffers]) if buffers else np.zeros(0, int)

    def _statistics_chunks(self, relative: bool) -> Iterator[torch.Tensor]:
        """The training inputs in float64 chunks [n, n_mels, frames]: the split's distinct short segments, or
        with `relative` each network input minus its own mean (a long segment's, under the `long` preset's
        long unit), exactly what RelativeLevel hands the normaliser."""
        train = self.splits["train"]
        if relative:
            n_values = self._short_values() * (self.shorts_per_long if self.segmentation.unit == "long" else 1)
            step = max(1, STATISTICS_CHUNK_BYTES // (8 * n_values))
            for start in range(0, len(train), step):
                rows = np.arange(start, min(start + step, len(train)))
                yield RelativeLevel()(self.inputs(train, rows).double())[:, 0]
            return
        shorts = (train.input_index if self.segmentation.unit == "short"
                  else np.flatnonzero(np.isin(self.short_file_index, train.file_index)))
        step = max(1, STATISTICS_CHUNK_BYTES // (8 * self._short_values()))
        for start in range(0, len(shorts), step):
            yield self._short_mels(shorts[start:start + step]).double()

    def _short_values(self) -> int:
        """Values in one short segment's mel [n_mels, frames]."""
        return int(np.prod(self.mel.shape[1:] if self.mel is not None else self._mel_file().shape[1:]))

    def mel_statistics(self, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-mel-bin mean and std over the training split's distinct short segments, or with `relative` over
        its inputs each minus its own mean log-mel, as the network's RelativeLevel sees them.

        Streamed over contiguous chunks (float64 count/mean/M2 merged by Chan's formula), so neither path
        makes a float64 copy of the split; the result matches a whole-array mean/std to float precision."""
        count, mean, m2 = 0, None, None
        for chunk in self._statistics_chunks(relative):  # [n, n_mels, frames]
            n = chunk.shape[0] * chunk.shape[2]
            chunk_mean = chunk.mean(dim=(0, 2))
            chunk_m2 = ((chunk - chunk_mean[None, :, None]) ** 2).sum(dim=(0, 2))
            if mean is None:
                count, mean, m2 = n, chunk_mean, chunk_m2
            else:
                delta, total = chunk_mean - mean, count + n
                mean = mean + delta * (n / total)
                m2 = m2 + chunk_m2 + delta ** 2 * (count * n / total)
                count = total
        if mean is None:
            raise DatasetError(f"{self.path}: the training split has no short segments to normalise with")
        std = (m2 / max(count - 1, 1)).sqrt().clamp(min=1e-3)
        return mean.float().numpy(), std.float().numpy()

    def file_mel_medians(self, split: SplitData) -> np.ndarray:
        """Each file's median log-mel over its short segments (and their frames), [F, n_mels] float32 in the
        split's file order: the input of the baseline (training/baseline.py). Read in chunks of whole files."""
        shorts = np.flatnonzero(np.isin(self.short_file_index, split.file_index))
        owner = self.short_file_index[shorts]
        order = np.argsort(owner, kind="stable")
        shorts, owner = shorts[order], owner[order]
        starts = np.searchsorted(owner, split.file_index, side="left")
        stops = np.searchsorted(owner, split.file_index, side="right")
        row_values = int(np.prod(self.mel.shape[1:] if self.mel is not None else self._mel_file().shape[1:]))
        budget = max(1, STATISTICS_CHUNK_BYTES // (4 * row_values))
        medians = np.zeros((len(split.file_index), self.frontend.n_mels), np.float32)
        first = 0
        while first < len(split.file_index):
            last = int(np.searchsorted(starts, starts[first] + budget, side="left"))
            last = max(last, first + 1)  # at least one file, however long
            rows = shorts[starts[first]:stops[last - 1]]
            needed, where = np.unique(rows, return_inverse=True)
            mels = self._short_mels(needed)[torch.from_numpy(where.reshape(-1))].float().numpy()
            for f in range(first, last):
                block = mels[starts[f] - starts[first]:stops[f] - starts[first]]  # [k, n_mels, frames]
                medians[f] = recording_median(block)
            first = last
        return medians

    def __getstate__(self):  # an open HDF5 handle does not pickle; the copy reopens on its first read
        return {**self.__dict__, "_h5": None, "_chunks": {}}

    def validation_in_sample(self) -> bool:
        """Validation on the training files themselves (a cross-validated final model)."""
        return np.array_equal(self.splits["val"].file_index, self.splits["train"].file_index)

    def held_out_fold(self) -> bool:
        """A cross-validation fold: validation is held-out groups that select nothing."""
        return self.planned and not self.validation_in_sample()

    def label_counts(self) -> dict[str, int]:
        """Files per dataset label (before a mode maps them onto its classes)."""
        counts = np.bincount(self.file_labels, minlength=len(self.dataset_classes))
        return {name: int(n) for name, n in zip(self.dataset_classes, counts)}

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Files per class in each split, by the model's class names."""
        return {name: {cls: int((split.file_targets == c).sum()) for c, cls in enumerate(self.class_names)}
                for name, split in self.splits.items()}

    def check_card(self, card: ModelCard, source: str) -> None:
        """A card whose front-end, segmentation or classes disagree with this data is refused, naming both."""
        problems = compare_configs(card.frontend, self.frontend, source, str(self.path), "frontend")
        problems += compare_configs(card.segmentation, self.segmentation, source, str(self.path), "segmentation")
        ours, theirs = preset_name(card.frontend, card.segmentation), preset_name(self.frontend, self.segmentation)
        if problems and ours != theirs:  # the cause in one line, before the fields it explains
            problems.insert(0, ("preset", f"{source} is {f'preset {ours}' if ours else 'a custom front-end'}, "
                                          f"{self.path} is {f'preset {theirs}' if theirs else 'custom'}"
                                          + (f": build the data with leak data build --preset {ours}" if ours else "")))
        if tuple(card.class_names) != MODES[card.mode].class_names(self.dataset_classes):
            problems.append(("class_names", f"{source} has {list(card.class_names)}, {self.path} has "
                                            f"{list(self.dataset_classes)}"))
        if problems:
            raise CardError(problems, f"{source} against {self.path}")


def plan_codes(split_files: dict[str, np.ndarray], n_files: int) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test, 3 unused) for the leakage check of a run with its own splits: a
    file in two splits (an in-sample validation) keeps its first, so only different files sharing a group or
    audio across splits count as leakage."""
    codes = np.full(n_files, len(SPLITS), np.int8)
    for code in reversed(range(len(SPLITS))):
        codes[np.asarray(split_files[SPLITS[code]], np.int64)] = code
    return codes


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
