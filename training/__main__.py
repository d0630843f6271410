"""``python -m training prepare|train ...``: the same subcommands as ``audio2lp``, runnable under torchrun."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
