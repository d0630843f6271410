"""``python -m audio2lp ...``: the same as the ``audio2lp`` command."""

import sys

from audio2lp.apps.cli import main

sys.exit(main())
