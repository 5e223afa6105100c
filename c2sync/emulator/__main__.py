"""``python -m c2sync.emulator``: run the local server (see ``--help``)."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
