"""``python -m benchmarks [--quick] [--rounds N] [--json out.json]``."""

import sys

from benchmarks.run import main

sys.exit(main())
