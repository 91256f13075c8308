"""leakhunter.inference: load a model file (.pth or .onnx) and score recordings with it.

`load_runner(path)` → (card, runner); `describe_model(path)` → what `leak info` shows. Importing this
package, and loading and running an .onnx file, needs no torch: only the .pth backend imports it.
"""

from leakhunter.inference.describe import describe_model
from leakhunter.inference.loader import load_runner
from leakhunter.inference.onnx_card import ModelLoadError
from leakhunter.inference.runner import Runner, long_segment_probs

__all__ = ["ModelLoadError", "Runner", "describe_model", "load_runner", "long_segment_probs"]
