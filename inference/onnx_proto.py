"""What leakhunter reads from an .onnx file (metadata_props, the graph's inputs and outputs, the opset, the
producer), parsed with protobuf alone. Importing the `onnx` package costs about 0.8 s (its ml_dtypes
dependency), more than scoring ten minutes of audio, and the scoring path needs none of it. The field
numbers are those of onnx.proto3, which ONNX never renumbers; every other field is skipped unparsed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

# onnx.TensorProto.DataType → numpy dtype names, for the types a leakhunter graph can carry.
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}
FLOAT = 1

_FIELDS = {  # message: [(name, number, type, label, message type or None, oneof index or None)]
    "Entry": [("key", 1, "string", "optional", None, None), ("value", 2, "string", "optional", None, None)],
    "OpsetId": [("domain", 1, "string", "optional", None, None), ("version", 2, "int64", "optional", None, None)],
    "Dimension": [("dim_value", 1, "int64", "optional", None, 0), ("dim_param", 2, "string", "optional", None, 0)],
    "Shape": [("dim", 1, "message", "repeated", "Dimension", None)],
    "Tensor": [("elem_type", 1, "int32", "optional", None, None), ("shape", 2, "message", "optional", "Shape", None)],
    "Type": [("tensor_type", 1, "message", "optional", "Tensor", None)],
    "ValueInfo": [("name", 1, "string", "optional", None, None), ("type", 2, "message", "optional", "Type", None)],
    "Initializer": [("name", 8, "string", "optional", None, None)],
    "Graph": [("node", 1, "bytes", "repeated", None, None),
              ("initializer", 5, "message", "repeated", "Initializer", None),
              ("input", 11, "message", "repeated", "ValueInfo", None),
              ("output", 12, "message", "repeated", "ValueInfo", None)],
    "Model": [("producer_name", 2, "string", "optional", None, None),
              ("producer_version", 3, "string", "optional", None, None),
              ("graph", 7, "message", "optional", "Graph", None),
              ("opset_import", 8, "message", "repeated", "OpsetId", None),
              ("metadata_props", 14, "message", "repeated", "Entry", None)],
}


@functools.cache
def _model_class():
    file = descriptor_pb2.FileDescriptorProto(name="leakhunter_onnx_lite.proto", package="leakhunter_onnx_lite",
                                              syntax="proto2")
    kinds = descriptor_pb2.FieldDescriptorProto
    for message_name, fields in _FIELDS.items():
        message = file.message_type.add(name=message_name)
        if any(oneof is not None for *_, oneof in fields):
            message.oneof_decl.add(name="value")
        for name, number, kind, label, type_name, oneof in fields:
            field = message.field.add(name=name, number=number, type=getattr(kinds, f"TYPE_{kind.upper()}"),
                                      label=getattr(kinds, f"LABEL_{label.upper()}"))
            if type_name:
                field.type_name = f".leakhunter_onnx_lite.{type_name}"
            if oneof is not None:
                field.oneof_index = oneof
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("leakhunter_onnx_lite.Model"))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    shape: list  # ints for fixed sizes, names for dynamic ones ("?" when unnamed)

    def describe(self) -> dict:
        return {"name": self.name, "dtype": ELEM_TYPES.get(self.elem_type, f"onnx type {self.elem_type}"),
                "shape": self.shape}


@dataclass(frozen=True)
class OnnxFacts:
    metadata: dict[str, str]
    inputs: list[TensorInfo]  # graph inputs that are not initializers
    outputs: list[TensorInfo]
    n_nodes: int
    opset: int | None
    producer: str


def parse_onnx(data: bytes) -> OnnxFacts:
    """The facts of a serialized ModelProto; DecodeError/ValueError for bytes that are not one."""
    model = _model_class().FromString(data)
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    return OnnxFacts(
        metadata={entry.key: entry.value for entry in model.metadata_props},
        inputs=[_tensor(value) for value in graph.input if value.name not in initializers],
        outputs=[_tensor(value) for value in graph.output],
        n_nodes=len(graph.node),
        opset=next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
    )


def _tensor(value) -> TensorInfo:
    tensor = value.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim]
    return TensorInfo(value.name, tensor.elem_type, shape)


__all__ = ["DecodeError", "FLOAT", "OnnxFacts", "TensorInfo", "parse_onnx"]
