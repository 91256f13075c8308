"""`leak export`: a checkpoint becomes one .onnx file carrying its card, kept only when it behaves like torch.

Build the graph (front-end inside for waveform input), export, quantise or halve if asked, stamp the
card, check the file (onnx checker, card read back), score the golden set with onnxruntime and torch,
and only then move the file into place with its parity report beside it. A refused export leaves the
target path as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from leakhunter.errors import InputError, LeakhunterError
from leakhunter.export.convert import quantize_int8, stamp_card, to_onnx
from leakhunter.export.graph import graph_module
from leakhunter.export.parity import (
    FP32_TOLERANCE,
    GoldenRecording,
    ParityResult,
    compare,
    golden_recordings,
    real_data_dir,
    reference_scores,
)
from leakhunter.files import replace_into, temporary_beside, write_atomic
from leakhunter.inference.onnx_card import INPUT_KINDS, ModelLoadError, read_onnx
from leakhunter.inference.onnx_runner import OnnxRunner
from leakhunter.inference.torch_runner import TorchRunner
from leakhunter.sources import check_output_name

MIN_OPSET = 18  # the dynamo exporter's oldest


@dataclass(frozen=True)
class ExportReport:
    """What was written and how it compares with torch (saved as <model>.parity.json)."""

    checkpoint: str
    output: str
    parity_report: str
    input: str
    precision: str
    opset: int
    size_bytes: int
    sha256: str
    golden: dict[str, int]  # golden recordings per source (synthetic, real, noise)
    real_data: str | None
    parity: list[ParityResult]  # for int8: the fp32 graph it was made from, then the int8 one
    seconds: float

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.parity)

    def to_dict(self) -> dict:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "parity"}
        return fields | {"passed": self.passed, "parity": [result.to_dict() for result in self.parity]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class ExportError(LeakhunterError, ValueError):
    """An export that was refused; `report` holds the numbers (nothing was written at the target)."""

    def __init__(self, message: str, report: ExportReport | None = None):
        super().__init__(message)
        self.report = report


def default_output(checkpoint: Path, precision: str) -> Path:
    """runs/x/best.pth → runs/x/best.onnx (best.fp16.onnx, best.int8.onnx for the variants)."""
    return checkpoint.with_suffix(".onnx" if precision == "fp32" else f".{precision}.onnx")


def export_model(checkpoint: str | Path, output: str | Path | None = None, input: str = "waveform",
                 opset: int = 18, fp16: bool = False, int8: bool = False, allow_stopped: bool = False) -> ExportReport:
    """Export a .pth checkpoint to ONNX; raise ExportError (writing nothing) when parity fails.

    fp32 must match torch within 1e-4 in P(LEAK) on every golden input, with identical file verdicts.
    fp16 and int8 report their deltas and are refused when any golden file's verdict flips; int8 is
    made from the fp32 graph, which must pass first (fp16 is exported directly: checking an fp32 graph
    too would take a second export). The report is saved as <output>.parity.json. The best.pth of a run a health
    check stopped is refused unless `allow_stopped` (its card keeps the mark either way).
    """
    started = time.perf_counter()
    if input not in INPUT_KINDS:
        raise InputError(f"input must be one of {', '.join(INPUT_KINDS)}, got {input!r}")
    if fp16 and int8:
        raise InputError("choose fp16 or int8, not both")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"opset must be between {MIN_OPSET} and {onnx.defs.onnx_opset_version()}, got {opset}")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    checkpoint = Path(checkpoint)
    if output is not None:  # `-o best.pth` would replace the checkpoint it exports
        check_output_name(Path(output), "an ONNX model", (".onnx",), f"-o {output}")
    output = Path(output) if output is not None else default_output(checkpoint, precision)
    report_path = output.with_suffix(".parity.json")
    reference = TorchRunner(checkpoint, device="cpu")
    card = reference.card
    if card.stopped_by() and not allow_stopped:
        raise InputError(f"{checkpoint}: {card.stopped_by()}; or export it anyway with --allow-stopped")
    if card.branches is not None and (input != "waveform" or precision != "fp32"):
        raise InputError(f"{checkpoint}: a fusion model exports as an fp32 waveform graph only (its engineered "
                         f"features overflow float16, and a mel input would leave them out); drop "
                         f"{'--input mel' if input != 'waveform' else '--fp16/--int8'}")
    if card.reference is not None and input != "waveform":
        raise InputError(f"{checkpoint}: a reference model exports as a waveform graph only (its sensor reference "
                         f"is subtracted after the graph's front-end); drop --input mel")
    real_data = real_data_dir()
    recordings = golden_recordings(card, real_data)
    expected = reference_scores(reference, recordings)
    proto, frontend_nodes = to_onnx(graph_module(reference.scorer.model, card, input, fp16), card, input, opset)
    output.parent.mkdir(parents=True, exist_ok=True)

    def checked(proto: onnx.ModelProto, precision: str) -> tuple[Path, ParityResult]:
        path = temporary_beside(output)  # so the final os.replace is atomic
        try:
            _write_synced(path, stamp_card(proto, card, input, precision).SerializeToString())
            onnx.checker.check_model(str(path), full_check=True)
            try:
                runner = OnnxRunner(read_onnx(path), device="cpu")
            except ModelLoadError as error:
                raise ExportError(f"{checkpoint}: export refused, nothing written to {output}: the {precision} "
                                  f"graph does not load back: {error}") from None
            tolerance = FP32_TOLERANCE if precision == "fp32" else None
            return path, compare(expected, runner, recordings, card, precision, tolerance)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    parity, path = [], None
    try:
        if int8:  # made from the fp32 graph, which must be right first
            fp32_path, fp32 = checked(onnx.ModelProto.FromString(proto.SerializeToString()), "fp32")
            fp32_path.unlink()
            parity.append(fp32)
            if fp32.passed:
                proto = quantize_int8(proto, keep=frontend_nodes)
        if all(result.passed for result in parity):
            path, result = checked(proto, precision)
            parity.append(result)
        data = path.read_bytes() if path is not None else b""
        report = ExportReport(
            checkpoint=str(checkpoint), output=str(output), parity_report=str(report_path), input=input,
            precision=precision, opset=opset, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest() if data else "",
            golden=_count_sources(recordings), real_data=str(real_data) if real_data else None, parity=parity,
            seconds=round(time.perf_counter() - started, 2))
        if not report.passed:
            reasons = "; ".join(result.failure() for result in parity if not result.passed)
            raise ExportError(f"{checkpoint}: export refused, nothing written to {output}: {reasons}", report)
        write_atomic(report_path, report.to_json())
        replace_into(path, output)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    return report


def _count_sources(recordings: list[GoldenRecording]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for recording in recordings:
        counts[recording.source] = counts.get(recording.source, 0) + 1
    return counts


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
