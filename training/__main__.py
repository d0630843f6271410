"""``python -m training COMMAND ...``: the same as ``audio2lp-train`` (the form to use under torchrun)."""

import sys

from training.cli import main

if __name__ == "__main__":
    sys.exit(main())
