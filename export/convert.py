"""Torch module → one self-contained ONNX model (dynamic axes), its int8 variant, and the card stamped in.

The dynamo exporter is used because the legacy TorchScript one refuses LeakCNN's adaptive pool. Its
per-node metadata (stack traces with local paths) is dropped: the file carries the card and nothing else.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

import leakhunter
from leakhunter.card import ModelCard, input_shape
from leakhunter.export.graph import graph_inputs, network_scope
from leakhunter.inference.onnx_card import OUTPUT_NAMES, card_metadata

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
QUANTIZED_OPS = ("MatMul", "Gemm")


def to_onnx(module: nn.Module, card: ModelCard, input: str, opset: int) -> tuple[onnx.ModelProto, list[str]]:
    """The exported model, weights inside, plus the names of the MatMul/Gemm nodes outside the network,
    which int8 must leave alone: the front-end's mel matrix meets power values spanning 90 dB."""
    seg = card.segmentation
    batch = torch.export.Dim("batch")
    if input == "waveform":
        # batch 2 and several long segments, so the exporter does not specialise either axis to 1
        example = torch.randn(2, seg.long_samples + 3 * seg.long_hop + 1)
        dynamic = ({0: batch, 1: torch.export.Dim("samples", min=seg.long_samples)},)
    else:
        example = torch.randn(2, *input_shape(card.frontend, card.segmentation))
        dynamic = ({0: batch},)
    names = graph_inputs(card, input)
    examples: tuple = (example,)
    if card.recording_input:  # one row per recording; a meta row may hold NaN (unknown): the example has both
        context = torch.randn(2, card.recording_input[1])
        if "meta" in names:
            context[1, 0] = float("nan")
        examples, dynamic = (example, context), (*dynamic, {0: batch})
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" and progress lines
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, examples, dynamo=True, opset_version=opset, input_names=names,
                                        output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic, verbose=False)
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    scope = network_scope(input)
    outside = [node.name for node in proto.graph.node if node.op_type in QUANTIZED_OPS and not _in_scope(node, scope)]
    _tidy(proto)
    return proto, outside


def quantize_int8(proto: onnx.ModelProto, keep: list[str]) -> onnx.ModelProto:
    """onnxruntime dynamic quantisation (int8 weights, activations quantised per batch) of the network's
    MatMul/Gemm nodes, all but `keep`. Not the convolutions: as ConvInteger they ran 7-10x slower on CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantizer_log = logging.getLogger()  # the quantiser advises "pre-processing" on the root logger
    level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as folder:
            output = Path(folder) / "int8.onnx"
            quantize_dynamic(proto, output, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep,
                             weight_type=QuantType.QInt8)
            quantized = onnx.load(output)
    finally:
        quantizer_log.setLevel(level)
    _tidy(quantized)
    return quantized


def stamp_card(proto: onnx.ModelProto, card: ModelCard, input: str, precision: str) -> onnx.ModelProto:
    """Replace the model's metadata_props with the card (JSON) and its flat copies; leakhunter is the producer."""
    del proto.metadata_props[:]
    for key, value in card_metadata(card, input, precision).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "leakhunter", leakhunter.__version__
    return proto


def _in_scope(node: onnx.NodeProto, scope: str) -> bool:
    scopes = next((entry.value for entry in node.metadata_props if entry.key == SCOPES_KEY), "")
    return f"'{scope}'" in scopes or f"'{scope}." in scopes


def _tidy(proto: onnx.ModelProto) -> None:
    """Drop exporter metadata and stale value_info (dynamic quantisation's shape inference trips on it),
    and call the outputs' first axis `inputs` (one row per scoring input) where it is a sympy formula."""
    del proto.graph.value_info[:]
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*proto.graph.input, *proto.graph.output):
        del value.metadata_props[:]
        value.doc_string = ""
    for value in proto.graph.output:
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_param") and not first.dim_param.isidentifier():
            first.dim_param = "inputs"
    proto.doc_string = ""
