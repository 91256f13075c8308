"""leakhunter.export: a checkpoint becomes one ONNX file carrying its model card, kept only when it
scores the golden recordings like torch does (`export_model`, the library side of `leak export`)."""

from leakhunter.export.pipeline import ExportError, ExportReport, export_model

__all__ = ["ExportError", "ExportReport", "export_model"]
