"""leakhunter: find water-pipe leaks in acoustic recordings.

The core package (card, audio, front-end, segmentation, voting) that training, inference and
export all build on. Importing it has no side effects and does not import torch.
"""

__version__ = "0.1.0"
