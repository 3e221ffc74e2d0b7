"""``python -m worker.cli``: the compute-worker command."""

import sys

from worker.cli.main import main

sys.exit(main())
