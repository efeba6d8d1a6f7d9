"""``python -m steward_operator``: the same as ``steward operator``."""

import sys

from steward_operator.cli import entry

sys.exit(entry())
