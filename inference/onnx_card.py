"""The model card inside an .onnx file: export writes it, every loader reads and checks it (DESIGN §4).

`metadata_props` hold `leakhunter.card` (the card as JSON), `leakhunter.input` and `leakhunter.precision`, plus flat
`class_names` (JSON list), `leak_idx` and `mode` for tools that are not leakhunter. Values are JSON,
never Python reprs. Reading needs only protobuf (leakhunter.inference.onnx_proto): neither torch nor the
`onnx` package, whose import alone costs more than scoring ten minutes of audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leakhunter.card import CardError, ModelCard, input_shape
from leakhunter.errors import LeakhunterError
from leakhunter.inference.onnx_proto import FLOAT, DecodeError, OnnxFacts, parse_onnx

CARD_KEY = "leakhunter.card"
INPUT_KEY = "leakhunter.input"
PRECISION_KEY = "leakhunter.precision"
INPUT_KINDS = ("waveform", "mel")
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUT_NAMES = ("probs", "leak_prob")


class ModelLoadError(LeakhunterError, ValueError):
    """A model file that cannot be used (missing, empty, truncated, not ONNX); the message names the file."""


@dataclass(frozen=True)
class OnnxModel:
    """A checked .onnx file: its card, what its graph takes, and the bytes onnxruntime will run."""

    path: Path
    card: ModelCard
    input: str  # "waveform" or "mel"
    precision: str  # "fp32", "fp16" or "int8"
    facts: OnnxFacts
    data: bytes

    def tensor_shapes(self, which: str) -> list[dict]:
        """[{name, dtype, shape}] of the graph's inputs or outputs; dynamic axes by their names."""
        return [value.describe() for value in (self.facts.inputs if which == "inputs" else self.facts.outputs)]

    @property
    def opset(self) -> int | None:
        return self.facts.opset


def flat_metadata(card: ModelCard) -> dict[str, object]:
    """The card fields copied flat, for readers that are not leakhunter."""
    return {"class_names": list(card.class_names), "leak_idx": card.leak_idx, "mode": card.mode}


def card_metadata(card: ModelCard, input: str, precision: str = "fp32") -> dict[str, str]:
    """The metadata_props an exported file carries, every value JSON text."""
    if input not in INPUT_KINDS or precision not in PRECISIONS:
        raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)} and precision one of "
                         f"{', '.join(PRECISIONS)}, got {input!r} and {precision!r}")
    flat = {key: json.dumps(value) for key, value in flat_metadata(card).items()}
    return {CARD_KEY: card.to_json(), INPUT_KEY: json.dumps(input), PRECISION_KEY: json.dumps(precision), **flat}


def read_onnx(path: str | Path) -> OnnxModel:
    """Load an .onnx file and check its card, its flat metadata and its graph against each other.

    Raises ModelLoadError for a file that is not a usable ONNX model and CardError (naming the file and
    every disagreeing field) for a card that is missing, invalid, or contradicts the graph.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path}: empty file (0 bytes), probably an interrupted copy or export")
    try:
        facts = parse_onnx(data)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{path}: truncated or not an ONNX model ({str(error).splitlines()[0]})") from None
    if not facts.n_nodes or not facts.outputs:
        raise ModelLoadError(f"{path}: truncated or not an ONNX model (no graph in {len(data)} bytes)")
    metadata = facts.metadata
    if CARD_KEY not in metadata:
        raise ModelLoadError(f"{path}: carries no model card (metadata {CARD_KEY!r}); it was not written by "
                             f"`leak export`, or the file is truncated")
    card = ModelCard.from_json(metadata[CARD_KEY], source=str(path))
    precision = _json_value(metadata.get(PRECISION_KEY, '"fp32"'))
    problems = _flat_problems(card, metadata) + _graph_problems(card, metadata, facts)
    if precision not in PRECISIONS:
        problems.append((PRECISION_KEY, f"must be one of {list(PRECISIONS)}, got {precision!r}"))
    if problems:
        raise CardError(problems, str(path))
    return OnnxModel(path=path, card=card, input=json.loads(metadata[INPUT_KEY]), precision=precision,
                     facts=facts, data=data)


def _json_value(text: str):
    """A metadata value as JSON, or the raw text when it is not JSON (so a problem can quote it)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _flat_problems(card: ModelCard, metadata: dict[str, str]) -> list[tuple[str, str]]:
    """The flat copies other tools read must say what the card says."""
    problems = []
    for key, expected in flat_metadata(card).items():
        if key not in metadata:
            problems.append((key, "missing from the file's metadata"))
            continue
        value = _json_value(metadata[key])
        if value != expected:
            problems.append((key, f"metadata says {value!r} but the card says {expected!r}"))
    return problems


def _graph_problems(card: ModelCard, metadata: dict[str, str], facts: OnnxFacts) -> list[tuple[str, str]]:
    """The graph must take what leakhunter.input says and output one probability per class of the card."""
    kind = _json_value(metadata.get(INPUT_KEY, "null"))
    if kind not in INPUT_KINDS:
        return [(INPUT_KEY, f"must be one of {list(INPUT_KINDS)}, got {kind!r}")]
    problems = []
    inputs = facts.inputs
    expected = {kind: ["batch", "samples"] if kind == "waveform" else ["batch", *input_shape(card.frontend,
                                                                                             card.segmentation)]}
    if card.recording_input:  # one row per recording: a fusion model's meta (NaN unknown), a sensor reference
        name, width = card.recording_input
        expected[name] = ["batch", width]
    if [value.name for value in inputs] != list(expected):
        problems.append(("graph inputs", f"expected inputs named {list(expected)}, found "
                                         f"{[value.name for value in inputs]}"))
    else:
        problems += [("graph inputs", f"{value.name!r} should be float32 {expected[value.name]} for this card, found "
                                      f"{value.shape}") for value in inputs
                     if not _matches(value.shape, expected[value.name]) or value.elem_type != FLOAT]
    outputs = {value.name: value.shape for value in facts.outputs}
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        problems.append(("graph outputs", f"expected {list(OUTPUT_NAMES)}, found {list(outputs)}"))
        return problems
    columns = outputs["probs"][-1] if len(outputs["probs"]) == 2 else None
    if columns != len(card.class_names):
        problems.append(("class_names", f"card lists {len(card.class_names)} classes {list(card.class_names)} "
                                        f"but the graph's probs output is {outputs['probs']}"))
    if len(outputs["leak_prob"]) != 1:
        problems.append(("graph outputs", f"leak_prob should be one value per input, found {outputs['leak_prob']}"))
    return problems


def _matches(found: list, expected: list) -> bool:
    """Fixed sizes must be equal; a named (dynamic) size matches any dynamic one."""
    return len(found) == len(expected) and all(
        (isinstance(want, str) and isinstance(got, str)) or want == got for got, want in zip(found, expected))
