"""`python -m leakhunter.training [train options]`: the entry point torchrun starts once per process."""

import sys

from leakhunter.cli import app

app(["train", *sys.argv[1:]], prog_name="python -m leakhunter.training")
