"""``python -m smoothsk.cli``."""

import sys

from smoothsk.cli import main

sys.exit(main())
