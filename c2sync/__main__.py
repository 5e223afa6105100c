"""``python -m c2sync``: the same as the ``c2sync`` command (see :mod:`c2sync.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
