"""leakhunter.inference: load a model file (.pth or .onnx) and score recordings with it.

`load_runner(path)` → (card, runner); `describe_model(path)` → what `leak info` shows. Importing this
package, and loading and running an .onnx file, needs no torch: only the .pth backend imports it.
The names below are imported on first use, so a decoding worker that imports one small module of the
package does not pay for onnx and onnxruntime.
"""

import importlib

_EXPORTS = {
    "describe_model": "leakhunter.inference.describe",
    "load_runner": "leakhunter.inference.loader",
    "ModelLoadError": "leakhunter.inference.onnx_card",
    "Runner": "leakhunter.inference.runner",
    "long_segment_probs": "leakhunter.inference.runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leakhunter.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
