"""`python -m leakhunter.training [train options]`: the entry point torchrun starts once per process."""

import os
import sys

from leakhunter.cli import app


def main(argv: list[str]) -> None:
    """`leak train` with `argv`, then leave with its exit status at once.

    By the time `leak train` returns, the run has destroyed its process group and written its files. Letting the
    interpreter finalize after that can still abort a gloo rank (SIGABRT, "terminate called without an active
    exception", in about 1 of 12 two-rank runs here where the other rank failed and left first), which replaces
    the health check's exit status (100 + its number) with -6. So the buffers are flushed and the process ends
    without finalization, as every rank must end: with the status the run decided."""
    try:
        app(["train", *argv], prog_name="python -m leakhunter.training")
        code = 0
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
